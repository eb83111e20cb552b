"""A volume as read (any format): its array, voxel size and origin, and the voxel-size rule
shared by the MRC and OME-Zarr readers (:mod:`.mrc`, :mod:`.omezarr`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DDWError


@dataclass
class Volume:
    """A 3D array with its voxel size and origin (both in Å, (Z, Y, X) order)."""

    data: np.ndarray
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    path: Path | None = None
    header_voxel_size: tuple[float, float, float] | None = None  # as the header says (Å)
    header_notes: tuple[str, ...] = ()  # what was unusual when it was read permissively


class VoxelSizeWarning(UserWarning):
    """The header holds no usable voxel size (0 Å); 1 Å was assumed. Pass ``voxel_size=``."""


def _usable_voxel(header_voxel, path: Path, override) -> tuple[float, float, float]:
    """Voxel size (Z, Y, X) in Å: the override, else the header's, zeros filled from X/Y."""
    import warnings

    if override is not None:
        if np.isscalar(override) or np.ndim(override) == 0:
            override = (float(override),) * 3
        values = tuple(float(v) for v in override)
        if len(values) != 3 or min(values) <= 0 or not all(np.isfinite(values)):
            raise DDWError(f"voxel size override {override!r} must be one positive number in Å "
                           "(or three, Z Y X)")
        return values
    z, y, x = (float(v) if np.isfinite(v) else 0.0 for v in header_voxel)
    inplane = x if x > 0 else y
    if inplane <= 0:
        warnings.warn(VoxelSizeWarning(
            f"{path.name}: the header gives no voxel size (0 Å); 1 Å is assumed. Give the real "
            "one (voxel_size=…, --voxel-size in the command line)"), stacklevel=3)
        return (1.0, 1.0, 1.0)
    # an image stack often has Z cell 0 or 1 section: take the in-plane size for Z and for Y
    return (z if z > 0 else inplane, y if y > 0 else inplane, inplane)
