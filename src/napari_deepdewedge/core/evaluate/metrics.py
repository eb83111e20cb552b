"""Quality measures (docs/method.md §2.9): CC, FSC and its 0.143 crossing, power in the missing wedge.

Inputs are numpy arrays (torch tensors are accepted and moved to the CPU); outputs are plain
floats (``fsc`` returns two numpy arrays). Spectra are computed with ``torch.fft.rfftn`` in the
input's precision (float32 unless the input is float64), on the half grid with each column
except ``kx = 0`` (and ``kx = X/2`` for even ``X``) counted twice, which equals full-grid sums
for real volumes.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DDWError


def _arr(v, name: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    v = np.asarray(v)
    if v.dtype == bool:
        v = v.astype(np.uint8)
    if np.iscomplexobj(v) or not np.issubdtype(v.dtype, np.number):
        raise DDWError(f"{name} must hold real numbers, got dtype {v.dtype}")
    return v


def _pair(a, b, names=("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _arr(a, names[0]), _arr(b, names[1])
    if a.shape != b.shape:
        raise DDWError(
            f"{names[0]} and {names[1]} have different shapes {a.shape} and {b.shape}; compare volumes of "
            "the same size (crop or bin them the same way)"
        )
    if a.size == 0:
        raise DDWError(f"{names[0]} and {names[1]} are empty")
    return a, b


def _rfft(v: np.ndarray) -> torch.Tensor:
    dt = torch.float64 if v.dtype == np.float64 else torch.float32
    return torch.fft.rfftn(torch.as_tensor(np.ascontiguousarray(v), dtype=dt))


def _half_weights(n_last: int, dtype=torch.float64) -> torch.Tensor:
    w = torch.full((n_last // 2 + 1,), 2.0, dtype=dtype)
    w[0] = 1.0
    if n_last % 2 == 0:
        w[-1] = 1.0
    return w


def cc(a, b, mask=None) -> float:
    """Pearson correlation coefficient over all voxels, or over the voxels where ``mask > 0``.

    Returns NaN when either input is constant over the voxels compared.
    """
    a, b = _pair(a, b)
    if mask is not None:
        m = _arr(mask, "mask")
        if m.shape != a.shape:
            raise DDWError(f"mask shape {m.shape} differs from the volume shape {a.shape}; use a mask of the same size")
        sel = m > 0
        if not sel.any():
            raise DDWError("the mask selects no voxel; draw a mask with at least two voxels inside")
        a, b = a[sel], b[sel]
    a = a.astype(np.float64, copy=False).ravel()
    b = b.astype(np.float64, copy=False).ravel()
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db)))
    return float(np.dot(da, db) / denom) if denom > 0 else float("nan")


def _voxel_sizes(voxel_size, ndim: int) -> tuple[float, ...]:
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (ndim,))
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise DDWError(f"voxel size {voxel_size} must be positive (Å); check the MRC header or set it by hand")
    return tuple(float(v) for v in vs)


def _radius_half_grid(shape, voxel_size) -> torch.Tensor:
    """|k| in 1/Å on the rfftn half grid of ``shape``."""
    r2 = None
    nd = len(shape)
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        k = np.fft.rfftfreq(n, d=d) if ax == nd - 1 else np.fft.fftfreq(n, d=d)
        k = torch.as_tensor(k**2).reshape([-1 if i == ax else 1 for i in range(nd)])
        r2 = k if r2 is None else r2 + k
    return torch.sqrt(r2)


def fsc(a, b, voxel_size=1.0, n_shells=None, *, select=None) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two volumes.

    Shell ``i = 1 … n_shells`` holds the frequencies with ``round(|k| / dk) == i``,
    ``dk = k_nyq / n_shells``, ``k_nyq = 1 / (2 · max voxel size)``; the DC shell is left out
    and frequencies beyond Nyquist (cube corners) are ignored. ``voxel_size`` is one number or
    one per axis (Å). ``n_shells`` defaults to ``min(shape) // 2``.
    Returns ``(freqs, curve)``: shell frequencies ``i · dk`` in 1/Å and
    ``Re Σ Fa·conj(Fb) / sqrt(Σ|Fa|² · Σ|Fb|²)`` per shell (NaN for a shell without power).
    ``select`` (bool, rfft half-grid shape): sum over only those frequencies (NaN for a shell
    with none of them).
    """
    a, b = _pair(a, b)
    vs = _voxel_sizes(voxel_size, a.ndim)
    if n_shells is None:
        n_shells = min(a.shape) // 2
    n_shells = int(n_shells)
    if n_shells < 1:
        raise DDWError(f"n_shells must be at least 1, got {n_shells} (volume shape {a.shape})")
    fa, fb = _rfft(a), _rfft(b)
    r = _radius_half_grid(a.shape, vs)
    dk = 1.0 / (2.0 * max(vs)) / n_shells
    shell = torch.round(r / dk).to(torch.int64).expand(fa.shape)
    w = _half_weights(a.shape[-1]).expand(fa.shape)
    keep = (shell >= 1) & (shell <= n_shells)
    if select is not None:  # only these rfft half-grid frequencies (e.g. the missing wedge)
        keep = keep & torch.as_tensor(np.asarray(select, dtype=bool))
    idx = shell[keep]

    def shell_sum(values):  # float64 also for an empty selection (bincount gives integer zeros)
        sums = torch.bincount(idx, weights=(values.to(torch.float64) * w)[keep], minlength=n_shells + 1)
        return sums[1:].to(torch.float64)

    num = shell_sum(fa.real * fb.real + fa.imag * fb.imag)
    pa = shell_sum(fa.real**2 + fa.imag**2)
    pb = shell_sum(fb.real**2 + fb.imag**2)
    denom = torch.sqrt(pa * pb)
    curve = torch.where(denom > 0, num / denom.clamp_min(1e-300), torch.full_like(num, float("nan")))
    freqs = np.arange(1, n_shells + 1, dtype=np.float64) * dk
    return freqs, curve.numpy()


