"""The 3D U-Net that DeepDeWedge fits (DESIGN §2.6).

Layout, for ``depth`` levels with first-level width ``channels`` (level ``i`` has
``channels * 2**i`` feature maps, the bottleneck ``channels * 2**depth``)::

    x ─ normalize ─ [3 × conv3³·IN·LReLU] ─────────────── skip ───────────── [3 × conv] ─ conv1³ ─(+xn)─ denormalize
                          │ strided conv3³ (stride 2)                      ↑ transposed conv (×2)
                          [3 × conv] ── ... ── [2 × conv bottleneck] ── ... ┘

Every convolution is followed by ``InstanceNorm3d(affine=True)`` (:class:`InstanceNorm3d`,
torch's computed so that channels_last_3d tensors keep their layout) and ``LeakyReLU(0.05)``,
except the final 1³ convolution. With ``residual=True`` the network predicts a correction to
its (normalized) input, so a model whose final convolution is zero is the identity.

Normalization: the model holds two scalar buffers ``loc`` and ``scale`` (saved in the
``state_dict``) and computes ``forward(x) = (net(xn) + xn) * scale + loc`` with
``xn = (x - loc) / scale`` (without the ``+ xn`` when ``residual=False``).
The fitting loop sets them from the model inputs with :meth:`UNet3D.set_normalization`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import DDWError

#: Presets offered by the front ends (subtomogram edge, first-level channels, depth).
PRESETS = {
    "fast": dict(subtomo_size=48, channels=16, depth=3),  # laptop CPU
    "balanced": dict(subtomo_size=96, channels=32, depth=3),  # a small GPU; nearly as good
    "default": dict(subtomo_size=96, channels=64, depth=3),  # a GPU
}

NEGATIVE_SLOPE = 0.05


def required_multiple(depth: int) -> int:
    """Every spatial size the network sees must be a multiple of this (``2**depth``)."""
    return 2 ** int(depth)


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (same parameters, state-dict keys and result to float rounding)
    computed with reductions over the spatial axes, so that a channels_last_3d tensor stays
    channels-last: torch's own reshapes to ``(1, N·C, …)`` and copies to contiguous NCDHW, which
    forces a layout change around every convolution. Measured (bench/fit.py --levers, s = 32,
    16 channels, batch 4, CPU): fitting step 0.29 → 0.24 s per sample with channels_last_3d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or self.track_running_stats:
            return super().forward(x)
        # statistics in fp32 even under autocast (bf16/fp16 sums over 10⁵ voxels lose digits)
        var, mean = torch.var_mean(x.float(), dim=(2, 3, 4), unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.view(1, -1, 1, 1, 1)
            shift = self.bias.view(1, -1, 1, 1, 1) - mean * scale
        else:
            shift = -mean * scale
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


def _conv_block(c_in: int, c_out: int, *, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=kernel, stride=stride, padding=kernel // 2),
        InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
    )


def _stack(c_in: int, c_out: int, n: int) -> nn.Sequential:
    layers = [_conv_block(c_in, c_out)]
    layers += [_conv_block(c_out, c_out) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """3D U-Net with a residual connection and stored input normalization.

    Parameters
    ----------
    channels : feature maps of the first level (doubled at every level down).
    depth : number of down-sampling steps; inputs must be multiples of ``2**depth``.
    residual : add the normalized input to the network output.
    in_channels : input (and output) channels, 1 for tomograms.
    """

    def __init__(self, channels: int = 32, depth: int = 3, residual: bool = True, in_channels: int = 1):
        super().__init__()
        channels, depth, in_channels = int(channels), int(depth), int(in_channels)
        if channels < 1:
            raise DDWError(f"U-Net channels must be a positive integer, got {channels}; use e.g. 16, 32 or 64")
        if depth < 1:
            raise DDWError(f"U-Net depth must be at least 1, got {depth}; use the default 3")
        if in_channels < 1:
            raise DDWError(f"U-Net in_channels must be at least 1, got {in_channels}")
        self.channels = channels
        self.depth = depth
        self.residual = bool(residual)
        self.in_channels = in_channels

        widths = [channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        c_prev = in_channels
        for i in range(depth):
            self.encoders.append(_stack(c_prev, widths[i], 3))
            self.downs.append(_conv_block(widths[i], widths[i], stride=2))
            c_prev = widths[i]
        self.bottleneck = _stack(widths[depth - 1], widths[depth], 2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(
                nn.Sequential(
                    nn.ConvTranspose3d(widths[i + 1], widths[i], kernel_size=2, stride=2),
                    InstanceNorm3d(widths[i], affine=True),
                    nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
                )
            )
            self.decoders.append(_stack(2 * widths[i], widths[i], 3))
        self.final = nn.Conv3d(widths[0], in_channels, kernel_size=1)

        self.register_buffer("loc", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    # -- bookkeeping -------------------------------------------------------------------------
    def arch_dict(self) -> dict:
        """Constructor keyword arguments, for checkpoints: ``UNet3D(**m.arch_dict())``."""
        return dict(channels=self.channels, depth=self.depth, residual=self.residual, in_channels=self.in_channels)

    def set_normalization(self, loc, scale) -> None:
        """Set the input normalization ``xn = (x - loc) / scale`` (scale must be > 0, finite)."""
        loc = float(loc)
        scale = float(scale)
        if not math.isfinite(loc) or not math.isfinite(scale) or scale <= 0:
            raise DDWError(
                f"invalid normalization loc={loc}, scale={scale}: scale must be a positive finite number; "
                "check that the sub-tomograms are not constant and contain no NaN/inf"
            )
        with torch.no_grad():
            self.loc.fill_(loc)
            self.scale.fill_(scale)

    def check_size(self, spatial) -> None:
        """Raise :class:`DDWError` when a spatial shape cannot pass through the network."""
        m = required_multiple(self.depth)
        spatial = tuple(int(n) for n in spatial)
        bad = [n for n in spatial if n <= 0 or n % m]
        if bad:
            raise DDWError(
                f"input size {spatial} cannot pass through a U-Net of depth {self.depth}: every size must be a "
                f"multiple of {m} (2**depth); {bad[0]} is not. Pad or crop to a multiple of {m}, "
                f"e.g. {max(m, (bad[0] // m) * m)} or {(bad[0] // m + 1) * m}"
            )
        if math.prod(n // m for n in spatial) < 2:
            raise DDWError(
                f"input size {spatial} is too small for a U-Net of depth {self.depth}: the bottleneck would be a "
                f"single voxel; use sizes of at least {2 * m} or a smaller depth"
            )

    # -- computation -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise DDWError(
                f"U-Net input must have shape (batch, {self.in_channels}, Z, Y, X), got {tuple(x.shape)}"
            )
        self.check_size(x.shape[2:])
        loc = self.loc.to(x.dtype)
        scale = self.scale.to(x.dtype)
        xn = (x - loc) / scale
        h = xn
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            h = enc(h)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            h = up(h)
            h = dec(torch.cat([h, skip], dim=1))
        out = self.final(h)
        if self.residual:
            out = out + xn
        return out * scale + loc
