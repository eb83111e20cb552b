"""Reading and writing MRC-family volumes and IMOD tilt-angle files.

Conventions (DESIGN §1): arrays are (Z, Y, X) for tomograms and (n_tilts, Y, X) for tilt series;
voxel sizes are in Å and in (Z, Y, X) order; angles are in degrees, in stack order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DDWError
from .storage import atomic_write

MRC_SUFFIXES = (".mrc", ".st", ".ali", ".rec", ".mrcs", ".map")
ANGLE_SUFFIXES = (".tlt", ".rawtlt")


@dataclass
class Volume:
    """A 3D array with its voxel size and origin (both in Å, (Z, Y, X) order)."""

    data: np.ndarray
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    path: Path | None = None


@dataclass
class TiltSeries:
    """An aligned tilt series (n_tilts, Y, X) with its angles (degrees, stack order)."""

    data: np.ndarray
    angles: np.ndarray
    pixel_size: float = 1.0
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    name: str = "tilt series"
    meta: dict = field(default_factory=dict)

    @property
    def n_tilts(self) -> int:
        return int(self.data.shape[0])


def _check_mrc_suffix(path: Path) -> None:
    if path.suffix.lower() not in MRC_SUFFIXES:
        raise DDWError(
            f"{path.name}: not an MRC-family file (expected one of {', '.join(MRC_SUFFIXES)}); "
            "convert it to MRC first (e.g. with IMOD's tif2mrc or mrcfile)"
        )


def read_mrc(path, mmap: bool = True) -> Volume:
    """Read a 3D MRC-family file, memory-mapped by default; voxel size and origin from the header.

    A 2D image is refused (a tilt series or tomogram must be 3D).
    """
    import mrcfile

    path = Path(path)
    if not path.exists():
        raise DDWError(f"{path}: file not found; check the path")
    _check_mrc_suffix(path)
    try:
        if mmap:
            mrc = mrcfile.mmap(path, mode="r", permissive=False)
        else:
            mrc = mrcfile.open(path, mode="r", permissive=False)
    except Exception as exc:  # mrcfile raises ValueError/OSError variants for broken headers
        raise DDWError(
            f"{path.name}: cannot be read as MRC ({exc}); check that the file is complete and "
            "really an MRC file"
        ) from None
    with mrc:
        data = mrc.data
        if data is None or data.ndim != 3:
            ndim = 0 if data is None else data.ndim
            raise DDWError(
                f"{path.name}: expected a 3D volume or tilt series but the file holds {ndim}D data; "
                "open a stack of projections or a tomogram"
            )
        vs = mrc.voxel_size
        voxel = (float(vs.z), float(vs.y), float(vs.x))
        org = mrc.header.origin
        origin = (float(org.z), float(org.y), float(org.x))
        if mmap:
            # Keep the mapping alive after the file object closes: np.memmap on the same bytes.
            offset = mrc.header.nbytes + mrc.extended_header.nbytes
            array = np.memmap(path, dtype=data.dtype, mode="r", offset=offset, shape=data.shape)
        else:
            array = np.array(data)
    voxel = tuple(v if v > 0 else 1.0 for v in voxel)
    return Volume(data=array, voxel_size=voxel, origin=origin, path=path)


def write_mrc(path, data, voxel_size=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    """Write ``data`` as MRC with its voxel size (Å, (Z, Y, X) or one number), atomically.

    The file is written under a temporary name in the target folder, fsynced, then renamed
    (:func:`core.storage.atomic_write`), so a crash never leaves a half-written file under the
    final name and a failed write (full disk: one ``WriteError`` naming the path and the free
    space) leaves the previous file intact. float64 is stored as float32.
    """
    import mrcfile

    path = Path(path)
    array = np.asarray(data)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype == np.bool_:
        array = array.astype(np.int8)
    if np.isscalar(voxel_size) or np.ndim(voxel_size) == 0:
        voxel_size = (float(voxel_size),) * 3
    vz, vy, vx = (float(v) for v in voxel_size)
    oz, oy, ox = (float(o) for o in origin)
    def write(tmp):
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(array))
            mrc.voxel_size = (vx, vy, vz)
            mrc.header.origin = (ox, oy, oz)

    atomic_write(path, write, what="volume")
    return path


def read_angles(path) -> np.ndarray:
    """Read IMOD ``.tlt``/``.rawtlt`` text: one angle (degrees) per line, stack order."""
    path = Path(path)
    if not path.exists():
        raise DDWError(f"{path}: angle file not found; check the path")
    values = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                values.append(float(text.split()[0]))
            except ValueError:
                raise DDWError(
                    f"{path.name} line {number}: '{text[:40]}' is not a number; a .tlt/.rawtlt "
                    "file holds one tilt angle in degrees per line"
                ) from None
    angles = np.asarray(values, dtype=np.float64)
    if angles.size == 0:
        raise DDWError(f"{path.name}: holds no angles; expected one tilt angle per line")
    check_angle_values(angles, source=path.name)
    return angles


def angles_from_range(tilt_min: float, tilt_max: float, step: float) -> np.ndarray:
    """Angles ``tilt_min, tilt_min + step, …, tilt_max`` (inclusive), as IMOD's manual range."""
    if step <= 0:
        raise DDWError(f"tilt step must be positive, got {step}; e.g. --tilt-range -60 60 3")
    if tilt_max < tilt_min:
        raise DDWError(
            f"tilt range minimum {tilt_min} is above its maximum {tilt_max}; give MIN MAX STEP"
        )
    n = int(np.floor((tilt_max - tilt_min) / step + 1e-6)) + 1
    angles = tilt_min + step * np.arange(n, dtype=np.float64)
    check_angle_values(angles, source="tilt range")
    return angles


