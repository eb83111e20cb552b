"""Switch our speed levers off for a before/after measurement in one run (monkeypatching,
restored on exit): ``today`` = contiguous NCDHW tensors, torch's InstanceNorm3d (which copies
channels-last tensors back to contiguous), refinement tiles of the fitting cube."""
from __future__ import annotations

import contextlib

import torch

from napari_deepdewedge.core import perf
from napari_deepdewedge.core import unet as unet_mod


@contextlib.contextmanager
def levers(channels_last: bool = True, spatial_in: bool = True):
    saved = perf.use_channels_last, unet_mod.InstanceNorm3d.forward
    try:
        if not channels_last:
            perf.use_channels_last = lambda device_type: False
        if not spatial_in:
            unet_mod.InstanceNorm3d.forward = torch.nn.InstanceNorm3d.forward
        yield
    finally:
        perf.use_channels_last, unet_mod.InstanceNorm3d.forward = saved


def today():
    """All levers off (the engine before issue 10)."""
    return levers(channels_last=False, spatial_in=False)
