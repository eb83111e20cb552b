"""Binning a tilt series before reconstruction: by Fourier cropping or by averaging N×N pixels
(the mean and the centre index ``N // 2`` kept)."""
from __future__ import annotations

import numpy as np

from ..errors import DDWError
from .geometry import as_stack, check_int

BIN_MODES = ("fourier", "average")
def _bin_window(n: int, factor: int, mode: str, device):
    """Indices of the ``(n // factor) · factor`` input pixels that are binned along one axis.

    The window is placed so that the binned centre (index ``nb // 2``) stays on the original
    centre (index ``n // 2``): exactly for Fourier binning and odd factors, within half an
    original pixel for block averages of even factors. Where the window sticks out by a pixel
    or two, the edge pixel is repeated.
    """
    import torch

    nb = n // factor
    off = n // 2 - factor * (nb // 2)
    if mode == "average":
        off -= (factor - 1) // 2  # block centre, not block start, on the original centre
    idx = torch.arange(off, off + nb * factor, device=device).clamp_(0, n - 1)
    return idx, nb


def _bin_torch(img, factor: int, mode: str):
    """Bin the last two axes of a float32 tensor by ``factor`` (mean and centre preserved)."""
    import torch

    if factor == 1:
        return img
    n_y, n_x = img.shape[-2:]
    iy, yb = _bin_window(n_y, factor, mode, img.device)
    ix, xb = _bin_window(n_x, factor, mode, img.device)
    win = img.index_select(-2, iy).index_select(-1, ix)  # (…, yb·f, xb·f)
    if mode == "average":
        win = win.reshape(win.shape[:-2] + (yb, factor, xb, factor))
        return win.mean(dim=(-3, -1))
    # Fourier crop: keep the central (yb, xb) frequencies of the window; binned pixel j then
    # samples the band-limited image at window position j·factor (no aliasing).
    spec = torch.fft.fftshift(torch.fft.fft2(win), dim=(-2, -1))
    sy, sx = (yb * factor) // 2 - yb // 2, (xb * factor) // 2 - xb // 2
    spec = torch.fft.ifftshift(spec[..., sy : sy + yb, sx : sx + xb], dim=(-2, -1))
    out = torch.fft.ifft2(spec).real
    return (out / (factor * factor)).to(img.dtype)


def _check_binning(binning, n_y: int, n_x: int) -> int:
    b = check_int(binning, "binning", 1, "use 1 (no binning), 2, 4, …")
    if b > min(n_y, n_x) or n_x // b < 2:
        raise DDWError(
            f"binning {b} is larger than the data allows (projections are {n_y} × {n_x} pixels); "
            f"use a binning of at most {max(1, min(n_y, n_x // 2))}"
        )
    return b


def bin_stack(stack, factor: int, mode: str = "fourier") -> np.ndarray:
    """Bin every projection (or slice) of a 3D stack over its last two axes (Y, X).

    ``mode="fourier"`` crops the centred spectrum to ``(Y//factor, X//factor)`` (no aliasing);
    ``mode="average"`` averages ``factor × factor`` blocks. Both keep the mean and the centre
    (centred coordinate 0 stays at index ``N//2``). Returns float32 ``(n, Y//f, X//f)``.
    """
    import torch

    arr = as_stack(stack, "tilt series")
    if mode not in BIN_MODES:
        raise DDWError(f"unknown binning mode {mode!r}; use 'fourier' or 'average'")
    factor = _check_binning(factor, arr.shape[1], arr.shape[2])
    out = np.empty((arr.shape[0], arr.shape[1] // factor, arr.shape[2] // factor), np.float32)
    for i in range(arr.shape[0]):
        img = torch.as_tensor(np.asarray(arr[i], dtype=np.float32)) if not isinstance(
            arr, torch.Tensor
        ) else arr[i].float()
        out[i] = _bin_torch(img, factor, mode).cpu().numpy()
    return out
