"""Where the specimen is: an automatic sample mask from the two half tomograms (issue 20).

A real tomogram is mostly not specimen — vacuum and ice above and below a thin lamella,
contamination, gold. Cubes drawn there cost fitting time and teach the network noise.

The idea, in short
------------------
The two halves share the specimen's signal and nothing else: their noise is independent. So
the local *covariance* of even and odd estimates the local signal power — about zero in empty
space whatever the noise level, positive where there is structure — and, divided by the local
variance, it is a local correlation whose spread in empty space is known from its own negative
values (signal only pushes it up). A single tomogram has no such reference; the peers that work
on one (IsoNet's mask: percentiles of the local mean and of the local standard deviation of a
smoothed, downsampled tomogram, plus a crop of the top and bottom Z rows) must guess the
fraction of specimen instead, and a noisy volume's local standard deviation is mostly noise.

Specimen content is sparse (empty ice between particles agrees no more than vacuum), so the
mask is not a voxel-wise threshold: it is the slab that holds the agreeing signal.

1. Both halves are binned by ``bin`` (block mean, in Z chunks: a 300×1024×1024 pair is read
   once), standardized, and cut into ``tiles × tiles`` columns in (Y, X).
2. In every column and binned Z row: the correlation ``r = cov(e, o) / var`` of the two halves
   (the mean of the row in that column removed), lightly smoothed along Z.
3. The slab's tilt: for every candidate slope about Y and X (±``max_tilt`` degrees, 6° steps,
   then 2° steps near the best), the columns' profiles are shifted onto the slope's planes and
   combined by their interquartile mean (a contamination blob or a bead over a few columns does
   not move it); a slope's score is the positive agreement its profile holds (sum of squares of
   its positive part). The score is a flat, noisy function of the slope (the specimen's content
   sits at random depths), so of the slopes within 5 % of the best score the least tilted wins
   (:data:`SLOPE_TOLERANCE`). The noise's spread comes from the same statistic with the odd half
   moved by half the field (the specimen no longer lines up), through the same search.
4. The slab on that profile: the run with the largest sum above ``level`` × the peak (and
   ``threshold`` × the noise spread), its surfaces where the profile crosses that line (linear
   between rows), plus ``margin`` voxels on both surfaces; when the profile never exceeds 4
   noise spreads nothing agrees and the mask keeps everything.
5. The mask: every voxel between the two planes, on the full grid.

Why the half maximum plus a fixed margin (``level`` 0.5, ``margin`` 12 voxels): the agreement
comes from the specimen's content, not from the ice (a flat slab's own density lies in the
missing wedge), and content cannot sit closer to a surface than its own radius; so the
agreement profile is the content's depth distribution blurred by the particles, and its half
maximum lies about a particle radius inside each surface whatever the slab's thickness. A
margin proportional to the thickness found (the earlier rule: the run above 3 noise spreads
and 0.15 × the peak, plus 0.3 × its thickness) fails both ways: where the content bunches in
the middle the run is short and so is its margin (thin slab, seeds 1 and 3: 76 % and 86 % of
the specimen kept), where a dense particle sits at a surface the run is long and so is its
margin (seed 7: 30 % of the empty space). Measured with ``bench/mask.py --only coverage``
(96³ phantoms, seeds 0–19 of each kind, 60 volumes; the first 12 seeds used to choose the rule,
seeds 12–19 held out and passing too): every volume keeps ≥ 90 % of its specimen and ≤ 25 % of
its empty space (worst: thin 95.0 / 17.2 %, tilted 93.1 / 19.3 %, beads 94.8 / 25.0 %); the
earlier rule missed on 13 of the first 36. With the margin at 11 or 11.5 voxels all 60 still
pass (worst specimen 90.1 % resp. 91.6 %), so 12 sits inside a measured window, not on an
edge. Without the least-tilted choice (the plain best slope) the tilt errs by up to 16° on
these phantoms and no margin passes every volume.

Measured on phantoms with a known specimen region (``bench/mask.py``; figures in
``docs/masks.md``). The planes assume a flat (possibly tilted) specimen — a lamella or a thin
ice layer; for a strongly bent one, paint the mask in napari or give a file. The margin is in
voxels of the given grid: 12 voxels ≈ 12 nm at 10 Å per voxel, about the radius of a ribosome;
for much finer or coarser grids scale it (``--mask-margin``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DDWError

#: binned volumes are kept at or below this many voxels when ``bin`` is automatic
AUTO_BIN_VOXELS = 1_000_000

#: the slope search keeps the least tilted of the slopes within this fraction of the best
#: agreement (figures in the module doc)
SLOPE_TOLERANCE = 0.05


@dataclass(frozen=True)
class AutoMaskParams:
    """The few settings of :func:`auto_mask` (defaults chosen on the phantoms; see the module
    doc and ``docs/masks.md``). ``bin`` 0: automatic (the binned volume ≤ 1 M voxels);
    ``threshold``: noise spreads the slab's agreement must exceed; ``level``: the surfaces lie
    where the agreement crosses this fraction of its peak; ``margin``: voxels added beyond them
    on both surfaces."""

    # level 0.5 + margin 12: on 60 phantoms (bench/mask.py, seeds 0–19 of thin/tilted/beads) every
    # volume keeps ≥ 90 % of its specimen and ≤ 25 % of its empty space — mean / worst: thin
    # 99.0 / 9.5 %, 95.0 / 17.2 %; tilted 97.6 / 10.7 %, 93.1 / 19.3 %; beads 99.0 / 13.5 %,
    # 94.8 / 25.0 %. The earlier level 0.15 + margin 0.3 × thickness: 40 of 60 (thin 13 of 20,
    # worst 76.0 % of the specimen). Margins 11–12 all pass (module doc).
    bin: int = 0
    tiles: int = 4
    max_tilt: float = 30.0
    threshold: float = 3.0
    level: float = 0.5
    margin: float = 12.0

    def checked(self) -> "AutoMaskParams":
        try:
            b, t = int(self.bin), int(self.tiles)
            mt, th, mg = float(self.max_tilt), float(self.threshold), float(self.margin)
            lv = float(self.level)
        except (TypeError, ValueError):
            raise DDWError(f"mask settings must be numbers, got {self}") from None
        if b < 0 or b != self.bin:
            raise DDWError(f"mask bin must be a whole number ≥ 1 (0 = automatic), got {self.bin}")
        if t < 1 or t != self.tiles:
            raise DDWError(f"mask tiles must be a whole number ≥ 1 (per Y and X), got {self.tiles}; e.g. 8")
        if not 0.0 <= mt <= 60.0:
            raise DDWError(f"mask max tilt must be between 0 and 60 degrees, got {mt:g}; e.g. 30")
        if not (math.isfinite(th) and th > 0):
            raise DDWError(f"mask threshold must be a positive number (× the noise spread), got {th:g}; e.g. 3")
        if not (math.isfinite(mg) and mg >= 0):
            raise DDWError(f"mask margin must be ≥ 0 (voxels added on both surfaces), got {mg:g}; e.g. 12")
        if not 0.0 <= lv < 1.0:
            raise DDWError(f"mask level must be in [0, 1) (fraction of the peak agreement), got {lv:g}; e.g. 0.5")
        return AutoMaskParams(b, t, mt, th, lv, mg)

    def record(self) -> dict:
        return asdict(self)


@dataclass
class AutoMask:
    """The result of :func:`auto_mask`: the boolean ``mask`` ``(Z, Y, X)``, the settings used
    (``bin`` resolved), the slab found (``tilt_y``/``tilt_x`` degrees: the slab's slope along
    Y and X; ``thickness`` in voxels along Z at its centre), the fraction of voxels kept and
    the seconds it took."""

    mask: np.ndarray
    params: AutoMaskParams
    tilt_y: float
    tilt_x: float
    thickness: float  # with the margins
    fraction: float
    seconds: float

    def source(self) -> dict:
        """What the checkpoint records as the mask's source."""
        return {"kind": "auto", **self.params.record(), "tilt_y": round(self.tilt_y, 2),
                "tilt_x": round(self.tilt_x, 2), "fraction": round(self.fraction, 4)}

    def summary(self) -> str:
        return (f"automatic mask: slab {self.thickness:.0f} voxels thick, tilted {self.tilt_y:+.0f}° (Y) "
                f"{self.tilt_x:+.0f}° (X), keeps {self.fraction:.0%} of the volume ({self.seconds:.1f} s)")