def fsc_crossing(freqs, curve, threshold: float = 0.143) -> float:
    """Resolution in Å where the FSC first falls below ``threshold`` (linear interpolation).

    NaN entries (shells without power) are skipped. If the first valid value is already below
    the threshold the result is ``inf`` (nothing resolved). If the curve never falls below it,
    the result is ``1 / freqs[last valid]`` — the Nyquist-limited best value, a bound rather
    than a measurement. Raises :class:`DDWError` when no value is valid.
    """
    f = np.asarray(freqs, dtype=np.float64).ravel()
    c = np.asarray(curve, dtype=np.float64).ravel()
    if f.shape != c.shape:
        raise DDWError(f"freqs ({f.size}) and curve ({c.size}) must have the same length; pass the pair from fsc()")
    ok = np.isfinite(c) & np.isfinite(f)
    f, c = f[ok], c[ok]
    if f.size == 0:
        raise DDWError("the FSC curve has no valid value (all shells empty or without power)")
    below = np.nonzero(c < threshold)[0]
    if below.size == 0:
        return float(1.0 / f[-1]) if f[-1] > 0 else float("inf")
    i = int(below[0])
    if i == 0:
        return float("inf")
    c0, c1, f0, f1 = c[i - 1], c[i], f[i - 1], f[i]
    fc = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
    return float(1.0 / fc) if fc > 0 else float("inf")


def _wedge_and_weights(shape, tilt_min, tilt_max):
    from ..fourier import observed_mask

    if len(shape) != 3:
        raise DDWError(f"missing-wedge measures need a 3D volume (Z, Y, X), got shape {shape}")
    missing = 1.0 - observed_mask(shape, tilt_min, tilt_max, device="cpu", rfft=True).to(torch.float64)
    w = _half_weights(shape[-1])
    return missing, w


def missing_wedge_power_fraction(vol, tilt_min, tilt_max) -> float:
    """Fraction of the spectral power (DC excluded) that lies in the missing wedge.

    The wedge is ``1 − core.fourier.observed_mask(shape, tilt_min, tilt_max)``. An
    un-processed reconstruction has a fraction near 0; a volume with isotropic content has
    roughly the wedge's share of frequencies. NaN for a constant volume.
    """
    v = _arr(vol, "volume")
    missing, w = _wedge_and_weights(v.shape, tilt_min, tilt_max)
    fv = _rfft(v)
    power = (fv.real**2 + fv.imag**2).to(torch.float64) * w
    power[(0,) * v.ndim] = 0.0
    total = float(power.sum())
    return float((power * missing).sum() / total) if total > 0 else float("nan")


def wedge_correlation(a, ref, tilt_min, tilt_max) -> float:
    """Correlation of the Fourier coefficients of ``a`` and ``ref`` inside the missing wedge.

    ``Re Σ_w Fa·conj(Fref) / sqrt(Σ_w |Fa|² · Σ_w |Fref|²)`` over the wedge frequencies ``w``
    (DC is observed, so excluded): 1 when ``a`` has recovered the reference's wedge content up
    to a scale, ~0 when the wedge holds unrelated content. NaN when either has no wedge power
    (less than 1e-12 of its total non-DC power: numerically empty).
    """
    a, r = _pair(a, ref, names=("volume", "reference"))
    missing, w = _wedge_and_weights(a.shape, tilt_min, tilt_max)
    fa, fr = _rfft(a), _rfft(r)
    wm = missing * w
    num = float(((fa.real * fr.real + fa.imag * fr.imag).to(torch.float64) * wm).sum())
    pa = float(((fa.real**2 + fa.imag**2).to(torch.float64) * wm).sum())
    pr = float(((fr.real**2 + fr.imag**2).to(torch.float64) * wm).sum())

    def total(f):
        p = (f.real**2 + f.imag**2).to(torch.float64) * w
        p[(0,) * p.ndim] = 0.0
        return float(p.sum())

    if pa <= 1e-12 * total(fa) or pr <= 1e-12 * total(fr):
        return float("nan")
    return num / math.sqrt(pa * pr)


