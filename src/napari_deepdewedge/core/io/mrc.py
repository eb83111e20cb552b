"""Reading and writing MRC-family volumes.

Conventions (docs/method.md §1): arrays are (Z, Y, X) for tomograms and (n_tilts, Y, X) for tilt series;
voxel sizes are in Å and in (Z, Y, X) order; angles are in degrees, in stack order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DDWError
from .storage import atomic_write
from .volume import Volume, VoxelSizeWarning, _usable_voxel  # noqa: F401  (re-exported)

MRC_SUFFIXES = (".mrc", ".st", ".ali", ".rec", ".mrcs", ".map")


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
            f"{path.name}: not an MRC-family file (expected one of {', '.join(MRC_SUFFIXES)}) "
            "nor an OME-Zarr folder (.zarr); convert it to MRC first (e.g. with IMOD's tif2mrc "
            "or mrcfile)"
        )


class MRCHeaderWarning(UserWarning):
    """An MRC file was read in permissive mode; the message says what in its header was unusual."""


#: mrcfile's permissive-mode messages → what we tell the user (first match wins).
_HEADER_NOTES = (
    ("Map ID string not found", "no 'MAP ' ID string (an older IMOD/SerialEM header)"),
    ("machine stamp", "machine stamp {stamp} not recognised, read as little-endian"),
    ("Machine stamp", "machine stamp disagrees with the byte order; the other byte order was used"),
    ("extended header", "extended header shorter than the header says; ignored"),
)
#: messages that mean the data themselves cannot be trusted: the file stays refused.
_FATAL_NOTES = ("data block", "Unrecognised mode")


def _open_mrc(path: Path, mmap: bool, permissive: bool):
    import mrcfile

    opener = mrcfile.mmap if mmap else mrcfile.open
    return opener(path, mode="r", permissive=permissive)


def _open_permissively(path: Path, mmap: bool, strict_error: Exception):
    """Open with mrcfile's permissive mode; refuse what is broken, warn about what is unusual."""
    import warnings

    mrc, caught = None, []
    # a memory map of a short file fails outright; reading it says what is missing
    for use_mmap in dict.fromkeys((mmap, False)):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                mrc = _open_mrc(path, use_mmap, permissive=True)
        except Exception:
            mrc, caught = None, []
        if mrc is not None and mrc.data is not None:
            break
        if mrc is not None and use_mmap:  # retried without a memory map next
            mrc.close()
    messages = [str(w.message) for w in caught]
    broken = [m for m in messages if any(key in m for key in _FATAL_NOTES)]
    if mrc is None or mrc.data is None or broken:
        if mrc is not None:
            mrc.close()
        reason = broken[0] if broken else str(strict_error)
        raise DDWError(
            f"{path.name}: cannot be read as MRC ({reason}); check that the file is complete and "
            "really an MRC file"
        ) from None
    notes = []
    for message in messages:
        for key, note in _HEADER_NOTES:
            if key in message:
                stamp = " ".join(f"{b:02x}" for b in bytes(mrc.header.machst))
                notes.append(note.format(stamp=stamp))
                break
    if not notes:
        notes.append(str(strict_error))
    return mrc, tuple(notes)


def _mode0_is_unsigned(header) -> bool:
    """Mode 0 bytes: IMOD's flag decides when its stamp is there; else MRC2014 (signed) for
    files that declare the 2014 format, and unsigned (the older IMOD/CCP4 reading) for the rest.
    """
    extra2 = bytes(header.extra2)  # header bytes 112..199; IMOD's stamp at 152, flags at 156
    byteorder = "big" if header.mode.dtype.byteorder == ">" else "little"
    stamp = int.from_bytes(extra2[40:44], byteorder)
    flags = int.from_bytes(extra2[44:48], byteorder)
    if stamp == 1146047817:  # "IMOD"
        return not (flags & 1)
    return int(header.nversion) < 20140


def _squeeze_stack_axes(shape: tuple) -> tuple:
    """(n, 1, Y, X) volume stacks of single sections, or (1, Z, Y, X), as a 3D shape."""
    if len(shape) == 4 and shape[1] == 1:
        return (shape[0], shape[2], shape[3])
    if len(shape) == 4 and shape[0] == 1:
        return tuple(shape[1:])
    return tuple(shape)


