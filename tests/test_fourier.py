"""Known-answer tests for the missing-wedge geometry (core/fourier.py)."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_deepdewedge.core import fourier
from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.fourier import (
    frequency_grid,
    observed_mask,
    rotated_observed_masks,
    wedge_boundary_lines,
    wedge_directions,
    xz_log_power,
)


def _point_partner(m):
    """m[(-i) mod N] for every index, over the last three axes."""
    return torch.roll(torch.flip(m, dims=(-3, -2, -1)), shifts=(1, 1, 1), dims=(-3, -2, -1))


def _rot_y(deg):
    """Rotation about the Y axis in (z, y, x) order: z' = cos·z + sin·x, x' = −sin·z + cos·x."""
    a = math.radians(deg)
    return torch.tensor(
        [[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]]
    )


def _rot_euler(a, b, c):
    """Some generic rotation: Rz(a) · Ry(b) · Rz(c) acting on (z, y, x) vectors."""
    def about_z(t):  # rotates the y–x plane
        t = math.radians(t)
        return np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])

    return torch.tensor(about_z(a) @ _rot_y(b).numpy().astype(np.float64) @ about_z(c), dtype=torch.float32)


# ------------------------------------------------------------------ grids
def test_frequency_grid_matches_torch_fftfreq():
    kz, ky, kx = frequency_grid((6, 5, 8))
    assert kz.shape == (6, 1, 1) and ky.shape == (1, 5, 1) and kx.shape == (1, 1, 8)
    assert torch.allclose(kz.flatten(), torch.fft.fftfreq(6))
    assert torch.allclose(ky.flatten(), torch.fft.fftfreq(5))
    assert torch.allclose(kx.flatten(), torch.fft.fftfreq(8))
    _, _, kxr = frequency_grid((6, 5, 8), rfft=True)
    assert torch.allclose(kxr.flatten(), torch.fft.rfftfreq(8))
    kzs, _, _ = frequency_grid((6, 5, 8), shifted=True)
    assert torch.allclose(kzs.flatten(), torch.fft.fftshift(torch.fft.fftfreq(6)))


# ------------------------------------------------------------------ observed mask geometry
def test_symmetric_60_missing_fraction_and_mirror():
    m = observed_mask((257, 1, 257), -60, 60)[:, 0]
    kz, _, kx = frequency_grid((257, 1, 257), dtype=torch.float64)
    kz, kx = kz[:, 0], kx[0]
    r = torch.sqrt(kz**2 + kx**2)
    shell = (r > 0.3) & (r < 0.45)
    missing = 1 - m[shell].mean().item()
    assert missing == pytest.approx(60 / 180, abs=0.01)
    # symmetric about the kz axis (kx → −kx) and about the kx axis (kz → −kz)
    mirror_x = torch.roll(torch.flip(m, dims=(1,)), 1, dims=1)
    mirror_z = torch.roll(torch.flip(m, dims=(0,)), 1, dims=0)
    assert torch.equal(m, mirror_x) and torch.equal(m, mirror_z)
    # the kz axis is missing, the kx axis observed
    assert m[5, 0] == 0 and m[0, 5] == 1
    assert m[-5, 0] == 0 and m[0, -5] == 1


def test_asymmetric_range_exact_sides():
    """−54…+62: observed directions φ ∈ [−54°, 62°]; missing (62°, 126°) = 64° wedge centred at
    94° — i.e. tilted from +kz towards −kx (and from −kz towards +kx)."""
    n = 201
    m = observed_mask((n, 2, n), -54, 62)
    assert torch.equal(m[:, 0], m[:, 1])

    def at(phi_deg, radius=80):
        iz = round(radius * math.sin(math.radians(phi_deg)))
        ix = round(radius * math.cos(math.radians(phi_deg)))
        return int(m[iz % n, 0, ix % n])

    for phi in (0, 30, 60, -30, -52, 180, 180 + 60, 180 - 52, 180 - 30):
        assert at(phi) == 1, phi
    for phi in (64, 90, 94, 120, -56, -70, 180 + 64, 180 - 56, 180 + 90):
        assert at(phi) == 0, phi
    # wedge width on a shell: 64/180 of the directions
    kz, _, kx = frequency_grid((n, 1, n), dtype=torch.float64)
    r = torch.sqrt(kz[:, 0] ** 2 + kx[0] ** 2)
    shell = (r > 0.3) & (r < 0.45)
    assert 1 - m[:, 0][shell].mean().item() == pytest.approx(64 / 180, abs=0.01)
    # the +62 side is not the −54 side: the mirrored range gives the mirrored mask
    m2 = observed_mask((n, 1, n), -62, 54)[:, 0]
    assert torch.equal(m2, torch.roll(torch.flip(m[:, 0], dims=(1,)), 1, dims=1))
    assert not torch.equal(m2, m[:, 0])


def test_boundaries_closed_and_dc_ky_axis_observed():
    m = observed_mask((16, 8, 16), -45, 30)
    assert m[3, 0, 3] == 0 and m[-3, 0, 3] == 1  # (kz, kx) = (3, 3): φ = 45° > 30° → missing
    m = observed_mask((16, 8, 16), -45, 45)
    assert m[3, 0, 3] == 1 and m[-3, 0, 3] == 1  # exactly on ±45° boundaries → observed
    assert m[4, 0, 3] == 0
    m = observed_mask((16, 8, 16), -20, 10)
    assert torch.all(m[0, :, 0] == 1)  # DC and the whole ky axis
    assert m[1, 0, 0] == 0  # kz axis missing


def test_mask_is_binary_float32_and_ky_independent():
    m = observed_mask((10, 7, 12), -50, 65)
    assert m.dtype == torch.float32 and m.shape == (10, 7, 12)
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    assert torch.equal(m, m[:, :1].expand_as(m))


@pytest.mark.parametrize("shape", [(9, 5, 11), (8, 6, 10), (8, 5, 9), (7, 4, 12)])
@pytest.mark.parametrize("rng", [(-60, 60), (-54, 62), (-30, 71)])
def test_point_symmetry_including_even_sizes(shape, rng):
    m = observed_mask(shape, *rng)
    # index symmetry M[i] == M[-i mod N] everywhere (Nyquist rule)
    assert torch.equal(m, _point_partner(m))
    # so masking keeps a real volume real
    v = torch.randn(shape, dtype=torch.float64)
    out = torch.fft.ifftn(m * torch.fft.fftn(v))
    assert out.imag.abs().max() < 1e-12
    # rfft half grid equals the full grid's first X//2+1 columns
    mr = observed_mask(shape, *rng, rfft=True)
    assert torch.equal(mr, m[..., : shape[2] // 2 + 1])
    # shifted is fftshift of unshifted
    assert torch.equal(observed_mask(shape, *rng, shifted=True), torch.fft.fftshift(m))


def test_nyquist_rule_even_sizes():
    """On an even grid the Nyquist row is observed iff observed under both sign readings."""
    m = observed_mask((8, 1, 8), -54, 62)[:, 0]
    # (kz, kx) = (−½, ¼) reads as φ = −63.4° or (+½, ¼) → 63.4°: both missing here → 0
    assert m[4, 2] == 0
    m = observed_mask((8, 1, 8), -70, 62)[:, 0]
    # −63.4° observed but +63.4° missing → not observed under both readings → 0
    assert m[4, 2] == 0 and m[4, 6] == 0
    m = observed_mask((8, 1, 8), -70, 70)[:, 0]
    assert m[4, 2] == 1 and m[4, 6] == 1


@pytest.mark.parametrize("bad", [(60, -60), (10, 10), (-90, 60), (-60, 90), (-100, 0), (float("nan"), 3)])
def test_invalid_tilt_range_raises(bad):
    with pytest.raises(DDWError, match="tilt"):
        observed_mask((8, 8, 8), *bad)
    with pytest.raises(DDWError):
        rotated_observed_masks((8, 8, 8), *bad, torch.eye(3)[None])


def test_bad_shapes_and_rotations_raise():
    with pytest.raises(DDWError):
        observed_mask((8, 8), -60, 60)
    with pytest.raises(DDWError):
        rotated_observed_masks((8, 8, 8), -60, 60, torch.eye(4)[None])
    with pytest.raises(DDWError, match="orthonormal"):
        rotated_observed_masks((8, 8, 8), -60, 60, 2 * torch.eye(3)[None])


# ------------------------------------------------------------------ agreement with a projector
def _splat_project(vol, theta_deg):
    """Reference projector with the project's convention: voxel (z, y, x) lands at
    x' = x·cosθ + z·sinθ (centered coordinates, linear splatting), row y."""
    Z, Y, X = vol.shape
    t = math.radians(theta_deg)
    z = np.arange(Z) - Z // 2
    x = np.arange(X) - X // 2
    xp = x[None, :] * math.cos(t) + z[:, None] * math.sin(t) + X // 2  # detector index
    i0 = np.floor(xp).astype(int)
    w1 = xp - i0
    out = np.zeros((Y, X + 2))
    for y in range(Y):
        sl = vol[:, y, :]
        for idx, w in ((i0, 1 - w1), (i0 + 1, w1)):
            ok = (idx >= 0) & (idx < X)
            out[y] += np.bincount(idx[ok], weights=(sl * w)[ok], minlength=X + 2)
    return out[:, :X]


