"""Weighted back-projection (FBP) of an aligned tilt series, and the matching forward projector.

Geometry and sign convention (the one place where it is stated; tests pin it down)
----------------------------------------------------------------------------------
Tilt series are ``(n_tilts, Y, X)``, tomograms ``(Z, Y, X)``; the tilt axis is Y. Every axis of
length ``N`` uses centered coordinates: index ``i`` sits at ``i - N // 2``. The projection at
tilt θ (degrees) of the voxel at centered ``(z, y, x)`` lands on detector row ``y`` at column

    x' = x·cos θ + z·sin θ

so at θ > 0 a point above the centre (z > 0) moves towards +x on the detector. The detector has
the width of the tomogram (``X``), and its centre column is ``X // 2``. :func:`forward_project`
and :func:`fbp` share this geometry exactly (the projector is the transpose of the
back-projector, both with linear interpolation along x').

Scale
-----
Projections are line integrals in units of the detector pixel. :func:`fbp` filters every
projection row with the ramp ``|k|`` (k in cycles/pixel, zero-padded to twice the width), weights
tilt ``i`` by its own angular step ``Δθ_i`` in radians and sums, which is the discrete form of
``f(x, z) = ∫ dθ ∫ |k| P_θ(k) e^{2πik x'} dk``; a reconstruction of noiseless projections of a
phantom therefore has the phantom's intensity scale, for any tilt range and step.

Speed
-----
The back-projection of one Y-row is a fixed linear map ``(tilt, x') -> (z, x)`` with two
linear-interpolation weights per (voxel, tilt). It is built once per call as a sparse CSR matrix
and applied to a chunk of Y-rows in one sparse matrix product; on devices without sparse support
(e.g. Apple MPS) an equivalent gather formulation is used.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np

from .device import pick_device
from .errors import DDWError

#: Weight of the zero frequency of the ramp, as a fraction of the first non-zero ramp bin
#: (``1/L`` for a padded row of length ``L``). ``2/π²`` is the zero-frequency value of the
#: band-limited (Ram-Lak) ramp sampled on the padded grid: a small non-zero weight at DC, as
#: IMOD's ``tilt`` keeps, so that low-frequency contrast and the mean survive the filter.
DEFAULT_DC_WEIGHT = 2.0 / math.pi**2

APODIZATIONS = ("cosine", "hamming", None)
BIN_MODES = ("fourier", "average")
#: Default low-pass edge width (fraction of Nyquist) when ``lowpass`` is a single number.
DEFAULT_LOWPASS_WIDTH = 0.1
#: Upper bound on one Y-chunk of output (float32 values) when ``chunk_y`` is not given.
_CHUNK_VALUES = 32 * 1024 * 1024
#: Default Y-rows per sparse product: a few dozen columns keep the dense operand's rows in
#: cache; measured on CPU, 16–32 rows take about half the time of 512 rows at once.
_CHUNK_ROWS = 32
#: Projection values filtered at once (a batch of tilts; bounds the FFT buffers).
_FILTER_VALUES = 4 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _as_stack(data, what: str):
    """A 3D numpy array (no copy for memmaps) or a torch tensor; refuse anything else."""
    import torch

    if isinstance(data, torch.Tensor):
        arr = data.detach()
        dtype_ok = not (arr.is_complex() or arr.dtype == torch.bool)
    else:
        arr = np.asarray(data)
        dtype_ok = arr.dtype.kind in "fiu"
    if arr.ndim != 3:
        raise DDWError(
            f"the {what} must be a 3D array, got {arr.ndim}D with shape {tuple(arr.shape)}; "
            + (
                "pass the whole stack as (n_tilts, Y, X)"
                if what == "tilt series"
                else "pass the volume as (Z, Y, X)"
            )
        )
    if not dtype_ok:
        raise DDWError(
            f"the {what} has data type {arr.dtype}, which is not a real number type; "
            "convert it to float32 (or an integer type) first"
        )
    if min(arr.shape) < 1:
        raise DDWError(f"the {what} is empty (shape {tuple(arr.shape)}); load a non-empty file")
    return arr


def _as_angles(angles, n_tilts: int) -> np.ndarray:
    try:
        a = np.asarray(angles, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DDWError(
            "the tilt angles are not a list of numbers; give one angle in degrees per projection"
        ) from None
    if a.size != n_tilts:
        raise DDWError(
            f"there are {a.size} tilt angles but the tilt series has {n_tilts} projections; "
            "use the angle file (.tlt/.rawtlt) that belongs to this stack, one angle per projection"
        )
    if not np.all(np.isfinite(a)):
        raise DDWError("the tilt angles contain NaN or infinity; fix the angle file")
    return a


def _check_int(value, name: str, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise DDWError(f"{name} must be a whole number, got {value!r}; {fix}")
    value = int(value)
    if value < minimum:
        raise DDWError(f"{name} must be at least {minimum}, got {value}; {fix}")
    return value


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
def _bin_window(n: int, factor: int, mode: str, device):
    """Indices of the ``(n // factor) · factor`` input pixels that are binned along one axis.

    The window is placed so that the binned centre (index ``nb // 2``) stays on the original
    centre (index ``n // 2``): exactly for Fourier binning and odd factors, within half an
    original pixel for block averages of even factors. Where the window sticks out by a pixel
    or two, the edge pixel is repeated.
    """
    import torch

    nb = n // factor
    off = n // 2 - factor * (nb // 2)
    if mode == "average":
        off -= (factor - 1) // 2  # block centre, not block start, on the original centre
    idx = torch.arange(off, off + nb * factor, device=device).clamp_(0, n - 1)
    return idx, nb


def _bin_torch(img, factor: int, mode: str):
    """Bin the last two axes of a float32 tensor by ``factor`` (mean and centre preserved)."""
    import torch

    if factor == 1:
        return img
    n_y, n_x = img.shape[-2:]
    iy, yb = _bin_window(n_y, factor, mode, img.device)
    ix, xb = _bin_window(n_x, factor, mode, img.device)
    win = img.index_select(-2, iy).index_select(-1, ix)  # (…, yb·f, xb·f)
    if mode == "average":
        win = win.reshape(win.shape[:-2] + (yb, factor, xb, factor))
        return win.mean(dim=(-3, -1))
    # Fourier crop: keep the central (yb, xb) frequencies of the window; binned pixel j then
    # samples the band-limited image at window position j·factor (no aliasing).
    spec = torch.fft.fftshift(torch.fft.fft2(win), dim=(-2, -1))
    sy, sx = (yb * factor) // 2 - yb // 2, (xb * factor) // 2 - xb // 2
    spec = torch.fft.ifftshift(spec[..., sy : sy + yb, sx : sx + xb], dim=(-2, -1))
    out = torch.fft.ifft2(spec).real
    return (out / (factor * factor)).to(img.dtype)


def _check_binning(binning, n_y: int, n_x: int) -> int:
    b = _check_int(binning, "binning", 1, "use 1 (no binning), 2, 4, …")
    if b > min(n_y, n_x) or n_x // b < 2:
        raise DDWError(
            f"binning {b} is larger than the data allows (projections are {n_y} × {n_x} pixels); "
            f"use a binning of at most {max(1, min(n_y, n_x // 2))}"
        )
    return b


def bin_stack(stack, factor: int, mode: str = "fourier") -> np.ndarray:
    """Bin every projection (or slice) of a 3D stack over its last two axes (Y, X).

    ``mode="fourier"`` crops the centred spectrum to ``(Y//factor, X//factor)`` (no aliasing);
    ``mode="average"`` averages ``factor × factor`` blocks. Both keep the mean and the centre
    (centred coordinate 0 stays at index ``N//2``). Returns float32 ``(n, Y//f, X//f)``.
    """
    import torch

    arr = _as_stack(stack, "tilt series")
    if mode not in BIN_MODES:
        raise DDWError(f"unknown binning mode {mode!r}; use 'fourier' or 'average'")
    factor = _check_binning(factor, arr.shape[1], arr.shape[2])
    out = np.empty((arr.shape[0], arr.shape[1] // factor, arr.shape[2] // factor), np.float32)
    for i in range(arr.shape[0]):
        img = torch.as_tensor(np.asarray(arr[i], dtype=np.float32)) if not isinstance(
            arr, torch.Tensor
        ) else arr[i].float()
        out[i] = _bin_torch(img, factor, mode).cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------
# geometry operator
# --------------------------------------------------------------------------------------------
class _Geometry:
    """Linear-interpolation map between detector columns (tilt, x') and voxels (z, x) of a row.

    ``apply_back(q)`` maps ``q (n_tilts·n_det, m)`` to ``(n_z·n_x, m)``;
    ``apply_forward(v)`` is its transpose. Built once; applied to any number of Y-rows.
    """

    def __init__(self, angles_deg, n_z: int, n_x: int, n_det: int, device):
        import torch

        self.device = device
        self.n_tilts = len(angles_deg)
        self.n_z, self.n_x, self.n_det = n_z, n_x, n_det
        theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
        # float64 coordinates (exact for any detector width); MPS has no float64: build on CPU
        build = device if device.type != "mps" else torch.device("cpu")
        cos = torch.as_tensor(np.cos(theta), device=build)
        sin = torch.as_tensor(np.sin(theta), device=build)
        z = torch.arange(n_z, device=build, dtype=torch.float64) - n_z // 2
        x = torch.arange(n_x, device=build, dtype=torch.float64) - n_x // 2
        u = (z[:, None, None] * sin) + (x[None, :, None] * cos) + n_det // 2  # (Z, X, n)
        i0 = torch.floor(u)
        frac = (u - i0).float()
        del u
        i0 = i0.to(torch.int32)
        w1 = frac
        w0 = 1.0 - frac
        w0.masked_fill_((i0 < 0) | (i0 >= n_det), 0.0)
        w1.masked_fill_((i0 < -1) | (i0 >= n_det - 1), 0.0)
        offset = torch.arange(self.n_tilts, device=build, dtype=torch.int32) * n_det
        # flat (tilt, x') indices of the two neighbours; out-of-detector ones carry weight 0
        self._i0 = (i0.clamp(0, n_det - 1) + offset).to(device)
        self._i1 = ((i0 + 1).clamp_(0, n_det - 1) + offset).to(device)
        self._w0, self._w1 = w0.to(device), w1.to(device)
        self._csr = None
        self._sparse_ok = device.type in ("cpu", "cuda")

    def _flat(self):
        rows = self.n_z * self.n_x
        return (
            self._i0.reshape(rows, self.n_tilts).long(),
            self._i1.reshape(rows, self.n_tilts).long(),
            self._w0.reshape(rows, self.n_tilts),
            self._w1.reshape(rows, self.n_tilts),
        )

    def _matrix(self):
        import torch

        if self._csr is None:
            rows = self.n_z * self.n_x
            cols = torch.stack((self._i0, self._i1), dim=-1).reshape(-1)
            vals = torch.stack((self._w0, self._w1), dim=-1).reshape(-1)
            per_row = 2 * self.n_tilts
            crow = torch.arange(
                0, rows * per_row + 1, per_row, device=self.device, dtype=torch.int32
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                self._csr = torch.sparse_csr_tensor(
                    crow,
                    cols,
                    vals,
                    size=(rows, self.n_tilts * self.n_det),
                    check_invariants=False,
                )
        return self._csr

    def apply_back(self, q):
        """``q``: (n_tilts·n_det, m) float32 → (n_z·n_x, m)."""
        import torch

        if self._sparse_ok:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return self._matrix() @ q
            except (RuntimeError, NotImplementedError):
                self._sparse_ok = False
                self._csr = None
        rows = self.n_z * self.n_x
        out = torch.zeros((rows, q.shape[1]), device=q.device, dtype=q.dtype)
        i0, i1, w0, w1 = self._flat()
        for t in range(self.n_tilts):
            out.addcmul_(q.index_select(0, i0[:, t]), w0[:, t, None])
            out.addcmul_(q.index_select(0, i1[:, t]), w1[:, t, None])
        return out

    def apply_forward(self, v):
        """``v``: (n_z·n_x, m) float32 → (n_tilts·n_det, m) (transpose of ``apply_back``)."""
        import torch

        if self._sparse_ok:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return self._matrix().t() @ v
            except (RuntimeError, NotImplementedError):
                self._sparse_ok = False
                self._csr = None
        rows = self.n_z * self.n_x
        out = torch.zeros((self.n_tilts * self.n_det, v.shape[1]), device=v.device, dtype=v.dtype)
        i0, i1, w0, w1 = self._flat()
        for t in range(self.n_tilts):
            out.index_add_(0, i0[:, t], v * w0[:, t, None])
            out.index_add_(0, i1[:, t], v * w1[:, t, None])
        return out


def _default_chunk(rows_per_y: int, n_y: int, device) -> int:
    by_memory = _CHUNK_VALUES // max(1, rows_per_y)
    rows = min(by_memory, _CHUNK_ROWS) if device.type == "cpu" else by_memory  # GPUs: big chunks
    return int(max(1, min(n_y, rows)))


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

    stack = _as_stack(projections, "tilt series")
    n_tilts, n_y, n_x = (int(s) for s in stack.shape)
    ang = _as_angles(angles, n_tilts)
    thickness = _check_int(thickness, "thickness", 1, "give the output thickness in (binned) voxels, e.g. 128")
    b = _check_binning(binning, n_y, n_x)
    if bin_mode not in BIN_MODES:
        raise DDWError(f"unknown binning mode {bin_mode!r}; use 'fourier' or 'average'")
    if apodization not in APODIZATIONS:
        raise DDWError(f"unknown apodization {apodization!r}; use 'cosine', 'hamming' or None")
    lp = _check_lowpass(lowpass)
    if not (np.isfinite(dc_weight) and dc_weight >= 0):
        raise DDWError(f"dc_weight must be a non-negative number, got {dc_weight!r}; use the default")
    if chunk_y is not None:
        chunk_y = _check_int(chunk_y, "chunk_y", 1, "use None for an automatic chunk size")
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


def forward_project(volume, angles, *, device=None, chunk_y: int | None = None) -> np.ndarray:
    """Line-integral projections of a ``(Z, Y, X)`` volume: ``(n_tilts, Y, X)`` float32.

    Same geometry and sign as :func:`fbp` (x' = x·cos θ + z·sin θ, detector width X, centred
    coordinates); each voxel is spread over the two nearest detector columns by linear
    interpolation (the transpose of the back-projector), so the total mass of each projection
    equals the mass of the volume that falls on the detector.
    """
    import torch

    vol = _as_stack(volume, "volume")
    n_z, n_y, n_x = (int(s) for s in vol.shape)
    ang = np.asarray(angles, dtype=np.float64).reshape(-1)
    if ang.size < 1 or not np.all(np.isfinite(ang)):
        raise DDWError("give at least one finite tilt angle in degrees to project at")
    if chunk_y is not None:
        chunk_y = _check_int(chunk_y, "chunk_y", 1, "use None for an automatic chunk size")
    dev = pick_device(device)
    if isinstance(vol, torch.Tensor):
        v = vol.to(device=dev, dtype=torch.float32)
    else:
        v = torch.from_numpy(np.array(vol, dtype=np.float32)).to(dev)
    if not bool(torch.isfinite(v).all()):
        raise DDWError("the volume contains NaN or infinite values; fix it before projecting")
    geom = _Geometry(ang, n_z, n_x, n_x, dev)
    v = v.permute(0, 2, 1)  # (Z, X, Y)
    out = np.empty((ang.size, n_y, n_x), dtype=np.float32)
    step = chunk_y or _default_chunk(max(n_z, ang.size) * n_x, n_y, dev)
    for y0 in range(0, n_y, step):
        y1 = min(n_y, y0 + step)
        block = v[:, :, y0:y1].reshape(n_z * n_x, y1 - y0).contiguous()
        res = geom.apply_forward(block).reshape(ang.size, n_x, y1 - y0).permute(0, 2, 1)
        torch.from_numpy(out[:, y0:y1, :]).copy_(res)
    return out
