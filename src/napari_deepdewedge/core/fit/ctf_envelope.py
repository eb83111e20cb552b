"""The CTF-aware fit (``FitConfig.ctf_loss``, docs/method.md §2.5): the envelope ``g(|k|)`` the
network's prediction is multiplied by before the masked loss.

With phase-flipped halves the target half is, in Fourier space, about ``g · F(truth)`` plus
noise, ``g`` the mean over the target half's views of ``|CTF|``. The loss compares ``F(y)`` with
``g · F(f(x))`` (``core.fit.loss.masked_fourier_loss(envelope=g)``), so the network is asked for
the CTF-free volume. The wedge update fills the input cube's missing wedge with ``g · F(f(x))``
too, so the cube0s keep the CTF of the data they were reconstructed from.

Why one radial ``g`` serves every rotated sub-tomogram: each view's |CTF| is radial in its own
projection plane (astigmatic views: averaged over the directions, ``core.ctf.tilt_averaged_abs_ctf``);
averaged over the views, ``g`` depends on ``|k|`` alone, and ``|R k| = |k|``, so ``g`` is the same
for every rotation ``R`` and is built once per fit on the rfft half grid (for the crop edge ``s``
and the extraction edge ``E``). What this neglects, with figures: (1) at a 3D frequency only the
views whose central slice passes through it contribute, so strictly ``g`` depends on the direction
through the views' defocus spread (±0.3 µm in the simulator, against 2.5–5 µm); (2) the defocus
gradient across the tilted specimen, ``x·p·tan θ`` (±0.055 µm at 60° over a 128-px field at 5 Å),
is first-order odd in θ and largely cancels in the mean over a symmetric tilt range.

No torch import at module level (``FitConfig`` and the pipeline read the record's helpers).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import DDWError

#: samples of the radial profile between k = 0 and the grid's largest |k| (linear interpolation
#: between them: at 5 µm and 5 Å the |CTF| has ~30 zeros up to √3·Nyquist, 2048 samples give
#: ≥ 60 per oscillation)
PROFILE_SAMPLES = 2048


def target_ctf(record, *, name: str = ""):
    """The ``ViewCTF`` of a pair's target half (the odd half: the loss's target, channel 1) from a
    pair's CTF record (``HalfPair.ctf``: ``{"even": ..., "odd": ..., "pixel_size": ...}``)."""
    from ..ctf import ctf_from_record

    label = f"CTF of {name}" if name else "CTF record"
    if not isinstance(record, dict) or "odd" not in record:
        raise DDWError(f"{label}: needs the odd half's defoci ('odd'); write it with "
                       "'deepdewedge reconstruct --ctf FILE' (the halves' <stem>_ctf.json)")
    return ctf_from_record(record["odd"], what=label)


def envelope_grid(ctf, voxel_size: float, n: int, *, device=None, dtype=None):
    """``g(|k|)`` on the rfft half grid of an ``n³`` cube of ``voxel_size`` Å: ``(n, n, n//2+1)``."""
    import torch

    from ..ctf import tilt_averaged_abs_ctf

    if not (voxel_size > 0 and math.isfinite(voxel_size)):
        raise DDWError(f"the CTF-aware loss needs the halves' voxel size in Å, got {voxel_size!r}")
    f = np.fft.fftfreq(n) / voxel_size
    fx = np.fft.rfftfreq(n) / voxel_size
    radius = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)
    samples = np.linspace(0.0, float(radius.max()), PROFILE_SAMPLES)
    profile = tilt_averaged_abs_ctf(ctf, samples)
    g = np.interp(radius, samples, profile)
    return torch.as_tensor(g, dtype=dtype or torch.float32, device=device)


class CTFEnvelopes:
    """Each pair's envelope at the crop edge ``s`` and the extraction edge ``E`` (rfft half grid),
    handed out per cube from its pair index as ``WedgeMasks`` hands out the masks."""

    def __init__(self, pairs, s: int, E: int, device):
        import torch

        self._s, self._e = [], []
        for k, pair in enumerate(pairs):
            ctf = target_ctf(pair.ctf, name=pair.name or f"pair {k + 1}")
            voxel = float(pair.voxel_size[-1])
            self._s.append(envelope_grid(ctf, voxel, s, device=device))
            self._e.append(envelope_grid(ctf, voxel, E, device=device))
        self._s, self._e = torch.stack(self._s), torch.stack(self._e)
        self.shared = len(pairs) == 1

    def crop(self, pair_index):
        """``g`` at edge ``s``: ``(s, s, s//2+1)`` (one pair) or ``(B, 1, …)``."""
        if self.shared:
            return self._s[0]
        return self._s[pair_index.to(self._s.device)].unsqueeze(1)

    def extraction(self, pair_index):
        """``g`` at the extraction edge ``E`` (wedge updates)."""
        if self.shared:
            return self._e[0]
        return self._e[pair_index.to(self._e.device)].unsqueeze(1)


def check_ctf_pairs(pairs) -> None:
    """``ctf_loss`` needs every pair's defoci: DDWError naming the pairs without and the fix."""
    missing = [pair.name or f"pair {k + 1}" for k, pair in enumerate(pairs) if not pair.ctf]
    if missing:
        raise DDWError(
            f"the CTF-aware loss (--ctf-loss) needs the defocus of every view, but none is known for "
            f"{', '.join(missing)}: reconstruct the halves with 'deepdewedge reconstruct TS.mrc --ctf "
            "FILE' (it writes <stem>_ctf.json beside them, which 'fit' reads), use 'deepdewedge run "
            "--ctf FILE', or fit without --ctf-loss")
