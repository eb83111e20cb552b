"""Half pairs for fitting and the memory model of their cubes (no torch import here).

:class:`HalfPair` is one tomogram's even/odd halves with its own tilt range, ROI mask and
metadata (``pipeline.fitting.HalfPair``). Memory model: one stored cube pair is
``2·E³·4`` bytes (both halves, float32, ``E = ceil_even(√2·s)``); a tomogram costs
``n_cubes · 2·E³·4`` bytes, ``n_cubes`` from its cube grid (:func:`estimate_cubes`; an upper
bound when an ROI mask drops cubes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import DDWError


@dataclass(kw_only=True)
class HalfPair:
    """One tomogram's even/odd halves ``(Z, Y, X)`` (memory maps stay lazy), its own tilt range
    ``(min, max)`` in degrees, optional ROI ``mask``, ``name`` (stem of the even file), file
    paths (recorded in the checkpoint) and voxel size ``(Z, Y, X)`` Å."""

    even: object
    odd: object
    tilt_range: tuple[float, float]
    mask: object = None
    name: str = ""
    even_path: str | None = None
    odd_path: str | None = None
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    mask_source: object = None  # what made the mask (pipeline.masks): recorded in the checkpoint
    # the halves' CTF (the CTF-aware loss, core.fit.ctf_envelope): {"even": record, "odd": record,
    # "pixel_size": Å, "phase_flipped": bool} with core.ctf.ctf_record()s; recorded in the checkpoint
    ctf: dict | None = None

    def record(self) -> dict:
        """The checkpoint's ``inputs`` entry of this pair (``mask``: the mask's source, if any)."""
        extra = {} if self.mask_source is None else {"mask": self.mask_source}
        if self.ctf:
            extra["ctf"] = self.ctf
        return {**extra, "name": str(self.name), "even_path": None if self.even_path is None else str(self.even_path),
                "odd_path": None if self.odd_path is None else str(self.odd_path),
                "shape": [int(n) for n in np.shape(self.even)],
                "tilt_range": [float(v) for v in self.tilt_range],
                "voxel_size": [float(v) for v in self.voxel_size]}


def check_pairs(pairs) -> list[HalfPair]:
    """The pairs as a non-empty list with arrays of one 3D shape per pair and valid tilt ranges."""
    from ..reconstruct.halves import check_same_shape

    pairs = list(pairs or [])
    if not pairs:
        raise DDWError("no half pairs to fit on: give at least one even/odd pair")
    out = []
    for k, p in enumerate(pairs):
        label = f"pair {k + 1}" + (f" ({p.name})" if p.name else "")
        even, odd = (a if isinstance(a, np.memmap) or getattr(a, "lazy_bands", False)
                     else np.asarray(a) for a in (p.even, p.odd))  # lazy arrays stay lazy
        if even.ndim != 3:
            raise DDWError(f"{label}: the half tomograms must be 3D (Z, Y, X), got shape {tuple(even.shape)}")
        check_same_shape(even, odd, what=f"half tomograms of {label}")
        mask = None if p.mask is None else np.asarray(p.mask)
        if mask is not None:
            check_same_shape(even, mask, what=f"tomogram and ROI mask of {label}")
        lo, hi = (float(v) for v in p.tilt_range)
        if not -90 < lo < hi < 90:
            raise DDWError(f"{label}: tilt range [{lo}, {hi}] is invalid: need -90 < min < max < 90 degrees")
        out.append(HalfPair(even=even, odd=odd, tilt_range=(lo, hi), mask=mask, name=p.name,
                            even_path=p.even_path, odd_path=p.odd_path,
                            voxel_size=tuple(float(v) for v in p.voxel_size),
                            mask_source=getattr(p, "mask_source", None), ctf=getattr(p, "ctf", None)))
    return out


# --------------------------------------------------------------------------------------------
# memory model
# --------------------------------------------------------------------------------------------
def cube_pair_bytes(subtomo_size: int) -> int:
    """Bytes of one stored cube pair: both halves, float32, at the extraction edge E."""
    from .cubes import extraction_size

    return 2 * extraction_size(subtomo_size) ** 3 * 4


def estimate_cubes(shape, subtomo_size: int, strides=None) -> int:
    """Cubes the grid cuts from a volume of ``shape`` (before an ROI mask removes some)."""
    from .cubes import default_strides, extraction_size, grid_corners_1d

    e = extraction_size(subtomo_size)
    t = default_strides(shape, subtomo_size) if strides is None else tuple(strides)
    return math.prod(len(grid_corners_1d(int(n), e, int(k))) for n, k in zip(shape, t))


def memory_estimate(shapes, subtomo_size: int, strides=None) -> dict:
    """``{"bytes_per_cube", "cubes": [per pair], "bytes": [per pair], "total_bytes"}``."""
    per_cube = cube_pair_bytes(subtomo_size)
    cubes = [estimate_cubes(tuple(shape), subtomo_size, strides) for shape in shapes]
    sizes = [n * per_cube for n in cubes]
    return {"bytes_per_cube": per_cube, "cubes": cubes, "bytes": sizes, "total_bytes": sum(sizes)}
