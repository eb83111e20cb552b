"""Known-answer tests of the weighted back-projection and its forward projector (docs/method.md §2.2).

Everything is tiny (volumes of a few thousand to a few ten-thousand voxels); the expected values
come from the geometry (x' = x·cosθ + z·sinθ, centred coordinates), from analytic line
integrals of Gaussians, and from the missing-wedge geometry of docs/method.md §2.3.
"""
import math

import numpy as np
import pytest
import torch

from napari_deepdewedge.core.reconstruct import geometry as rec
from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.reconstruct.fbp import angular_weights, fbp
from napari_deepdewedge.core.reconstruct.binning import bin_stack
from napari_deepdewedge.core.reconstruct.geometry import forward_project


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def centred(shape):
    return np.meshgrid(*[np.arange(n, dtype=np.float64) - n // 2 for n in shape], indexing="ij")


def blobs(shape, centres, sigmas, amps):
    """Sum of isotropic Gaussians at centred (z, y, x) positions."""
    zz, yy, xx = centred(shape)
    vol = np.zeros(shape)
    for (cz, cy, cx), s, a in zip(centres, sigmas, amps):
        vol += a * np.exp(-((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return vol.astype(np.float32)


def smooth_phantom(shape=(32, 12, 64)):
    return blobs(
        shape,
        centres=[(3, 0, -10), (-7, 2, 12), (6, -3, 4), (-2, 1, -20)],
        sigmas=[4.0, 3.0, 2.5, 3.5],
        amps=[1.0, 0.6, 0.8, 0.5],
    )


def cc(a, b):
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def folded_direction(shape):
    """φ = atan2(kz, kx) in degrees folded into (−90°, 90°], and |(kz, kx)|, on the fft grid."""
    Z, Y, X = shape
    kz = np.fft.fftfreq(Z)[:, None, None]
    kx = np.fft.fftfreq(X)[None, None, :]
    phi = np.degrees(np.arctan2(kz, kx))
    phi = np.where(phi > 90, phi - 180, phi)
    phi = np.where(phi <= -90, phi + 180, phi)
    kr = np.sqrt(kz**2 + kx**2)
    return np.broadcast_to(phi, shape), np.broadcast_to(kr, shape)


def missing_mask(shape, tmin, tmax):
    """1 where the frequency was not observed: core.fourier if present, else from geometry."""
    try:
        from napari_deepdewedge.core.fourier import observed_mask
    except ImportError:  # pragma: no cover - fallback while fourier.py did not exist
        phi, kr = folded_direction(shape)
        return ~((phi >= tmin) & (phi <= tmax) | (kr == 0))
    return observed_mask(shape, tmin, tmax).numpy() == 0


# --------------------------------------------------------------------------------------------
# forward projector: geometry, sign, scale
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("zyx", [(6, 2, -9), (-7, -3, 5), (10, 1, 0)])
def test_forward_projection_lands_at_x_cos_plus_z_sin(zyx):
    Z, Y, X = 32, 8, 64
    z, y, x = zyx
    vol = np.zeros((Z, Y, X), np.float32)
    vol[z + Z // 2, y + Y // 2, x + X // 2] = 1.0
    angles = np.array([-60.0, -33.0, 0.0, 17.0, 45.0, 60.0])
    proj = forward_project(vol, angles)
    assert proj.shape == (6, Y, X) and proj.dtype == np.float32
    cols = np.arange(X) - X // 2
    for t, theta in enumerate(np.deg2rad(angles)):
        row = proj[t, y + Y // 2]
        assert row.sum() == pytest.approx(1.0, abs=1e-5)  # line integral of a unit voxel
        assert np.abs(proj[t]).sum() == pytest.approx(1.0, abs=1e-5)  # only on row y
        expected = x * math.cos(theta) + z * math.sin(theta)
        assert (row * cols).sum() == pytest.approx(expected, abs=1e-4)


def test_forward_projection_of_gaussian_matches_analytic_line_integral():
    shape = (40, 16, 64)
    sigma, centre = 3.0, (5.0, 1.0, -8.0)
    vol = blobs(shape, [centre], [sigma], [1.0])
    angles = np.array([-50.0, 0.0, 35.0])
    proj = forward_project(vol, angles)
    yy, xx = np.meshgrid(np.arange(16) - 8.0, np.arange(64) - 32.0, indexing="ij")
    for t, theta in enumerate(np.deg2rad(angles)):
        u = centre[2] * math.cos(theta) + centre[0] * math.sin(theta)
        exact = sigma * math.sqrt(2 * math.pi) * np.exp(
            -((yy - centre[1]) ** 2 + (xx - u) ** 2) / (2 * sigma**2)
        )
        assert np.abs(proj[t] - exact).max() < 0.03 * exact.max()


def test_forward_and_back_operators_are_transposes_and_gather_equals_sparse():
    rng = np.random.default_rng(1)
    dev = torch.device("cpu")
    geom = rec._Geometry(np.array([-47.0, -5.0, 20.0, 61.0]), 9, 14, 14, dev)
    q = torch.from_numpy(rng.standard_normal((4 * 14, 3)).astype(np.float32))
    v = torch.from_numpy(rng.standard_normal((9 * 14, 3)).astype(np.float32))
    back, fwd = geom.apply_back(q), geom.apply_forward(v)
    # <B q, v> == <q, Bᵀ v>
    assert float((back * v).sum()) == pytest.approx(float((q * fwd).sum()), rel=1e-5)
    geom._sparse_ok = False  # the gather path used on devices without sparse support
    torch.testing.assert_close(geom.apply_back(q), back, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(geom.apply_forward(v), fwd, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# fbp: known answers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, zyx, tilts",
    [
        ((32, 8, 48), (7, 2, -11), (-60, 60)),
        ((32, 8, 48), (-9, -2, 6), (-60, 60)),
        ((32, 8, 48), (5, 0, 14), (-54, 62)),
        ((32, 8, 48), (-4, 3, -3), (-60, 60)),
        ((21, 7, 47), (-6, -3, 11), (-54, 62)),  # odd sizes: centre index N//2
    ],
)
def test_bright_voxel_comes_back_where_it_was(shape, zyx, tilts):
    Z, Y, X = shape
    z, y, x = zyx
    vol = np.zeros((Z, Y, X), np.float32)
    vol[z + Z // 2, y + Y // 2, x + X // 2] = 1.0
    angles = np.arange(tilts[0], tilts[1] + 0.1, 3.0)
    recon = fbp(forward_project(vol, angles), angles, Z)
    peak = np.unravel_index(np.argmax(recon), recon.shape)
    want = (z + Z // 2, y + Y // 2, x + X // 2)
    assert all(abs(int(p) - w) <= 1 for p, w in zip(peak, want)), (peak, want)
    # the mirrored position (a flipped sign convention would put the point there) stays dark
    mirror = (-z + Z // 2, y + Y // 2, x + X // 2)
    assert recon[mirror] < 0.3 * recon.max()


def test_thickness_is_independent_of_detector_and_keeps_the_centre():
    Z, Y, X = 20, 4, 40
    vol = np.zeros((Z, Y, X), np.float32)
    vol[Z // 2 + 4, Y // 2, X // 2 - 6] = 1.0
    angles = np.arange(-60.0, 60.1, 4.0)
    proj = forward_project(vol, angles)
    recon = fbp(proj, angles, 31)  # odd thickness, larger than the phantom's
    assert recon.shape == (31, Y, X)
    peak = np.unravel_index(np.argmax(recon), recon.shape)
    assert abs(peak[0] - (31 // 2 + 4)) <= 1 and abs(peak[2] - (X // 2 - 6)) <= 1


def test_full_range_reconstruction_correlates_and_keeps_scale():
    ph = smooth_phantom()
    angles = np.arange(-90.0, 90.0, 2.0)
    recon = fbp(forward_project(ph, angles), angles, ph.shape[0])
    assert recon.dtype == np.float32 and recon.shape == ph.shape
    assert cc(recon, ph) >= 0.95
    # scale: the mean inside the biggest blob (above half its peak) matches the phantom
    inside = blobs(ph.shape, [(3, 0, -10)], [4.0], [1.0]) > 0.5
    assert recon[inside].mean() == pytest.approx(ph[inside].mean(), rel=0.10)
    assert recon.mean() == pytest.approx(ph.mean(), rel=0.10)


def test_limited_range_keeps_scale_of_observed_frequencies():
    """Weighting each tilt by its own step: ±60° is not scaled down by 120/180."""
    ph = smooth_phantom()
    angles = np.arange(-60.0, 60.1, 2.0)
    recon = fbp(forward_project(ph, angles), angles, ph.shape[0])
    spec_r, spec_p = np.fft.fftn(recon), np.fft.fftn(ph)
    observed = ~missing_mask(ph.shape, -60, 60)
    _, kr = folded_direction(ph.shape)
    band = observed & (kr > 0.02) & (kr < 0.15)
    gain = np.abs(spec_r[band]).sum() / np.abs(spec_p[band]).sum()
    assert gain == pytest.approx(1.0, abs=0.12)
    assert cc(recon, ph) > 0.8


def _wedge_phantom(shape):
    rng = np.random.default_rng(0)
    centres, sigmas = [], []
    for _ in range(40):
        r, a = rng.uniform(0, 22), rng.uniform(0, 2 * math.pi)
        centres.append((r * math.sin(a), rng.uniform(-1, 1), r * math.cos(a)))
        sigmas.append(rng.uniform(1.0, 2.0))
    return blobs(shape, centres, sigmas, np.ones(40))


def _rec_power(ph, lo, hi, step):
    angles = np.arange(lo, hi + 1e-6, step)
    recon = fbp(forward_project(ph, angles), angles, ph.shape[0], apodization=None)
    return np.abs(np.fft.fftn(recon)) ** 2


@pytest.fixture(scope="module")
def wedge_case():
    shape = (64, 4, 64)
    ph = _wedge_phantom(shape)
    return shape, ph, _rec_power(ph, -90, 89, 1)


def test_symmetric_range_leaves_the_wedge_empty(wedge_case):
    shape, ph, power_full = wedge_case
    power = _rec_power(ph, -60, 60, 2)
    miss = missing_mask(shape, -60, 60)
    assert 0.1 * miss.size < miss.sum() < 0.5 * miss.size
    assert power[miss].sum() < 0.05 * power_full[miss].sum()
    assert power[~miss].sum() > 0.6 * power_full[~miss].sum()


def test_asymmetric_range_puts_the_wedge_on_the_correct_side(wedge_case):
    shape, ph, power_full = wedge_case
    power = _rec_power(ph, -54, 62, 2)
    miss = missing_mask(shape, -54, 62)
    assert power[miss].sum() < 0.05 * power_full[miss].sum()
    phi, kr = folded_direction(shape)
    # directions -61°…-56° were never tilted to; their mirror images 56°…61° were
    should_miss = (phi > -61) & (phi < -56) & (kr > 0.05)
    mirror = (phi > 56) & (phi < 61) & (kr > 0.05)
    assert power[should_miss].sum() < 0.2 * power_full[should_miss].sum()
    assert power[mirror].sum() > 0.7 * power_full[mirror].sum()


def test_lowpass_removes_high_frequencies_in_x_and_y():
    rng = np.random.default_rng(3)
    proj = rng.standard_normal((31, 32, 32)).astype(np.float32)
    angles = np.linspace(-60, 60, 31)
    plain = fbp(proj, angles, 16, apodization=None)
    low = fbp(proj, angles, 16, apodization=None, lowpass=0.4)
    ky = np.abs(np.fft.fftfreq(32))

    def high_power(vol, axis):
        spec = np.abs(np.fft.fft(vol, axis=axis)) ** 2
        sel = [slice(None)] * 3
        sel[axis] = ky > 0.3  # > 0.6 Nyquist, beyond the cut-off edge
        return spec[tuple(sel)].sum()

    for axis in (1, 2):  # Y (along the tilt axis) and X
        assert high_power(low, axis) < 1e-3 * high_power(plain, axis)


# --------------------------------------------------------------------------------------------
# binning, chunking, input types
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fourier", "average"])
def test_binned_reconstruction_has_binned_shape_and_same_mean(mode):
    ph = smooth_phantom((32, 12, 64))
    angles = np.arange(-90.0, 90.0, 3.0)
    proj = forward_project(ph, angles)
    full = fbp(proj, angles, 32)
    binned = fbp(proj, angles, 16, binning=2, bin_mode=mode)
    assert binned.shape == (16, 6, 32) and binned.dtype == np.float32
    assert binned.mean() == pytest.approx(full.mean(), rel=0.05)
    # the biggest blob is still at the (halved) centred position (3, 0, -10) → (1.5, 0, -5)
    zz, yy, xx = centred(binned.shape)
    w = np.clip(binned, 0, None) * ((zz - 1.5) ** 2 + (xx + 5) ** 2 < 9)
    assert (w * zz).sum() / w.sum() == pytest.approx(1.5, abs=0.5)
    assert (w * xx).sum() / w.sum() == pytest.approx(-5.0, abs=0.5)


def test_bin_stack_known_answers():
    const = np.full((2, 9, 12), 3.5, np.float32)
    for mode in ("fourier", "average"):
        out = bin_stack(const, 3, mode)
        assert out.shape == (2, 3, 4) and out.dtype == np.float32
        np.testing.assert_allclose(out, 3.5, rtol=1e-5)
    ramp = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    np.testing.assert_allclose(bin_stack(ramp, 2, "average")[0], [[2.5, 4.5], [10.5, 12.5]])
    # the centre (index N//2) stays the centre (index N//2 of the binned image), odd sizes too;
    # block averages of an even factor can only keep it to half an original pixel
    for shape, factor, mode, tol in [
        ((1, 25, 31), 3, "fourier", 0.02),
        ((1, 25, 31), 3, "average", 0.02),
        ((1, 14, 15), 2, "fourier", 0.02),
        ((1, 14, 15), 2, "average", 0.26),
    ]:
        out = bin_stack(blobs(shape, [(0, 0, 0)], [3.0], [1.0]), factor, mode)[0]
        yy, xx = centred(out.shape)
        assert abs((out * yy).sum() / out.sum()) < tol, (shape, mode)
        assert abs((out * xx).sum() / out.sum()) < tol, (shape, mode)


def test_chunk_size_does_not_change_the_result_and_progress_is_reported():
    ph = smooth_phantom((16, 10, 32))
    angles = np.arange(-60.0, 60.1, 5.0)
    proj = forward_project(ph, angles)
    calls = []
    ref = fbp(proj, angles, 16, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1]
    for chunk in (1, 3, 10):
        calls = []
        out = fbp(proj, angles, 16, chunk_y=chunk, progress=lambda d, t: calls.append((d, t)))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
        assert calls == [(k + 1, -(-10 // chunk)) for k in range(-(-10 // chunk))]


def test_memmap_int_and_torch_inputs_and_unsorted_angles(tmp_path):
    ph = smooth_phantom((16, 6, 32))
    angles = np.arange(-60.0, 60.1, 6.0)
    proj = np.round(forward_project(ph, angles) * 100)
    ref = fbp(proj.astype(np.float32), angles, 16)
    path = tmp_path / "stack.raw"
    proj.astype(np.int16).tofile(path)
    mm = np.memmap(path, dtype=np.int16, mode="r", shape=proj.shape)
    np.testing.assert_allclose(fbp(mm, angles, 16), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fbp(torch.from_numpy(proj), angles, 16), ref, rtol=1e-5, atol=1e-5)
    order = np.random.default_rng(0).permutation(len(angles))
    shuffled = fbp(proj[order].astype(np.float32), angles[order], 16)
    np.testing.assert_allclose(shuffled, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_angular_weights():
    w = np.degrees(angular_weights(np.arange(-90.0, 90.1, 3.0)))  # -90 and 90 are one direction
    assert w.sum() == pytest.approx(180.0)
    w = np.degrees(angular_weights(np.arange(-60.0, 60.1, 3.0)))
    np.testing.assert_allclose(w, 3.0)  # each tilt its own step, edges of the wedge included
    # unsorted, uneven steps: sorted -6, -2, 0, 4, 10 have gaps 4, 2, 4, 6 (the edges of the
    # wedge get their inner gap twice)
    w = np.degrees(angular_weights([0.0, 10.0, -2.0, 4.0, -6.0]))
    np.testing.assert_allclose(w, [3.0, 6.0, 3.0, 5.0, 4.0])


# --------------------------------------------------------------------------------------------
# bad input → DDWError naming problem and fix
# --------------------------------------------------------------------------------------------
def test_bad_inputs_raise_ddw_error():
    proj = np.zeros((5, 8, 8), np.float32)
    ang = np.linspace(-60, 60, 5)
    with pytest.raises(DDWError, match="3D"):
        fbp(np.zeros((8, 8)), ang, 4)
    with pytest.raises(DDWError, match=r"4 tilt angles.*5 projections"):
        fbp(proj, ang[:4], 4)
    with pytest.raises(DDWError, match="thickness"):
        fbp(proj, ang, 0)
    with pytest.raises(DDWError, match="binning"):
        fbp(proj, ang, 4, binning=0)
    with pytest.raises(DDWError, match="binning 16 is larger"):
        fbp(proj, ang, 4, binning=16)
    bad = proj.copy()
    bad[2, 3, 3] = np.nan
    with pytest.raises(DDWError, match="projection 2"):
        fbp(bad, ang, 4)
    with pytest.raises(DDWError, match="apodization"):
        fbp(proj, ang, 4, apodization="hann-ish")
    with pytest.raises(DDWError, match="binning mode"):
        fbp(proj, ang, 4, binning=2, bin_mode="median")
    with pytest.raises(DDWError, match="lowpass"):
        fbp(proj, ang, 4, lowpass=1.5)
    with pytest.raises(DDWError, match="NaN"):
        fbp(proj, [np.nan, 1, 2, 3, 4], 4)
    with pytest.raises(DDWError, match="3D"):
        forward_project(np.zeros((4, 4)), ang)
