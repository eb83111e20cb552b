"""Phantoms with a known specimen region, for measuring sample masks (issue 20).

Each kind is a :func:`core.evaluate.phantom.make_phantom` slab in a thicker volume, with the specimen
label (``True`` = specimen = the ice slab, everything in it included) beside it:

``"thin"``    a flat slab filling about a third of Z;
``"tilted"``  the same slab sheared along X (a lamella milled at an angle about the tilt axis),
              ``tilt`` degrees (default 10);
``"beads"``   the thin slab with more gold beads, and a dense contamination blob (lumpy, ice-like
              texture, ~2× the ice density) sitting in the vacuum just above the slab — not
              specimen.

:func:`mask_phantom_halves` turns one into the even/odd half tomograms a user would have: the
project's projector (:func:`core.evaluate.phantom.simulate_tilt_series`) with noise at a given SNR, the
series split by parity (:func:`core.reconstruct.halves.split_even_odd`) and each half reconstructed by the
project's FBP (:func:`core.reconstruct.fbp.fbp`) — so the noise, the missing wedge and its
artefacts are those of real halves. The volume is simulated wider in X than returned (the slab
goes on past the field of view, as in a real specimen) and cropped after reconstruction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import DDWError
from .phantom import ICE, make_phantom, slab_extent

KINDS = ("thin", "tilted", "beads")


@dataclass
class MaskPhantom:
    """Half tomograms ``even``/``odd`` ``(Z, Y, X)`` float32, the noiseless volume ``truth``
    and the specimen label ``specimen`` (bool) on the same grid; ``kind`` and ``tilt_range``."""

    even: np.ndarray
    odd: np.ndarray
    truth: np.ndarray
    specimen: np.ndarray
    kind: str
    tilt_range: tuple[float, float]


def _shear_z(vol: np.ndarray, shifts: np.ndarray, order: int) -> np.ndarray:
    """Shift every X column of ``vol`` along Z by ``shifts[x]`` voxels (linear or nearest),
    zeros shifted in."""
    Z = vol.shape[0]
    out = np.zeros_like(vol)
    z = np.arange(Z, dtype=np.float64)
    for x, s in enumerate(shifts):
        src = z - s  # out[z] = vol[z - s]
        if order == 0:
            idx = np.rint(src).astype(int)
            ok = (idx >= 0) & (idx < Z)
            out[ok, :, x] = vol[idx[ok], :, x]
        else:
            i0 = np.floor(src).astype(int)
            f = (src - i0).astype(np.float32)[:, None]
            for i, w in ((i0, 1 - f), (i0 + 1, f)):
                ok = (i >= 0) & (i < Z)
                out[ok, :, x] += w[ok] * vol[i[ok], :, x]
    return out


def _contamination(shape, center, radii, rng) -> np.ndarray:
    """A lumpy ellipsoidal blob (density ~2× ice) of ``shape``: a smooth ellipsoid times a
    band-limited random texture."""
    Z, Y, X = shape
    gz, gy, gx = np.ogrid[:Z, :Y, :X]
    r = np.sqrt(((gz - center[0]) / radii[0]) ** 2 + ((gy - center[1]) / radii[1]) ** 2
                + ((gx - center[2]) / radii[2]) ** 2)
    body = 1.0 / (1.0 + np.exp((r - 1.0) / 0.08))
    noise = rng.standard_normal(shape).astype(np.float32)
    spec = np.fft.rfftn(noise)
    kz, ky, kx = np.meshgrid(np.fft.fftfreq(Z), np.fft.fftfreq(Y), np.fft.rfftfreq(X), indexing="ij")
    spec *= np.exp(-(kz**2 + ky**2 + kx**2) / (2 * 0.06**2))
    tex = np.fft.irfftn(spec, s=shape).astype(np.float32)
    tex /= tex.std() + 1e-12
    return (body * (2.0 * ICE) * (1.0 + 0.5 * tex)).astype(np.float32)


def make_mask_phantom(shape=(96, 96, 96), kind: str = "thin", seed: int = 0, *, slab_fraction: float = 1 / 3,
                      tilt: float = 10.0, pixel_size: float = 10.0, pad_x: int = 0):
    """``(volume, specimen)`` of ``shape`` widened by ``pad_x`` voxels on both X sides (see the
    module doc for the kinds); ``specimen`` is the ice slab (bool)."""
    if kind not in KINDS:
        raise DDWError(f"unknown mask phantom kind {kind!r}; choose one of {', '.join(KINDS)}")
    Z, Y, X = (int(n) for n in shape)
    Xw = X + 2 * int(pad_x)
    rng = np.random.default_rng(int(seed) + 1000)
    beads = 12 if kind == "beads" else None
    vol = make_phantom((Z, Y, Xw), seed, slab_fraction=slab_fraction, pixel_size=pixel_size, beads=beads)
    z0, z1 = slab_extent((Z, Y, Xw), slab_fraction)
    label = np.zeros((Z, Y, Xw), dtype=bool)
    label[z0:z1] = True
    if kind == "tilted":
        shifts = (np.arange(Xw) - (Xw - 1) / 2) * math.tan(math.radians(float(tilt)))
        vol = _shear_z(vol, shifts, order=1)
        label = _shear_z(label.astype(np.float32), shifts, order=0) > 0.5
    elif kind == "beads":
        # a blob in the vacuum above the slab, its lower edge 2 voxels off the surface
        rz = max(3.0, 0.45 * (Z - z1) - 1)
        center = (z1 + 2 + rz, rng.uniform(0.3, 0.7) * Y, (Xw - 1) / 2 + rng.uniform(-0.2, 0.2) * X)
        radii = (rz, 0.22 * Y, 0.22 * X)
        blob = _contamination((Z, Y, Xw), center, radii, rng)
        blob[label] = 0
        vol = np.maximum(vol, blob)
    return vol.astype(np.float32), label


def mask_phantom_halves(shape=(96, 96, 96), kind: str = "thin", seed: int = 0, *, snr: float = 0.3,
                        tilt_range=(-60.0, 60.0, 3.0), slab_fraction: float = 1 / 3, tilt: float = 10.0,
                        pixel_size: float = 10.0, device="cpu") -> MaskPhantom:
    """The phantom of ``kind`` as even/odd FBP halves (see the module doc)."""
    from ..reconstruct.halves import split_even_odd
    from ..io.angles import angles_from_range
    from ..io.mrc import TiltSeries
    from .phantom import simulate_tilt_series
    from ..reconstruct.fbp import fbp

    Z, Y, X = (int(n) for n in shape)
    lo, hi, step = (float(v) for v in tilt_range)
    angles = angles_from_range(lo, hi, step)
    t = math.radians(max(abs(lo), abs(hi)))
    pad = int(math.ceil(Z / 2 * math.tan(t))) + 2
    vol, label = make_mask_phantom((Z, Y, X), kind, seed, slab_fraction=slab_fraction, tilt=tilt,
                                   pixel_size=pixel_size, pad_x=pad)
    proj = simulate_tilt_series(vol, angles, snr=snr, seed=int(seed) + 1, device=device, infinite_slab=False)
    proj = np.ascontiguousarray(proj[:, :, pad:pad + X])
    series = TiltSeries(data=proj, angles=np.asarray(angles), pixel_size=float(pixel_size))
    ev, od = split_even_odd(series)
    even = fbp(ev.data, ev.angles, Z, device=device)
    odd = fbp(od.data, od.angles, Z, device=device)
    return MaskPhantom(even=even, odd=odd, truth=vol[:, :, pad:pad + X], specimen=label[:, :, pad:pad + X],
                       kind=kind, tilt_range=(lo, hi))
