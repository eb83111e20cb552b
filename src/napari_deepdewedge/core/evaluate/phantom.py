"""A seeded, cryo-ET-like synthetic phantom, its noisy tilt series and its ground truth.

The phantom is a ``(Z, Y, X)`` float32 density map, **positive = dense** (more scattering mass,
i.e. what a reconstruction of a contrast-inverted, "white is dense" tomogram shows):

- vacuum outside the ice slab: exactly ``0``;
- an ice slab, flat, centred in Z and thinner than Z (``slab_fraction`` of Z), density ``ICE``;
- ribosome-like particles (~25 nm, from 2–3 species per seed): lumpy blobs made of a few
  overlapping Gaussians in a large and a small subunit, randomly rotated, peak density ~1 above ice;
- vesicles: thin spherical shells with the two leaflets of a lipid bilayer (~4 nm thick);
- filaments: long thin tubes along smooth 3D curves (actin-like solid ~7 nm rods, and hollow
  microtubule-like ~25 nm tubes where the slab is thick enough);
- gold beads: small dense spheres (5–10 nm) near the ice surfaces, density ``BEAD`` (the densest).

Sizes are given in nm and converted with ``pixel_size`` (Å); in thin slabs (small test volumes)
particles and vesicles shrink so that they still fit inside the ice. Every object is drawn only
inside its bounding box (vectorized numpy), composited with ``max`` over the ice, and clipped to
the slab, so nothing lies outside it. The same ``seed`` gives the same phantom; different seeds
give different particle species, counts, poses and placements.

:func:`simulate_tilt_series` projects with the package's projector
(:func:`core.reconstruction.forward_project`, the convention ``x' = x·cosθ + z·sinθ``) and adds
Gaussian noise at a per-projection SNR = var(signal) / var(noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import DDWError

ICE = 0.25  # ice density inside the slab (vacuum outside is 0)
PROTEIN = 1.0  # peak density of particles above the ice
MEMBRANE = 0.8  # peak density of a membrane leaflet pair
FILAMENT = 0.9  # density of filaments
BEAD = 4.0  # gold: by far the densest object


@dataclass
class SampleData:
    """A synthetic data set: noisy tilt series ``(n, Y, X)``, its angles (degrees, stack order),
    the noiseless ground-truth volume ``(Z, Y, X)`` and the pixel size in Å."""

    tilt_series: np.ndarray
    angles: np.ndarray
    ground_truth: np.ndarray
    pixel_size: float


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _check_shape(shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise DDWError(f"phantom shape {shape!r} must be three integers (Z, Y, X)") from None
    if len(shape) != 3 or min(shape) < 8:
        raise DDWError(
            f"phantom shape {shape} must be (Z, Y, X) with every size ≥ 8, e.g. (64, 128, 128)"
        )
    return shape


def _check_count(value, name: str):
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise DDWError(f"{name} must be a whole number ≥ 0 or None (automatic), got {value!r}") from None
    if n < 0 or n != value:
        raise DDWError(f"{name} must be a whole number ≥ 0 or None (automatic), got {value!r}")
    return n


def slab_extent(shape, slab_fraction: float = 0.6) -> tuple[int, int]:
    """``(z0, z1)``: the ice slab occupies rows ``z0 ≤ z < z1``, centred in Z."""
    Z = _check_shape(shape)[0]
    if not 0.1 <= float(slab_fraction) < 1.0:
        raise DDWError(
            f"slab_fraction {slab_fraction} must be in [0.1, 1): the ice must be thinner than Z"
        )
    t = max(4, min(Z - 2, int(round(Z * float(slab_fraction)))))
    z0 = (Z - t) // 2
    return z0, z0 + t


def _random_rotation(rng) -> np.ndarray:
    """Uniform random 3×3 rotation (unit quaternion from 4 Gaussians)."""
    q = rng.standard_normal(4)
    w, a, b, c = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (b * b + c * c), 2 * (a * b - c * w), 2 * (a * c + b * w)],
            [2 * (a * b + c * w), 1 - 2 * (a * a + c * c), 2 * (b * c - a * w)],
            [2 * (a * c - b * w), 2 * (b * c + a * w), 1 - 2 * (a * a + b * b)],
        ]
    )


class _Canvas:
    """The object layer (density above ice), clipped to the slab; objects drawn by bounding box."""

    def __init__(self, shape, z0, z1):
        self.shape = shape
        self.z0, self.z1 = z0, z1
        self.data = np.zeros(shape, dtype=np.float32)

    def box(self, center, half):
        """Slices and centred coordinate grids (ogrid) of the box ``center ± half`` in the slab."""
        lo_limits = (self.z0, 0, 0)
        hi_limits = (self.z1, self.shape[1], self.shape[2])
        sl, grids = [], []
        for c, h, lo_l, hi_l in zip(center, half, lo_limits, hi_limits):
            lo = max(lo_l, int(math.floor(c - h)))
            hi = min(hi_l, int(math.ceil(c + h)) + 1)
            if hi <= lo:
                return None, None
            sl.append(slice(lo, hi))
            grids.append(np.arange(lo, hi, dtype=np.float32) - np.float32(c))
        gz, gy, gx = grids
        return tuple(sl), (gz[:, None, None], gy[None, :, None], gx[None, None, :])

    def paint(self, sl, values):
        np.maximum(self.data[sl], values.astype(np.float32, copy=False), out=self.data[sl])


class _Placer:
    """Rejection sampling of non-overlapping spheres (centre, radius) inside the slab."""

    def __init__(self, shape, z0, z1, rng):
        self.shape, self.z0, self.z1, self.rng = shape, z0, z1, rng
        self.spheres: list[tuple[np.ndarray, float]] = []

    def place(self, radius, *, z_range=None, margin=1.0, tries=200):
        Z, Y, X = self.shape
        if z_range is None:
            z_range = (self.z0 + radius + 0.5, self.z1 - 1 - radius - 0.5)
        if z_range[1] < z_range[0]:
            return None
        cs = np.array([p for p, _ in self.spheres]).reshape(-1, 3)
        rs = np.array([r for _, r in self.spheres], dtype=np.float64)
        for _ in range(tries):
            c = np.array(
                [
                    self.rng.uniform(*z_range),
                    self.rng.uniform(0, Y - 1),
                    self.rng.uniform(0, X - 1),
                ]
            )
            if not len(rs) or np.all(np.sqrt(((cs - c) ** 2).sum(1)) >= radius + rs + margin):
                self.spheres.append((c, radius))
                return c
        return None


# ----------------------------------------------------------------------------------------------
# objects
# ----------------------------------------------------------------------------------------------
def _particle_species(rng, n_species, diameter):
    """Templates: list of (centres (k,3), sigmas (k,), amplitudes (k,), peak) in pixels, about 0."""
    species = []
    for _ in range(n_species):
        sep = diameter * rng.uniform(0.36, 0.46)
        parts = []
        for sub_c, n_g, rad, sig in (
            (np.array([-sep / 2, 0, 0]), rng.integers(6, 10), 0.30, 0.15),  # large subunit
            (np.array([sep / 2, 0, 0]), rng.integers(3, 6), 0.22, 0.12),  # small subunit
        ):
            off = rng.standard_normal((n_g, 3))
            off *= (rng.uniform(0.3, 1.0, n_g) / np.linalg.norm(off, axis=1))[:, None]
            centres = sub_c + off * rad * diameter
            sigmas = sig * diameter * rng.uniform(0.8, 1.25, n_g)
            amps = rng.uniform(0.7, 1.0, n_g)
            parts.append((centres, sigmas, amps))
        centres = np.concatenate([p[0] for p in parts])
        centres -= centres.mean(axis=0)
        sigmas = np.concatenate([p[1] for p in parts])
        amps = np.concatenate([p[2] for p in parts])
        # peak of the lumpy sum (attained near a lump centre): the normalisation to PROTEIN
        d2 = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        peak = float((amps[None, :] * np.exp(-0.5 * d2 / sigmas[None, :] ** 2)).sum(1).max())
        species.append((centres, sigmas, amps, peak))
    return species


def _draw_particle(canvas, center, template, rotation):
    centres, sigmas, amps, peak = template
    reach = float(np.max(np.linalg.norm(centres, axis=1) + 3 * sigmas))
    sl, (gz, gy, gx) = canvas.box(center, (reach, reach, reach))
    if sl is None:
        return
    rc = centres @ rotation.T
    s = np.zeros((gz.shape[0], gy.shape[1], gx.shape[2]), dtype=np.float32)
    # each lump only inside its own ±3σ sub-box of the particle's box
    offs = np.array([gz[0, 0, 0], gy[0, 0, 0], gx[0, 0, 0]], dtype=np.float64)
    dims = s.shape
    for c, sg, a in zip(rc, sigmas, amps):
        lo = np.maximum(np.floor(c - 3 * sg - offs).astype(int), 0)
        hi = np.minimum(np.ceil(c + 3 * sg - offs).astype(int) + 1, dims)
        if np.any(hi <= lo):
            continue
        cz, cy, cx = (c - offs - lo).astype(np.float32)
        az = np.arange(hi[0] - lo[0], dtype=np.float32)[:, None, None] - cz
        ay = np.arange(hi[1] - lo[1], dtype=np.float32)[None, :, None] - cy
        ax = np.arange(hi[2] - lo[2], dtype=np.float32)[None, None, :] - cx
        k = np.float32(-0.5 / sg**2)
        s[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += np.float32(a) * (
            np.exp(az * az * k) * np.exp(ay * ay * k) * np.exp(ax * ax * k))
    # normalise the lumpy sum to the template's peak and lift the flanks a little (fuller body)
    canvas.paint(sl, PROTEIN * np.clip(s / np.float32(peak), 0, 1) ** np.float32(0.7))


def _draw_vesicle(canvas, center, radius, leaflet_sigma, leaflet_gap):
    reach = radius + leaflet_gap + 4 * leaflet_sigma
    sl, (gz, gy, gx) = canvas.box(center, (reach, reach, reach))
    if sl is None:
        return
    r = np.sqrt(gz**2 + gy**2 + gx**2)
    k = np.float32(-0.5 / leaflet_sigma**2)
    shell = np.exp((r - (radius - leaflet_gap / 2)) ** 2 * k) + np.exp((r - (radius + leaflet_gap / 2)) ** 2 * k)
    canvas.paint(sl, MEMBRANE * shell)


def _draw_bead(canvas, center, radius):
    reach = radius + 3
    sl, (gz, gy, gx) = canvas.box(center, (reach, reach, reach))
    if sl is None:
        return
    r = np.sqrt(gz**2 + gy**2 + gx**2)
    canvas.paint(sl, BEAD / (1.0 + np.exp((r - radius) / 0.4)))


def _filament_curve(rng, shape, z_lo, z_hi):
    """A smooth cubic Bezier curve crossing the Y–X field, z kept in [z_lo, z_hi]."""
    _, Y, X = shape
    ang = rng.uniform(0, math.pi)
    d = np.array([math.sin(ang), math.cos(ang)])  # (y, x)
    mid = np.array([rng.uniform(0.25, 0.75) * Y, rng.uniform(0.25, 0.75) * X])
    half = 0.6 * math.hypot(Y, X)
    p0, p3 = mid - half * d, mid + half * d
    normal = np.array([-d[1], d[0]])
    bend = rng.uniform(-0.35, 0.35, 2) * min(Y, X)
    p1 = p0 + (p3 - p0) / 3 + bend[0] * normal
    p2 = p0 + 2 * (p3 - p0) / 3 + bend[1] * normal
    zs = rng.uniform(z_lo, z_hi, 4)
    ctrl = np.stack([np.r_[zs[0], p0], np.r_[zs[1], p1], np.r_[zs[2], p2], np.r_[zs[3], p3]])
    t = np.linspace(0, 1, 400)[:, None]  # densified by arc length when drawn
    pts = ((1 - t) ** 3) * ctrl[0] + 3 * ((1 - t) ** 2) * t * ctrl[1] + 3 * (1 - t) * t**2 * ctrl[2] + t**3 * ctrl[3]
    inside = (pts[:, 1] > -4) & (pts[:, 1] < Y + 3) & (pts[:, 2] > -4) & (pts[:, 2] < X + 3)
    return pts[inside]


def _resample(pts, spacing):
    """Points along the polyline ``pts`` at equal arc-length ``spacing`` (px)."""
    if len(pts) < 2:
        return pts
    seg = np.sqrt((np.diff(pts, axis=0) ** 2).sum(1))
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, arc[-1] + 1e-9, spacing)
    return np.stack([np.interp(t, arc, pts[:, i]) for i in range(3)], axis=1)


def _draw_filament(canvas, pts, radius, hollow_wall=None):
    """Tube along the polyline ``pts``, resampled at 1 px (2 px for hollow tubes); the distance
    to the nearest sample then errs by ≲ spacing²/(8·radius) px where the density is drawn.

    The curve is cut into pieces; each piece is drawn in its own bounding box (± the tube's
    reach) and composited with ``max``. A solid tube's profile falls with distance, so the max
    over pieces equals the profile of the distance to the whole curve, and the distance to the
    piece's own samples is enough (one broadcast per piece). A hollow tube's profile is not
    monotone, so its pieces use the distance to every curve sample near the box (a running
    minimum over small boxes around each sample), which joins the pieces seamlessly.
    """
    # hollow tubes: the wall sits ≥ radius − 2σ from the axis, where 2 px sampling errs < 0.1 px
    pts = _resample(pts, 2.0 if hollow_wall else 1.0)
    if len(pts) == 0:
        return
    reach = radius + (hollow_wall or 0) + 3
    step = 24 if hollow_wall else 16
    r = int(math.ceil(reach))
    ar = np.arange(-r, r + 1, dtype=np.float32)
    for i0 in range(0, len(pts), step):
        piece = pts[i0 : i0 + step + 1]
        lo = piece.min(axis=0) - reach
        hi = piece.max(axis=0) + reach
        sl, (gz, gy, gx) = canvas.box((lo + hi) / 2, (hi - lo) / 2)
        if sl is None:
            continue
        if not hollow_wall:
            c = ((lo + hi) / 2).astype(np.float32)
            q = (piece - c).astype(np.float32)  # samples in the box's centred coordinates
            dist2 = np.full((gz.shape[0], gy.shape[1], gx.shape[2]), np.float32(reach**2))
            for k0 in range(0, len(q), 8):  # bounded temporaries: ≤ 8 box-sized arrays
                qq = q[k0 : k0 + 8]
                d2 = ((gz[None] - qq[:, 0, None, None, None]) ** 2
                      + (gy[None] - qq[:, 1, None, None, None]) ** 2
                      + (gx[None] - qq[:, 2, None, None, None]) ** 2)
                np.minimum(dist2, d2.min(axis=0), out=dist2)
            d = np.sqrt(dist2)
            canvas.paint(sl, FILAMENT / (1.0 + np.exp((d - radius) / 0.5)))
            continue
        origin = np.array([s_.start for s_ in sl], dtype=np.float64)
        dims = np.array([s_.stop - s_.start for s_ in sl])
        near = pts[np.all((pts >= origin - reach - 1) & (pts <= origin + dims + reach), axis=1)]
        dist2 = np.full(tuple(dims), np.float32(reach**2))
        for p in near:
            q = p - origin
            base = np.floor(q).astype(int)
            lo_i = np.maximum(base - r, 0)
            hi_i = np.minimum(base + r + 1, dims)
            if np.any(hi_i <= lo_i):
                continue
            f = (q - base).astype(np.float32)
            oz = ar[lo_i[0] - base[0] + r : hi_i[0] - base[0] + r] - f[0]
            oy = ar[lo_i[1] - base[1] + r : hi_i[1] - base[1] + r] - f[1]
            ox = ar[lo_i[2] - base[2] + r : hi_i[2] - base[2] + r] - f[2]
            d2 = oz[:, None, None] ** 2 + oy[None, :, None] ** 2 + ox[None, None, :] ** 2
            sub = dist2[lo_i[0] : hi_i[0], lo_i[1] : hi_i[1], lo_i[2] : hi_i[2]]
            np.minimum(sub, d2, out=sub)
        d = np.sqrt(dist2)
        canvas.paint(sl, FILAMENT * np.exp(-0.5 * ((d - radius) / (hollow_wall / 2)) ** 2))


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def make_phantom(
    shape=(64, 128, 128),
    seed: int = 0,
    *,
    particles: int | None = None,
    vesicles: int | None = None,
    filaments: int | None = None,
    beads: int | None = None,
    pixel_size: float = 10.0,
    slab_fraction: float = 0.6,
    particle_density: float = 1.0,
) -> np.ndarray:
    """A seeded cryo-ET-like density map ``(Z, Y, X)`` float32, positive = dense.

    Counts default (``None``) from the slab size: ribosome-like particles filling ~10 % of the
    ice, about one vesicle per (150 nm)², one filament per (100 nm)², a few gold beads; each at
    least one. Sizes are physical (nm) at ``pixel_size`` Å per voxel and shrink to fit thin
    slabs. The ice slab fills rows ``slab_extent(shape, slab_fraction)``; outside it is 0.
    ``particle_density`` scales the default particle count (2.0: particles fill ~20 % of the ice).
    """
    Z, Y, X = _check_shape(shape)
    counts = {k: _check_count(v, k) for k, v in
              dict(particles=particles, vesicles=vesicles, filaments=filaments, beads=beads).items()}
    try:
        px_nm = float(pixel_size) / 10.0
    except (TypeError, ValueError):
        raise DDWError(f"pixel_size {pixel_size!r} must be a number of Å per voxel, e.g. 10") from None
    if not (math.isfinite(px_nm) and px_nm > 0):
        raise DDWError(f"pixel_size {pixel_size} must be a positive number of Å per voxel, e.g. 10")
    try:
        seed_int = int(seed)
    except (TypeError, ValueError):
        raise DDWError(f"seed {seed!r} must be an integer") from None
    z0, z1 = slab_extent((Z, Y, X), slab_fraction)
    thick = z1 - z0
    rng = np.random.default_rng(seed_int)
    canvas = _Canvas((Z, Y, X), z0, z1)
    placer = _Placer((Z, Y, X), z0, z1, rng)

    def nm(v):
        return v / px_nm

    area_nm2 = (Y * px_nm) * (X * px_nm)
    slab_nm3 = area_nm2 * thick * px_nm

    # beads first (small, near the ice surfaces, where fiducials sit)
    n_beads = counts["beads"] if counts["beads"] is not None else max(2, int(round(3 + area_nm2 / 12000)))
    for _ in range(n_beads):
        rad = max(1.5, nm(rng.uniform(2.5, 5.0)))
        rad = min(rad, (thick - 2) / 2)
        top = rng.random() < 0.5
        band = (z0 + rad + 0.5, min(z1 - 1 - rad - 0.5, z0 + rad + 2.5)) if top else (
            max(z0 + rad + 0.5, z1 - 1 - rad - 2.5), z1 - 1 - rad - 0.5)
        c = placer.place(rad, z_range=band)
        if c is not None:
            _draw_bead(canvas, c, rad)

    # vesicles: the outer leaflet (plus 2σ) must stay inside the ice
    sigma, gap = max(0.6, nm(1.0)), max(1.5, nm(3.0))
    shell_out = gap / 2 + 2 * sigma
    max_ves_r = (thick - 1) / 2 - shell_out - 0.5
    n_ves = counts["vesicles"] if counts["vesicles"] is not None else max(1, int(round(area_nm2 / 150.0**2)))
    if max_ves_r >= 4:
        for _ in range(n_ves):
            rad = min(max(nm(rng.uniform(15, 40)), 4.0), max_ves_r)
            c = placer.place(rad + shell_out, margin=2.0)
            if c is not None:
                _draw_vesicle(canvas, c, rad, sigma, gap)

    # particles: a mix of 2–3 species
    diameter = min(nm(rng.uniform(20, 25)), 0.75 * thick)
    diameter = max(diameter, 4.0)
    species = _particle_species(rng, int(rng.integers(2, 4)), diameter)
    vol_particle_nm3 = (math.pi / 6) * (diameter * px_nm) ** 3
    n_part = counts["particles"] if counts["particles"] is not None else max(
        1, int(round(0.10 * float(particle_density) * slab_nm3 / vol_particle_nm3 * rng.uniform(0.8, 1.2))))
    for _ in range(n_part):
        c = placer.place(0.45 * diameter, margin=1.0)
        if c is None:
            continue
        template = species[int(rng.integers(len(species)))]
        _draw_particle(canvas, c, template, _random_rotation(rng))

    # filaments (drawn last; they may cross other objects, as in cells)
    n_fil = counts["filaments"] if counts["filaments"] is not None else max(1, int(round(area_nm2 / 100.0**2)))
    for _ in range(n_fil):
        tube_r = nm(12.5)
        if rng.random() < 0.35 and thick >= 2 * tube_r + nm(5) + 4:
            radius, wall = tube_r, nm(5.0)
        else:
            radius, wall = max(1.2, nm(3.5)), None
        extent = radius + (wall or 0) / 2 + 1
        z_lo, z_hi = z0 + extent, z1 - 1 - extent
        if z_hi < z_lo:
            z_lo = z_hi = (z0 + z1 - 1) / 2
        _draw_filament(canvas, _filament_curve(rng, (Z, Y, X), z_lo, z_hi), radius, wall)

    vol = canvas.data
    vol[z0:z1] += np.float32(ICE)
    return vol


def simulate_tilt_series(volume, angles, snr: float | None = 0.3, seed: int = 0, device=None, *,
                         infinite_slab: bool = True) -> np.ndarray:
    """Noisy projections ``(n, Y, X)`` float32 of ``volume`` at ``angles`` (degrees).

    Projected with :func:`core.reconstruction.forward_project`; every projection gets Gaussian
    noise with variance ``var(projection) / snr`` (per-projection SNR = var(signal)/var(noise));
    ``snr=None`` returns the noiseless projections. With ``infinite_slab`` (default) the specimen continues past the X edges of the box (each
    z-plane padded with its median — the ice for a phantom), so tilted rays near the edges
    still cross the full ice, as in a real specimen wider than the field of view; ``False``
    projects the bare box.
    """
    from ..reconstruct.fbp import forward_project

    if snr is not None:
        try:
            snr = float(snr)
        except (TypeError, ValueError):
            raise DDWError(f"snr {snr!r} must be a positive number, e.g. 0.3 (or None: no noise)") from None
        if not (math.isfinite(snr) and snr > 0):
            raise DDWError(
                f"snr {snr} must be a positive number (signal variance / noise variance), e.g. 0.3"
            )
    ang = np.asarray(angles, dtype=np.float64).reshape(-1)
    if ang.size < 1:
        raise DDWError("simulate_tilt_series needs at least one tilt angle (degrees)")
    vol = volume.detach().cpu().numpy() if hasattr(volume, "detach") else np.asarray(volume)
    if vol.ndim != 3:
        raise DDWError(f"simulate_tilt_series needs a 3D volume (Z, Y, X), got shape {vol.shape}")
    pad = 0
    if infinite_slab:
        # continue every z-plane beyond the X edges with its median (the ice, for a phantom),
        # far enough that every ray hitting the detector at the largest tilt sees material:
        # detector column x' reaches x = (x' - z·sinθ)/cosθ
        t = min(math.radians(float(np.max(np.abs(ang)))), math.radians(85.0))
        Zv, Xv = vol.shape[0], vol.shape[2]
        pad = int(math.ceil(Xv / 2 * (1 / math.cos(t) - 1) + Zv / 2 * math.tan(t))) + 2
        fill = np.median(vol.reshape(Zv, -1), axis=1).astype(np.float32)[:, None, None]
        side = np.broadcast_to(fill, (Zv, vol.shape[1], pad))
        vol = np.concatenate([side, np.asarray(vol, dtype=np.float32), side], axis=2)
    proj = np.asarray(forward_project(vol, ang, device=device), dtype=np.float32)
    if pad:
        proj = proj[:, :, pad : pad + vol.shape[2] - 2 * pad]
    if snr is None:
        return proj
    rng = np.random.default_rng(int(seed))
    var = proj.reshape(len(ang), -1).astype(np.float64).var(axis=1)
    if np.any(var <= 0):
        raise DDWError(
            "a projection of the volume is constant, so an SNR cannot be set; give a volume with "
            "structure (e.g. from make_phantom)"
        )
    out = np.empty_like(proj)
    for i in range(len(ang)):
        noise = rng.standard_normal(proj.shape[1:], dtype=np.float32)
        out[i] = proj[i] + np.float32(math.sqrt(var[i] / snr)) * noise
    return out


def make_sample(
    shape=(64, 128, 128),
    tilt_range=(-60, 60, 2),
    snr: float = 0.3,
    seed: int = 0,
    pixel_size: float = 10.0,
    device=None,
) -> SampleData:
    """Phantom + its noisy tilt series over ``tilt_range = (min, max, step)`` degrees."""
    from ..io.angles import angles_from_range

    try:
        tmin, tmax, step = (float(t) for t in tilt_range)
    except (TypeError, ValueError):
        raise DDWError(
            f"tilt_range {tilt_range!r} must be (min, max, step) in degrees, e.g. (-60, 60, 2)"
        ) from None
    angles = angles_from_range(tmin, tmax, step)
    truth = make_phantom(shape, seed, pixel_size=pixel_size)
    series = simulate_tilt_series(truth, angles, snr=snr, seed=int(seed) + 1, device=device)
    return SampleData(tilt_series=series, angles=angles, ground_truth=truth, pixel_size=float(pixel_size))
