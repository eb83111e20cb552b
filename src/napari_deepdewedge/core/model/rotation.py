"""Random rotations and batched rotate-and-crop of sub-tomograms (docs/method.md §2.4, §2.5, §2.10).

Conventions (docs/architecture.md): a rotation is a ``(3, 3)`` matrix ``R`` acting on column
vectors in ``(z, y, x)`` order; index ``i`` of an axis of length ``N`` sits at the centred
coordinate ``i - N // 2``; rotating a volume means ``v_R(p) = v(Rᵀ p)``. Its spectrum rotates
the same way, so the observed-mask of the rotated volume is ``M_R(k) = M(Rᵀ k)``
(:func:`napari_deepdewedge.core.fourier.rotated_observed_masks`).

:func:`rotate_center_crop` samples only the ``s³`` output voxels: output voxel ``j`` (centred
``p = j - s // 2``) reads the input at centred ``Rᵀ p``, i.e. at input index ``Rᵀ p + E // 2``.
With ``R = I`` this is exactly the centre crop ``cube[E//2 - s//2 : E//2 - s//2 + s]`` on every
axis, so rotation centre and crop centre agree.
"""
from __future__ import annotations

import functools

import torch

from ..errors import DDWError


def random_rotations(n: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """``n`` rotation matrices drawn uniformly (Haar measure) from SO(3), shape ``(n, 3, 3)``.

    A 4-vector of independent standard normals, normalized, is a uniformly distributed unit
    quaternion; its rotation matrix is therefore uniform on SO(3). The draw happens on the
    generator's device (CPU without a generator) in float64 and is then moved to
    ``device``/``dtype``, so a seeded CPU generator gives the same rotations on every device.
    """
    n = int(n)
    if n < 0:
        raise DDWError(f"number of rotations must be >= 0, got {n}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    q = torch.randn(n, 4, generator=generator, device=gen_device, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    w, a, b, c = q.unbind(dim=1)  # scalar part w, vector part (a, b, c) on axes (0, 1, 2)
    rot = torch.stack(
        [
            1 - 2 * (b * b + c * c), 2 * (a * b - c * w), 2 * (a * c + b * w),
            2 * (a * b + c * w), 1 - 2 * (a * a + c * c), 2 * (b * c - a * w),
            2 * (a * c - b * w), 2 * (b * c + a * w), 1 - 2 * (a * a + b * b),
        ],
        dim=1,
    ).reshape(n, 3, 3)
    return rot.to(device=device if device is not None else gen_device, dtype=dtype)


def _as_size3(size) -> tuple[int, int, int]:
    if isinstance(size, int):
        return (size, size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 3:
        raise DDWError(f"crop size must be an int or three ints (Z, Y, X), got {size}")
    return size


def sampling_grid(in_shape, rotations: torch.Tensor, size) -> torch.Tensor:
    """The ``grid_sample`` grid ``(B, s, s, s, 3)`` (last axis ``(x, y, z)``, align_corners=True).

    Output voxel ``j`` (centred ``p = j - s//2``) maps to input index ``Rᵀ p + E//2``, normalized
    as ``2·index/(E - 1) - 1``. Built separably — ``Rᵀ p = pz·R[0, :] + py·R[1, :] + px·R[2, :]``,
    one broadcast term per output axis — in a ``(B, 3, s, s, s)`` buffer (fast broadcasting over
    the contiguous last axis) that is returned as a permuted view.
    """
    sz = _as_size3(size)
    device, dtype = rotations.device, rotations.dtype
    B = rotations.shape[0]
    # normalization folded into the rotation: column i (input axis i) scaled by 2/(E_i - 1);
    # columns reordered to grid_sample's (x, y, z)
    scale = torch.tensor([2.0 / (float(n) - 1.0) for n in in_shape], device=device, dtype=dtype)
    offset = torch.tensor(
        [2.0 * float(n // 2) / (float(n) - 1.0) - 1.0 for n in in_shape], device=device, dtype=dtype
    ).flip(-1)
    rows = (rotations * scale).flip(-1)  # rows[b, j, :] = (R[b, j, x], R[b, j, y], R[b, j, z]) * scale
    az, ay, ax = (torch.arange(n, device=device, dtype=dtype) - (n // 2) for n in sz)
    zy = az.view(1, 1, -1, 1, 1) * rows[:, 0].reshape(B, 3, 1, 1, 1) + ay.view(1, 1, 1, -1, 1) * rows[:, 1].reshape(
        B, 3, 1, 1, 1
    )
    x = ax.view(1, 1, 1, 1, -1) * rows[:, 2].reshape(B, 3, 1, 1, 1) + offset.view(1, 3, 1, 1, 1)
    grid = torch.empty((B, 3, *sz), device=device, dtype=dtype)
    torch.add(zy, x, out=grid)
    return grid.permute(0, 2, 3, 4, 1)


def stack_channels_last(*cubes: torch.Tensor) -> torch.Tensor:
    """Stack ``(B, 1, E, E, E)`` tensors as channels of one ``(B, n, E, E, E)`` tensor whose
    memory is channels-last (the channels of a voxel are adjacent).

    ``rotate_center_crop`` on such a pair (cube0, cube1) is markedly faster on the CPU than on
    a ``torch.cat`` of the two (every trilinear corner then fetches both halves from one cache
    line), and the copy costs the same as ``torch.cat``.
    """
    if not cubes:
        raise DDWError("stack_channels_last needs at least one tensor")
    if any(c.ndim != 5 or c.shape[1] != 1 for c in cubes):
        raise DDWError(f"stack_channels_last expects (B, 1, Z, Y, X) tensors, got {[tuple(c.shape) for c in cubes]}")
    return torch.stack([c[:, 0] for c in cubes], dim=-1).permute(0, 4, 1, 2, 3)


def rotate_center_crop(
    cubes: torch.Tensor, rotations: torch.Tensor, size, *, index=None, padding_mode: str = "zeros"
) -> torch.Tensor:
    """Rotate every cube about its centre and crop its centre ``size³`` in one resampling.

    ``cubes``: ``(B, C, Ez, Ey, Ex)``; ``rotations``: ``(B, 3, 3)`` (one per cube, shared by its
    channels, so stacking cube0 and cube1 as two channels rotates both identically). Returns
    ``(B, C, s, s, s)`` with ``out[b, :, j] = cubes[b, :](Rᵀ (j - s//2) + E//2)`` by trilinear
    interpolation (``grid_sample``, ``align_corners=True`` so integer positions are voxel
    centres). Points outside the input read ``padding_mode`` (zeros by default; with an
    extraction edge ``ceil_even(√2·s)`` only the corners of the output can fall outside).

    ``index``: optional ``(B,)`` integer indices into a larger store ``cubes`` of shape
    ``(N, C, E, E, E)``; sample ``b`` then reads ``cubes[index[b]]``. The store is read in place
    (one ``grid_sample`` per sample on a view), so no batch copy of the large cubes is made —
    the cheapest way to feed the fitting loop, especially with a channels-last pair store
    (:func:`stack_channels_last`, ``SubtomoSet.fit_pairs``). Same result as
    ``rotate_center_crop(cubes[index], rotations, size)``.
    """
    if cubes.ndim != 5:
        raise DDWError(f"cubes must have shape (B, C, Z, Y, X), got {tuple(cubes.shape)}")
    n_out = cubes.shape[0] if index is None else len(index)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3) or rotations.shape[0] != n_out:
        raise DDWError(
            f"rotations must have shape ({n_out}, 3, 3) (one per output cube), got {tuple(rotations.shape)}"
        )
    if any(n < 2 for n in cubes.shape[2:]):
        raise DDWError(f"cubes must be at least 2 voxels along every axis, got {tuple(cubes.shape[2:])}")
    dtype = cubes.dtype if cubes.dtype in (torch.float32, torch.float64) else torch.float32
    rot = rotations.to(device=cubes.device, dtype=dtype)
    grid = sampling_grid(cubes.shape[2:], rot, size)
    src = cubes.to(dtype)
    if index is None:
        out = torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
        return out.to(cubes.dtype)
    n_store = cubes.shape[0]
    idx = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
    if any(i < -n_store or i >= n_store for i in idx):
        raise DDWError(f"index {idx} is out of range for a store of {n_store} cubes")
    idx = [i % n_store for i in idx]
    parts = [
        torch.nn.functional.grid_sample(
            src[i:i + 1], grid[b:b + 1], mode="bilinear", padding_mode=padding_mode, align_corners=True
        )
        for b, i in enumerate(idx)
    ]
    out = torch.cat(parts) if parts else grid.new_zeros((0, cubes.shape[1], *grid.shape[1:4]))
    return out.to(cubes.dtype)


# --------------------------------------------------------------------------------------------
# matching the resampling statistics at inference
# --------------------------------------------------------------------------------------------
#: Trilinear resampling at a uniformly random sub-voxel offset passes white noise with the mean
#: power transfer 2/3 + cos(k)/3 per axis (1 at DC, 1/3 at Nyquist): every fitting input and
#: target has been through it (a random rotation), so the network only ever sees noise whose
#: variance is ~30 % of the raw tomogram's. Un-rotated data (refinement, previews, wedge
#: updates) go through this symmetric 3-tap filter first; its power response
#: (d + 2c·cos k)² equals 2/3 + cos(k)/3 at k = 0 and at Nyquist and stays within 7 % between,
#: so the network sees the statistics it was fitted on.
RESAMPLING_MATCH_TAPS = ((1.0 - 3.0 ** -0.5) / 4.0, (1.0 + 3.0 ** -0.5) / 2.0)  # (c, d)


#: Resampling kinds for rotating fitting cubes (``FitConfig.resampling``): ``"trilinear"``
#: (``grid_sample``, the default) or ``"bspline3"`` (cubic B-spline, like the original
#: DeepDeWedge; :func:`bspline_prefilter` once per cube, then :func:`rotate_center_crop_bspline`).
RESAMPLING_KINDS = ("trilinear", "bspline3")
#: The matching filter each kind needs for un-rotated inputs (recorded in checkpoints).
MATCHING_FILTERS = {"trilinear": "trilinear-3tap", "bspline3": "bspline3-9tap"}


def check_resampling(kind: str) -> str:
    """``kind`` if it is one of :data:`RESAMPLING_KINDS`, else :class:`DDWError`."""
    if kind not in RESAMPLING_KINDS:
        raise DDWError(f"unknown resampling '{kind}'; choose one of {', '.join(RESAMPLING_KINDS)}")
    return kind


def bspline3_mean_power(k):
    """Mean power transfer per axis of cubic B-spline interpolation (prefilter + sampling) at a
    uniformly random sub-voxel offset, at angular frequency ``k`` (radians/voxel).

    The sampling weights at offset ``t`` are ``β³(t − j)``; averaged over ``t`` their
    autocorrelation is ``β⁷`` at the integers, so ``E|Σ_j β³(t−j) e^{ikj}|² = B₇(k) =
    (2416 + 2·1191 cos k + 2·120 cos 2k + 2 cos 3k)/5040``, and the prefilter divides the
    amplitude by ``B₃(k) = (4 + 2 cos k)/6``: ``P(k) = B₇(k)/B₃(k)²`` — 1 at DC, 0.97 at half
    Nyquist, 0.486 at Nyquist (trilinear: ``B₃(k)`` itself, 0.667 and 0.333)."""
    import numpy as np

    k = np.asarray(k, dtype=np.float64)
    b7 = (2416 + 2 * 1191 * np.cos(k) + 240 * np.cos(2 * k) + 2 * np.cos(3 * k)) / 5040
    b3 = (4 + 2 * np.cos(k)) / 6
    return b7 / b3**2


@functools.lru_cache(maxsize=None)
def bspline3_match_taps() -> tuple[float, ...]:
    """Symmetric 9-tap filter ``(a4, a3, a2, a1, a0, a1, …)``, returned as ``(a0, …, a4)``, whose
    amplitude ``a0 + 2 Σ a_j cos(jk)`` is the least-squares fit to ``√P(k)``
    (:func:`bspline3_mean_power`), scaled to 1 at DC; its power is within 3.3 % of ``P``
    everywhere on ``[0, π]``. (A 3-tap filter, enough for trilinear, misses ``P`` by 25 %.)"""
    import numpy as np

    k = np.linspace(0.0, np.pi, 2001)
    basis = np.stack([np.ones_like(k)] + [2 * np.cos(j * k) for j in range(1, 5)], axis=1)
    taps, *_ = np.linalg.lstsq(basis, np.sqrt(bspline3_mean_power(k)), rcond=None)
    taps = taps / (basis[0] @ taps)
    return tuple(float(t) for t in taps)


def _symmetric_fir_(y, taps, dim):
    """Filter ``y`` (already replicate-padded by ``len(taps) − 1`` on both sides of ``dim``) with
    the symmetric filter ``(…, taps[1], taps[0], taps[1], …)``; the padding is consumed."""
    r = len(taps) - 1
    n = y.shape[dim] - 2 * r
    out = taps[0] * y.narrow(dim, r, n)
    for j in range(1, r + 1):
        out = out + taps[j] * (y.narrow(dim, r - j, n) + y.narrow(dim, r + j, n))
    return out


def match_resampling(x, kind: str = "trilinear"):
    """Give un-rotated data the noise statistics of cubes rotated with ``kind``: a separable
    symmetric filter along Z, Y and X of ``x`` (``(..., Z, Y, X)`` tensor), edge-replicating
    boundaries. ``"trilinear"``: the 3-tap :data:`RESAMPLING_MATCH_TAPS`; ``"bspline3"``: the
    9-tap :func:`bspline3_match_taps`."""
    import torch.nn.functional as F

    check_resampling(kind)
    if kind == "trilinear":
        c, d = RESAMPLING_MATCH_TAPS
        taps = (d, c)
    else:
        taps = bspline3_match_taps()
    r = len(taps) - 1
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-3:])
    y = F.pad(y, (r, r, r, r, r, r), mode="replicate")
    for dim in (2, 3, 4):
        y = _symmetric_fir_(y, taps, dim)
    return y.reshape(shape)


# --------------------------------------------------------------------------------------------
# cubic B-spline resampling
# --------------------------------------------------------------------------------------------
def bspline_prefilter(x: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline coefficients of ``x`` along its last three axes (mirror boundaries, as
    ``scipy.ndimage.spline_filter(order=3, mode="mirror")``), on ``x``'s device.

    Per axis of length ``n`` the signal is mirrored to period ``2n − 2`` (whole-sample
    symmetric), so the exact inverse of the interpolating kernel ``(1, 4, 1)/6`` is a division
    by ``(4 + 2 cos k)/6`` in its DFT. Returns float32/float64 like ``x`` (a new tensor)."""
    import math as _math

    y = x if x.dtype in (torch.float32, torch.float64) else x.float()
    for dim in (-3, -2, -1):
        n = y.shape[dim]
        if n < 2:
            continue
        period = 2 * n - 2
        ext = torch.cat([y, y.flip(dim).narrow(dim, 1, n - 2)], dim=dim) if n > 2 else y
        spec = torch.fft.rfft(ext, dim=dim)
        k = torch.arange(spec.shape[dim], device=y.device, dtype=y.dtype) * (2 * _math.pi / period)
        inv = (6.0 / (4.0 + 2.0 * torch.cos(k))).reshape([-1] + [1] * (-dim - 1))
        y = torch.fft.irfft(spec * inv, n=period, dim=dim).narrow(dim, 0, n)
    return y.contiguous(memory_format=torch.channels_last_3d) if y.ndim == 5 else y.contiguous()


def _bspline3_weights(t: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline weights of the taps ``floor−1 … floor+2`` at fractional offset ``t``;
    shape ``t.shape + (4,)``."""
    u = 1.0 - t
    t2, t3 = t * t, t * t * t
    return torch.stack([u * u * u / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6], -1)


def _mirror(i: torch.Tensor, n: int) -> torch.Tensor:
    """Whole-sample mirror of integer indices into ``[0, n − 1]`` (period ``2n − 2``)."""
    period = 2 * n - 2
    i = torch.remainder(i, period)
    return torch.where(i > n - 1, period - i, i)


def rotate_center_crop_bspline(coeffs: torch.Tensor, rotations: torch.Tensor, size, *, index=None) -> torch.Tensor:
    """Like :func:`rotate_center_crop`, by cubic B-spline interpolation of the coefficients
    ``coeffs`` (``(N, C, E, E, E)`` from :func:`bspline_prefilter`, ideally channels-last).

    Output voxel ``j`` reads ``Σ β³(p − i)·coeffs[i]`` over the 4³ taps around ``p = Rᵀ(j −
    s//2) + E//2``; taps beyond the edge are mirrored (scipy's ``mode="mirror"``) and output
    points outside ``[0, E − 1]`` on any axis are zero, as with trilinear's zero padding. The
    store is gathered from in place (no copy of the cubes). ``index`` as there."""
    if coeffs.ndim != 5:
        raise DDWError(f"coefficients must have shape (N, C, Z, Y, X), got {tuple(coeffs.shape)}")
    n_store, C = coeffs.shape[:2]
    idx = torch.arange(n_store) if index is None else torch.as_tensor(index, dtype=torch.long).reshape(-1)
    B = len(idx)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3) or rotations.shape[0] != B:
        raise DDWError(f"rotations must have shape ({B}, 3, 3) (one per output cube), got {tuple(rotations.shape)}")
    if B and (int(idx.min()) < -n_store or int(idx.max()) >= n_store):
        raise DDWError(f"index {idx.tolist()} is out of range for a store of {n_store} cubes")
    idx = torch.remainder(idx, max(n_store, 1)).to(coeffs.device)
    dtype = coeffs.dtype if coeffs.dtype in (torch.float32, torch.float64) else torch.float32
    sz = _as_size3(size)
    shape = tuple(int(n) for n in coeffs.shape[2:])
    dev = coeffs.device
    rot = rotations.to(device=dev, dtype=dtype)
    axes = [torch.arange(n, device=dev, dtype=dtype) - (n // 2) for n in sz]
    q = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (s³, 3) centred (z, y, x)
    centre = torch.tensor([float(n // 2) for n in shape], device=dev, dtype=dtype)
    pos = q @ rot + centre  # (B, s³, 3): Rᵀ q + E//2 per output voxel
    inside = ((pos >= 0) & (pos <= torch.tensor(shape, device=dev, dtype=dtype) - 1)).all(-1)
    base = torch.floor(pos)
    w = _bspline3_weights(pos - base)  # (B, s³, 3, 4)
    base = base.long()
    offs = torch.arange(-1, 3, device=dev)
    taps = [_mirror(base[..., a, None] + offs, shape[a]) for a in range(3)]  # each (B, s³, 4)
    flat = coeffs.to(dtype).permute(0, 2, 3, 4, 1).reshape(-1, C)  # (N·E³, C); a view if channels-last
    cube0 = (idx * (shape[0] * shape[1] * shape[2])).view(B, 1, 1)
    yx = (taps[1][..., :, None] * shape[2] + taps[2][..., None, :]).reshape(B, -1, 16)
    wyx = (w[..., 1, :, None] * w[..., 2, None, :]).reshape(B, -1, 16)
    out = torch.zeros((B, q.shape[0], C), device=dev, dtype=dtype)
    for a in range(4):
        rows = cube0 + (taps[0][..., a, None] * (shape[1] * shape[2]) + yx)  # (B, s³, 16)
        vals = flat[rows.reshape(-1)].reshape(B, -1, 16, C)
        out += torch.einsum("bqt,bqtc->bqc", wyx * w[..., 0, a, None], vals)
    out = out * inside[..., None]
    return out.permute(0, 2, 1).reshape(B, C, *sz).to(coeffs.dtype)


def rotate_center_crop_kind(store: torch.Tensor, rotations: torch.Tensor, size, kind: str, *, index=None):
    """Rotate-and-crop with resampling ``kind``: ``store`` holds the cubes for ``"trilinear"``
    and their :func:`bspline_prefilter` coefficients for ``"bspline3"``."""
    if check_resampling(kind) == "bspline3":
        return rotate_center_crop_bspline(store, rotations, size, index=index)
    return rotate_center_crop(store, rotations, size, index=index)
