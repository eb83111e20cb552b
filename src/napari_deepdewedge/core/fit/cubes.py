"""Sub-tomograms for fitting (docs/method.md §2.4).

Cubes are cut from the two half tomograms on one 3D grid, at the *extraction* edge
``E = ceil_even(√2·s)`` so that any rotation of a cube can still be centre-cropped to the
network edge ``s`` (:func:`core.model.rotation.rotate_center_crop`). They stay in memory as tensors;
nothing is written to disk.

Grid placement, per axis of length ``N``: corners ``0, t, 2t, …`` while the cube fits, plus a
last cube flush with the far edge (corner ``N − E``) when the regular grid does not end there,
so the whole volume is covered. ``corner`` is the index of the cube's first voxel.

Default strides (:func:`default_strides`): one stride ``t`` for all axes, the *largest* ``t`` in
``[ceil(s/2), s]`` that gives at least :data:`TARGET_CUBES` (150) cubes — good results were
reported from about 150 cubes of 96³ upward. Volumes too small for that get ``t = ceil(s/2)``:
denser grids than half the crop size mostly repeat the same voxels (the fitted crops of two
neighbours would share more than half their extent along an axis) and cost memory
without adding information.

ROI mask: a cube is kept when at least ``min_mask_fraction`` of the voxels of its extraction
cube (``E³``) are inside the mask (``mask > 0``).

Storage: both halves of each cube side by side, ``(N, 2, E, E, E)`` channels-last
(:class:`SubtomoSet`), with ``fit0``/``fit1`` as views.

Validation: ``round(val_fraction · n)`` cubes (at least 1 when ``val_fraction > 0`` and there
are ≥ 2 cubes; never all of them) chosen with ``numpy.random.default_rng(seed)``, each with a
fixed random rotation drawn from ``torch.Generator().manual_seed(seed)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DDWError
from ..reconstruct.halves import check_same_shape
from ..model.rotation import random_rotations

#: Number of cubes :func:`default_strides` aims for.
TARGET_CUBES = 150


def extraction_size(s: int) -> int:
    """Edge of the extracted cube: the smallest even integer ≥ √2·s (room for any rotation)."""
    s = int(s)
    if s < 1:
        raise DDWError(f"sub-tomogram size must be positive, got {s}")
    e = math.ceil(math.sqrt(2.0) * s)
    return e + (e % 2)


def grid_corners_1d(n: int, e: int, stride: int) -> list[int]:
    """Corners along one axis of length ``n`` for cubes of edge ``e``; last one flush with the end."""
    if n < e:
        return []
    corners = list(range(0, n - e + 1, stride))
    if corners[-1] != n - e:
        corners.append(n - e)
    return corners


def _as_triple(value, what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * 3
    try:
        value = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise DDWError(f"{what} must be one integer or three integers (Z, Y, X), got {value!r}") from None
    if len(value) != 3:
        raise DDWError(f"{what} must be one integer or three integers (Z, Y, X), got {value!r}")
    return value


def _count(shape, e: int, strides) -> int:
    return math.prod(len(grid_corners_1d(int(n), e, int(t))) for n, t in zip(shape, strides))


def default_strides(shape, s: int) -> tuple[int, int, int]:
    """Strides ``(t, t, t)`` for a volume of ``shape`` and crop size ``s`` (see the module doc)."""
    shape = _as_triple(shape, "volume shape")
    s = int(s)
    e = extraction_size(s)
    t_min = max(1, math.ceil(s / 2))
    for t in range(max(s, t_min), t_min - 1, -1):
        if _count(shape, e, (t, t, t)) >= TARGET_CUBES:
            return (t, t, t)
    return (t_min, t_min, t_min)


@dataclass
class SubtomoSet:
    """Fitting and validation cubes of both halves.

    Storage: ``fit_pairs``/``val_pairs`` of shape ``(N, 2, E, E, E)`` float32, channel 0 = half 0,
    channel 1 = half 1, in channels-last memory (both halves of a voxel adjacent): the layout
    :func:`core.model.rotation.rotate_center_crop` reads fastest, in place, with ``index=``.
    ``fit0``, ``fit1``, ``val0``, ``val1`` are ``(N, 1, E, E, E)`` *views* of the pairs, so writing
    into ``fit0`` (e.g. ``sub.fit0[i] = updated`` or ``sub.fit0.copy_(new)``) updates the pairs.
    Being views, they keep the whole pair store alive and ``torch.save`` of one of them writes the
    whole store: save ``sub.fit0.contiguous()`` (or ``.clone()``) to store one half only.
    """

    fit_pairs: torch.Tensor
    val_pairs: torch.Tensor
    fit_corners: torch.Tensor  # (N, 3) int64, (z, y, x) index of each cube's first voxel
    val_corners: torch.Tensor  # (Nv, 3) int64
    val_rotations: torch.Tensor  # (Nv, 3, 3) float32, fixed per validation cube
    subtomo_size: int
    extraction_size: int
    strides: tuple[int, int, int]
    volume_shape: tuple[int, int, int]

    @property
    def fit0(self) -> torch.Tensor:
        return self.fit_pairs[:, 0:1]

    @property
    def fit1(self) -> torch.Tensor:
        return self.fit_pairs[:, 1:2]

    @property
    def val0(self) -> torch.Tensor:
        return self.val_pairs[:, 0:1]

    @property
    def val1(self) -> torch.Tensor:
        return self.val_pairs[:, 1:2]

    @property
    def n_fit(self) -> int:
        return int(self.fit_pairs.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_pairs.shape[0])

    def to(self, device) -> "SubtomoSet":
        """The same set with every tensor on ``device`` (layouts kept)."""
        kw = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device)
        return SubtomoSet(**kw)


def _nearest_valid(s: int, m: int) -> tuple[int, int]:
    lo = max(2 * m, (s // m) * m)
    hi = max(2 * m, lo + m if lo < s else lo)
    if lo > s:
        lo = hi
    return lo, hi


def _check_volume(t, name: str) -> np.ndarray:
    arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    if arr.ndim != 3:
        raise DDWError(f"{name} must be a 3D tomogram (Z, Y, X), got shape {arr.shape}")
    if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise DDWError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise DDWError(
            f"{name} contains {bad} NaN/inf voxels; fix the reconstruction or replace them "
            "(e.g. numpy.nan_to_num) before fitting"
        )
    if arr.size == 0 or arr.min() == arr.max():
        raise DDWError(
            f"{name} is constant (every voxel is the same value); it holds no signal — check that the "
            "right file/layer was chosen and that the reconstruction worked"
        )
    return arr


def _mask_fractions(mask: np.ndarray, corners, e: int) -> np.ndarray:
    """Fraction of each cube's E³ voxels inside the mask, without a full-volume summed table."""
    zs = sorted({c[0] for c in corners})
    frac = {}
    for z in zs:
        slab = np.count_nonzero(mask[z:z + e], axis=0).astype(np.int64)  # (Y, X)
        table = np.zeros((slab.shape[0] + 1, slab.shape[1] + 1), dtype=np.int64)
        table[1:, 1:] = slab.cumsum(0).cumsum(1)
        for c in corners:
            if c[0] != z:
                continue
            y, x = c[1], c[2]
            total = table[y + e, x + e] - table[y, x + e] - table[y + e, x] + table[y, x]
            frac[c] = total / float(e**3)
    return np.array([frac[c] for c in corners], dtype=np.float64)