def _smear(proj, shape, theta_deg):
    """Back-projection of one projection: every voxel takes the value at x'."""
    Z, Y, X = shape
    t = math.radians(theta_deg)
    z = np.arange(Z) - Z // 2
    x = np.arange(X) - X // 2
    xp = x[None, :] * math.cos(t) + z[:, None] * math.sin(t) + X // 2
    out = np.empty(shape)
    for y in range(Y):
        out[:, y, :] = np.interp(xp, np.arange(X), proj[y], left=0.0, right=0.0)
    return out


def _disk_window(Z, X):
    z = np.arange(Z) - Z // 2
    x = np.arange(X) - X // 2
    r = np.sqrt(z[:, None] ** 2 + x[None, :] ** 2) / (min(Z, X) / 2 - 2)
    return np.where(r < 1, np.cos(np.clip(r, 0, 1) * math.pi / 2) ** 2, 0.0)[:, None, :]


def _fraction_in_mask(vol, tmin, tmax):
    p = np.abs(np.fft.fftn(vol)) ** 2
    # near DC the window blurs every direction; the ky axis is in every mask: leave both out
    kz, _, kx = (k.double().numpy() for k in frequency_grid(vol.shape))
    r = np.sqrt(kz**2 + kx**2)
    p = p * ((r > 0.12) & (r < 0.3))  # and above ~0.3 interpolation images alias back in
    m = observed_mask(vol.shape, tmin, tmax).numpy()
    return float((p * m).sum() / p.sum())


