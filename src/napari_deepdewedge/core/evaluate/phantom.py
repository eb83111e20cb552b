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
(:func:`core.reconstruct.geometry.forward_project`, the convention ``x' = x·cosθ + z·sinθ``) and adds
Gaussian noise at a per-projection SNR = var(signal) / var(noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import DDWError
from .drawing import (  # noqa: F401  (the densities: part of the phantom's contract)
    BEAD, FILAMENT, MEMBRANE, PROTEIN, _Canvas, _Placer, _draw_bead, _draw_filament, _draw_particle,
    _draw_vesicle, _filament_curve, _particle_species, _random_rotation,
)

ICE = 0.25  # ice density inside the slab (vacuum outside is 0)


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


# ----------------------------------------------------------------------------------------------
# objects
# ----------------------------------------------------------------------------------------------


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

    Projected with :func:`core.reconstruct.fbp.forward_project`; every projection gets Gaussian
    noise with variance ``var(projection) / snr`` (per-projection SNR = var(signal)/var(noise));
    ``snr=None`` returns the noiseless projections. With ``infinite_slab`` (default) the specimen continues past the X edges of the box (each
    z-plane padded with its median — the ice for a phantom), so tilted rays near the edges
    still cross the full ice, as in a real specimen wider than the field of view; ``False``
    projects the bare box.
    """
    from ..reconstruct.geometry import forward_project

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
