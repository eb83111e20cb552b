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
    period2_peak_ratio,
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


# ------------------------------------------------------------------------ period-2 texture
def _blobs(shape, n, seed, sigma=2.5):
    """Smooth content: ``n`` Gaussian blobs of random sign inside the volume."""
    rng = np.random.default_rng(seed)
    g = np.indices(shape).astype(np.float64)
    v = np.zeros(shape)
    for _ in range(n):
        c = [rng.uniform(0.2 * s, 0.8 * s) for s in shape]
        v += rng.normal() * np.exp(-sum((g[i] - c[i]) ** 2 for i in range(3)) / (2 * sigma**2))
    return v


def _lattice_pattern(shape, axes):
    """(-1)^(sum of the coordinates along ``axes``): a pure period-2 lattice frequency."""
    idx = np.indices(shape)
    return (-1.0) ** sum(idx[a] for a in axes)


def test_period2_known_answers():
    shape = (16, 32, 32)
    noise = _noise(shape, 0)
    # one pattern per kind of lattice point: it stands out at its own label, the others don't move
    for axes, label in (((2,), "x"), ((0, 1), "zy"), ((0, 1, 2), "zyx")):
        base = period2_peak_ratio(noise)["ratios"]
        rs = [period2_peak_ratio(noise + a * _lattice_pattern(shape, axes))["ratios"] for a in (0.1, 1.0)]
        assert rs[0][label] > 30 and rs[1][label] > 3000, (label, rs)
        # the peak is |a·Σw|² over a noise floor: ten times the amplitude, ~100 times the ratio
        # (measured 108–111; the noise's own contribution at the peak makes the rest)
        assert 60 < rs[1][label] / rs[0][label] < 160, (label, rs)
        others = [k for k in base if k != label]
        # (the window leaks a little of the pattern into the other shells: measured ≤ 0.6 %)
        np.testing.assert_allclose([rs[1][k] for k in others], [base[k] for k in others], rtol=0.03)


def test_period2_white_noise_is_about_one():
    # a frequency's power over its shell's median is an exponential variable over its median
    # (mean 1/ln 2): measured over seeds 0..7 the median of the 7 ratios is 0.04–1.3 and the max
    # 3.2–10.5; far from a texture's hundreds
    meds, maxs = [], []
    for seed in range(8):
        r = period2_peak_ratio(_noise((16, 32, 32), seed))
        meds.append(r["median"])
        maxs.append(r["max"])
    assert 0.2 < float(np.median(meds)) < 2.0, meds
    assert max(maxs) < 20, maxs


def test_period2_smooth_volume_is_small_and_edges_do_not_count():
    shape = (16, 32, 32)
    smooth = _blobs(shape, 12, 0)
    smooth += 0.01 * smooth.std() * _noise(shape, 9)  # a noise floor: a noiseless shell median is rounding
    r = period2_peak_ratio(smooth)
    assert r["max"] < 5, r  # measured 1.45
    # a ramp along X jumps between the X faces; without the window that jump lands on the kx axis
    ramp = smooth + 0.2 * np.indices(shape)[2] / shape[2] * smooth.std() * 10
    assert period2_peak_ratio(ramp, window=False)["ratios"]["x"] > 100  # measured 2.7e4
    assert period2_peak_ratio(ramp)["ratios"]["x"] < 5  # measured 1.34
    # and a checkerboard on it is found through the window
    cb = ramp + 0.1 * smooth.std() * _lattice_pattern(shape, (0, 1, 2))
    assert period2_peak_ratio(cb)["ratios"]["zyx"] > 100


def test_period2_odd_axes_and_bad_input():
    r = period2_peak_ratio(_noise((15, 16, 17), 1))
    assert set(r["ratios"]) == {"y"}  # only Y has a Nyquist index
    with pytest.raises(DDWError, match="even length"):
        period2_peak_ratio(_noise((15, 15, 17), 1))
    with pytest.raises(DDWError, match="3D"):
        period2_peak_ratio(_noise((16, 16), 1))
    # torch tensors are accepted
    t = torch.from_numpy(_noise((8, 8, 8), 2))
    assert period2_peak_ratio(t) == period2_peak_ratio(t.numpy())