def read_mrc(path, mmap: bool = True, voxel_size=None) -> Volume:
    """Read a 3D MRC-family file, memory-mapped by default; voxel size and origin from the header.

    Strict MRC2014 first; a header that only older writers produce (no ``MAP `` ID string, a
    zero machine stamp, as older IMOD/SerialEM write) is then read in mrcfile's permissive mode
    with an :class:`MRCHeaderWarning` naming what was unusual. Data shorter than the header says
    or an unknown mode stay a :class:`DDWError`. Modes 0 (int8 or uint8 per the header's
    convention, see :func:`_mode0_is_unsigned`), 1, 2, 6 and 12 keep their dtype (the engine
    converts to float32 chunk by chunk). ``(n, 1, Y, X)`` stacks become ``(n, Y, X)``.
    ``voxel_size`` (Å, one number or Z Y X) overrides the header's, e.g. when it says 0 or 1 Å.
    A 2D image is refused (a tilt series or tomogram must be 3D). An OME-Zarr folder
    (``.zarr``) is read by :func:`core.io.omezarr.read_omezarr` (its ``data`` a lazy array).
    """
    import warnings

    path = Path(path)
    if not path.exists():
        raise DDWError(f"{path}: file not found; check the path")
    from .omezarr import is_zarr_path, read_omezarr

    if is_zarr_path(path):  # an OME-Zarr folder: its finest level, read lazily (core.io.omezarr)
        volume = read_omezarr(path, voxel_size=voxel_size)
        if not mmap:
            volume.data = np.asarray(volume.data)
        return volume
    _check_mrc_suffix(path)
    notes: tuple[str, ...] = ()
    try:
        mrc = _open_mrc(path, mmap, permissive=False)
    except Exception as exc:  # mrcfile raises ValueError/OSError variants for broken headers
        mrc, notes = _open_permissively(path, mmap, exc)
        warnings.warn(MRCHeaderWarning(
            f"{path.name}: unusual MRC header, read permissively: {'; '.join(notes)}"),
            stacklevel=2)
    with mrc:
        data = mrc.data
        shape = _squeeze_stack_axes(tuple(data.shape)) if data is not None else ()
        if data is None or len(shape) != 3:
            ndim = 0 if data is None else data.ndim
            raise DDWError(
                f"{path.name}: expected a 3D volume or tilt series but the file holds {ndim}D data; "
                "open a stack of projections or a tomogram"
            )
        dtype = data.dtype
        if int(mrc.header.mode) == 0 and _mode0_is_unsigned(mrc.header):
            dtype = np.dtype(np.uint8)
        vs = mrc.voxel_size
        header_voxel = (float(vs.z), float(vs.y), float(vs.x))
        org = mrc.header.origin
        origin = (float(org.z), float(org.y), float(org.x))
        if mmap:
            # Keep the mapping alive after the file object closes: np.memmap on the same bytes.
            offset = mrc.header.nbytes + int(mrc.header.nsymbt)
            array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        else:
            array = np.array(data).view(dtype).reshape(shape)
    voxel = _usable_voxel(header_voxel, path, voxel_size)
    return Volume(data=array, voxel_size=voxel, origin=origin, path=path,
                  header_voxel_size=header_voxel, header_notes=notes)


def write_mrc(path, data, voxel_size=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    """Write ``data`` as MRC with its voxel size (Å, (Z, Y, X) or one number), atomically.

    The file is written under a temporary name in the target folder, fsynced, then renamed
    (:func:`core.io.storage.atomic_write`), so a crash never leaves a half-written file under the
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


def write_volume(path, data, voxel_size=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), *,
                 provenance: dict | None = None) -> Path:
    """Write ``data`` in the format its name asks for: ``.zarr`` → OME-Zarr 0.4, else MRC."""
    from .omezarr import ZARR_SUFFIX
    from .omezarr_write import write_omezarr

    if Path(os.fspath(path)).suffix.lower() == ZARR_SUFFIX:
        return write_omezarr(path, data, voxel_size, origin, provenance=provenance)
    return write_mrc(path, data, voxel_size, origin)
