"""Writes pre_issue17_unet.pt: a tiny U-Net checkpoint in the layout of every checkpoint written
before issue 17 (transposed-convolution up-sampling; an ``arch`` without an ``upsample`` key),
with a fixed input and the output that code computed, in float64.

The committed file was written by the code before issue 17 (commit eb68365, run from that
checkout); with later code this script writes the same layout (``upsample="transposed"``, key
dropped). Run:  python tests/data/checkpoints/make_pre_issue17.py
"""
from pathlib import Path

import torch

from napari_deepdewedge.core.model import checkpoint as ckpt
from napari_deepdewedge.core.model.unet import UNet3D

torch.manual_seed(17)
try:
    model = UNet3D(channels=2, depth=2, residual=False, upsample="transposed")
except TypeError:  # the code before issue 17 had only this layout
    model = UNet3D(channels=2, depth=2, residual=False)
model.set_normalization(0.5, 2.0)
arch = {k: v for k, v in model.arch_dict().items() if k != "upsample"}
x = torch.randn(1, 1, 8, 12, 16, dtype=torch.float64)
with torch.no_grad():
    y = model.double().eval()(x)
model.float()
payload = {
    "format": ckpt.FORMAT_TAG,
    "version": ckpt.FORMAT_VERSION,
    "arch": arch,
    "state_dict": model.state_dict(),
    "subtomo_size": 16,
    "tilt_min": -60.0,
    "tilt_max": 60.0,
    "voxel_size": [1.0, 1.0, 1.0],
    "standardization": None,
    "epoch": 1,
    "config": {},
    "probe_input": x,
    "probe_output": y,
}
ckpt.save_checkpoint(Path(__file__).with_name("pre_issue17_unet.pt"), payload)