#: The period-2 lattice frequencies: Nyquist (index N/2) on the axes marked 1, frequency 0 on the
#: others — a pattern that alternates from voxel to voxel along those axes (stripes, a
#: checkerboard or a 3D "dotted" texture). Labelled "zyx"-style by the axes at Nyquist.
PERIOD2_LATTICE = tuple(
    (az, ay, ax) for az in (0, 1) for ay in (0, 1) for ax in (0, 1) if (az, ay, ax) != (0, 0, 0)
)


def period2_peak_ratio(vol, window: bool = True) -> dict:
    """How far the spectral power at the period-2 lattice frequencies stands above its surroundings.

    For each of the 7 frequencies with Nyquist on one, two or three axes and 0 on the others
    (:data:`PERIOD2_LATTICE`; only axes of even length have a Nyquist index), the power
    ``|F(k)|²`` divided by the median power of the frequency shell ``k`` lies in (the
    frequencies whose radius ``|k|`` in cycles/voxel is within ``2 / min(shape)`` of ``|k|``,
    wide enough to hold many frequencies even at the cube's corner, the three-axis point).
    A smooth or noise-like volume gives ratios around 1 or below (white noise: the ratio of an
    exponential variable to its median, ~1; natural images: below 1, their power falls along the
    shell away from the axes); a texture alternating from voxel to voxel gives a peak far above
    1 (the sharp-lattice artifact of up-sampling layers).

    ``window`` (default): measure the volume times a Hann window along each axis (after
    subtracting its mean). The discrete Fourier transform treats a volume as periodic, so the
    jumps between opposite faces of a crop or tile — and whatever a network does in the few
    voxels next to them — put power along the spectrum's axes and coordinate planes, falling
    only slowly with ``|k|``, where 6 of the 7 lattice frequencies lie; the window takes the
    edges out and keeps a texture of the interior (its peak loses a factor ~2/3 against a
    noise floor; the window spreads it over ±2 frequency bins per axis, which are left out of
    the shell's median). A volume without any noise can give huge ratios either way: its shell
    median is rounding noise.

    Returns ``{"ratios": {label: ratio}, "median": ..., "max": ...}`` with labels such as
    ``"x"``, ``"zy"``, ``"zyx"`` naming the axes at Nyquist. Raises :class:`DDWError` for a
    volume that is not 3D or has no axis of even length.
    """
    v = _arr(vol, "volume")
    if v.ndim != 3:
        raise DDWError(f"the period-2 measure needs a 3D volume (Z, Y, X), got shape {v.shape}")
    if not any(n % 2 == 0 and n >= 2 for n in v.shape):
        raise DDWError(f"volume shape {v.shape} has no axis of even length, so no Nyquist frequency; "
                       "crop one voxel along an axis")
    t = torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64)
    if window:
        t = t - t.mean()
        for ax, n in enumerate(v.shape):
            t = t * torch.as_tensor(np.hanning(n)).reshape([-1 if i == ax else 1 for i in range(3)])
    f = torch.fft.rfftn(t)
    power = f.real**2 + f.imag**2
    r = _radius_half_grid(v.shape, (1.0,) * 3).expand(power.shape)
    half_width = 2.0 / min(v.shape)
    # the window spreads a peak over ±2 bins per axis: keep those out of the shell's median
    near = None
    if window:
        grids = [torch.as_tensor(np.fft.fftfreq(n) * n if ax < 2 else np.fft.rfftfreq(n) * n)
                 .reshape([-1 if i == ax else 1 for i in range(3)]) for ax, n in enumerate(v.shape)]
    ratios = {}
    for lattice in PERIOD2_LATTICE:
        if any(on and n % 2 for on, n in zip(lattice, v.shape)):
            continue  # an odd axis has no Nyquist index
        index = tuple(n // 2 if on else 0 for on, n in zip(lattice, v.shape))
        r0 = float(r[index])
        in_shell = (r - r0).abs() <= half_width
        if window:
            near = None
            for g, n, i in zip(grids, v.shape, index):
                d = (g - (n // 2 if i else 0)).abs()
                d = torch.minimum(d, n - d)  # distance on the periodic frequency axis
                near = (d <= 2) if near is None else near & (d <= 2)
            in_shell = in_shell & ~near.expand(power.shape)
        shell = power[in_shell]
        med = float(shell.median())
        label = "".join(name for name, on in zip("zyx", lattice) if on)
        peak = float(power[index])
        ratios[label] = peak / med if med > 0 else (float("inf") if peak > 0 else float("nan"))
    vals = np.array(list(ratios.values()), dtype=np.float64)
    return {"ratios": ratios, "median": float(np.median(vals)), "max": float(np.max(vals))}
