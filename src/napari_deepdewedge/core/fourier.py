"""Fourier-space geometry of the missing wedge (docs/method.md §2.3, §2.10).

Frequencies are ``(kz, ky, kx)`` in cycles/voxel, in ``torch.fft.fftfreq`` order (DC at index 0)
unless a function says ``shifted=True`` (DC at index ``N // 2``, as after ``fftshift``).

Which plane does a projection sample?
-------------------------------------
The project's projector (``core/reconstruct/geometry.py``) puts voxel ``(z, y, x)`` at detector column
``x' = x·cosθ + z·sinθ``. The 1D Fourier transform of that projection along ``x'`` at frequency
``u`` is ``Σ v(z, y, x)·exp(-2πi·u·(x·cosθ + z·sinθ))``, i.e. the volume's spectrum at
``(kz, kx) = u·(sinθ, cosθ)``. So the tilt ``θ`` samples the central plane spanned by the ky
axis and the (kz, kx) direction with ``φ = atan2(kz, kx) = θ`` — "the direction at angle θ from
the kx axis in the kx–kz plane", as docs/method.md §2.3 says; the wording and the sign convention agree.
(The rays themselves run along ``(z, x) ∝ (cosθ, -sinθ)``, perpendicular to that direction.)
``tests/test_fourier.py`` checks this against a real projector.

Observed mask
-------------
A frequency is observed iff its (kz, kx) direction, folded into (−90°, 90°] by point symmetry
(``k`` and ``-k`` carry the same information for a real volume), lies in the closed interval
``[θmin, θmax]``. ky does not matter. The ky axis (kz = kx = 0), and DC, count as observed.
Frequencies on a boundary direction (to 1e-6 relative) count as observed.

Even sizes: the Nyquist index ``N // 2`` stands for both ``+½`` and ``−½`` cycles/voxel, so a
frequency with a Nyquist component has no distinct point partner. We define it as observed iff
it is observed under *every* sign reading of its Nyquist components. With this choice
``M[i] == M[(-i) mod N]`` holds for every index (so ``F⁻¹(M·F(v))`` of a real ``v`` is real),
``M(k) == M(-k)`` holds exactly wherever a partner exists, and the rfft half-grid mask equals
the full mask's first ``X // 2 + 1`` columns.

Rotations
---------
``v_R(p) = v(Rᵀ p)`` rotates the spectrum the same way, so the observed mask of the rotated
volume is ``M_R(k) = M(Rᵀ k)``: evaluated analytically on the rotated frequency grid, about
zero frequency, binary and point-symmetric by construction (no interpolation of mask volumes).
"""
from __future__ import annotations

import math

import numpy as np

from .device import pick_device
from .errors import DDWError

# Relative tolerance (radians, roughly) for "on the boundary" and "on the ky axis".
_REL_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _check_shape(shape, ndim: int = 3) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise DDWError(
            f"shape {shape!r} is not a sequence of integers; pass a volume shape like (Z, Y, X)"
        ) from None
    if len(shape) != ndim or any(s < 1 for s in shape):
        raise DDWError(
            f"shape {shape} is not a {ndim}D shape of positive sizes; pass a volume shape "
            "(Z, Y, X) with every size ≥ 1"
        )
    return shape


def _check_tilts(tilt_min, tilt_max) -> tuple[float, float]:
    try:
        tmin, tmax = float(tilt_min), float(tilt_max)
    except (TypeError, ValueError):
        raise DDWError(
            f"tilt range ({tilt_min!r}, {tilt_max!r}) is not numeric; give the lowest and "
            "highest tilt angle in degrees, e.g. -60 and 60"
        ) from None
    if not (math.isfinite(tmin) and math.isfinite(tmax)):
        raise DDWError(f"tilt range ({tmin}, {tmax}) is not finite; give angles in degrees")
    if not (-90.0 < tmin < tmax < 90.0):
        raise DDWError(
            f"tilt range [{tmin:g}°, {tmax:g}°] is invalid: need -90 < tilt_min < tilt_max < 90 "
            "(degrees); check the angle file or the min/max of the manual range"
        )
    return tmin, tmax


