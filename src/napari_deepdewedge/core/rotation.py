"""Random rotations and batched rotate-and-crop of sub-tomograms (DESIGN §2.4, §2.5, §2.10).

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

import torch

from .errors import DDWError


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


def match_resampling(x):
    """Apply the separable 3-tap filter ``(c, d, c)`` along Z, Y and X of ``x`` (``(..., Z, Y, X)``
    tensor), with edge-replicating boundaries; see :data:`RESAMPLING_MATCH_TAPS`."""
    import torch.nn.functional as F

    c, d = RESAMPLING_MATCH_TAPS
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-3:])
    y = F.pad(y, (1, 1, 1, 1, 1, 1), mode="replicate")
    y = d * y[:, :, 1:-1] + c * (y[:, :, :-2] + y[:, :, 2:])
    y = d * y[:, :, :, 1:-1] + c * (y[:, :, :, :-2] + y[:, :, :, 2:])
    y = d * y[..., 1:-1] + c * (y[..., :-2] + y[..., 2:])
    return y.reshape(shape)
