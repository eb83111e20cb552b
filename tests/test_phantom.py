"""Tests of the synthetic phantom and its simulated tilt series (core/evaluate/phantom.py)."""
import math

import numpy as np
import pytest

from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.evaluate.phantom import (
    BEAD,
    ICE,
    PROTEIN,
    SampleData,
    make_phantom,
    make_sample,
    simulate_tilt_series,
    slab_extent,
)

SMALL = (32, 64, 64)


@pytest.fixture(scope="module")
def default_phantom():
    return make_phantom()


def test_default_shape_dtype_and_determinism(default_phantom):
    v = default_phantom
    assert v.shape == (64, 128, 128) and v.dtype == np.float32
    assert np.array_equal(v, make_phantom(seed=0))
    assert np.all(np.isfinite(v)) and v.min() >= 0


def test_other_shapes_and_seeds_differ():
    a = make_phantom((40, 56, 72), seed=1)
    b = make_phantom((40, 56, 72), seed=2)
    assert a.shape == (40, 56, 72) and a.dtype == np.float32
    assert not np.array_equal(a, b)
    # the objects (above ice) are laid out differently, not just shifted a little
    oa, ob = (a - ICE).clip(0), (b - ICE).clip(0)
    cc = np.corrcoef(oa.ravel(), ob.ravel())[0, 1]
    assert cc < 0.5


def test_content_inside_slab_only(default_phantom):
    v = default_phantom
    z0, z1 = slab_extent(v.shape)
    assert 0 < z0 and z1 < v.shape[0] and (z1 - z0) < v.shape[0]
    assert np.all(v[:z0] == 0) and np.all(v[z1:] == 0)
    assert np.all(v[z0:z1] >= ICE - 1e-6)  # ice fills the slab
    assert (v[z0:z1] > ICE + 0.3).mean() > 0.02  # and there are objects in it
    # same for a thin demo-sized volume
    w = make_phantom((32, 48, 48), seed=5)
    z0, z1 = slab_extent(w.shape)
    assert np.all(w[:z0] == 0) and np.all(w[z1:] == 0) and (w[z0:z1] > ICE + 0.3).any()


def test_counts_zero_gives_bare_ice_and_each_kind_alone_draws_something():
    shape = SMALL
    z0, z1 = slab_extent(shape)
    ice = make_phantom(shape, 3, particles=0, vesicles=0, filaments=0, beads=0)
    assert np.all(ice[z0:z1] == np.float32(ICE)) and ice.sum() == pytest.approx(ICE * (z1 - z0) * 64 * 64, rel=1e-5)
    for kind in ("particles", "vesicles", "filaments", "beads"):
        counts = dict(particles=0, vesicles=0, filaments=0, beads=0)
        counts[kind] = 2
        v = make_phantom(shape, 3, **counts)
        assert (v > ICE + 0.2).sum() > 10, kind


def test_beads_are_the_densest():
    no_beads = make_phantom(SMALL, 4, beads=0)
    only_beads = make_phantom(SMALL, 4, particles=0, vesicles=0, filaments=0, beads=3)
    assert no_beads.max() <= ICE + PROTEIN + 1e-5
    assert only_beads.max() > ICE + 0.8 * BEAD
    full = make_phantom(SMALL, 4)
    beads_mask = full > ICE + 0.5 * BEAD
    assert beads_mask.any() and full[~beads_mask].max() < full[beads_mask].min()


def test_particles_are_ribosome_sized():
    """One particle in a roomy slab at 10 Å/px: 20–25 nm → ~14–26 px across (lumpy, at half
    of its peak density)."""
    v = make_phantom((48, 48, 48), 0, particles=1, vesicles=0, filaments=0, beads=0, slab_fraction=0.9)
    body = np.argwhere(v > ICE + 0.5 * PROTEIN)
    extent = body.max(0) - body.min(0) + 1
    assert 12 <= extent.max() <= 28, extent
    # at 5 Å/px the same particle is twice as many pixels
    v5 = make_phantom((96, 96, 96), 0, particles=1, vesicles=0, filaments=0, beads=0,
                      slab_fraction=0.9, pixel_size=5.0)
    body5 = np.argwhere(v5 > ICE + 0.5 * PROTEIN)
    assert (body5.max(0) - body5.min(0) + 1).max() > 1.5 * extent.max()


@pytest.mark.parametrize(
    "kwargs",
    [dict(shape=(4, 64, 64)), dict(shape=(32, 64)), dict(particles=-1), dict(beads=1.5),
     dict(pixel_size=0), dict(slab_fraction=1.0)],
)
def test_bad_phantom_arguments_raise(kwargs):
    with pytest.raises(DDWError):
        make_phantom(**kwargs)