def _one_tilt_check(project, theta0):
    shape = (48, 3, 48)
    rng = np.random.default_rng(1)
    vol = rng.standard_normal(shape) * _disk_window(shape[0], shape[2])
    proj = project(vol, theta0)
    back = _smear(proj, shape, theta0) * _disk_window(shape[0], shape[2])
    right = _fraction_in_mask(back, theta0 - 8, theta0 + 8)
    wrong = _fraction_in_mask(back, -theta0 - 8, -theta0 + 8)
    assert right > 0.75, (right, wrong)
    assert wrong < 0.05, (right, wrong)


@pytest.mark.parametrize("theta0", [30.0, -50.0])
def test_mask_agrees_with_projection_convention(theta0):
    """A projection at θ0, smeared back along its rays, has its spectrum on the plane that the
    mask says θ0 samples (φ = θ0), not on the mirrored one (φ = −θ0)."""
    _one_tilt_check(_splat_project, theta0)


def test_mask_agrees_with_package_projector():
    from napari_deepdewedge.core.reconstruct.geometry import forward_project as fp

    def project(vol, theta):
        return np.asarray(fp(vol.astype(np.float32), [theta], device="cpu"))[0]

    _one_tilt_check(project, 35.0)


# ------------------------------------------------------------------ rotated masks
def test_identity_rotation_gives_mask_exactly():
    for shape in [(9, 7, 11), (8, 6, 10)]:
        for rng in [(-60, 60), (-54, 62)]:
            eye = torch.eye(3).expand(2, 3, 3)
            mr = rotated_observed_masks(shape, *rng, eye)
            m = observed_mask(shape, *rng)
            assert mr.shape == (2, *shape) and mr.dtype == torch.float32
            assert torch.equal(mr[0], m) and torch.equal(mr[1], m)
            mrr = rotated_observed_masks(shape, *rng, eye, rfft=True)
            assert torch.equal(mrr[0], observed_mask(shape, *rng, rfft=True))


