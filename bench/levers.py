"""Switch our speed levers off for a before/after measurement in one run (monkeypatching,
restored on exit). ``today()`` = the engine before issue 10: contiguous NCDHW tensors and
torch's InstanceNorm3d (which copies channels-last tensors back to contiguous).

``norm`` picks :class:`core.model.unet.InstanceNormLeakyReLU`'s kernel: ``None`` = the engine's own
choice (fused on the CPU), ``"group_norm"`` (a layout-keeping group norm + LeakyReLU, the
engine between the channels-last change and the fused kernel) or ``"torch"``."""
from __future__ import annotations

import contextlib

from napari_deepdewedge.core import perf
from napari_deepdewedge.core.model.unet import InstanceNormLeakyReLU


@contextlib.contextmanager
def levers(channels_last: bool = True, norm: str | None = None):
    saved = perf.use_channels_last, InstanceNormLeakyReLU.kernel
    try:
        if not channels_last:
            perf.use_channels_last = lambda device_type: False
        InstanceNormLeakyReLU.kernel = norm
        yield
    finally:
        perf.use_channels_last, InstanceNormLeakyReLU.kernel = saved


def today():
    """All levers off (the engine before issue 10)."""
    return levers(channels_last=False, norm="torch")
