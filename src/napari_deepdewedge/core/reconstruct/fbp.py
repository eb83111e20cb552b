"""Weighted back-projection (FBP) of an aligned tilt series.

The geometry and sign convention (x' = x·cos θ + z·sin θ, centred coordinates, detector width
X) are stated in :mod:`.geometry`, with the forward projector that is this back-projector's
transpose; binning before reconstruction is :mod:`.binning`.

Scale
-----
Projections are line integrals in units of the detector pixel. :func:`fbp` filters every
projection row with the ramp ``|k|`` (k in cycles/pixel, zero-padded to twice the width), weights
tilt ``i`` by its own angular step ``Δθ_i`` in radians and sums, which is the discrete form of
``f(x, z) = ∫ dθ ∫ |k| P_θ(k) e^{2πik x'} dk``; a reconstruction of noiseless projections of a
phantom therefore has the phantom's intensity scale, for any tilt range and step.

Speed: one sparse matrix per call applied to chunks of Y-rows (:class:`.geometry._Geometry`).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..device import pick_device
from ..errors import DDWError
from .binning import BIN_MODES, _bin_torch, _check_binning
from .geometry import _Geometry, _default_chunk, as_angles, as_stack, check_int

#: Weight of the zero frequency of the ramp, as a fraction of the first non-zero ramp bin
#: (``1/L`` for a padded row of length ``L``). ``2/π²`` is the zero-frequency value of the
#: band-limited (Ram-Lak) ramp sampled on the padded grid: a small non-zero weight at DC, as
#: IMOD's ``tilt`` keeps, so that low-frequency contrast and the mean survive the filter.
DEFAULT_DC_WEIGHT = 2.0 / math.pi**2

APODIZATIONS = ("cosine", "hamming", None)
#: Default low-pass edge width (fraction of Nyquist) when ``lowpass`` is a single number.
DEFAULT_LOWPASS_WIDTH = 0.1
#: Projection values filtered at once (a batch of tilts; bounds the FFT buffers).
_FILTER_VALUES = 4 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _check_lowpass(lowpass):
    if lowpass is None:
        return None
    if isinstance(lowpass, (tuple, list)):
        if len(lowpass) != 2:
            raise DDWError(
                f"lowpass must be a cut-off or (cut-off, edge width), got {lowpass!r}; "
                "e.g. lowpass=0.8 or lowpass=(0.8, 0.1) (fractions of Nyquist)"
            )
        cutoff, width = float(lowpass[0]), float(lowpass[1])
    else:
        cutoff, width = float(lowpass), DEFAULT_LOWPASS_WIDTH
    if not (0.0 < cutoff <= 1.0) or not (0.0 <= width <= 1.0):
        raise DDWError(
            f"lowpass cut-off must be in (0, 1] and its edge width in [0, 1] (fractions of "
            f"Nyquist), got cut-off {cutoff} and width {width}; e.g. lowpass=0.8"
        )
    return cutoff, width


# --------------------------------------------------------------------------------------------
# angular weights, filter
# --------------------------------------------------------------------------------------------
def angular_weights(angles) -> np.ndarray:
    """Weight of each projection (radians, stack order): its own angular step.

    Directions are taken modulo 180° (θ and θ ± 180° sample the same central line), sorted on
    that half-circle, and each projection gets half the gap to its previous plus half the gap to
    its next neighbour. The one gap that is clearly larger than its neighbours (more than 1.5×)
    is the missing wedge; it is not counted: the projection at each edge of the wedge gets its
    inner step twice. So ±90° sums to π, ±60° at step 3° to 123°, and duplicate directions
    (−90° and +90°) share their step.
    """
    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    n = a.size
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.array([math.pi])
    folded = np.mod(a + 90.0, 180.0) - 90.0
    order = np.argsort(folded, kind="stable")
    s = folded[order]
    gaps = np.empty(n)
    gaps[:-1] = np.diff(s)
    gaps[-1] = s[0] + 180.0 - s[-1]  # wrap-around gap
    nxt = gaps.copy()  # gap after sorted tilt j
    prv = np.roll(gaps, 1)  # gap before sorted tilt j
    big = int(np.argmax(gaps))
    neighbours = max(gaps[big - 1], gaps[(big + 1) % n])
    if gaps[big] > 1.5 * neighbours:
        j_before, j_after = big, (big + 1) % n
        nxt[j_before] = prv[j_before]
        prv[j_after] = nxt[j_after]
    w_sorted = 0.5 * (prv + nxt)
    weights = np.empty(n)
    weights[order] = w_sorted
    return np.deg2rad(weights)


def _row_filter(n_x: int, apodization, dc_weight: float, device):
    """The 1D ramp filter (rfft layout) for rows of length ``n_x`` padded to ``2·n_x``."""
    import torch

    length = 2 * n_x
    k = torch.fft.rfftfreq(length, dtype=torch.float64)  # 0 … 0.5 cycles/pixel
    filt = k.clone()
    filt[0] = dc_weight / length
    if apodization == "cosine":
        filt *= torch.cos(math.pi * k)  # 1 at DC, 0 at Nyquist
    elif apodization == "hamming":
        filt *= 0.54 + 0.46 * torch.cos(2 * math.pi * k)
    return filt.float().to(device), length


def _lowpass_2d(n_y: int, length: int, cutoff: float, width: float, device):
    """Radial low-pass over (ky, kx) of one projection, cosine edge centred on ``cutoff``."""
    import torch

    ky = torch.fft.fftfreq(n_y, dtype=torch.float64)
    kx = torch.fft.rfftfreq(length, dtype=torch.float64)
    kr = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) / 0.5  # fraction of Nyquist
    if width <= 0:
        return (kr <= cutoff).float().to(device)
    t = ((kr - (cutoff - width / 2)) / width).clamp(0.0, 1.0)
    return (0.5 * (1 + torch.cos(math.pi * t))).float().to(device)


def _pad_rows(p, length: int):
    """Pad rows (…, X) to ``length``: data first, then edge values tapered to zero (circularly).

    For projections that are zero at their edges this is plain zero-padding; real projections
    are not, and the taper keeps the filter from ringing at the step a bare zero pad makes.
    """
    import torch

    n_x = p.shape[-1]
    extra = length - n_x
    right_n = extra // 2
    left_n = extra - right_n
    parts = [p]
    for count, edge, rising in ((right_n, p[..., -1:], False), (left_n, p[..., :1], True)):
        if count > 0:
            ramp = torch.linspace(0, math.pi, count + 2, dtype=torch.float64)[1:-1]
            taper = 0.5 * (1 - torch.cos(ramp)) if rising else 0.5 * (1 + torch.cos(ramp))
            parts.append(edge * taper.to(device=p.device, dtype=p.dtype))
    return torch.cat(parts, dim=-1)


# --------------------------------------------------------------------------------------------
# binning
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# geometry operator
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def fbp(
    projections,
    angles,
    thickness: int,
    *,
    binning: int = 1,
    bin_mode: str = "fourier",
    apodization: str | None = "cosine",
    lowpass=None,
    dc_weight: float = DEFAULT_DC_WEIGHT,
    device=None,
    chunk_y: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    phase_flip=None,
) -> np.ndarray:
    """Weighted back-projection of an aligned tilt series (docs/method.md §2.2).

    Parameters
    ----------
    projections : (n_tilts, Y, X) numpy array (a read-only memmap is fine, any real dtype) or
        torch tensor. Tilt axis along Y.
    angles : tilt angles in degrees, one per projection, any order.
    thickness : Z of the output, in output (binned) voxels.
    binning : integer factor applied to Y and X of every projection before reconstruction.
    bin_mode : ``"fourier"`` (spectrum crop) or ``"average"`` (block mean).
    apodization : ``"cosine"``, ``"hamming"`` (roll-off of the ramp to Nyquist) or ``None``.
    lowpass : optional radial low-pass, cut-off as a fraction of Nyquist (``0.8``), or
        ``(cut-off, edge width)``; the edge is a half cosine centred on the cut-off.
    dc_weight : ramp value at zero frequency as a fraction of the first ramp bin (see
        :data:`DEFAULT_DC_WEIGHT`); 0 gives a pure ramp.
    device : torch device name or ``None`` for the best available.
    chunk_y : Y-rows back-projected at once (bounds memory); ``None``: 32 on CPU (fastest
        there), on GPUs as many as fit in 128 MB of output.
    progress : called as ``progress(done, total)`` after every Y-chunk.
    phase_flip : a :class:`core.ctf.PhaseFlip` for these projections (stack order): each
        projection is phase flipped strip by strip after binning, before the ramp filter.

    Returns
    -------
    float32 numpy array ``(thickness, Y // binning, X // binning)`` on the phantom's scale.
    """
    import torch

    stack = as_stack(projections, "tilt series")
    n_tilts, n_y, n_x = (int(s) for s in stack.shape)
    ang = as_angles(angles, n_tilts)
    thickness = check_int(thickness, "thickness", 1, "give the output thickness in (binned) voxels, e.g. 128")
    b = _check_binning(binning, n_y, n_x)
    if bin_mode not in BIN_MODES:
        raise DDWError(f"unknown binning mode {bin_mode!r}; use 'fourier' or 'average'")
    if apodization not in APODIZATIONS:
        raise DDWError(f"unknown apodization {apodization!r}; use 'cosine', 'hamming' or None")
    lp = _check_lowpass(lowpass)
    if not (np.isfinite(dc_weight) and dc_weight >= 0):
        raise DDWError(f"dc_weight must be a non-negative number, got {dc_weight!r}; use the default")
    if chunk_y is not None:
        chunk_y = check_int(chunk_y, "chunk_y", 1, "use None for an automatic chunk size")
    dev = pick_device(device)

    yb, xb = n_y // b, n_x // b
    # each tilt's own angular step (radians); line integrals shrink by b in binned voxels
    weights = angular_weights(ang) / b
    row_filter, length = _row_filter(xb, apodization, float(dc_weight), dev)
    lp_filter = _lowpass_2d(yb, length, lp[0], lp[1], dev) if lp is not None else None

    # 1) filter, a batch of tilts at a time: q[t, x', y] (tilt, detector column, then Y last
    #    so that one sparse product back-projects many Y-rows)
    q = torch.empty((n_tilts, xb, yb), device=dev, dtype=torch.float32)
    is_torch = isinstance(stack, torch.Tensor)
    batch = max(1, _FILTER_VALUES // (n_y * n_x))
    w_all = torch.as_tensor(weights, dtype=torch.float32, device=dev)
    for t0 in range(0, n_tilts, batch):
        t1 = min(n_tilts, t0 + batch)
        if is_torch:
            p = stack[t0:t1].to(device=dev, dtype=torch.float32)
        else:
            p = torch.from_numpy(np.array(stack[t0:t1], dtype=np.float32)).to(dev)
        # a NaN or infinity anywhere makes the projection's sum non-finite (one cheap pass)
        finite = torch.isfinite(p.sum(dim=(-2, -1)))
        if not bool(finite.all()):
            t = t0 + int(torch.nonzero(~finite)[0, 0])
            raise DDWError(
                f"projection {t} (angle {ang[t]:g}°) contains NaN or infinite values; "
                "fix or remove it (e.g. replace bad pixels with the mean) before reconstructing"
            )
        if b > 1:
            p = _bin_torch(p, b, bin_mode)
        if phase_flip is not None:
            p = phase_flip.apply(p, t0, binning=b)
        padded = _pad_rows(p, length)
        del p
        if lp_filter is None:
            f = torch.fft.irfft(torch.fft.rfft(padded, dim=-1) * row_filter, n=length, dim=-1)
        else:
            spec = torch.fft.rfft2(padded) * (row_filter * lp_filter)
            f = torch.fft.irfft2(spec, s=(yb, length))
        del padded
        # weight by the angular step while writing transposed (x' before y): one pass
        torch.mul(f[..., :xb].transpose(1, 2), w_all[t0:t1, None, None], out=q[t0:t1])
        del f

    # 2) back-project chunk by chunk over Y
    geom = _Geometry(ang, thickness, xb, xb, dev)
    q = q.reshape(n_tilts * xb, yb)
    step = chunk_y or _default_chunk(thickness * xb, yb, dev)
    total = (yb + step - 1) // step
    out = np.empty((thickness, yb, xb), dtype=np.float32)
    for k, y0 in enumerate(range(0, yb, step)):
        y1 = min(yb, y0 + step)
        res = geom.apply_back(q[:, y0:y1].contiguous())  # (Z·X, m)
        res = res.reshape(thickness, xb, y1 - y0).permute(0, 2, 1)
        torch.from_numpy(out[:, y0:y1, :]).copy_(res)  # one (parallel) strided copy
        if progress is not None:
            progress(k + 1, total)
    return out


