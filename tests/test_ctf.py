"""The CTF (torch-ctf under our sign convention) and strip-wise phase flipping with the defocus
gradient across the tilted specimen: known answers from the weak-phase formula."""
import math

import numpy as np
import pytest
import torch

from napari_deepdewedge.core.ctf import (
    PhaseFlip,
    constant_ctf,
    ctf_1d,
    ctf_2d,
    ctf_zeros,
    first_zero,
    strip_width_for,
    mean_ctf_record,
    wavelength_angstrom,
    xz_zero_radii,
)
from napari_deepdewedge.core.errors import DDWError


def formula(k, df_um, kv=300.0, cs=2.7, a=0.07):
    """χ(k) = πλΔf k² − ½πC_sλ³k⁴, CTF = −(√(1−A²) sin χ + A cos χ), written out here."""
    lam = wavelength_angstrom(kv)
    chi = math.pi * lam * df_um * 1e4 * k**2 - 0.5 * math.pi * cs * 1e7 * lam**3 * k**4
    return -(math.sqrt(1 - a * a) * np.sin(chi) + a * np.cos(chi))


def test_relativistic_wavelength_textbook_values():
    assert wavelength_angstrom(300) == pytest.approx(0.019687, abs=2e-6)
    assert wavelength_angstrom(200) == pytest.approx(0.025079, abs=2e-6)


def test_torch_ctf_under_our_sign_equals_the_weak_phase_formula():
    k = np.linspace(0, 0.1, 400)  # up to 10 Å (Nyquist of 5 Å pixels)
    for df in (1.5, 5.0):
        got = ctf_1d(df, k)
        # float32 inside torch-ctf: |error| measured ≤ 3e-4 here (5 µm, 400 samples)
        np.testing.assert_allclose(got, formula(k, df), atol=2e-3)
    assert ctf_1d(5.0, [0.0])[0] == pytest.approx(-0.07, abs=1e-6)  # dense is dark at k → 0


def test_first_zero_at_5_um_is_near_31_angstrom_and_the_sign_changes_there():
    # pure phase contrast: χ = π at k ≈ 1/√(λΔf) = 1/31.37 Å (C_s moves it out by < 1 %)
    assert 1 / 31.4 < first_zero(5.0, amplitude_contrast=0.0) < 1 / 31.0
    k0 = first_zero(5.0, amplitude_contrast=0.07)  # χ = π − atan(0.07): a little earlier
    assert 1 / 31.9 < k0 < 1 / 31.5
    below, above = ctf_1d(5.0, [k0 * 0.97, k0 * 1.03])
    assert below < 0 < above


def test_first_ctf_zero_at_300_kv_5_um_known_answer():
    # By hand: λ(300 kV) = 0.019687 Å, λΔf = 984.37 Å², atan(0.07/√(1−0.07²)) = 0.070057.
    # Without C_s: k² = (π − 0.070057)/(π·984.37) = 9.93224e-4, k = 0.0315154 1/Å; C_s = 2.7 mm
    # moves u = k² out by ½C_sλ³u²/(λΔf) = 1.03e-7, to 9.93327e-4: k = 0.0315170 1/Å (31.73 Å).
    zeros = ctf_zeros(5.0, 0.1, voltage=300.0, cs=2.7, amplitude_contrast=0.07)
    assert zeros[0] == pytest.approx(0.0315170, rel=2e-6)
    assert zeros[0] == pytest.approx(first_zero(5.0, amplitude_contrast=0.07), rel=1e-9)
    # pure phase contrast, no C_s: the n-th zero at exactly k² = n/(λΔf)
    lam = wavelength_angstrom(300.0)
    plain = ctf_zeros(5.0, 0.1, cs=0.0, amplitude_contrast=0.0)
    n = np.arange(1, plain.size + 1)
    np.testing.assert_allclose(plain, np.sqrt(n / (lam * 5e4)), rtol=1e-12)
    assert plain.size == math.floor(0.1**2 * lam * 5e4)  # every one up to 0.1 1/Å (9)


@pytest.mark.parametrize("df, a, shift", [(5.0, 0.07, 0.0), (1.5, 0.1, 0.0), (0.8, 0.0, 90.0)])
def test_ctf_zeros_are_exactly_the_sign_changes_of_torch_ctf(df, a, shift):
    k = np.linspace(0.0, 0.2, 20001)[1:]  # up to 5 Å
    values = ctf_1d(df, k, amplitude_contrast=a, phase_shift=shift)
    changes = np.flatnonzero(np.sign(values[1:]) != np.sign(values[:-1]))
    zeros = ctf_zeros(df, 0.2, amplitude_contrast=a, phase_shift=shift)
    assert zeros.size == changes.size > 2
    # each zero lies in the grid step where torch-ctf (float32) changes sign, ± one step
    step = k[1] - k[0]
    assert np.all(np.abs(zeros - 0.5 * (k[changes] + k[changes + 1])) <= 1.5 * step)


