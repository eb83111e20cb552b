"""The 3D U-Net that DeepDeWedge fits (docs/method.md §2.6).

Layout, for ``depth`` levels with first-level width ``channels`` (level ``i`` has
``channels * 2**i`` feature maps, the bottleneck ``channels * 2**depth``)::

    x ─ normalize ─ [3 × conv3³·IN·LReLU] ─────────────── skip ───────────── [3 × conv] ─ conv1³ ─(+xn)─ denormalize
                          │ strided conv3³ (stride 2)                      ↑ up-sampling (×2, see UPSAMPLE_KINDS)
                          [3 × conv] ── ... ── [2 × conv bottleneck] ── ... ┘

Every convolution is followed by ``InstanceNorm3d(affine=True)`` and ``LeakyReLU(0.05)``
(one module, :class:`InstanceNormLeakyReLU`, fused on the CPU), except the final 1³ convolution. With ``residual=True`` the network predicts a correction to
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

from ..errors import DDWError

NEGATIVE_SLOPE = 0.05

#: The up-sampling layers of a new network (:data:`UPSAMPLE_KINDS`). A departure from the
#: original's transposed convolutions (issue 17), by a controlled ablation (bench/quality.py
#: --shape 40 128 128 --subtomo-size 24 --channels 8 --depth 3 --epochs 15 --upsample KIND, one
#: thread; period-2 ratio = core.evaluate.metrics.period2_peak_ratio of the refined volume, median / max
#: of the 7 lattice frequencies; the FBP half itself: 0.06 / 5.1):
#:
#: ==============  ========  ==============  ===========  ==============
#: upsample        CC        in-wedge corr.  period-2     fit samples/s
#: ==============  ========  ==============  ===========  ==============
#: transposed      0.735     0.667           227 / 9843   1
#: trilinear       0.732     0.646           1.9 / 10.2   ×0.96, ×1.01
#: trilinear3      0.745     0.678           1.1 / 5.3    ×0.96, ×1.04
#: ==============  ========  ==============  ===========  ==============
#:
#: (samples/s: bench/upsample_speed.py, s = 32, 16 channels, batch 4, process CPU time, one
#: thread, two runs on the shared machine: within its noise. Refinement tiles/s: ×0.94, ×0.98.
#: One fit per layout (seed 0); CC inside the ice slab 0.884 / 0.887 / 0.885.)
#:
#: The quick setting (bench/quality.py --quick --fit-seed 0/1: 8 channels, depth 2, 10 epochs)
#: scatters more from seed to seed than between layouts: transposed CC 0.770 / 0.767, in-wedge
#: 0.759 / 0.718, period-2 55 / 342 (median); trilinear3 CC 0.717 / 0.783, in-wedge
#: 0.646 / 0.743, period-2 0.33 / 1.34. Transposed convolutions whose 8 offsets start equal
#: (nearest-neighbour up-sampling at initialisation) grow the texture back while fitting
#: (period-2 median 26, seed 0), so the layout, not only the initialisation, has to change.
#: The README's demo (``deepdewedge demo``, small, 20 epochs, one thread): transposed CC 0.766,
#: in-wedge 0.681, period-2 99 / 10,966; trilinear3 CC 0.797, in-wedge 0.749, period-2
#: 1.8 / 28 (ground truth 2.9 / 32); its FSC 0.143 crossing 31.6 → 37.0 Å.
DEFAULT_UPSAMPLE = "trilinear3"


def required_multiple(depth: int) -> int:
    """Every spatial size the network sees must be a multiple of this (``2**depth``)."""
    return 2 ** int(depth)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class _InstanceNormLeakyReLUFn(torch.autograd.Function):
    """Instance norm (one group per channel) followed by LeakyReLU, forward and backward by
    hand, for channels_last_3d tensors on the CPU.

    Forward: torch's ``native_group_norm`` (layout-keeping, fast) and an in-place LeakyReLU; it
    saves the norm's input and the block's output. Backward: the LeakyReLU gradient from the
    output's sign, then the instance-norm gradient from per-(sample, channel) sums over the
    spatial axes of an ``(N, S, C)`` view (the channels-last memory order):
    ``dx = γ·rstd·(gz − mean(gz) − x̂·mean(gz·x̂))``, ``dγ = Σ gz·x̂``, ``dβ = Σ gz``.

    Why (measured 2026-12-03, one thread, process CPU time, median of 5, norm + LeakyReLU of
    (4, 16, 32³) / (4, 16, 48³) channels-last): backward 9 / 45 ms here vs 28–41 / 83–133 ms
    for torch's group-norm backward (whose channels-last CPU kernel is not vectorized across
    channels), forward the same (3.4 / 9.4 ms). Gradients agree with a float64
    ``nn.InstanceNorm3d`` to 1e-6–3e-3 relative L2 (as group_norm's: both share its float32
    statistics, 1e-5 relative error in the forward; the rest is LeakyReLU slopes flipping
    for outputs within that error of zero)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, slope: float):
        n, c = x.shape[:2]
        spatial = x[0, 0].numel()
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, spatial, c, eps)
        nn.functional.leaky_relu_(y, slope)
        ctx.slope = slope
        ctx.save_for_backward(x, y, mean, rstd, weight)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, y, mean, rstd, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        spatial = x[0, 0].numel()
        gz = torch.ops.aten.leaky_relu_backward(grad_out, y, ctx.slope, True)

        def nsc(t):  # (N, C, Z, Y, X) channels-last -> (N, S, C) view
            return t.permute(0, 2, 3, 4, 1).reshape(n, spatial, c)

        gz3, x3 = nsc(gz), nsc(x)
        mean3, rstd3 = mean.view(n, 1, c), rstd.view(n, 1, c)
        sum_g = gz3.sum(1, keepdim=True)
        # Σ gz·x per (sample, channel): the diagonal of a (C, S)@(S, C) product, one read of each
        sum_gxraw = torch.bmm(gz3.transpose(1, 2), x3).diagonal(dim1=1, dim2=2).unsqueeze(1)
        sum_gx = rstd3 * (sum_gxraw - mean3 * sum_g)  # Σ gz·x̂
        # dx = a·gz + b·x + c with a = γ·rstd, b = −a·rstd·mean(gz·x̂), c = a·(mean·rstd·mean(gz·x̂) − mean(gz))
        a = rstd3 * weight.view(1, 1, c)
        m_gx = sum_gx / spatial
        b = -a * rstd3 * m_gx
        cst = a * (mean3 * rstd3 * m_gx - sum_g / spatial)
        grad_x = torch.addcmul(cst, x3, b).addcmul_(gz3, a)
        grad_x = grad_x.view(n, *x.shape[2:], c).permute(0, 4, 1, 2, 3)
        grad_w = sum_gx.sum((0, 1)) if ctx.needs_input_grad[1] else None
        grad_b = sum_g.sum((0, 1)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


class InstanceNormLeakyReLU(nn.InstanceNorm3d):
    """``InstanceNorm3d(affine=True)`` followed by ``LeakyReLU(negative_slope)``: the parameters
    and state-dict keys of ``nn.InstanceNorm3d`` (the activation has none), so checkpoints of
    ``Sequential(conv, InstanceNorm3d, LeakyReLU)`` blocks load unchanged.

    ``kernel`` picks how it is computed (:meth:`kernel_for`):
    ``"fused"`` (:class:`_InstanceNormLeakyReLUFn`, the CPU default for channels-last inputs
    without autocast), ``"group_norm"`` (``group_norm`` with one channel per group — keeps a
    channels-last layout — then LeakyReLU; every other device, and under autocast, which runs
    normalization in float32 by itself) or ``"torch"`` (``nn.InstanceNorm3d``, which returns
    contiguous NCDHW; the engine before issue 10, for benchmarks only).
    """

    #: None = :meth:`kernel_for` decides; benchmarks set "group_norm" or "torch" to compare
    kernel: str | None = None

    def __init__(self, num_features: int, negative_slope: float = 0.05, eps: float = 1e-5):
        super().__init__(num_features, eps=eps, affine=True)
        self.negative_slope = float(negative_slope)

    @staticmethod
    def kernel_for(device_type: str, channels_last_5d: bool, dtype: torch.dtype, autocast_on: bool) -> str:
        """"fused" for a channels-last 5D float32 CPU tensor outside autocast, else "group_norm"
        (CUDA/MPS: their own kernels, not measured here; autocast: it casts the norm itself)."""
        if device_type == "cpu" and channels_last_5d and dtype == torch.float32 and not autocast_on:
            return "fused"
        return "group_norm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last_5d = x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)
        kernel = self.kernel or self.kernel_for(x.device.type, channels_last_5d, x.dtype,
                                                _autocast_on(x.device.type))
        if kernel == "fused" and channels_last_5d:
            return _InstanceNormLeakyReLUFn.apply(x, self.weight, self.bias, self.eps, self.negative_slope)
        if kernel == "torch" or x.ndim != 5:
            y = super().forward(x)
        else:
            y = nn.functional.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        return nn.functional.leaky_relu(y, self.negative_slope, inplace=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}"


def conv_route(device_type: str, batch: int, in_channels: int, dtype: torch.dtype, autocast_on: bool,
               mkldnn: bool) -> str:
    """"mkldnn" for a float32 CPU batch of ONE single-channel volume outside autocast, else
    "default". Such a tensor is both NCDHW- and channels-last-contiguous, and torch's
    convolution then takes a slow non-oneDNN path with an NCDHW result (the first layer of a
    one-tile refinement batch). Measured (one thread, 1→16 channels 3³, (1, 1, 128, 144, 144)):
    563–769 ms through ``nn.Conv3d`` vs 193 ms through oneDNN directly, same values."""
    if (device_type == "cpu" and mkldnn and batch == 1 and in_channels == 1 and dtype == torch.float32
            and not autocast_on):
        return "mkldnn"
    return "default"


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters) that sends the ambiguous one-volume, one-channel CPU
    batch straight to oneDNN (:func:`conv_route`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5 and self.padding_mode == "zeros" and conv_route(
                x.device.type, x.shape[0], x.shape[1], x.dtype, _autocast_on(x.device.type),
                torch.backends.mkldnn.is_available()) == "mkldnn":
            return torch.ops.aten.mkldnn_convolution(x.contiguous(), self.weight, self.bias, list(self.padding),
                                                     list(self.stride), list(self.dilation), self.groups)
        return super().forward(x)


class PointwiseConv3d(nn.Conv3d):
    """The final 1³ convolution (``nn.Conv3d`` parameters and state-dict keys) computed on a
    channels-last CPU tensor as a product over the channel axis. oneDNN runs a 16→1 1³
    convolution at 110–150 ns per voxel (one thread); the product takes 7–13 ns: 123 vs 5.6 ms
    on a (1, 16, 96³) tile, 4.8 vs 0.9 ms on a (4, 16, 32³) fitting batch (max difference 7e-7)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.ndim == 5 and x.device.type == "cpu" and x.dtype == self.weight.dtype
                and x.is_contiguous(memory_format=torch.channels_last_3d)):
            w = self.weight.view(self.out_channels, self.in_channels)
            y = torch.matmul(x.permute(0, 2, 3, 4, 1), w.t())
            if self.bias is not None:
                y = y + self.bias
            return y.permute(0, 4, 1, 2, 3)
        return super().forward(x)


def _conv_block(c_in: int, c_out: int, *, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        Conv3d(c_in, c_out, kernel_size=kernel, stride=stride, padding=kernel // 2),
        InstanceNormLeakyReLU(c_out, NEGATIVE_SLOPE),
    )


class TrilinearUp(nn.Module):
    """Double every spatial size by trilinear interpolation (``align_corners=False``: each new
    voxel is ``¾·nearest + ¼·next`` along each axis, i.e. zero insertion followed by the filter
    ``(1, 3, 3, 1)/4``, whose response vanishes at the new Nyquist frequency). Unlike a
    stride-2 transposed convolution, whose 8 kernel offsets give the 8 voxels of every 2³ block
    their own weights, it adds no voxel-to-voxel (period-2) pattern of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not y.is_contiguous(
                memory_format=torch.channels_last_3d):
            y = y.contiguous(memory_format=torch.channels_last_3d)
        return y


#: Up-sampling layers (``UNet3D(upsample=...)``, recorded in the checkpoint's ``arch``):
#:
#: ``"transposed"`` — ``ConvTranspose3d(kernel 2, stride 2)`` → norm·LReLU: the layout of every
#: checkpoint written before issue 17 (and the default for an ``arch`` without the key).
#: Each of the 8 voxels of a 2³ output block gets its own weights, so the output carries a
#: period-2 texture: in a refined volume the spectral power at the 7 Nyquist-lattice
#: frequencies stands 227× (median) / 9,843× (max) above their shell's median; freshly
#: initialised it is already there, and neither the FBP halves, the network input nor the
#: tile blending has it (bench/period2.py).
#:
#: ``"trilinear"`` — ``Conv3d 1³`` at the coarse level → :class:`TrilinearUp` → norm·LReLU
#: (the 1³ convolution and the interpolation commute, so this equals interpolating first, at
#: an eighth of the cost). No period-2 pattern; see :data:`DEFAULT_UPSAMPLE` for the figures.
#:
#: ``"trilinear3"`` — the same with a ``Conv3d 3³`` at the coarse level (more context per
#: up-sampled voxel; by count ~4 % more multiply-adds than the network with ``"transposed"``): the
#: default (:data:`DEFAULT_UPSAMPLE`).
UPSAMPLE_KINDS = ("transposed", "trilinear", "trilinear3")
LEGACY_UPSAMPLE = "transposed"


def _up_block(c_in: int, c_out: int, kind: str) -> nn.Sequential:
    if kind == "transposed":
        return nn.Sequential(nn.ConvTranspose3d(c_in, c_out, kernel_size=2, stride=2),
                             InstanceNormLeakyReLU(c_out, NEGATIVE_SLOPE))
    conv = PointwiseConv3d(c_in, c_out) if kind == "trilinear" else Conv3d(c_in, c_out, kernel_size=3, padding=1)
    return nn.Sequential(conv, TrilinearUp(), InstanceNormLeakyReLU(c_out, NEGATIVE_SLOPE))


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
    upsample : the up-sampling layers, one of :data:`UPSAMPLE_KINDS` (default
        :data:`DEFAULT_UPSAMPLE`); checkpoints record it, and an ``arch`` without it is the
        :data:`LEGACY_UPSAMPLE` layout (:meth:`from_arch`).
    """

    def __init__(self, channels: int = 32, depth: int = 3, residual: bool = True, in_channels: int = 1,
                 upsample: str | None = None):
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
        upsample = DEFAULT_UPSAMPLE if upsample is None else str(upsample)
        if upsample not in UPSAMPLE_KINDS:
            raise DDWError(f"unknown U-Net upsample {upsample!r}; use one of {', '.join(UPSAMPLE_KINDS)}")
        self.upsample = upsample

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
            self.ups.append(_up_block(widths[i + 1], widths[i], upsample))
            self.decoders.append(_stack(2 * widths[i], widths[i], 3))
        self.final = PointwiseConv3d(widths[0], in_channels)

        self.register_buffer("loc", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    # -- bookkeeping -------------------------------------------------------------------------
    def arch_dict(self) -> dict:
        """Constructor keyword arguments, for checkpoints: ``UNet3D(**m.arch_dict())``."""
        return dict(channels=self.channels, depth=self.depth, residual=self.residual, in_channels=self.in_channels,
                    upsample=self.upsample)

    @staticmethod
    def arch_with_defaults(arch: dict) -> dict:
        """A checkpoint's ``arch`` with the keys older checkpoints did not store filled in with
        the layout they were written with (``upsample``: :data:`LEGACY_UPSAMPLE`)."""
        return {"upsample": LEGACY_UPSAMPLE, **dict(arch)}

    @classmethod
    def from_arch(cls, arch: dict) -> "UNet3D":
        """The network a checkpoint's ``arch`` describes (older checkpoints included)."""
        return cls(**cls.arch_with_defaults(arch))

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
