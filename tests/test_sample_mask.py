"""Automatic sample masks (core.fit.sample_mask) on phantoms with a known specimen region
(core.evaluate.mask_phantoms), and the checks of a given mask."""
from __future__ import annotations

import numpy as np
import pytest

from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.evaluate.mask_phantoms import make_mask_phantom, mask_phantom_halves
from napari_deepdewedge.core.fit.sample_mask import (
    AutoMaskParams,
    auto_bin,
    auto_mask,
    checked_mask,
    mask_cube_counts,
)


@pytest.fixture(scope="module")
def thin():
    # halves reconstructed (project FBP) from a simulated tilt series, the specimen a third of Z
    return mask_phantom_halves((96, 96, 96), "thin", seed=0, snr=0.3)


def coverage(mask, specimen):
    return float(mask[specimen].mean()), float(mask[~specimen].mean())


# Measured with the defaults (bench/mask.py --only coverage; docs/masks.md), specimen / empty %:
# thin seeds 0–3 100.0/4.7, 96.5/8.4, 100.0/14.1, 96.9/7.8 (the earlier rule, a margin of 0.3 ×
# the slab found: 100.0/20.0, 76.0/2.0, 97.2/11.5, 85.7/2.2 — seeds 1 and 3 fail here).
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_thin_slab_acceptance(seed, thin):
    ph = thin if seed == 0 else mask_phantom_halves((96, 96, 96), "thin", seed=seed, snr=0.3)
    assert abs(ph.specimen.mean() - 1 / 3) < 0.01
    result = auto_mask(ph.even, ph.odd)
    spec, empty = coverage(result.mask, ph.specimen)
    assert spec >= 0.90, (seed, spec, empty)
    assert empty <= 0.25, (seed, spec, empty)
    assert result.mask.dtype == bool and result.mask.shape == ph.even.shape
    assert result.params.bin == 2 and result.source()["kind"] == "auto"


def test_margin_is_voxels_on_both_surfaces(thin):
    # the margin moves each surface by its number of voxels (known answer, at a flat slab)
    base = auto_mask(thin.even, thin.odd, AutoMaskParams(max_tilt=0))
    wide = auto_mask(thin.even, thin.odd, AutoMaskParams(max_tilt=0, margin=20))
    rows, rows_wide = (np.flatnonzero(m.mask[:, 48, 48]) for m in (base, wide))
    assert abs((rows[0] - rows_wide[0]) - 8) <= 1 and abs((rows_wide[-1] - rows[-1]) - 8) <= 1
    assert abs((wide.thickness - base.thickness) - 16) < 1e-3


def test_no_common_signal_keeps_everything():
    # two independent noise volumes: nothing agrees, so nothing is thrown away
    rng = np.random.default_rng(0)
    e = rng.standard_normal((48, 64, 64)).astype(np.float32)
    o = rng.standard_normal((48, 64, 64)).astype(np.float32)
    result = auto_mask(e, o)
    assert result.mask.all()


def test_mask_follows_a_shifted_slab(thin):
    # the same halves rolled by 12 voxels in Z: the mask moves with them (known answer)
    shifted = auto_mask(np.roll(thin.even, 12, axis=0), np.roll(thin.odd, 12, axis=0))
    base = auto_mask(thin.even, thin.odd)
    rows = np.flatnonzero(base.mask[:, 48, 48])
    rows_shifted = np.flatnonzero(shifted.mask[:, 48, 48])
    assert abs((rows_shifted.mean() - rows.mean()) - 12) <= 2.5  # binned by 2: ± one bin


@pytest.mark.parametrize("kind", ["tilted", "beads"])
def test_other_phantoms_keep_specimen_over_empty(kind):
    ph = mask_phantom_halves((96, 96, 96), kind, seed=0, snr=0.3)
    spec, empty = coverage(auto_mask(ph.even, ph.odd).mask, ph.specimen)
    # measured (seed 0): tilted 96.2 % / 11.7 %, beads 100.0 % / 18.8 % (docs/masks.md)
    assert spec >= 0.9 and empty <= 0.25, (spec, empty)


def test_phantom_labels():
    vol, label = make_mask_phantom((48, 64, 64), "thin", seed=1)
    assert abs(label.mean() - 1 / 3) < 0.02 and not vol[~label].any()
    vol, label = make_mask_phantom((48, 64, 64), "tilted", seed=1, tilt=15)
    top = [np.flatnonzero(label[:, 0, x])[0] for x in (0, 63)]
    assert abs((top[1] - top[0]) - 63 * np.tan(np.radians(15))) <= 1
    assert np.abs(vol[~label]).max() < 0.3  # only the interpolated edge of the sheared slab
    vol, label = make_mask_phantom((48, 64, 64), "beads", seed=1)
    assert vol[~label].max() > 0.3  # the contamination blob lies outside the specimen
    with pytest.raises(DDWError, match="kind"):
        make_mask_phantom((48, 64, 64), "bent")


def test_auto_bin():
    assert auto_bin((96, 96, 96)) == 2
    assert auto_bin((300, 1024, 1024)) == 7  # ≤ 1 M binned voxels


def test_params_checked():
    with pytest.raises(DDWError, match="tiles"):
        auto_mask(np.ones((32, 32, 32)), np.ones((32, 32, 32)), AutoMaskParams(tiles=0))
    with pytest.raises(DDWError, match="threshold"):
        AutoMaskParams(threshold=-1).checked()
    with pytest.raises(DDWError, match="margin"):
        AutoMaskParams(margin=-1).checked()
    with pytest.raises(DDWError, match="different shapes"):
        auto_mask(np.ones((32, 32, 32)), np.ones((32, 32, 30)))


def test_checked_mask():
    shape = (16, 16, 16)
    with pytest.raises(DDWError, match="differs from the tomogram shape"):
        checked_mask(np.ones((16, 16, 15)), shape)
    with pytest.raises(DDWError, match="no voxel is inside"):
        checked_mask(np.zeros(shape), shape)
    out, warnings = checked_mask(np.ones(shape, dtype=np.uint8), shape)
    assert out.all() and len(warnings) == 1 and "removes nothing" in warnings[0]
    soft = np.zeros(shape, dtype=np.float32)
    soft[4:8] = 0.7
    soft[8:12] = 0.3
    out, warnings = checked_mask(soft, shape)
    assert out[4:8].all() and not out[8:12].any() and not out[:4].any()
    assert len(warnings) == 1 and "thresholded at 0.5" in warnings[0]
    binary = np.zeros(shape, dtype=np.int16)
    binary[2:5] = 1
    out, warnings = checked_mask(binary, shape)
    assert warnings == [] and out.sum() == 3 * 16 * 16


def test_cube_counts_match_extraction():
    from napari_deepdewedge.core.fit.cubes import extract_subtomos

    rng = np.random.default_rng(0)
    vol = rng.standard_normal((40, 56, 56)).astype(np.float32)
    mask = np.zeros(vol.shape, dtype=bool)
    mask[10:30] = True
    kept, total = mask_cube_counts(mask, vol.shape, 16, min_mask_fraction=0.7)
    sub = extract_subtomos(vol, vol, 16, mask=mask, min_mask_fraction=0.7, depth=2)
    assert kept == sub.n_fit + sub.n_val
    assert total == mask_cube_counts(np.ones(vol.shape, bool), vol.shape, 16)[1] and kept < total
