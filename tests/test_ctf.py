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
    first_zero,
    strip_width_for,
    wavelength_angstrom,
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
