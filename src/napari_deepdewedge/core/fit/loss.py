"""Model input and the masked Fourier (Noise2Noise) loss of DeepDeWedge (docs/method.md §2.5).

For a fitting sample with rotation ``R``::

    input  x = F⁻¹( M ⊙ F(crop_s(R·cube0)) )                       (model_input)
    loss   L = mean_k |M_R·M·F(y − f(x))|² + w·mean_k |M_R·(1 − M)·F(y − f(x))|²

with the unitary FFT (``norm="ortho"``), so by Parseval ``L`` equals the real-space mean squared
error of the two masked residuals; no inverse FFT is needed. Since the two masks are disjoint,
``L = mean_k W(k)·|F(y − f(x))(k)|²`` with ``W = (M_R·M)² + w·(M_R·(1 − M))²`` — one FFT per
sample (the squares keep soft masks exact; binary masks are their own squares).

Masks may be given on the full grid ``(Z, Y, X)`` or on the ``rfftn`` half grid
``(Z, Y, X // 2 + 1)`` (``core.fourier`` with ``rfft=True``); the layout is read from the last
axis of ``mask``. On the half grid each column except ``kx = 0`` (and ``kx = X/2`` for even
``X``) stands for itself and its mirror, so it counts twice; this equals the full-grid loss
whenever the masks satisfy ``M[i] = M[-i mod N]``, which the ``core.fourier`` masks do (their
Nyquist rule). ``mask`` is the canonical observed mask ``M`` (``(Z, Y, X)``-like, shared), and
``rotated_masks`` the per-sample ``M_R`` (``(B, Z, Y, X)``-like, or ``(B, 1, ...)``).

The CTF-aware loss (``FitConfig.ctf_loss``, core.fit.ctf_envelope) passes ``envelope`` ``g``
(same grid layout as ``mask``): the prediction is multiplied by it in Fourier space before the
masks, ``L = mean_k W(k)·|F(y) − g·F(f(x))|²``, so the network is asked for the CTF-free volume.
With ``g ≡ 1`` this is the loss above (the residual's FFT split in two: equal up to rounding).
"""
from __future__ import annotations

import torch

from ..errors import DDWError

_DIMS = (-3, -2, -1)