def _measured_snr(noisy, clean):
    return clean.reshape(len(clean), -1).var(1) / (noisy - clean).reshape(len(clean), -1).var(1)


def test_tilt_series_snr_and_determinism():
    v = make_phantom(SMALL, seed=1)
    angles = [-60.0, -30.0, 0.0, 25.0, 58.0]
    clean = simulate_tilt_series(v, angles, snr=None, seed=0, device="cpu")
    for snr in (0.3, 2.0):
        noisy = simulate_tilt_series(v, angles, snr=snr, seed=7, device="cpu")
        assert noisy.shape == (5, 64, 64) and noisy.dtype == np.float32
        measured = _measured_snr(noisy.astype(np.float64), clean.astype(np.float64))
        assert np.all(np.abs(measured / snr - 1) < 0.2), measured
    a = simulate_tilt_series(v, angles, snr=0.3, seed=7, device="cpu")
    assert np.array_equal(a, simulate_tilt_series(v, angles, snr=0.3, seed=7, device="cpu"))
    assert not np.array_equal(a, simulate_tilt_series(v, angles, snr=0.3, seed=8, device="cpu"))


def test_tilt_series_uses_the_package_projector():
    from napari_deepdewedge.core.reconstruct.geometry import forward_project

    v = make_phantom(SMALL, seed=2)
    angles = [-45.0, 10.0]
    ref = forward_project(v, angles, device="cpu")
    got = simulate_tilt_series(v, angles, snr=None, device="cpu", infinite_slab=False)
    assert np.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_infinite_slab_known_answer():
    """Bare ice, infinitely wide: every ray crosses thickness/cosθ of ice, so each projection
    is flat at ICE·thickness/cosθ — no dark edges, unlike the projection of the bare box."""
    shape = SMALL
    z0, z1 = slab_extent(shape)
    ice = make_phantom(shape, 0, particles=0, vesicles=0, filaments=0, beads=0)
    angles = [-60.0, 0.0, 45.0]
    proj = simulate_tilt_series(ice, angles, snr=None, device="cpu")
    for p, th in zip(proj, angles):
        expect = ICE * (z1 - z0) / math.cos(math.radians(th))
        # (the voxel-driven linear splat leaves a fine ±10 % moiré at some angles: compare
        # averages over 8-column bands, at the edges and in the middle)
        bands = p.mean(0).reshape(-1, 8).mean(1)
        assert np.allclose(bands, expect, rtol=0.03), (th, bands, expect)
    box = simulate_tilt_series(ice, [-60.0], snr=None, device="cpu", infinite_slab=False)[0]
    assert box[:, :4].mean() < 0.7 * box[:, 28:36].mean()


def test_bad_tilt_series_arguments_raise():
    v = make_phantom(SMALL, 0)
    for snr in (0, -1, float("nan"), "a"):
        with pytest.raises(DDWError):
            simulate_tilt_series(v, [0.0], snr=snr)
    with pytest.raises(DDWError):
        simulate_tilt_series(v, [], snr=1.0)
    with pytest.raises(DDWError):
        simulate_tilt_series(np.zeros(SMALL, np.float32), [0.0], snr=1.0)


def test_make_sample_angles_and_fields():
    s = make_sample(shape=SMALL, tilt_range=(-60, 60, 3), snr=0.5, seed=3, pixel_size=8.0)
    assert isinstance(s, SampleData)
    assert len(s.angles) == 41 and s.tilt_series.shape == (41, 64, 64)
    assert np.allclose(s.angles, np.arange(-60, 61, 3))
    assert s.ground_truth.shape == SMALL and s.ground_truth.dtype == np.float32
    assert s.tilt_series.dtype == np.float32 and s.pixel_size == 8.0
    assert np.array_equal(s.ground_truth, make_phantom(SMALL, 3, pixel_size=8.0))
    again = make_sample(shape=SMALL, tilt_range=(-60, 60, 3), snr=0.5, seed=3, pixel_size=8.0)
    assert np.array_equal(s.tilt_series, again.tilt_series)
    asym = make_sample(shape=SMALL, tilt_range=(-54, 62, 4), seed=3)
    assert len(asym.angles) == 30 and asym.angles[0] == -54 and asym.angles[-1] == 62
    with pytest.raises(DDWError):
        make_sample(shape=SMALL, tilt_range=(-60, 60))
