import math

import numpy as np
import pytest
import torch

from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.fourier import observed_mask
from napari_deepdewedge.core.evaluate.metrics import (
    cc,
    fsc,
    fsc_crossing,
    missing_wedge_power_fraction,
    wedge_correlation,
)


def _noise(shape, seed):
    return np.random.default_rng(seed).normal(size=shape)


def _radius(shape, d=1.0):
    k = np.meshgrid(*[np.fft.fftfreq(n, d=d) for n in shape], indexing="ij")
    return np.sqrt(sum(x**2 for x in k))


# ------------------------------------------------------------------------------------- CC
def test_cc_known_answers():
    a = _noise((8, 9, 10), 0)
    assert cc(a, a) == pytest.approx(1.0, abs=1e-12)
    assert cc(a, -a) == pytest.approx(-1.0, abs=1e-12)
    assert cc(a, 2.5 * a + 3) == pytest.approx(1.0, abs=1e-12)
    assert cc(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8, abs=1e-12)
    assert abs(cc(a, _noise((8, 9, 10), 1))) < 0.1
    assert math.isnan(cc(np.ones(5), np.arange(5.0)))


def test_cc_with_mask():
    a = _noise((8, 8, 8), 2)
    b = a.copy()
    b[4:] = _noise((4, 8, 8), 3)
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[:4] = True
    assert cc(a, b, mask=mask) == pytest.approx(1.0, abs=1e-12)
    assert cc(a, b) < 0.8
    with pytest.raises(DDWError):
        cc(a, b, mask=np.ones((8, 8, 7)))
    with pytest.raises(DDWError):
        cc(a, b[:7])


# ------------------------------------------------------------------------------------ FSC
def test_fsc_identical_and_independent():
    a = _noise((32, 32, 32), 4)
    freqs, curve = fsc(a, a, voxel_size=2.0)
    assert freqs.shape == curve.shape == (16,)
    np.testing.assert_allclose(freqs, np.arange(1, 17) / 64.0)  # dk = (1/(2·2 Å)) / 16
    np.testing.assert_allclose(curve, 1.0, atol=1e-6)
    _, curve = fsc(a, _noise((32, 32, 32), 5))
    assert np.abs(curve).mean() < 0.06 and np.abs(curve[3:]).max() < 0.15
    _, neg = fsc(a, -a)
    np.testing.assert_allclose(neg, -1.0, atol=1e-6)


def test_fsc_known_crossing():
    """Same signal below k_c, independent content above: FSC ≈ 1 then ≈ 0, crossing ≈ k_c."""
    shape, vs, kc = (32, 32, 32), 2.0, 0.1  # kc in 1/Å; Nyquist is 0.25 1/Å
    sig, n1, n2 = _noise(shape, 6), _noise(shape, 7), _noise(shape, 8)
    low = _radius(shape, d=vs) < kc
    fs = np.fft.fftn(sig)
    a = np.fft.ifftn(np.where(low, fs, np.fft.fftn(n1))).real
    b = np.fft.ifftn(np.where(low, fs, np.fft.fftn(n2))).real
    freqs, curve = fsc(a, b, voxel_size=vs)
    assert np.all(curve[freqs < kc - 0.02] > 0.99)
    assert np.all(np.abs(curve[freqs > kc + 0.02]) < 0.25)
    res = fsc_crossing(freqs, curve)
    assert res == pytest.approx(1 / kc, rel=0.1)  # 10 Å


def test_fsc_crossing_synthetic():
    freqs = np.linspace(0.01, 0.5, 50)
    curve = np.clip(1 - freqs / 0.3, -1, 1)  # linear: crosses 0.143 at 0.3·0.857
    assert fsc_crossing(freqs, curve) == pytest.approx(1 / (0.3 * (1 - 0.143)), rel=1e-9)
    assert fsc_crossing(freqs, curve, threshold=0.5) == pytest.approx(1 / 0.15, rel=1e-9)
    # never crosses: Nyquist-limited value
    assert fsc_crossing(freqs, np.ones(50)) == pytest.approx(2.0)
    # below from the start: nothing resolved
    assert fsc_crossing(freqs, np.zeros(50)) == math.inf
    # NaN shells are skipped
    c = curve.copy()
    c[[0, 10, 49]] = np.nan
    assert fsc_crossing(freqs, c) == pytest.approx(1 / (0.3 * (1 - 0.143)), rel=1e-9)
    with pytest.raises(DDWError):
        fsc_crossing(freqs, np.full(50, np.nan))


# --------------------------------------------------------------------------- wedge measures
def _filtered(vol, keep):
    return np.fft.ifftn(np.fft.fftn(vol) * keep).real


def test_missing_wedge_power_fraction():
    shape, tmin, tmax = (24, 20, 24), -60.0, 50.0
    M = observed_mask(shape, tmin, tmax).numpy()
    noise = _noise(shape, 9)
    wedge_only = _filtered(noise, 1 - M) + 5.0  # a DC offset must not count
    assert missing_wedge_power_fraction(wedge_only, tmin, tmax) == pytest.approx(1.0, abs=1e-9)
    observed_only = _filtered(noise, M)
    assert missing_wedge_power_fraction(observed_only, tmin, tmax) == pytest.approx(0.0, abs=1e-9)
    # white noise: the wedge's share of the non-DC frequencies
    share = (1 - M).sum() / (M.size - 1)
    assert missing_wedge_power_fraction(noise, tmin, tmax) == pytest.approx(share, abs=0.03)
    assert missing_wedge_power_fraction(noise.astype(np.float32), tmin, tmax) == pytest.approx(
        missing_wedge_power_fraction(noise, tmin, tmax), rel=1e-4)
    assert missing_wedge_power_fraction(torch.from_numpy(noise), tmin, tmax) == pytest.approx(
        missing_wedge_power_fraction(noise, tmin, tmax), rel=1e-9)


def test_wedge_correlation():
    shape, tmin, tmax = (20, 16, 20), -55.0, 60.0
    M = observed_mask(shape, tmin, tmax).numpy()
    ref = _noise(shape, 10)
    other = _noise(shape, 11)
    # same wedge content, different observed content: 1
    a = _filtered(ref, 1 - M) + _filtered(other, M)
    assert wedge_correlation(a, ref, tmin, tmax) == pytest.approx(1.0, abs=1e-9)
    assert wedge_correlation(-3 * a, ref, tmin, tmax) == pytest.approx(-1.0, abs=1e-9)
    # same observed content, unrelated wedge: ≈ 0 although the real-space CC is high
    b = _filtered(ref, M) + 0.3 * _filtered(other, 1 - M)
    assert abs(wedge_correlation(b, ref, tmin, tmax)) < 0.1
    assert cc(b, ref) > 0.7
    # no wedge power
    assert math.isnan(wedge_correlation(_filtered(ref, M), ref, tmin, tmax))
    with pytest.raises(DDWError):
        wedge_correlation(ref, ref[:-1], tmin, tmax)
