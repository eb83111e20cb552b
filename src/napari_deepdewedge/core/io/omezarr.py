"""OME-Zarr tomograms in and out (issue 21): the CryoET Data Portal's and copick's format.

Reading (:func:`read_omezarr`): an OME-Zarr image folder, NGFF 0.4 (zarr v2, ``.zattrs``) or
0.5 (zarr v3, ``zarr.json`` with the metadata under ``"ome"``). The finest level (level 0,
checked against the other levels' scales) is opened lazily: :class:`LazyZarrArray` reads only
the chunks a slice touches, so refinement reads it band by band as it reads a memory-mapped MRC
file. The voxel size comes from the scales of the dataset's and the multiscale's
``coordinateTransformations`` with the axes' units (angstrom, nanometer or micrometer → Å), the
origin from their translations. Everything else is one :class:`DDWError` naming the problem.

Writing (:func:`write_omezarr`): NGFF 0.4 by default (what the data portal serves and
``napari-ome-zarr`` reads; 0.5 on request), a pyramid of 2×2×2 block means halving down to about
:data:`PYRAMID_TARGET` voxels per axis (at least two levels), chunks of :data:`CHUNKS`,
Blosc/lz4, units ``angstrom``, and a ``deepdewedge`` provenance attribute. The volume is written in slabs of
Z (every level from the same slab, so memory is the slab, not a copy of the volume) into a
temporary folder ``.<name>.<random>.tmp`` beside the target, fsynced and renamed onto the final
name only when complete: a killed or failed write leaves nothing under the final name (and a
previous result there unchanged).

The library is ``zarr`` (zarr-python ≥ 3) directly, not ``ome-zarr`` (ome-zarr-py): zarr ≥ 3
reads and writes both zarr v2 and v3, the OME metadata we need is a few dictionaries, writing
slab by slab needs the array API anyway, and ome-zarr-py would add s3fs/aiobotocore, pydantic
models, scikit-image and an HTTP server to every installation. ome-zarr-py is used by the tests
(fixtures and read-back), so files written here are checked against the reference
implementation.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DDWError

#: the suffix of an OME-Zarr folder (any case)
ZARR_SUFFIX = ".zarr"
#: chunks (Z, Y, X) of every level, clipped to the level's shape. A Z-plane view (napari's
#: default) decompresses 16 planes per plane shown, 4× less than 64³ cubes would, while a chunk
#: stays 4 MiB of float32 (within the 1–16 MB zarr recommends; 1024² planes need 16 chunks);
#: the writer's slabs are multiples of 16 planes, so no chunk is ever written twice.
CHUNKS = (16, 256, 256)
#: chunk compression: Blosc lz4, level 5, byte shuffle (numcodecs' default, readable everywhere).
#: A tomogram is noise at the voxel level and compresses little whatever the codec; one thread,
#: chunks of CHUNKS (bench/omezarr_codecs.py, ratio / encode / decode MB/s, noise and
#: smooth+noise): lz4-5 1.07/224/1563 and 1.14/373/928; zstd-1 1.08/172/215 and 1.16/123/465;
#: zstd-5 1.15/32/499 and 1.21/26/520 (7× slower writes for 7 % smaller files).
CODEC = ("lz4", 5)
#: the pyramid halves until the largest axis of its coarsest level is at most this
PYRAMID_TARGET = 256
#: units of OME-Zarr space axes we read, in Å
UNIT_ANGSTROM = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4}


def is_zarr_path(path) -> bool:
    """A ``.zarr`` folder (or its name, also with a trailing slash), or a folder holding zarr
    metadata (``.zattrs``/``.zgroup``/``zarr.json``)."""
    p = Path(os.fspath(path))
    if p.suffix.lower() == ZARR_SUFFIX:
        return True
    return p.is_dir() and any((p / n).exists() for n in (".zgroup", ".zattrs", "zarr.json"))


class LazyZarrArray:
    """A 3D zarr array that reads only what is sliced (a numpy array of the stored dtype).

    Supports what the engine does with a memory map: ``shape``/``dtype``/``ndim``/``size``,
    slices and integers, an integer index array on one or more axes (the reflected rows of a
    refinement band; orthogonal, which equals numpy's indexing for one array axis), and
    ``numpy.asarray`` (the whole level). ``lazy_bands`` tells the engine not to read it whole.
    """

    lazy_bands = True

    def __init__(self, array, path: Path | None = None):
        self._array = array
        self.path = path
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))
        self.nbytes = self.size * self.dtype.itemsize
        self.chunks = tuple(int(n) for n in array.chunks)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, (list, np.ndarray)) for k in keys):
            keys = tuple(np.asarray(k, dtype=np.int64) if isinstance(k, (list, np.ndarray)) else k
                         for k in keys)
            return np.asarray(self._array.oindex[keys])
        return np.asarray(self._array[key])

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self._array[...])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyZarrArray(shape={self.shape}, dtype={self.dtype}, path={self.path})"


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _open_group(path: Path):
    import zarr

    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several kinds for a folder that is not a group
        raise DDWError(f"{path.name}: cannot be opened as a zarr group ({type(exc).__name__}: "
                       f"{exc}); give an OME-Zarr image folder (the one holding .zattrs or "
                       "zarr.json)") from None


def _multiscale(group, path: Path) -> tuple[dict, str]:
    """The first multiscale of the group's OME metadata and the NGFF version."""
    attrs = dict(group.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs  # 0.5: under "ome"
    scales = ome.get("multiscales")
    if not isinstance(scales, list) or not scales or not isinstance(scales[0], dict):
        hint = ""
        if "labels" in attrs or "plate" in ome or "bioformats2raw.layout" in ome:
            hint = " (a plate, labels or bioformats2raw container: give the image folder inside, e.g. X.zarr/0)"
        raise DDWError(f"{path.name}: a zarr folder without OME-Zarr multiscales metadata{hint}; "
                       "give an OME-Zarr image (NGFF 0.4 or 0.5) or convert the tomogram to MRC")
    version = str(scales[0].get("version") or ome.get("version") or "")
    return scales[0], version


def _transforms(transforms, ndim: int, where: str, path: Path):
    """(scale, translation) of a coordinateTransformations list (identity when absent)."""
    scale, shift = np.ones(ndim), np.zeros(ndim)
    for t in transforms or []:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation") or "path" in t:
            raise DDWError(f"{path.name}: {where} has a coordinate transformation "
                           f"{kind or t!r} that is not supported (scale and translation values "
                           "are); rewrite the metadata with explicit scale and translation")
        values = np.asarray(t.get(kind), dtype=np.float64)
        if values.shape != (ndim,) or not np.all(np.isfinite(values)):
            raise DDWError(f"{path.name}: {where} gives the {kind} {t.get(kind)!r}, not {ndim} "
                           "finite numbers; fix the OME-Zarr metadata")
        if kind == "scale":
            scale, shift = scale * values, shift * values
        else:
            shift = shift + values
    return scale, shift


def _axis_factors(axes, ndim: int, path: Path) -> np.ndarray:
    """Å per unit of each axis; the axes must be z, y, x (space) with a known unit."""
    if axes is None:
        raise DDWError(f"{path.name}: the multiscales metadata lists no axes, so the voxel size "
                       "has no unit; add axes z, y, x with unit 'angstrom' or 'nanometer'")
    axes = [a if isinstance(a, dict) else {"name": str(a)} for a in axes]
    if len(axes) != ndim:
        raise DDWError(f"{path.name}: the metadata lists {len(axes)} axes for a {ndim}D array; "
                       "fix the OME-Zarr metadata")
    names = [str(a.get("name", "")).lower() for a in axes]
    if names != ["z", "y", "x"]:
        raise DDWError(f"{path.name}: axes {names}, expected z, y, x (a 3D tomogram); a time "
                       "series, channels or another axis order cannot be refined — export "
                       "the tomogram alone")
    factors = []
    for a in axes:
        unit = a.get("unit")
        if unit is None:
            raise DDWError(f"{path.name}: axis {a.get('name')} has no unit, so the voxel size "
                           "is unknown; set the axes' unit to 'angstrom' or 'nanometer'")
        if str(unit).lower() not in UNIT_ANGSTROM:
            raise DDWError(f"{path.name}: axis {a.get('name')} has unit '{unit}'; a tomogram's "
                           f"axes need one of {', '.join(UNIT_ANGSTROM)}")
        factors.append(UNIT_ANGSTROM[str(unit).lower()])
    return np.asarray(factors)


def omezarr_levels(path) -> dict:
    """The checked pyramid of an OME-Zarr image: ``{"levels": [zarr arrays, finest first],
    "voxel_size": (Z, Y, X) Å of level 0, "origin": Å, "scales": per level (Å),
    "translations": per level (Å), "version": "0.4"/"0.5", "name"}``. Raises :class:`DDWError`
    for anything that is not one 3D OME-Zarr image with units and level 0 the finest."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise DDWError(f"{path}: not found; check the path")
    if not path.is_dir():
        raise DDWError(f"{path.name}: an OME-Zarr image is a folder, this is a file; give the "
                       ".zarr folder (or an MRC file)")
    group = _open_group(path)
    ms, version = _multiscale(group, path)
    datasets = ms.get("datasets") or []
    if not datasets:
        raise DDWError(f"{path.name}: the multiscales metadata lists no datasets; fix or "
                       "rewrite the OME-Zarr image")
    levels = []
    for d in datasets:
        try:
            levels.append(group[str(d["path"])])
        except Exception:
            raise DDWError(f"{path.name}: level '{d.get('path')}' listed in the metadata is "
                           "missing; the copy is incomplete — download it again") from None
    ndim = len(levels[0].shape)
    if ndim != 3:
        raise DDWError(f"{path.name}: holds a {ndim}D array {tuple(levels[0].shape)}; a tomogram "
                       "or half tomogram must be 3D (Z, Y, X)")
    factors = _axis_factors(ms.get("axes"), ndim, path)
    g_scale, g_shift = _transforms(ms.get("coordinateTransformations"), ndim, "the multiscale", path)
    scales, shifts = [], []
    for d, level in zip(datasets, levels):
        if len(level.shape) != ndim:
            raise DDWError(f"{path.name}: level '{d['path']}' is {len(level.shape)}D, level 0 "
                           f"is {ndim}D; fix or rewrite the OME-Zarr image")
        s, t = _transforms(d.get("coordinateTransformations"), ndim, f"level '{d['path']}'", path)
        scales.append(s * g_scale * factors)
        shifts.append((t * g_scale + g_shift) * factors)
    if np.any(scales[0] <= 0):
        raise DDWError(f"{path.name}: level 0 has the scale {tuple(scales[0])} (must be "
                       "positive); fix the OME-Zarr metadata")
    for d, s, level in zip(datasets[1:], scales[1:], levels[1:]):
        if np.any(s < scales[0] * (1 - 1e-6)) or any(
                int(a) > int(b) for a, b in zip(level.shape, levels[0].shape)):
            raise DDWError(
                f"{path.name}: level 0 ('{datasets[0]['path']}', scale {tuple(scales[0])} Å, shape "
                f"{tuple(levels[0].shape)}) is not the finest: level '{d['path']}' has scale "
                f"{tuple(s)} Å and shape {tuple(level.shape)}; list the full-resolution array "
                "first in the multiscales datasets")
    return {"levels": levels, "voxel_size": tuple(float(v) for v in scales[0]),
            "origin": tuple(float(v) for v in shifts[0]),
            "scales": [tuple(float(v) for v in s) for s in scales],
            "translations": [tuple(float(v) for v in t) for t in shifts],
            "version": version, "name": ms.get("name") or path.stem}


def read_omezarr(path, voxel_size=None):
    """The finest level of an OME-Zarr image as a :class:`core.io.Volume` whose ``data`` is a
    :class:`LazyZarrArray` (nothing read yet); voxel size (Å) and origin from the metadata,
    ``voxel_size`` (Å, one number or Z Y X) overriding the size."""
    from .volume import Volume, _usable_voxel

    path = Path(os.fspath(path))
    pyramid = omezarr_levels(path)
    voxel = pyramid["voxel_size"]
    if voxel_size is not None:
        voxel = _usable_voxel(voxel, path, voxel_size)
    return Volume(data=LazyZarrArray(pyramid["levels"][0], path), voxel_size=voxel,
                  origin=pyramid["origin"], path=path, header_voxel_size=pyramid["voxel_size"])


def check_same_voxel(a, b, what: str = "half tomograms", rtol: float = 1e-3) -> None:
    """Both volumes must have one voxel size (within ``rtol``); say both and the fix."""
    va, vb = (np.asarray(v.voxel_size, dtype=np.float64) for v in (a, b))
    if not np.allclose(va, vb, rtol=rtol, atol=0):
        fmt = lambda v: "×".join(f"{x:g}" for x in v)  # noqa: E731
        raise DDWError(f"the two {what} have different voxel sizes {fmt(va)} Å and {fmt(vb)} Å; "
                       "they must come from the same tilt series at the same binning")