def auto_bin(shape) -> int:
    """The binning that brings ``shape`` to at most :data:`AUTO_BIN_VOXELS` voxels, at least 2
    (on the phantoms binning by 2 found the slab far better than no binning: the agreement is
    in the specimen's low frequencies, the noise in the high ones)."""
    n = math.prod(int(s) for s in shape)
    return max(2, math.ceil((n / AUTO_BIN_VOXELS) ** (1 / 3) - 1e-9))


def _binned(vol, b: int, device):
    """Block mean by ``b`` (remainders dropped), read in Z chunks; float32 tensor on ``device``."""
    import torch
    import torch.nn.functional as F

    Z, Y, X = (int(s) for s in vol.shape)
    Zb, Yb, Xb = Z // b, Y // b, X // b
    out = torch.empty((Zb, Yb, Xb), dtype=torch.float32, device=device)
    rows = max(1, (64 * 1024 * 1024) // max(1, Y * X * 4 * b)) * b  # ~64 MB of float32 per chunk
    for z in range(0, Zb * b, rows):
        z1 = min(z + rows, Zb * b)
        chunk = torch.from_numpy(np.array(vol[z:z1, :Yb * b, :Xb * b], dtype=np.float32)).to(device)
        out[z // b:z1 // b] = F.avg_pool3d(chunk[None, None], b)[0, 0] if b > 1 else chunk
    return out


def _smooth_z(a, sigma: float):
    """Gaussian smoothing of ``(Z, ...)`` along Z (edges replicated)."""
    import torch
    import torch.nn.functional as F

    r = int(math.ceil(3 * sigma))
    if r < 1 or a.shape[0] < 2:
        return a
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=a.dtype, device=a.device) / sigma) ** 2)
    k = k / k.sum()
    Z = a.shape[0]
    flat = a.reshape(Z, -1).T[:, None]  # (n, 1, Z)
    flat = F.pad(flat, (r, r), mode="replicate")
    return F.conv1d(flat, k.view(1, 1, -1))[:, 0].T.reshape(a.shape)