@pytest.mark.parametrize("n", [9, 10])
def test_rotation_90_about_y(n):
    """R = 90° about Y maps z → x: Rᵀk = (−kx, ky, kz), so M_R(kz, ky, kx) = M(−kx, ·, kz):
    the wedge that was around kz lies around kx afterwards."""
    R = _rot_y(90)
    for rng in [(-60, 60), (-54, 62)]:
        mr = rotated_observed_masks((n, 4, n), *rng, R)[0]
        m = observed_mask((n, 4, n), *rng)[:, 0]
        i = torch.arange(n)
        expect = m[(-i[None, :]) % n, i[:, None]]  # expect[iz, ix] = M[(−ix) mod n, iz]
        assert torch.equal(mr[:, 0], expect)
        assert torch.equal(mr[:, 1], mr[:, 0])  # still ky independent
        # symmetric ±60: now the kx axis is missing and the kz axis observed
        if rng == (-60, 60):
            assert mr[0, 0, 3] == 0 and mr[3, 0, 0] == 1


@pytest.mark.parametrize("shape", [(10, 10, 10), (9, 9, 9), (8, 10, 12)])
def test_rotated_masks_binary_point_symmetric(shape):
    R = torch.stack([_rot_euler(10, 37, -70), _rot_euler(-120, 75, 33), _rot_y(23)])
    for rfft in (False, True):
        mr = rotated_observed_masks(shape, -54, 62, R, rfft=rfft)
        assert set(torch.unique(mr).tolist()) <= {0.0, 1.0}
        assert torch.all(mr[:, 0, 0, 0] == 1)  # DC
    mr = rotated_observed_masks(shape, -54, 62, R)
    assert torch.equal(mr, _point_partner(mr))
    v = torch.randn(shape, dtype=torch.float64)
    out = torch.fft.ifftn(mr.double() * torch.fft.fftn(v), dim=(-3, -2, -1))
    assert out.imag.abs().max() < 1e-12
    assert torch.equal(rotated_observed_masks(shape, -54, 62, R, rfft=True), mr[..., : shape[2] // 2 + 1])
    # roughly 64/180 of the directions are missing, for every rotation (cube corners, Nyquist)
    frac = 1 - mr.mean(dim=(1, 2, 3))
    assert torch.all((frac > 0.25) & (frac < 0.5))


def _rotate_volume(v, R):
    """v_R(p) = v(Rᵀ p) with centre N//2 (scipy: out(o) = in(matrix·o + offset))."""
    Rt = np.asarray(R, dtype=np.float64).T
    c = np.array(v.shape) // 2
    return ndimage.affine_transform(v, Rt, offset=c - Rt @ c, order=3, mode="constant")


def test_rotated_mask_matches_spectrum_of_rotated_volume():
    """Acceptance: the wedge of a rotated volume is where M_R says, not where a wrong R' says."""
    n = 40
    shape = (n, n, n)
    rng = np.random.default_rng(3)
    tmin, tmax = -50, 58
    kz, ky, kx = (k.double().numpy() for k in frequency_grid(shape))
    kr = np.sqrt(kz**2 + ky**2 + kx**2)
    band = kr < 0.32  # keep rotated frequencies inside the Nyquist cube
    m = observed_mask(shape, tmin, tmax).double().numpy()
    # a soft sphere keeps the content away from the corners that a rotation clips; apply it
    # before the mask so the volume's spectrum is exactly inside M (the small spatial ringing
    # the mask adds is what the rotation may still clip)
    g = np.indices(shape) - n // 2
    r = np.sqrt((g**2).sum(0)) / (n / 2 - 6)
    window = np.where(r < 1, np.cos(np.clip(r, 0, 1) * math.pi / 2) ** 2, 0)
    v = np.fft.ifftn(np.fft.fftn(rng.standard_normal(shape) * window) * m * band).real
    assert (np.abs(np.fft.fftn(v)) ** 2 * (1 - m)).sum() < 1e-20 * (v**2).sum()

    R = _rot_euler(25, 63, -40)
    wrong = _rot_euler(25, 63, -40 + 90)
    vr = _rotate_volume(v, R.numpy())
    p = np.abs(np.fft.fftn(vr)) ** 2
    p[kr < 2.5 / n] = 0  # the window's own low-frequency blob is not wedge information
    masks = rotated_observed_masks(shape, tmin, tmax, torch.stack([R, wrong])).double().numpy()
    outside_right = float((p * (1 - masks[0])).sum() / p.sum())
    outside_wrong = float((p * (1 - masks[1])).sum() / p.sum())
    assert outside_right < 0.05, (outside_right, outside_wrong)
    assert outside_wrong > 4 * outside_right and outside_wrong > 0.15, (outside_right, outside_wrong)
    # the un-rotated mask is also wrong for the rotated volume
    outside_unrot = float((p * (1 - m)).sum() / p.sum())
    assert outside_unrot > 4 * outside_right


# ------------------------------------------------------------------ pictures
def test_xz_log_power_known_answer():
    # a pure plane wave along x with ky = 0 → peak at (Z//2, X//2 ± 3)
    Z, Y, X = 12, 5, 16
    x = np.arange(X)
    v = np.cos(2 * np.pi * 3 * x / X)[None, None, :] * np.ones((Z, Y, 1))
    img = xz_log_power(v)
    assert img.shape == (Z, X) and img.dtype == np.float32
    top = np.argsort(img.ravel())[-2:]
    peaks = {tuple(int(t) for t in np.unravel_index(i, img.shape)) for i in top}
    assert peaks == {(Z // 2, X // 2 + 3), (Z // 2, X // 2 - 3)}
    # power value: unitary FFT of amplitude-1 cosine → |F|² = N/4 at each peak
    assert math.exp(img[Z // 2, X // 2 + 3]) == pytest.approx(Z * Y * X / 4, rel=1e-4)
    # equals the ky=0 slice of the full 3D spectrum; torch input accepted
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 6, 9)).astype(np.float32)
    full = np.abs(np.fft.fftn(w, norm="ortho")) ** 2
    ref = np.fft.fftshift(full[:, 0, :])
    got = np.exp(xz_log_power(torch.from_numpy(w), eps=1e-30).astype(np.float64))
    assert np.allclose(got, ref, rtol=1e-4)
    with pytest.raises(DDWError):
        xz_log_power(np.zeros((4, 4)))


def test_xz_log_power_shows_the_wedge():
    shape = (32, 8, 32)
    m = observed_mask(shape, -60, 60).numpy()
    v = np.fft.ifftn(np.fft.fftn(np.random.default_rng(0).standard_normal(shape)) * m).real
    img = xz_log_power(v)
    ms = np.fft.fftshift(m[:, 0, :]).astype(bool)
    assert img[ms].mean() > img[~ms].mean() + 10


def test_wedge_lines_geometry():
    assert np.allclose(wedge_directions(-60, 45), [[-math.sin(math.pi / 3), 0.5], [math.sqrt(0.5)] * 2])
    Z, X = 40, 64
    lines = wedge_boundary_lines((Z, X), -54, 62)
    assert lines.shape == (2, 2, 2)
    c = np.array([Z // 2, X // 2])
    for line, th in zip(lines, (-54, 62)):
        d = line[1] - line[0]
        # pixel direction (Z·sinθ, X·cosθ): frequency angle atan2(d_z / Z, d_x / X) = θ (mod 180)
        ang = math.degrees(math.atan2(d[0] / Z, d[1] / X))
        assert (ang - th) % 180 == pytest.approx(0, abs=1e-6) or (ang - th) % 180 == pytest.approx(180, abs=1e-6)
        # through the centre
        cross = (c - line[0])[0] * d[1] - (c - line[0])[1] * d[0]
        assert abs(cross) < 1e-6 * np.linalg.norm(d) * 100
        # ends on the image border
        for p in line:
            on = np.isclose(p[0], -0.5) or np.isclose(p[0], Z - 0.5) or np.isclose(p[1], -0.5) or np.isclose(p[1], X - 0.5)
            assert on
    # the lines bound the observed region of the mask image
    m = np.fft.fftshift(observed_mask((Z, 1, X), -54, 62)[:, 0].numpy())
    for th, inside_sign in ((-54, +1), (62, -1)):
        t = math.radians(th + inside_sign * 8)
        p = np.round(c + 18 * np.array([Z * math.sin(t), X * math.cos(t)]) / max(Z, X)).astype(int)
        assert m[p[0], p[1]] == 1
        t = math.radians(th - inside_sign * 8)
        p = np.round(c + 18 * np.array([Z * math.sin(t), X * math.cos(t)]) / max(Z, X)).astype(int)
        assert m[p[0], p[1]] == 0
