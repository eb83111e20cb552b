import math
import numpy as np

import pytest
import torch

from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.model.rotation import random_rotations, rotate_center_crop, stack_channels_last



def _radial_power(x: torch.Tensor) -> torch.Tensor:
    """Mean power of ``(B, 1, s, s, s)`` cubes in five radial frequency shells (0 … 3.75 rad)."""
    s = x.shape[-1]
    k = torch.fft.fftfreq(s) * 2 * math.pi
    radius = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    p = (torch.fft.fftn(x, dim=(-3, -2, -1)).abs() ** 2).mean(dim=(0, 1)) / s**3
    return torch.stack([p[(radius >= a) & (radius < a + 0.75)].mean() for a in (0.0, 0.75, 1.5, 2.25, 3.0)])

def _axis_rotation(axis: int, deg: float) -> torch.Tensor:
    """Rotation by ``deg`` in the plane of the two other axes, (z, y, x) order, right-handed."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = [a for a in range(3) if a != axis]
    R = torch.eye(3, dtype=torch.float64)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


# ---------------------------------------------------------------------------------- rotations
def test_random_rotations_are_rotations():
    g = torch.Generator().manual_seed(0)
    R = random_rotations(500, generator=g, dtype=torch.float64)
    assert R.shape == (500, 3, 3) and R.dtype == torch.float64
    eye = torch.eye(3, dtype=torch.float64).expand(500, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(500, dtype=torch.float64), rtol=0, atol=1e-12)
    assert random_rotations(3).dtype == torch.float32


def test_random_rotations_seeded_and_distinct():
    a = random_rotations(4, generator=torch.Generator().manual_seed(7))
    b = random_rotations(4, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    assert (a[0] - a[1]).abs().max() > 1e-3


def test_random_rotations_uniform():
    n = 20000
    R = random_rotations(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # Haar measure: E[R] = 0 (each entry has variance 1/3, so the s.e. of the mean is ~0.004)
    assert R.mean(dim=0).abs().max() < 0.02
    # the rotation angle ω has density (1 - cos ω)/π on [0, π]; CDF (ω - sin ω)/π
    tr = R.diagonal(dim1=1, dim2=2).sum(-1)
    omega = torch.arccos(((tr - 1) / 2).clamp(-1, 1))
    edges = torch.linspace(0, math.pi, 7, dtype=torch.float64)
    hist = torch.histc(omega, bins=6, min=0, max=math.pi) / n
    cdf = (edges - torch.sin(edges)) / math.pi
    expected = cdf[1:] - cdf[:-1]
    assert (hist - expected).abs().max() < 0.01, (hist, expected)
    # a law that is *not* Haar (uniform angle) would fail the same check
    assert (torch.full((6,), 1 / 6, dtype=torch.float64) - expected).abs().max() > 0.05


# ------------------------------------------------------------------------------ rotate + crop
def test_identity_is_exact_center_crop():
    torch.manual_seed(0)
    cubes = torch.randn(2, 3, 24, 24, 24)
    eye = torch.eye(3).expand(2, 3, 3)
    out = rotate_center_crop(cubes, eye, 16)
    assert out.shape == (2, 3, 16, 16, 16)
    o = 24 // 2 - 16 // 2
    torch.testing.assert_close(out, cubes[:, :, o:o + 16, o:o + 16, o:o + 16], rtol=0, atol=1e-5)


def test_off_centre_voxel_moves_to_R_p():
    """v_R(p) = v(Rᵀp): a bright voxel at centred p0 ends up at centred R·p0."""
    E, s = 17, 11
    p0 = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)
    cube = torch.zeros(1, 1, E, E, E, dtype=torch.float64)
    idx = (p0 + E // 2).long()
    cube[0, 0, idx[0], idx[1], idx[2]] = 1.0
    for axis in range(3):
        R = _axis_rotation(axis, 90.0)
        out = rotate_center_crop(cube, R[None], s)
        expected = (R @ p0).round().long() + s // 2
        peak = torch.nonzero(out[0, 0] > 0.5)
        assert peak.tolist() == [expected.tolist()], axis
        assert float(out.sum()) == pytest.approx(1.0, abs=1e-9)


def test_90_degrees_equals_rot90_of_crop():
    torch.manual_seed(2)
    E, s = 15, 9  # odd sizes: the array centre (N-1)/2 equals the convention's N//2
    cube = torch.randn(1, 1, E, E, E, dtype=torch.float64)
    o = E // 2 - s // 2
    crop = cube[0, 0, o:o + s, o:o + s, o:o + s]
    # rotation about x by +90°: (z, y) -> (z cos - y sin, z sin + y cos) = (-y, z), which is
    # torch.rot90(k=1) over dims (z, y); likewise (z, x) about y and (y, x) about z
    for axis, dims in [(2, (0, 1)), (1, (0, 2)), (0, (1, 2))]:
        R = _axis_rotation(axis, 90.0)
        out = rotate_center_crop(cube, R[None], s)[0, 0]
        torch.testing.assert_close(out, torch.rot90(crop, 1, dims=dims), rtol=0, atol=1e-9)
        out_neg = rotate_center_crop(cube, R.T[None], s)[0, 0]
        torch.testing.assert_close(out_neg, torch.rot90(crop, -1, dims=dims), rtol=0, atol=1e-9)


def _smooth_volume(E: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(E, dtype=torch.float64) - E // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    v = torch.zeros(E, E, E, dtype=torch.float64)
    for _ in range(6):
        c = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * E * 0.5
        amp = torch.randn(1, generator=g, dtype=torch.float64)
        v += amp * torch.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * 4.0**2))
    return v


def test_rotate_then_inverse_recovers_interior():
    E = 24
    v = _smooth_volume(E, 3)[None, None]
    R = random_rotations(1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    back = rotate_center_crop(rotate_center_crop(v, R, E), R.transpose(1, 2), E)
    ax = torch.arange(E, dtype=torch.float64) - E // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    interior = (z**2 + y**2 + x**2).sqrt() < E // 2 - 2
    err = (back - v)[0, 0][interior].abs().max()
    # two trilinear interpolations blur a σ=4 blob by ~3 % at its peak
    assert err < 0.05 * v.abs().max(), err
    # and a wrong inverse (R again instead of Rᵀ) does not
    wrong = rotate_center_crop(rotate_center_crop(v, R, E), R, E)
    assert (wrong - v)[0, 0][interior].abs().max() > 0.2 * v.abs().max()


def test_batch_rotations_are_independent():
    torch.manual_seed(5)
    cubes = torch.randn(3, 2, 12, 12, 12)
    R = random_rotations(3, generator=torch.Generator().manual_seed(6))
    out = rotate_center_crop(cubes, R, 8)
    for b in range(3):
        single = rotate_center_crop(cubes[b:b + 1], R[b:b + 1], 8)
        torch.testing.assert_close(out[b:b + 1], single)
    # channels share the rotation of their cube
    torch.testing.assert_close(out[:, 1], rotate_center_crop(cubes[:, 1:2], R, 8)[:, 0])
    # the channels-last pair gives the same result as the concatenated one
    pair = stack_channels_last(cubes[:, 0:1], cubes[:, 1:2])
    assert pair.shape == cubes.shape and pair.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(rotate_center_crop(pair, R, 8), out, rtol=0, atol=0)
    # reading a store in place by index equals sampling the gathered batch
    idx = torch.tensor([2, 0, 2, -1])
    R4 = random_rotations(4, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(rotate_center_crop(pair, R4, 8, index=idx), rotate_center_crop(cubes[idx], R4, 8),
                               rtol=0, atol=0)
    with pytest.raises(DDWError, match="out of range"):
        rotate_center_crop(pair, R4, 8, index=[0, 1, 2, 3])
    with pytest.raises(DDWError, match=r"\(4, 3, 3\)"):
        rotate_center_crop(pair, R, 8, index=idx)


def test_bad_shapes_raise():
    with pytest.raises(DDWError):
        rotate_center_crop(torch.zeros(1, 8, 8, 8), torch.eye(3)[None], 4)
    with pytest.raises(DDWError):
        rotate_center_crop(torch.zeros(2, 1, 8, 8, 8), torch.eye(3)[None], 4)


# ----------------------------------------------------------------- agreement with fourier.py
def test_rotated_spectrum_matches_rotated_mask():
    """Band-limit noise to M in an E-cube, rotate+crop: its power sits inside M_R, not outside."""
    fourier = pytest.importorskip("napari_deepdewedge.core.fourier")
    E, s, tmin, tmax = 32, 22, -50.0, 50.0
    g = torch.Generator().manual_seed(8)
    noise = torch.randn(E, E, E, generator=g, dtype=torch.float64)
    M = fourier.observed_mask((E, E, E), tmin, tmax).double()
    kz, ky, kx = fourier.frequency_grid((E, E, E), dtype=torch.float64)
    lowpass = ((kz**2 + ky**2 + kx**2).sqrt() < 0.3).double()  # keep clear of interpolation blur
    vol = torch.fft.ifftn(torch.fft.fftn(noise) * M * lowpass).real
    # a rotation that is far from its inverse, so that the wrong convention is visible
    R = (_axis_rotation(0, 35.0) @ _axis_rotation(1, 70.0))[None]
    out = rotate_center_crop(vol[None, None], R, s)[0, 0]
    # taper the crop edge so truncation does not leak power across the wedge boundary
    w1 = torch.hann_window(s, periodic=False, dtype=torch.float64)
    out = out * w1[:, None, None] * w1[None, :, None] * w1[None, None, :]
    power = torch.fft.fftn(out).abs() ** 2

    def wedge_ratio(rot):
        MR = fourier.rotated_observed_masks((s, s, s), tmin, tmax, rot.float()).double()[0]
        return float((power * (1 - MR)).mean() / (power * MR).mean())

    # the Hann taper alone leaks ~0.09 of the in-mask power density into the wedge (identity
    # rotation); the correct M_R stays near that floor, the transposed convention does not
    good = wedge_ratio(R)
    bad = wedge_ratio(R.transpose(1, 2))
    assert good < 0.2, good
    assert bad > 0.5, bad


def test_match_resampling_gives_raw_noise_the_statistics_of_rotated_noise():
    """Known answer: trilinear rotation passes white noise with mean power 2/3 + cos(k)/3 per
    axis; the matching filter must reproduce that spectrum (radially) and the variance."""
    import math

    from napari_deepdewedge.core.model.rotation import match_resampling

    torch.manual_seed(0)
    E, s, B = 34, 24, 48
    noise = torch.randn(B, 1, E, E, E)
    rotated = rotate_center_crop(noise, random_rotations(B, generator=torch.Generator().manual_seed(2)), s)
    matched = match_resampling(torch.randn(B, 1, s, s, s))
    pr, pm = _radial_power(rotated), _radial_power(matched)
    assert torch.allclose(pm, pr, rtol=0.15), (pm, pr)
    assert abs(matched.var().item() / rotated.var().item() - 1) < 0.1
    # and raw noise does not match (the test can fail): 3× the variance at high frequency
    assert _radial_power(torch.randn(B, 1, s, s, s))[-1] > 2.5 * pr[-1]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_bspline_rotation_matches_scipy_cubic_spline(dtype, tol):
    """Known answer: prefilter + cubic B-spline sampling equals scipy's affine_transform of
    order 3 (mirror boundaries) at every output voxel; trilinear does not (the test can fail)."""
    from scipy import ndimage

    from napari_deepdewedge.core.model.rotation import bspline_prefilter, rotate_center_crop_bspline

    rng = np.random.default_rng(5)
    E, s = 20, 10  # every output voxel inside the cube (√3·s/2 < E/2 − 1): no padding differences
    cubes = rng.standard_normal((3, E, E, E))
    rot = random_rotations(3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    coef = bspline_prefilter(torch.from_numpy(cubes)[:, None].to(dtype))
    out = rotate_center_crop_bspline(coef, rot, s).double().numpy()
    tri = rotate_center_crop(torch.from_numpy(cubes)[:, None], rot, s).numpy()
    for b in range(3):
        r = rot[b].numpy()
        ref = ndimage.affine_transform(cubes[b], r.T, offset=np.full(3, E // 2) - r.T @ np.full(3, s // 2),
                                       output_shape=(s, s, s), order=3, mode="mirror")
        assert np.abs(out[b, 0] - ref).max() < tol * np.abs(ref).max()
        assert np.abs(tri[b, 0] - ref).max() > 0.05 * np.abs(ref).max()


def test_bspline_rotation_reads_store_in_place_like_a_batch():
    from napari_deepdewedge.core.model.rotation import bspline_prefilter, rotate_center_crop_bspline

    store = bspline_prefilter(stack_channels_last(torch.randn(5, 1, 14, 14, 14), torch.randn(5, 1, 14, 14, 14)))
    rot = random_rotations(3, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([4, 0, 4])
    a = rotate_center_crop_bspline(store, rot, 8, index=idx)
    b = rotate_center_crop_bspline(store[idx], rot, 8)
    assert a.shape == (3, 2, 8, 8, 8) and torch.allclose(a, b, atol=1e-6)
    # identity rotation = centre crop of the original cubes (interpolating spline)
    eye = torch.eye(3).expand(2, 3, 3)
    raw = torch.randn(2, 1, 14, 14, 14)
    crop = rotate_center_crop_bspline(bspline_prefilter(raw), eye, 8)
    assert torch.allclose(crop, raw[..., 3:11, 3:11, 3:11], atol=1e-4)


def test_bspline_matching_filter_known_answer():
    """Known answer: cubic B-spline interpolation at a random offset passes white noise with the
    mean power P(k) = B7(k)/B3(k)² per axis (1 at DC, 272·9/5040 at Nyquist); the 9-tap filter's
    power follows P within 3.5 %, and filtered raw noise has the radial spectrum and variance of
    noise rotated by cubic B-splines — while the trilinear filter does not."""
    import math

    from napari_deepdewedge.core.model.rotation import (bspline3_match_taps, bspline3_mean_power, bspline_prefilter,
                                                  match_resampling, rotate_center_crop_bspline)

    k = np.linspace(0, np.pi, 301)
    P = bspline3_mean_power(k)
    assert abs(P[0] - 1) < 1e-12 and abs(P[-1] - 272 * 9 / 5040) < 1e-12
    taps = bspline3_match_taps()
    amp = taps[0] + 2 * sum(t * np.cos(j * k) for j, t in enumerate(taps[1:], start=1))
    assert np.max(np.abs(amp**2 / P - 1)) < 0.035

    torch.manual_seed(0)
    E, s, B = 34, 24, 24
    noise = torch.randn(B, 1, E, E, E)
    rot = random_rotations(B, generator=torch.Generator().manual_seed(2))
    rotated = rotate_center_crop_bspline(bspline_prefilter(noise), rot, s)
    raw = torch.randn(B, 1, s, s, s)
    matched = match_resampling(raw, "bspline3")
    pr, pm = _radial_power(rotated), _radial_power(matched)
    assert torch.allclose(pm, pr, rtol=0.15), (pm, pr)
    assert abs(matched.var().item() / rotated.var().item() - 1) < 0.1
    assert _radial_power(match_resampling(raw, "trilinear"))[-1] < 0.75 * pr[-1]