def _column_agreement(e, o, tiles: int):
    """``r[z, i, j]``: correlation of the halves in row z of column (i, j); column centres."""
    import torch.nn.functional as F

    Zb, Yb, Xb = e.shape
    ty, tx = max(1, math.ceil(Yb / tiles)), max(1, math.ceil(Xb / tiles))

    def mean(a):  # (Z, ny, nx) means over each column's rows
        return F.avg_pool2d(a[:, None], (ty, tx), ceil_mode=True)[:, 0]

    me, mo = mean(e), mean(o)
    cov = mean(e * o) - me * mo
    var = 0.5 * (mean(e * e) - me * me + mean(o * o) - mo * mo)
    r = cov / var.clamp_min(1e-12)
    ny, nx = r.shape[1:]
    import torch

    cy = torch.clamp(torch.arange(ny, dtype=torch.float32) * ty + (ty - 1) / 2, max=Yb - 1) - (Yb - 1) / 2
    cx = torch.clamp(torch.arange(nx, dtype=torch.float32) * tx + (tx - 1) / 2, max=Xb - 1) - (Xb - 1) / 2
    return _smooth_z(r, 1.0), cy.to(r.device), cx.to(r.device)


def _interquartile_mean(val):
    """Mean over dim 1 of the values between the quartiles, NaN ignored (NaN where all are)."""
    import torch

    v = torch.sort(torch.nan_to_num(val, nan=float("inf")), dim=1).values
    n = (~torch.isnan(val)).sum(1, keepdim=True)  # valid values, sorted first
    idx = torch.arange(val.shape[1], device=val.device).view(1, -1, 1)
    keep = (idx >= n // 4) & (idx < n - n // 4) & (idx < n)
    total = torch.where(keep, v, torch.zeros_like(v)).sum(1)
    count = keep.sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _shifted(cols, off, zp):
    """``(c, Z')`` combined profiles of the columns ``cols`` ``(n, Z)`` read at ``Z' + off``."""
    import torch

    Zb = cols.shape[1]
    src = zp[None, None, :] + off[:, :, None]  # column z read for each Z'
    i0 = torch.floor(src)
    f = src - i0
    i0 = i0.long()
    valid = (i0 >= 0) & (i0 + 1 <= Zb - 1)
    full = cols[None].expand(off.shape[0], -1, -1)
    a = torch.gather(full, 2, i0.clamp(0, Zb - 1))
    b = torch.gather(full, 2, (i0 + 1).clamp(0, Zb - 1))
    val = torch.where(valid, a * (1 - f) + b * f, torch.full_like(a, float("nan")))
    prof = _interquartile_mean(val)
    # a Z' that most columns do not reach (steep slopes, near the top and bottom) is not
    # evidence: a combination of a few noisy columns would win the comparison
    prof = torch.where(valid.float().mean(1) >= 0.75, prof, torch.zeros_like(prof))
    return torch.nan_to_num(prof, nan=0.0)


def _best_slope(r, cy, cx, max_tilt: float, tol: float = 0.0):
    """The slopes ``(sy, sx)`` (Z per Y, Z per X) whose aligned profile holds the most positive
    agreement, that profile on its Z' grid, and the grid's first Z'. Coarse to fine: tilts
    about Y and X in 6° steps, then 2° steps within ±4° of the best (146 candidates instead of
    the 961 of a 2° grid over ±30°). ``tol``: of the candidates within ``tol`` × the best
    agreement, the least tilted wins (the agreement is a noisy function of the slope)."""
    import torch

    Zb = r.shape[0]
    cols = r.reshape(Zb, -1).T  # (n_cols, Z)
    gy, gx = torch.meshgrid(cy, cx, indexing="ij")
    gy, gx = gy.reshape(-1), gx.reshape(-1)
    top = math.tan(math.radians(max_tilt))
    reach = int(math.ceil(top * (float(cy.abs().max()) + float(cx.abs().max())))) + 1
    zp = torch.arange(-reach, Zb + reach, dtype=torch.float32, device=r.device)  # Z' (at the centre)
    seen = {}

    def search(angles_y, angles_x):
        ay, ax = torch.meshgrid(torch.tensor(angles_y), torch.tensor(angles_x), indexing="ij")
        ay, ax = ay.reshape(-1).tolist(), ax.reshape(-1).tolist()
        sy = torch.tan(torch.deg2rad(torch.tensor(ay, dtype=torch.float32))).to(r.device)
        sx = torch.tan(torch.deg2rad(torch.tensor(ax, dtype=torch.float32))).to(r.device)
        for k0 in range(0, len(sy), 64):
            off = sy[k0:k0 + 64, None] * gy[None] + sx[k0:k0 + 64, None] * gx[None]  # (c, n_cols)
            prof = _shifted(cols, off, zp)
            energy = (prof.clamp_min(0) ** 2).sum(1).tolist()  # one transfer per chunk
            slopes = (sy[k0:k0 + 64].tolist(), sx[k0:k0 + 64].tolist())
            for k, value in enumerate(energy):
                seen[(ay[k0 + k], ax[k0 + k])] = (value, slopes[0][k], slopes[1][k], prof[k])

    def pick():
        best = max(v[0] for v in seen.values())
        ok = [(a[0] ** 2 + a[1] ** 2, -v[0], a) for a, v in seen.items() if v[0] >= (1 - tol) * best]
        return min(ok)[2]

    coarse = [6.0 * k for k in range(-int(max_tilt // 6), int(max_tilt // 6) + 1)]
    search(coarse, coarse)
    a = pick()

    def near(v):
        return [v + d for d in (-4.0, -2.0, 0.0, 2.0, 4.0) if abs(v + d) <= max_tilt + 1e-9]

    search(near(a[0]), near(a[1]))
    a = pick()
    _, sy, sx, prof = seen[a]
    return sy, sx, prof, -reach


def _slab_interval(prof, null: float, threshold: float, level: float):
    """``(lo, hi)``: the slab's surfaces on the profile's grid (row ``k`` spans ``[k, k + 1)``),
    where the profile crosses ``max(threshold·null, level·peak)`` (linear between rows) at the
    ends of the run with the largest sum above that line (dips do not split the slab); ``None``
    when the profile never exceeds 4 null spreads (nothing agrees)."""
    p = prof.detach().cpu().numpy().astype(np.float64)
    if null <= 0 or p.max() <= 4 * null:
        return None
    line = max(threshold * null, level * float(p.max()))
    gain = p - line
    best, lo, hi, run, start = -np.inf, 0, 0, 0.0, 0
    for i, g in enumerate(gain):
        if run <= 0:
            run, start = g, i
        else:
            run += g
        if run > best:
            best, lo, hi = run, start, i
    # the crossings: values sit at the rows' centres (k + 0.5)
    top = lo if lo == 0 else lo + 0.5 - (p[lo] - line) / max(p[lo] - p[lo - 1], 1e-12)
    bottom = hi + 1 if hi == len(p) - 1 else hi + 0.5 + (p[hi] - line) / max(p[hi] - p[hi + 1], 1e-12)
    return float(top), float(bottom)


def auto_mask(even, odd, params: AutoMaskParams | None = None, *, device=None) -> AutoMask:
    """The sample mask of a half pair ``even``/``odd`` ``(Z, Y, X)`` (numpy, memory-mapped or
    torch): see the module doc. ``device``: torch device (``None``: CPU — the work is a few
    passes over binned data; the halves are read once)."""
    import torch

    from ..reconstruct.halves import check_same_shape

    t0 = time.perf_counter()
    p = (params or AutoMaskParams()).checked()
    for name, a in (("even half", even), ("odd half", odd)):
        if len(getattr(a, "shape", ())) != 3:
            raise DDWError(f"the {name} must be a 3D tomogram (Z, Y, X), got shape {tuple(getattr(a, 'shape', ()))}")
    check_same_shape(even, odd, what="half tomograms")
    shape = tuple(int(s) for s in even.shape)
    b = p.bin or auto_bin(shape)
    if min(shape) // b < 4:
        raise DDWError(f"tomogram of shape {shape} is too small for a mask binned by {b}; use a smaller bin")
    dev = torch.device("cpu") if device is None else torch.device(device)
    if isinstance(even, torch.Tensor):
        even, odd = even.detach().cpu().numpy(), odd.detach().cpu().numpy()
    e, o = _binned(even, b, dev), _binned(odd, b, dev)
    for name, a in (("even", e), ("odd", o)):
        if not bool(torch.isfinite(a).all()):
            raise DDWError(f"the {name} half contains NaN/inf voxels; fix the reconstruction before masking")
    e = (e - e.mean()) / e.std().clamp_min(1e-12)
    o = (o - o.mean()) / o.std().clamp_min(1e-12)
    r, cy, cx = _column_agreement(e, o, p.tiles)
    # the null: the same statistic with the odd half moved by half the field in Y and X —
    # the specimens no longer line up, the noise's own spread and correlations stay
    r_null, _, _ = _column_agreement(e, torch.roll(o, (o.shape[1] // 2, o.shape[2] // 2), dims=(1, 2)), p.tiles)
    del e, o
    sy, sx, prof, z0 = _best_slope(r, cy, cx, p.max_tilt, SLOPE_TOLERANCE)
    # the null goes through the same search: the best of many slopes of pure noise is what
    # the data's profile must beat (else two noise volumes would give a slab)
    _, _, null_prof, _ = _best_slope(r_null, cy, cx, p.max_tilt, SLOPE_TOLERANCE)
    reached = null_prof != 0
    null = float(torch.sqrt((null_prof[reached] ** 2).mean())) if bool(reached.any()) else 0.0
    found = _slab_interval(prof, null, p.threshold, p.level)
    Zb, Yb, Xb = r.shape[0], shape[1] // b, shape[2] // b
    Z, Y, X = shape
    if found is None:  # no agreement anywhere: keep everything (the caller warns)
        mask = np.ones(shape, dtype=bool)
        return AutoMask(mask, dataclasses.replace(p, bin=b), 0.0, 0.0,
                        float(Z), 1.0, time.perf_counter() - t0)
    lo, hi = found
    # binned Z' (relative to the centre column) → full-grid Z at the binned grid's centre
    lo_b, hi_b = lo + z0 - p.margin / b, hi + z0 + p.margin / b
    # full grid: z_f = b·z_b; the plane's offset at full (y, x) from the binned centre
    yc, xc = (Yb * b - 1) / 2, (Xb * b - 1) / 2
    y = (np.arange(Y, dtype=np.float32) - yc) / b
    x = (np.arange(X, dtype=np.float32) - xc) / b
    off = sy * y[:, None] + sx * x[None, :]  # binned Z per (y, x)
    z_lo = (lo_b + off) * b
    z_hi = (hi_b + off) * b
    zc = np.arange(Z, dtype=np.float32)[:, None, None] + 0.5  # voxel centres on the full grid
    mask = (zc >= z_lo[None]) & (zc <= z_hi[None])
    used = dataclasses.replace(p, bin=b)
    return AutoMask(mask, used, math.degrees(math.atan(sy)), math.degrees(math.atan(sx)), (hi_b - lo_b) * b,
                    float(mask.mean()), time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# a given mask: checks, and what it does to the cube grid
# --------------------------------------------------------------------------------------------
def checked_mask(mask, shape, *, name: str = "mask") -> tuple[np.ndarray, list[str]]:
    """A user's mask as a boolean array of ``shape``, and the warnings to show.

    Another shape → :class:`DDWError`; values other than 0/1 (a probability map, a soft mask)
    are thresholded at 0.5 and said so; a mask with no voxel → ``DDWError``; a mask keeping
    every voxel → a warning (it removes nothing)."""
    a = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    shape = tuple(int(s) for s in shape)
    if tuple(a.shape) != shape:
        raise DDWError(f"{name}: shape {tuple(a.shape)} differs from the tomogram shape {shape}; make the "
                       "mask on the same (binned) grid as the halves")
    warnings = []
    if a.dtype == bool:
        out = a
    else:
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise DDWError(f"{name}: values of type {a.dtype} are not a mask; give 0 (out) and 1 (in)")
        vals = np.unique(a[::max(1, a.shape[0] // 16)])  # a sample of rows is enough to tell
        binary = bool(np.all((vals == 0) | (vals == 1)))
        if not binary:
            if not np.all(np.isfinite(vals)):
                raise DDWError(f"{name}: contains NaN/inf values; give 0 (out) and 1 (in)")
            out = a > 0.5
            warnings.append(f"{name}: not binary (values {float(vals.min()):g} … {float(vals.max()):g}); "
                            "thresholded at 0.5 (voxels above 0.5 are inside)")
        else:
            out = a != 0
    kept = int(np.count_nonzero(out))
    if kept == 0:
        raise DDWError(f"{name}: no voxel is inside the mask (all 0); give a mask with the specimen set "
                       "to 1, or leave the mask out to fit on the whole tomogram")
    if kept == out.size:
        warnings.append(f"{name}: every voxel is inside the mask; it removes nothing (the fit uses the whole "
                        "tomogram)")
    return out, warnings


def mask_cube_counts(mask, shape, subtomo_size: int, strides=None, min_mask_fraction: float = 0.3) -> tuple[int, int]:
    """``(kept, total)``: the cubes of the fit's grid (core.fit.cubes) at least
    ``min_mask_fraction`` inside ``mask`` (fitting and validation cubes alike), of all."""
    from .cubes import _as_triple, _mask_fractions, default_strides, extraction_size, grid_corners_1d

    shape = tuple(int(s) for s in shape)
    e = extraction_size(int(subtomo_size))
    t = default_strides(shape, int(subtomo_size)) if strides is None else _as_triple(strides, "strides")
    per_axis = [grid_corners_1d(n, e, k) for n, k in zip(shape, t)]
    corners = [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]
    if not corners:
        return 0, 0
    fractions = _mask_fractions(np.asarray(mask) > 0, corners, e)
    return int(np.count_nonzero(fractions >= float(min_mask_fraction))), len(corners)