# --------------------------------------------------------------------------------------------
# frequency grids
# --------------------------------------------------------------------------------------------
def _freq_1d(n: int, *, device, dtype, half: bool = False, shifted: bool = False):
    """fftfreq (or rfftfreq for ``half``) of length ``n`` from exact integers, so that the
    values at ``i`` and ``-i mod n`` are exact negatives of each other."""
    import torch

    if half:
        idx = torch.arange(n // 2 + 1, device=device, dtype=torch.int64)
    else:
        idx = torch.arange(n, device=device, dtype=torch.int64)
        idx = (idx + n // 2) % n - n // 2  # 0, 1, ..., -(n//2), ..., -1  (fftfreq order)
        if shifted:
            idx = torch.fft.fftshift(idx)
    return idx.to(dtype) / n


def frequency_grid(shape, *, device=None, dtype=None, rfft: bool = False, shifted: bool = False):
    """Frequencies ``(kz, ky, kx)`` in cycles/voxel as broadcastable tensors.

    Shapes ``(Z,1,1)``, ``(1,Y,1)``, ``(1,1,X)`` (``X // 2 + 1`` with ``rfft=True``, the
    ``torch.fft.rfftn`` half-grid with the non-negative ``rfftfreq`` values on the last axis).
    fftfreq order; ``shifted=True`` gives fftshift order (not with ``rfft``).
    ``dtype`` defaults to ``torch.float32``.
    """
    import torch

    Z, Y, X = _check_shape(shape)
    if rfft and shifted:
        raise DDWError("frequency_grid: shifted=True cannot be combined with rfft=True; pick one")
    dev = pick_device(device)
    dtype = torch.float32 if dtype is None else dtype
    kz = _freq_1d(Z, device=dev, dtype=dtype, shifted=shifted).reshape(Z, 1, 1)
    ky = _freq_1d(Y, device=dev, dtype=dtype, shifted=shifted).reshape(1, Y, 1)
    kx = _freq_1d(X, device=dev, dtype=dtype, half=rfft, shifted=shifted)
    return kz, ky, kx.reshape(1, 1, -1)


# --------------------------------------------------------------------------------------------
# the mask predicate
# --------------------------------------------------------------------------------------------
def _observed_dir(kz, kx, tmin_rad: float, tmax_rad: float, axis_scale=None):
    """Boolean: direction of (kz, kx), folded into (−90°, 90°], lies in [tmin, tmax].

    Exactly point-symmetric: (kz, kx) and (-kz, -kx) fold to the same (a, b) by negation.
    ``axis_scale`` (the full |k|, optional) marks points with (kz, kx) ≈ 0 relative to it as
    lying on the ky axis (observed).
    """
    import torch

    flip = (kx < 0) | ((kx == 0) & (kz < 0))
    a = torch.where(flip, -kz, kz)  # "sin φ · r"
    b = torch.where(flip, -kx, kx)  # "cos φ · r" ≥ 0
    r = torch.hypot(a, b)
    tol = _REL_TOL * r
    # φ ≥ θmin  ⇔  sin(φ − θmin) ≥ 0  ⇔  a·cosθmin − b·sinθmin ≥ 0   (φ − θmin ∈ (−180°, 180°))
    above_min = a * math.cos(tmin_rad) - b * math.sin(tmin_rad) >= -tol
    # φ ≤ θmax  ⇔  a·cosθmax − b·sinθmax ≤ 0
    below_max = a * math.cos(tmax_rad) - b * math.sin(tmax_rad) <= tol
    obs = above_min & below_max
    if axis_scale is None:
        obs = obs | (r == 0)
    else:
        obs = obs | (r <= _REL_TOL * axis_scale)
    return obs


def _nyquist_alt(k):
    """``k`` with its Nyquist entries (|k| == ½) sign-flipped; None if it has none."""
    import torch

    nyq = k.abs() == 0.5
    if not bool(nyq.any()):
        return None
    return torch.where(nyq, -k, k)


def _and_over_readings(fn, *ks):
    """AND of ``fn(*ks)`` over every sign reading of the Nyquist entries of each ``k``."""
    import itertools

    choices = []
    for k in ks:
        alt = _nyquist_alt(k)
        choices.append((k,) if alt is None else (k, alt))
    out = None
    for combo in itertools.product(*choices):
        m = fn(*combo)
        out = m if out is None else (out & m)
    return out


def observed_mask(shape, tilt_min, tilt_max, *, device=None, shifted: bool = False, rfft: bool = False):
    """Binary observed-mask ``M`` (1 = observed) of a volume of ``shape`` (Z, Y, X).

    ``float32`` tensor of 0/1, shape ``shape`` (``(Z, Y, X//2+1)`` with ``rfft=True``), in
    fftfreq order, or fftshift order with ``shifted=True``. Observed iff the (kz, kx) direction
    folded into (−90°, 90°] is within ``[tilt_min, tilt_max]`` degrees; see the module docstring
    for the projection convention, the ky axis, boundaries and the Nyquist rule.
    """
    import torch

    Z, Y, X = _check_shape(shape)
    tmin, tmax = _check_tilts(tilt_min, tilt_max)
    if rfft and shifted:
        raise DDWError("observed_mask: shifted=True cannot be combined with rfft=True; pick one")
    dev = pick_device(device)
    kz = _freq_1d(Z, device=dev, dtype=torch.float32).reshape(Z, 1)
    kx = _freq_1d(X, device=dev, dtype=torch.float32, half=rfft).reshape(1, -1)
    rmin, rmax = math.radians(tmin), math.radians(tmax)
    m2 = _and_over_readings(lambda a, b: _observed_dir(a, b, rmin, rmax), kz, kx)
    m = m2.to(torch.float32)[:, None, :].expand(Z, Y, m2.shape[1]).contiguous()
    if shifted:
        m = torch.fft.fftshift(m)
    return m


def _as_rotations(rotations, device):
    import torch

    R = torch.as_tensor(rotations)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or tuple(R.shape[1:]) != (3, 3):
        raise DDWError(
            f"rotations must have shape (B, 3, 3), got {tuple(R.shape)}; pass a batch of 3×3 "
            "rotation matrices in (z, y, x) order"
        )
    R = R.to(device=device, dtype=torch.float32)
    eye = torch.eye(3, device=device, dtype=torch.float32)
    err = (R.transpose(1, 2) @ R - eye).abs().amax() if R.shape[0] else torch.tensor(0.0)
    if not bool(torch.isfinite(err)) or float(err) > 1e-3:
        raise DDWError(
            "rotations are not orthonormal 3×3 matrices (RᵀR ≠ I); pass proper rotation "
            "matrices, e.g. from core.model.rotation.random_rotations"
        )
    return R


def rotated_observed_masks(shape, tilt_min, tilt_max, rotations, *, device=None, rfft: bool = False):
    """Observed masks of rotated volumes: ``M_R(k) = M(Rᵀ k)`` for each ``R`` in ``rotations``.

    ``rotations``: ``(B, 3, 3)`` (or one ``(3, 3)``) in ``(z, y, x)`` order, the rotation that
    was applied to the volume as ``v_R(p) = v(Rᵀ p)``. Returns ``float32`` 0/1 of shape
    ``(B, *shape)`` (last axis ``X // 2 + 1`` with ``rfft=True``), fftfreq order, on ``device``.
    Analytic on the rotated frequency grid: rotated about DC, binary, point-symmetric; the
    Nyquist rule of ``observed_mask`` applies, and the identity gives exactly ``observed_mask``.
    """
    import torch

    Z, Y, X = _check_shape(shape)
    tmin, tmax = _check_tilts(tilt_min, tilt_max)
    dev = pick_device(device)
    R = _as_rotations(rotations, dev)
    B = R.shape[0]
    rmin, rmax = math.radians(tmin), math.radians(tmax)
    kz, ky, kx = frequency_grid(shape, device=dev, rfft=rfft)

    # (Rᵀk)_i = Σ_j R[j, i] k_j ; only the z (i=0) and x (i=2) components matter.
    cz = R[:, :, 0].reshape(B, 3, 1, 1, 1)
    cx = R[:, :, 2].reshape(B, 3, 1, 1, 1)

    def mask_at(kz_, ky_, kx_):
        qz = cz[:, 0] * kz_ + cz[:, 1] * ky_ + cz[:, 2] * kx_
        qx = cx[:, 0] * kz_ + cx[:, 1] * ky_ + cx[:, 2] * kx_
        knorm = torch.sqrt(kz_ * kz_ + ky_ * ky_ + kx_ * kx_)
        return _observed_dir(qz, qx, rmin, rmax, axis_scale=knorm)

    out = mask_at(kz, ky, kx)  # (B, Z, Y, Xk) bool
    # Nyquist planes: AND over both sign readings of every Nyquist component (exact symmetry).
    grids = [kz, ky, kx]
    for axis, k in enumerate(grids):
        nyq = (k.flatten().abs() == 0.5).nonzero().flatten()
        if nyq.numel() == 0:
            continue
        q = int(nyq[0])
        plane = [g.narrow(axis, q, 1) if i == axis else g for i, g in enumerate(grids)]
        fixed = _and_over_readings(mask_at, *plane)
        out.narrow(axis + 1, q, 1).copy_(fixed)
    return out.to(torch.float32)


def wedge_directions(tilt_min, tilt_max) -> np.ndarray:
    """Unit (kz, kx) directions of the two boundaries of the observed region, ``(2, 2)``:
    row 0 at ``tilt_min``, row 1 at ``tilt_max`` (``(sin θ, cos θ)``). The observed region is
    the double fan swept from row 0 to row 1 counter-clockwise (through the kx axis) and its
    point mirror; the missing wedge is the rest."""
    tmin, tmax = _check_tilts(tilt_min, tilt_max)
    t = np.radians([tmin, tmax])
    return np.stack([np.sin(t), np.cos(t)], axis=1)


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------
def xz_log_power(volume, *, eps=None) -> np.ndarray:
    """Central x–z slice (ky = 0) of the volume's log power spectrum, fftshifted, ``(Z, X)``.

    ``log(|F(v)|² + eps)`` with the unitary 3D FFT; the ky = 0 slice of a 3D FFT is the 2D FFT
    of the sum over Y, so this costs one 2D FFT. DC sits at ``(Z // 2, X // 2)``; kz runs down
    the rows, kx along the columns. ``eps`` defaults to ``1e-10 × max power`` (never 0).
    Accepts numpy arrays or torch tensors; returns ``float32``.
    """
    if hasattr(volume, "detach"):
        volume = volume.detach().cpu().numpy()
    v = np.asarray(volume)
    if v.ndim != 3 or v.size == 0:
        raise DDWError(
            f"xz_log_power needs a 3D volume (Z, Y, X), got shape {v.shape}; pass a tomogram"
        )
    if np.iscomplexobj(v):
        raise DDWError("xz_log_power needs a real-valued volume; pass the tomogram, not its FFT")
    proj = v.sum(axis=1, dtype=np.float64)
    spec = np.fft.fft2(proj) / math.sqrt(v.size)
    power = spec.real**2 + spec.imag**2
    if eps is None:
        eps = max(1e-10 * float(power.max()), 1e-30)
    return np.fft.fftshift(np.log(power + eps)).astype(np.float32)


def wedge_boundary_lines(shape_zx, tilt_min, tilt_max) -> np.ndarray:
    """Line segments along the wedge edges, to draw over an ``xz_log_power`` image.

    Returns ``(2, 2, 2)`` float: two lines (at ``tilt_min``, ``tilt_max``), each two end points
    ``(row=z, col=x)`` in pixel coordinates of the fftshifted ``(Z, X)`` image. Each passes
    through the centre ``(Z // 2, X // 2)`` along the (kz, kx) ∝ (sin θ, cos θ) direction —
    in pixels ``(Z·sin θ, X·cos θ)`` because a pixel step is 1/Z resp. 1/X cycles/voxel — and
    ends at the image border. Ready for a napari Shapes layer (``shape_type="line"``).
    """
    try:
        Z, X = (int(s) for s in shape_zx)
    except (TypeError, ValueError):
        raise DDWError(
            f"shape_zx {shape_zx!r} must be the (Z, X) shape of the spectrum image"
        ) from None
    if Z < 1 or X < 1:
        raise DDWError(f"shape_zx {(Z, X)} must have positive sizes")
    dirs = wedge_directions(tilt_min, tilt_max)
    c = np.array([Z // 2, X // 2], dtype=np.float64)
    lo = np.array([-0.5, -0.5])
    hi = np.array([Z - 0.5, X - 0.5])
    lines = []
    for sz, cx in dirs:
        d = np.array([Z * sz, X * cx])
        d /= np.linalg.norm(d)
        ends = []
        for sign in (-1.0, 1.0):
            dd = sign * d
            # largest t ≥ 0 with c + t·dd inside [lo, hi] on both axes
            ts = [((hi[i] if dd[i] > 0 else lo[i]) - c[i]) / dd[i] for i in range(2) if abs(dd[i]) > 1e-12]
            ends.append(c + min(ts) * dd)
        lines.append(np.stack(ends))
    return np.stack(lines)