def extract_subtomos(
    tomo0,
    tomo1,
    subtomo_size: int,
    *,
    strides=None,
    mask=None,
    min_mask_fraction: float = 0.3,
    val_fraction: float = 0.1,
    seed: int = 0,
    device=None,
    depth: int = 3,
) -> SubtomoSet:
    """Cut both halves into cubes of edge ``extraction_size(subtomo_size)`` on one grid.

    ``tomo0``/``tomo1``: ``(Z, Y, X)`` arrays (numpy, memory-mapped or torch). ``strides``: one
    int or ``(Z, Y, X)``; ``None`` → :func:`default_strides`. ``mask``: optional ROI of the same
    shape (``> 0`` = inside). ``depth``: the U-Net depth, ``subtomo_size`` must be a multiple of
    ``2**depth`` (and at least ``2·2**depth``). ``device``: where the tensors go (``None`` = CPU).
    Raises :class:`DDWError` for anything the user can fix.
    """
    s = int(subtomo_size)
    depth = int(depth)
    m = 2**depth
    if s % m or s < 2 * m:
        lo, hi = _nearest_valid(s, m)
        sizes = f"{lo}" if lo == hi else f"{lo} or {hi}"
        raise DDWError(
            f"sub-tomogram size {s} is not usable with a U-Net of depth {depth}: it must be a multiple of "
            f"{m} (2**depth) and at least {2 * m}; use {sizes}"
        )
    a0 = _check_volume(tomo0, "tomogram half 0")
    a1 = _check_volume(tomo1, "tomogram half 1")
    check_same_shape(a0, a1, what="half tomograms")
    shape = tuple(int(n) for n in a0.shape)
    e = extraction_size(s)
    if min(shape) < e:
        fits = [k for k in range(2 * m, s, m) if extraction_size(k) <= min(shape)]
        fix = (
            f"use a sub-tomogram size of at most {fits[-1]} (extracted at {extraction_size(fits[-1])})"
            if fits
            else f"the volume is too small even for the smallest size {2 * m}; use a larger volume or smaller depth"
        )
        raise DDWError(
            f"tomogram of shape {shape} (Z, Y, X) is smaller than one extraction cube of edge {e} "
            f"(= ceil_even(√2·{s})) along axis {'ZYX'[int(np.argmin(shape))]}; {fix}"
        )
    strides = default_strides(shape, s) if strides is None else _as_triple(strides, "strides")
    if any(t < 1 for t in strides):
        raise DDWError(f"strides must be positive integers, got {strides}; e.g. {default_strides(shape, s)}")
    mmf = float(min_mask_fraction)
    if not 0.0 <= mmf <= 1.0:
        raise DDWError(f"min_mask_fraction must be between 0 and 1, got {mmf}; the default is 0.3")
    vf = float(val_fraction)
    if not 0.0 <= vf < 1.0:
        raise DDWError(f"val_fraction must be in [0, 1), got {vf}; the default is 0.1")

    per_axis = [grid_corners_1d(n, e, t) for n, t in zip(shape, strides)]
    corners = [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]

    if mask is not None:
        mk = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if tuple(mk.shape) != shape:
            raise DDWError(
                f"mask shape {tuple(mk.shape)} differs from the tomogram shape {shape}; "
                "draw or load the mask on the same (binned) tomogram"
            )
        fractions = _mask_fractions(mk > 0, corners, e)
        n_before = len(corners)
        corners = [c for c, f in zip(corners, fractions) if f >= mmf]
        if not corners:
            raise DDWError(
                f"no sub-tomogram is at least {mmf:.0%} inside the mask (best: {fractions.max():.1%} "
                f"of {n_before} cubes of edge {e}); enlarge the mask, lower min_mask_fraction, "
                "or use a smaller sub-tomogram size"
            )

    n = len(corners)
    n_val = 0
    if vf > 0 and n >= 2:
        n_val = min(max(1, int(round(vf * n))), n - 1)
    rng = np.random.default_rng(int(seed))
    val_idx = np.sort(rng.choice(n, size=n_val, replace=False)) if n_val else np.zeros(0, dtype=np.int64)
    is_val = np.zeros(n, dtype=bool)
    is_val[val_idx] = True
    fit_c = [c for c, v in zip(corners, is_val) if not v]
    val_c = [c for c, v in zip(corners, is_val) if v]

    dev = torch.device("cpu") if device is None else torch.device(device)

    def cut(cs):
        # (n, E, E, E, 2) contiguous == (n, 2, E, E, E) channels-last after the permute
        store = torch.empty((len(cs), e, e, e, 2), dtype=torch.float32, device=dev)
        for i, (z, y, x) in enumerate(cs):
            block = np.stack([a0[z:z + e, y:y + e, x:x + e], a1[z:z + e, y:y + e, x:x + e]], axis=-1)
            store[i] = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(dev)
        return store.permute(0, 4, 1, 2, 3)

    def corner_tensor(cs):
        return torch.tensor(cs, dtype=torch.int64, device=dev).reshape(len(cs), 3)

    val_rot = random_rotations(n_val, generator=torch.Generator().manual_seed(int(seed)))
    return SubtomoSet(
        fit_pairs=cut(fit_c),
        val_pairs=cut(val_c),
        fit_corners=corner_tensor(fit_c),
        val_corners=corner_tensor(val_c),
        val_rotations=val_rot.to(dev),
        subtomo_size=s,
        extraction_size=e,
        strides=tuple(int(t) for t in strides),
        volume_shape=shape,
    )
