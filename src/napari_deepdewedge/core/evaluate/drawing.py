"""The drawing primitives of the synthetic phantom (:mod:`.phantom`): a canvas that composites
objects with ``max`` inside their bounding boxes, a placer that keeps objects apart, and one
function per kind of object (ribosome-like particles, vesicles, gold beads, filaments along
smooth 3D curves). Sizes are in voxels here; :func:`.phantom.make_phantom` converts from nm.
"""
from __future__ import annotations

import math

import numpy as np

PROTEIN = 1.0  # peak density of particles above the ice
MEMBRANE = 0.8  # peak density of a membrane leaflet pair
FILAMENT = 0.9  # density of filaments
BEAD = 4.0  # gold: by far the densest object

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