def _layout(mask: torch.Tensor, x_spatial) -> bool:
    """True when ``mask`` is on the rfft half grid for real data of ``x_spatial``."""
    Z, Y, X = (int(n) for n in x_spatial)
    if tuple(mask.shape[-3:]) == (Z, Y, X):
        return False
    if tuple(mask.shape[-3:]) == (Z, Y, X // 2 + 1):
        return True
    raise DDWError(
        f"Fourier mask of shape {tuple(mask.shape)} does not fit data of spatial shape {(Z, Y, X)}: "
        f"expected (..., {Z}, {Y}, {X}) or the rfft half grid (..., {Z}, {Y}, {X // 2 + 1}); "
        "build the masks for the sub-tomogram size s"
    )


def _align(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Make a ``(B, Z, Y, X)`` per-sample mask broadcast against ``(B, C, Z, Y, X)`` data."""
    if x.ndim == 5 and mask.ndim == 4:
        mask = mask.unsqueeze(1)
    return mask.to(device=x.device)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def model_input(rotated_cube0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``F⁻¹(M ⊙ F(x))`` (real part) over the last three axes; the network's input.

    ``mask`` is ``M`` on the full or rfft half grid (see the module docstring); it broadcasts
    over the leading axes. Returns the same shape and dtype as ``rotated_cube0``.
    """
    x = rotated_cube0
    if x.ndim < 3:
        raise DDWError(f"model_input needs data with three spatial axes, got shape {tuple(x.shape)}")
    half = _layout(mask, x.shape[-3:])
    wd = _work_dtype(x)
    m = _align(mask, x).to(wd)
    if half:
        out = torch.fft.irfftn(torch.fft.rfftn(x.to(wd), dim=_DIMS) * m, s=x.shape[-3:], dim=_DIMS)
    else:
        out = torch.fft.ifftn(torch.fft.fftn(x.to(wd), dim=_DIMS) * m, dim=_DIMS).real
    return out.to(x.dtype)


def _half_weights(X: int, device, dtype) -> torch.Tensor:
    """How many full-grid columns each rfft column stands for (1 or 2)."""
    w = torch.full((X // 2 + 1,), 2.0, device=device, dtype=dtype)
    w[0] = 1.0
    if X % 2 == 0:
        w[-1] = 1.0
    return w


def masked_fourier_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    rotated_masks: torch.Tensor,
    wedge_weight: float = 2.0,
    *,
    reduction: str = "mean",
    envelope: torch.Tensor | None = None,
) -> torch.Tensor:
    """DeepDeWedge's loss ``mean_k |M_R·M·F(r)|² + w·mean_k |M_R·(1−M)·F(r)|²``, ``r = y − f(x)``.

    ``pred``/``target``: ``(B, C, Z, Y, X)``; ``mask``: ``M`` (shared); ``rotated_masks``:
    ``M_R`` per sample, ``(B, Z, Y, X)`` (or ``(B, 1, Z, Y, X)``), same grid layout as ``mask``.
    Unitary FFT, mean over frequencies, channels and the batch (``reduction="mean"``, a scalar)
    or per sample (``reduction="none"``, shape ``(B,)``). Half-precision inputs are promoted to
    float32 for the FFT. ``envelope``: the CTF-aware loss's ``g`` (module docstring), shared
    ``(Z, Y, X)``-like or per sample, on the grid of ``mask``; ``None`` = the plain loss.
    """
    if pred.shape != target.shape:
        raise DDWError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if pred.ndim != 5:
        raise DDWError(f"loss expects (B, C, Z, Y, X) tensors, got shape {tuple(pred.shape)}")
    if reduction not in ("mean", "none"):
        raise DDWError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    spatial = pred.shape[-3:]
    half = _layout(mask, spatial)
    if _layout(rotated_masks, spatial) != half:
        raise DDWError(
            "mask and rotated_masks use different Fourier grids (one full, one rfft half grid); "
            "build both with the same rfft setting"
        )
    wd = _work_dtype(pred)
    if envelope is not None and _layout(envelope, spatial) != half:
        raise DDWError("the CTF envelope and the masks use different Fourier grids; build both with "
                       "the same rfft setting")
    r = (target - pred).to(wd)
    m = _align(mask, r).to(wd)
    mr = _align(rotated_masks, r).to(wd)
    w = float(wedge_weight)
    weight = (mr * m) ** 2 + w * (mr * (1 - m)) ** 2
    if envelope is not None:  # F(y) − g·F(f(x))
        g = _align(envelope, r).to(wd)
        fft = torch.fft.rfftn if half else torch.fft.fftn
        fr = fft(target.to(wd), dim=_DIMS, norm="ortho") - g * fft(pred.to(wd), dim=_DIMS, norm="ortho")
        power = fr.real**2 + fr.imag**2
        weighted = weight * power * (_half_weights(int(spatial[-1]), r.device, wd) if half else 1.0)
    elif half:
        fr = torch.fft.rfftn(r, dim=_DIMS, norm="ortho")
        power = fr.real**2 + fr.imag**2
        weighted = weight * power * _half_weights(int(spatial[-1]), r.device, wd)
    else:
        fr = torch.fft.fftn(r, dim=_DIMS, norm="ortho")
        weighted = weight * (fr.real**2 + fr.imag**2)
    n_per_sample = pred[0].numel()  # C·Z·Y·X: the full-grid count of frequencies and channels
    per_sample = weighted.reshape(weighted.shape[0], -1).sum(dim=1) / n_per_sample
    return per_sample.mean() if reduction == "mean" else per_sample