def test_ctf_zeros_beyond_the_top_of_chi_and_edge_cases():
    # at 0.5 µm χ peaks at k = √(Δf/(C_sλ²)) ≈ 0.69 1/Å: past it the zeros come from above
    lam = wavelength_angstrom(300.0)
    k_top = math.sqrt(0.5e4 / (2.7e7 * lam**2))
    k = np.linspace(0.6, 0.8, 40001)
    values = formula(k, 0.5)
    changes = np.flatnonzero(np.sign(values[1:]) != np.sign(values[:-1]))
    zeros = ctf_zeros(0.5, 0.8)
    inside = zeros[zeros > 0.6]
    assert inside.size == changes.size and np.any(inside > k_top)
    np.testing.assert_allclose(inside, k[changes], atol=2 * (k[1] - k[0]))
    assert ctf_zeros(5.0, 0.0).size == 0 and ctf_zeros(5.0, 0.02).size == 0  # below the first


def test_xz_zero_radii_fall_on_the_minima_of_a_ctf_modulated_spectrum():
    from napari_deepdewedge.core.fourier import xz_log_power

    shape, voxel, df = (48, 4, 96), 5.0, 2.0
    kz, ky, kx = np.meshgrid(*(np.fft.fftfreq(n, voxel) for n in shape), indexing="ij")
    spectrum = np.random.default_rng(1).normal(size=shape) * formula(np.sqrt(kz**2 + kx**2), df)
    volume = np.fft.ifftn(spectrum * (ky == 0)).real  # only ky = 0 carries the CTF picture
    image = xz_log_power(volume)
    ctf = constant_ctf(3, df)
    ctf.defocus_u[:] = df + np.array([-0.1, 0.0, 0.1])  # the mean is what counts
    record = mean_ctf_record(ctf)
    assert record["defocus_um"] == pytest.approx(df) and record["summary"] == ctf.summary()
    del record["summary"]
    radii = xz_zero_radii(image.shape, voxel, **record)
    # λΔf = 393.7 Å²: zeros at k ≈ √(n/393.7) < 0.1 (Nyquist) for n = 1, 2, 3
    assert radii.shape == (3, 2)
    np.testing.assert_allclose(radii[:, 1] / radii[:, 0], 96 / 48)  # a circle in 1/Å
    centre = np.array([48 // 2, 96 // 2])
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)

    def mean_on(rz, rx):
        rows = np.clip(np.round(centre[0] + rz * np.sin(t)).astype(int), 0, 47)
        cols = np.clip(np.round(centre[1] + rx * np.cos(t)).astype(int), 0, 95)
        return float(image[rows, cols].mean())

    on = [mean_on(*r) for r in radii]
    between = [mean_on(*(0.5 * (radii[i] + radii[i + 1]))) for i in range(2)]
    # log power on the predicted rings sits well below the rings between them (measured over
    # four noise draws: ≥ 4.4 lower in natural log; with rows and columns swapped only ≤ 1.4)
    assert max(on[:2]) < min(between) - 3.0
    with pytest.raises(DDWError, match="voxel size"):
        xz_zero_radii(image.shape, 0.0, df)


def _numpy_flip(img, df_um, pixel, pad):
    """Independent flip: mirror pad, multiply the spectrum by −sign(formula CTF), crop."""
    padded = np.pad(np.asarray(img, dtype=np.float64), pad, mode="reflect")
    ky = np.fft.fftfreq(padded.shape[0])[:, None] / pixel
    kx = np.fft.rfftfreq(padded.shape[1])[None, :] / pixel
    sign = np.where(formula(np.sqrt(ky**2 + kx**2), df_um) > 0, -1.0, 1.0)
    out = np.fft.irfft2(np.fft.rfft2(padded) * sign, s=padded.shape)
    return out[pad:-pad, pad:-pad]


def test_untilted_flip_equals_an_independent_minus_sign_ctf_flip():
    """At 0° the flip is one multiplication of the mirror-padded projection's spectrum by
    −sign(CTF) (low frequencies kept: dense stays dark). Known answer: a numpy flip with the
    formula (measured: 2e-7 of the image's spread apart; float32 rounding)."""
    g = torch.Generator().manual_seed(0)
    img = torch.randn(96, 128, generator=g)
    c = constant_ctf(1, 4.0)
    flip = PhaseFlip(c, np.zeros(1), 5.0)
    out = flip.apply(img[None], 0)[0].double().numpy()
    pad = flip._pad(96, 5.0, wavelength_angstrom(300.0))
    assert pad == flip._pad(128, 5.0, wavelength_angstrom(300.0))  # same pad both axes here
    expected = _numpy_flip(img.numpy(), 4.0, 5.0, pad)
    assert np.std(out - expected) < 1e-4 * np.std(expected)
    flat = flip.apply(torch.full((1, 96, 128), 5.0), 0)  # a flat image: DC kept, unchanged
    assert torch.allclose(flat, torch.full_like(flat, 5.0), atol=1e-4)


def test_flip_applied_to_a_ctf_modulated_image_gives_minus_abs_ctf():
    """Physics check: an image made with our-sign CTF (dense dark), flipped, matches −|CTF|·truth
    in its centre better than the unflipped image does. (A cropped image cannot be flipped
    exactly: sign(CTF) is a square wave whose harmonics spread far; measured 0.24–0.29 relative
    error in the centre of a 128² crop at 4 µm, 5 Å, vs 1.4 unflipped.)"""
    g = torch.Generator().manual_seed(0)
    big, n = 384, 128
    spec = torch.fft.rfft2(torch.randn(big, big, generator=g).double())
    c = constant_ctf(1, 4.0)
    ctf = ctf_2d(c, 0, 5.0, (big, big)).double()
    o = (big - n) // 2
    image = torch.fft.irfft2(spec * ctf, s=(big, big))[o:o + n, o:o + n]
    expected = torch.fft.irfft2(spec * -ctf.abs(), s=(big, big))[o:o + n, o:o + n]
    out = PhaseFlip(c, np.zeros(1), 5.0).apply(image.float()[None], 0)[0].double()
    inner = (slice(32, -32), slice(32, -32))
    flipped = float((out - expected)[inner].std() / expected[inner].std())
    unflipped = float((image - expected)[inner].std() / expected[inner].std())
    assert flipped < 0.35 and unflipped > 1.0, (flipped, unflipped)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_each_strip_uses_the_defocus_at_its_centre_u_pixel_tan_theta(sign):
    """At 60°, a strip at column offset u must be flipped as a whole image at Δf₀ + s·u·p·tanθ
    (and not at Δf₀ or the other sign)."""
    g = torch.Generator().manual_seed(1)
    img = torch.randn(64, 256, generator=g)
    pixel, df0, theta = 5.0, 3.0, 60.0
    flip = PhaseFlip(constant_ctf(1, df0), np.array([theta]), pixel, strip_width=16,
                     gradient_sign=sign)
    out = flip.apply(img[None], 0)[0].double()
    c0, c1 = 16 * 2, 16 * 3  # third strip: centre column 39.5 → u = 39.5 − 128
    u = (c0 + c1 - 1) / 2 - 128
    pad = flip._pad(64, pixel, wavelength_angstrom(300.0))
    shift = u * pixel * math.tan(math.radians(theta)) / 1e4  # µm
    right = _numpy_flip(img.numpy(), df0 + sign * shift, pixel, pad)
    wrong = _numpy_flip(img.numpy(), df0 - sign * shift, pixel, pad)
    e_right = np.std((out.numpy() - right)[:, c0:c1])
    e_wrong = np.std((out.numpy() - wrong)[:, c0:c1])
    # measured: e_right 2e-7, e_wrong 0.90 (the image's spread is 1)
    assert e_right < 1e-4 and e_wrong > 0.5, (e_right, e_wrong)


def test_automatic_strip_width_bounds_the_phase_error_at_nyquist():
    pixel, kv = 5.0, 300.0
    w = strip_width_for(60.0, pixel, kv, 4096)
    delta = w * pixel * math.tan(math.radians(60.0))  # Å of defocus across a strip
    k_nyq = 1 / (2 * pixel)
    assert math.pi * wavelength_angstrom(kv) * (delta / 2) * k_nyq**2 <= math.pi / 8 + 1e-9
    assert strip_width_for(0.0, pixel, kv, 512) == 512
    assert strip_width_for(60.0, 1.0, kv, 4096) < w  # finer pixels need narrower strips


def test_flip_refuses_a_ctf_for_other_views():
    with pytest.raises(DDWError, match="3 defoci for 4 projections"):
        PhaseFlip(constant_ctf(3, 4.0), np.zeros(4), 5.0)


def test_flip_with_binning_equals_flipping_the_binned_stack_at_the_binned_pixel():
    """fbp flips after binning, at pixel·binning: the same as binning first and flipping the
    binned stack at twice the pixel (same kernels on the same tensors: equal to float32)."""
    from napari_deepdewedge.core.reconstruct.binning import bin_stack
    from napari_deepdewedge.core.reconstruct.fbp import fbp

    rng = np.random.default_rng(0)
    stack = rng.normal(size=(5, 32, 64)).astype(np.float32)
    angles = np.array([-60.0, -30.0, 0.0, 30.0, 60.0])
    ctf = constant_ctf(5, 3.0)
    binned_in = fbp(stack, angles, 8, binning=2, device="cpu",
                    phase_flip=PhaseFlip(ctf, angles, 2.5, strip_width=4))
    binned_first = fbp(bin_stack(stack, 2), angles, 8, device="cpu",
                       phase_flip=PhaseFlip(ctf, angles, 5.0, strip_width=4))
    # fbp(binning=b) scales line integrals by 1/b (binned voxels): hence the 2
    np.testing.assert_allclose(2 * binned_in, binned_first, atol=1e-5 * np.abs(binned_first).max())
    plain = fbp(bin_stack(stack, 2), angles, 8, device="cpu")
    assert np.abs(plain - binned_first).max() > 0.1 * np.abs(plain).max()  # it did flip
