"""The no-ground-truth signals of a fit (core.fit.signals): known answers, and the stopping rule."""
import math

import numpy as np
import pytest
import torch

from napari_deepdewedge.core.fit import signals as fs
from napari_deepdewedge.core.fourier import observed_mask
from napari_deepdewedge.core.evaluate.metrics import fsc


def _noise(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _smooth(shape, seed, sigma=0.12):
    spec = np.fft.rfftn(_noise(shape, seed))
    k = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]), indexing="ij")
    v = np.fft.irfftn(spec * np.exp(-sum(x**2 for x in k) / (2 * sigma**2)), s=shape, axes=(0, 1, 2))
    return (v / v.std()).astype(np.float32)


def test_shell_correlations_is_the_fsc_and_selects():
    a, b = _smooth((24, 32, 32), 1), _smooth((24, 32, 32), 2)
    b = 0.6 * a + b
    f_ref, c_ref = fsc(a, b, voxel_size=(2.0, 2.0, 2.0))
    f, c = fs.shell_correlations(a, b, 2.0)
    np.testing.assert_allclose(f, f_ref)
    np.testing.assert_allclose(c, c_ref, rtol=1e-6, atol=1e-9)
    # selecting nothing: every shell without power (NaN), not zero
    _, none = fs.shell_correlations(a, b, 2.0, select=np.zeros((24, 32, 17), bool))
    assert np.isnan(none).all()


def test_identical_halves_agree_perfectly():
    h = _smooth((32, 40, 40), 3)
    sig = fs.halves_signals(h, h.copy(), -60, 60, voxel_size=5.0)
    assert sig["fsc_area"] == pytest.approx(1.0, abs=1e-6)
    assert sig["wedge_fsc"] == pytest.approx(1.0, abs=1e-6)
    assert sig["consistency"] == 0.0
    assert sig["fsc_143"] == pytest.approx(2 * 5.0, rel=1e-9)  # never crosses: the Nyquist bound, 2 voxels


def test_independent_halves_do_not_agree():
    # 48³ white noise: measured 0.006 (fsc_area) and 0.024 (wedge_fsc) for these seeds; over six
    # other seed pairs their spread was 0.018 and 0.025, so 0.08 is more than 3 spreads
    a, b = _noise((48, 48, 48), 4), _noise((48, 48, 48), 5)
    sig = fs.halves_signals(a, b, -60, 60)
    assert abs(sig["fsc_area"]) < 0.08 and abs(sig["wedge_fsc"]) < 0.08
    assert sig["fsc_143"] == math.inf  # the first shell is already below 0.143
    # mean |a − b| of two unit normals: 2/√π = 1.128 (σ of the difference √2 times √(2/π))
    assert sig["consistency"] == pytest.approx(2 / math.sqrt(math.pi), rel=0.02)


def test_wedge_fsc_sees_only_the_missing_wedge():
    """Halves equal in the observed frequencies and independent in the wedge: the full FSC is
    high, the wedge FSC is ~0; the reverse gives the reverse."""
    shape = (48, 48, 48)
    m = observed_mask(shape, -60, 60, device="cpu", rfft=True).numpy()
    common, n0, n1 = (np.fft.rfftn(_noise(shape, s)) for s in (6, 7, 8))

    def vol(observed, wedge):
        return np.fft.irfftn(m * observed + (1 - m) * wedge, s=shape, axes=(0, 1, 2)).astype(np.float32)

    sig = fs.halves_signals(vol(common, n0), vol(common, n1), -60, 60)  # measured −0.034, 0.642
    assert abs(sig["wedge_fsc"]) < 0.08 and sig["fsc_area"] > 0.5
    sig = fs.halves_signals(vol(n0, common), vol(n1, common), -60, 60)
    assert sig["wedge_fsc"] == pytest.approx(1.0, abs=1e-5) and sig["fsc_area"] < 0.5  # measured 0.333


def test_signals_do_not_depend_on_scale():
    a, b = _smooth((24, 32, 32), 9), _smooth((24, 32, 32), 10)
    b = a + 0.5 * b
    one = fs.halves_signals(a, b, -50, 55)
    ten = fs.halves_signals(10 * a, 10 * b, -50, 55)
    for k in one:
        assert ten[k] == pytest.approx(one[k], rel=1e-4), k


