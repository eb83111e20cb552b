"""A tilt series with its angles: the angles a user gave (a file of any metadata kind, a
range, a list, or the file beside the stack) resolved against the stack
(:func:`.tilt_metadata.resolve_tilt_metadata`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DDWError
from .angles import ANGLE_SUFFIXES, read_tlt
from .mrc import TiltSeries, read_mrc
from .tilt_formats import read_metadata_file
from . import tilt_metadata  # called through the module: one resolving function, seen by tests


def read_angles(path) -> np.ndarray:
    """Tilt angles (degrees, in the order the file lists the views it keeps) of one file.

    IMOD ``.tlt``/``.rawtlt`` (one angle per line, :func:`.angles.read_tlt`); any other metadata kind
    (:mod:`.tilt_formats`: ``.mdoc``, ``.aln``, Warp ``.xml``/``.tomostar``, RELION
    ``.star``) through its parser, without the views it marks excluded.
    """
    path = Path(path)
    if not path.exists():
        raise DDWError(f"{path}: angle file not found; check the path")
    if path.suffix.lower() in ANGLE_SUFFIXES:
        return read_tlt(path)
    listed = read_metadata_file(path)
    kept = [i for i in range(listed.angles.size) if i + 1 not in listed.excluded]
    return listed.angles[kept]


def find_angle_file(stack_path) -> Path | None:
    """The angle or metadata file beside a stack (same stem, also without ``_EVN``/``_ODD``):
    ``.tlt`` (preferred), ``.rawtlt``, ``.aln``, Warp ``.xml``, ``.tomostar``, ``.mdoc``,
    RELION ``.star`` (:func:`core.io.tilt_metadata.find_metadata_file`)."""
    return tilt_metadata.find_metadata_file(stack_path)


def resolve_angles(angles, n_tilts: int, stack_path=None, *, exclude=None) -> np.ndarray:
    """Turn what the user gave into an angle array of length ``n_tilts``.

    ``angles`` may be an array/list, a path to any angle/metadata file
    (:mod:`core.io.tilt_metadata`), a ``(min, max, step)`` tuple, or ``None`` (then a file beside
    ``stack_path`` is used). Resolved by :func:`core.io.tilt_metadata.resolve_tilt_metadata`; a
    stack that still holds excluded views needs :func:`load_tilt_series` (which drops them).
    """
    meta = tilt_metadata.resolve_tilt_metadata(angles, n_tilts, stack_path, exclude=exclude)
    if meta.keep is not None:
        raise DDWError(
            f"the stack holds {n_tilts} views of which {len(meta.excluded)} "
            f"({', '.join(map(str, meta.excluded))}) are excluded; load it with its metadata "
            "so they are dropped, or remove them from the stack")
    return meta.angles


def load_tilt_series(path, angles=None, tilt_axis_x: bool = False, *, exclude=None,
                     voxel_size=None, ctf=None) -> TiltSeries:
    """Read an aligned tilt series and its angles (see :func:`resolve_tilt_metadata`).

    ``tilt_axis_x`` transposes Y and X for stacks whose tilt axis runs along X. ``exclude``:
    1-based views left out (list, ``"1,2,40"`` or an IMOD ``.com``); views the metadata marks
    excluded that the stack still holds are dropped. ``voxel_size`` (Å) overrides the header.
    ``series.meta["tilt_metadata"]`` is the :class:`~core.io.tilt_metadata.TiltMetadata`;
    ``ctf`` (``"auto"``, a file, a ``CTFRequest``; ``None``: none) puts the views' CTF in
    ``series.meta["ctf"]`` (a :class:`~core.ctf.ViewCTF`, or ``None`` when none was found).
    """
    vol = read_mrc(path, voxel_size=voxel_size)
    data = vol.data
    meta = tilt_metadata.resolve_tilt_metadata(angles, data.shape[0], stack_path=path, exclude=exclude,
                                 frame_shape=data.shape[1:], ctf=ctf)
    if meta.keep is not None:
        data = data[meta.keep]
    if tilt_axis_x:
        data = np.swapaxes(data, 1, 2)
    pixel = vol.voxel_size[2 if not tilt_axis_x else 1]
    extra = {}
    if ctf is not None:
        from .ctf_formats import check_pixel_size

        check_pixel_size(meta.ctf, float(pixel))
        extra["ctf"] = meta.ctf
        if tilt_axis_x and meta.ctf is not None:  # X and Y swapped: α from X becomes 90° − α
            from dataclasses import replace

            extra["ctf"] = replace(meta.ctf, astigmatism_angle=90.0 - meta.ctf.astigmatism_angle)
    return TiltSeries(
        data=data, angles=meta.angles, pixel_size=float(pixel), origin=vol.origin,
        name=Path(path).stem, meta={"tilt_metadata": meta, **extra},
    )