def check_angle_values(angles, source: str = "angles") -> None:
    """Refuse NaN/inf and angles outside the open interval (-90°, 90°)."""
    angles = np.asarray(angles, dtype=np.float64)
    if not np.all(np.isfinite(angles)):
        raise DDWError(f"{source}: contains NaN or infinite angles; fix the angle list")
    bad = angles[(angles <= -90) | (angles >= 90)]
    if bad.size:
        raise DDWError(
            f"{source}: angle {bad[0]:g}° is outside (-90°, 90°); tilt angles are in degrees "
            "(radians, or a file of another kind, would explain this)"
        )


def check_angle_count(angles, n_tilts: int, source: str = "angles") -> None:
    n = int(np.size(angles))
    if n != n_tilts:
        raise DDWError(
            f"{source} gives {n} tilt angles but the stack has {n_tilts} projections; "
            "use the angle file that belongs to this stack (or fix the range/step)"
        )


def find_angle_file(stack_path) -> Path | None:
    """The ``.tlt`` (preferred) or ``.rawtlt`` beside a stack with the same stem, if any."""
    stack_path = Path(stack_path)
    for suffix in ANGLE_SUFFIXES:
        candidate = stack_path.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def resolve_angles(angles, n_tilts: int, stack_path=None) -> np.ndarray:
    """Turn what the user gave into an angle array of length ``n_tilts``.

    ``angles`` may be an array/list, a path to a .tlt/.rawtlt file, a ``(min, max, step)``
    tuple, or ``None`` (then a .tlt/.rawtlt beside ``stack_path`` is used).
    """
    source = "angles"
    if angles is None:
        found = find_angle_file(stack_path) if stack_path is not None else None
        if found is None:
            raise DDWError(
                "no tilt angles given and no .tlt/.rawtlt file beside the stack; "
                "give an angle file (--angles FILE) or a range (--tilt-range MIN MAX STEP)"
            )
        values, source = read_angles(found), found.name
    elif isinstance(angles, (str, os.PathLike)):
        values, source = read_angles(angles), Path(angles).name
    elif isinstance(angles, tuple) and len(angles) == 3 and n_tilts != 3:
        values, source = angles_from_range(*angles), "tilt range"
    else:
        values = np.asarray(angles, dtype=np.float64).ravel()
        check_angle_values(values, source=source)
    check_angle_count(values, n_tilts, source=source)
    return values


def load_tilt_series(path, angles=None, tilt_axis_x: bool = False) -> TiltSeries:
    """Read an aligned tilt series and its angles (see :func:`resolve_angles`).

    ``tilt_axis_x`` transposes Y and X for stacks whose tilt axis runs along X.
    """
    vol = read_mrc(path)
    data = vol.data
    if tilt_axis_x:
        data = np.swapaxes(data, 1, 2)
    values = resolve_angles(angles, data.shape[0], stack_path=path)
    pixel = vol.voxel_size[2 if not tilt_axis_x else 1]
    return TiltSeries(
        data=data, angles=values, pixel_size=float(pixel), origin=vol.origin, name=Path(path).stem
    )