def test_wedge_term_is_the_loss_wedge_part():
    from napari_deepdewedge.core.fourier import rotated_observed_masks
    from napari_deepdewedge.core.fit.loss import masked_fourier_loss
    from napari_deepdewedge.core.model.rotation import random_rotations

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 1, 16, 16, 16, generator=g), torch.randn(3, 1, 16, 16, 16, generator=g)
    m = observed_mask((16, 16, 16), -60, 60, device="cpu", rfft=True)
    m_r = rotated_observed_masks((16, 16, 16), -60, 60, random_rotations(3, generator=g), device="cpu", rfft=True)
    w = fs.wedge_term(pred, target, m, m_r)
    full = masked_fourier_loss(pred, target, m, m_r, wedge_weight=2.0, reduction="none")
    observed = masked_fourier_loss(pred, target, m, m_r, wedge_weight=0.0, reduction="none")
    assert w.shape == (3,) and bool((w > 0).all())
    torch.testing.assert_close(w, (full - observed) / 2.0, rtol=1e-5, atol=1e-7)


def test_crop_box_is_central_and_clipped():
    assert fs.crop_box((32, 100, 120), 16) == ((0, 32), (26, 74), (36, 84))
    assert fs.crop_box((200, 500, 500), 48, cubes=2) == ((52, 148), (202, 298), (202, 298))


def test_probe_crop_and_identical_halves():
    from napari_deepdewedge.core.model.unet import UNet3D

    torch.manual_seed(0)
    net = UNet3D(channels=4, depth=2).eval()
    t = _smooth((24, 60, 52), 11)
    probe = fs.SignalProbe(t, t.copy(), subtomo_size=16, tilt_min=-60, tilt_max=60, stats=None, batch_size=2,
                           device="cpu")
    assert probe.shape == (24, 48, 48)
    h0, h1 = probe.refined(net)
    assert h0.shape == (24, 48, 48) and np.isfinite(h0).all()
    np.testing.assert_array_equal(h0, h1)  # the same crop, the same network: the same output
    sig = probe(net)
    assert sig["fsc_area"] == pytest.approx(1.0, abs=1e-6) and sig["consistency"] == 0.0
    # different halves: agreement below 1 and a positive consistency
    sig = fs.SignalProbe(t, _smooth((24, 60, 52), 12), subtomo_size=16, tilt_min=-60, tilt_max=60, stats=None,
                         batch_size=2, device="cpu")(net)
    assert sig["fsc_area"] < 0.9 and sig["consistency"] > 0.1


# --------------------------------------------------------------------------------------------
# the rule
# --------------------------------------------------------------------------------------------
def _history(values, signal="fsc_area", start=1):
    return [[e, 1.0, 0.5, 1.0, {signal: v}] for e, v in enumerate(values, start)]


def test_best_and_stop_on_sequences():
    rising_then_flat = [0.1, 0.3, 0.5, 0.6, 0.6, 0.59, 0.58, 0.6, 0.57, 0.55]
    h = _history(rising_then_flat)
    assert fs.best_epoch(h, "fsc_area") == 4  # the earliest of the ties
    assert fs.stop_epoch(h, "fsc_area", 3) == 7
    assert fs.stop_epoch(h, "fsc_area", 6) == 10
    assert fs.stop_epoch(h, "fsc_area", 7) is None
    assert fs.stop_epoch(h, "fsc_area", 0) is None
    assert not fs.should_stop(h[:6], "fsc_area", 3)
    assert fs.should_stop(h[:7], "fsc_area", 3)
    # lower is better for the consistency: the negated sequence gives the same epochs, the
    # sequence itself is best at its start
    h = _history([-v for v in rising_then_flat], "consistency")
    assert fs.best_epoch(h, "consistency") == 4 and fs.stop_epoch(h, "consistency", 3) == 7
    h = _history(rising_then_flat, "consistency")
    assert fs.best_epoch(h, "consistency") == 1 and fs.stop_epoch(h, "consistency", 3) == 4
    # still improving: never stops
    h = _history([0.1 * i for i in range(20)])
    assert fs.stop_epoch(h, "fsc_area", 2) is None and not fs.should_stop(h, "fsc_area", 2)


def test_rule_reads_only_measured_epochs_and_the_validation_loss():
    h = [[1, 1.0, 0.9, 1.0], [2, 1.0, 0.8, 1.0, {"fsc_area": 0.4}], [3, 1.0, None, 1.0],
         [4, 1.0, 0.85, 1.0, {"fsc_area": 0.5}], [5, 1.0, 0.7, 1.0, {"fsc_area": float("nan")}],
         [6, 1.0, 0.75, 1.0, {"fsc_area": 0.45}]]
    assert fs.best_epoch(h, "fsc_area") == 4
    assert fs.best_epoch(h, "val_loss") == 5
    assert fs.best_epoch(h, "wedge_fsc") is None and not fs.should_stop(h, "wedge_fsc", 1)
    assert fs.should_stop(h, "fsc_area", 2) and not fs.should_stop(h, "fsc_area", 3)
