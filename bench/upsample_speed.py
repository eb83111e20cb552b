"""Fitting speed of the U-Net's up-sampling layouts (issue 17), compared in one run.

Run:  python bench/upsample_speed.py                         (s = 48, 16 channels, depth 3, batch 4)
      python bench/upsample_speed.py --s 32 --channels 16 --rounds 5

One fitting step as the engine runs it on the CPU — channels-last network and inputs
(core.perf), forward, masked Fourier loss, backward, Adam — timed in process CPU time on one
thread (the figure that survives a shared machine), for every layout of
core.model.unet.UPSAMPLE_KINDS, interleaved round by round (A B C A B C ...) so that drift hits all
alike; printed: the median samples/s per layout and its ratio to ``transposed`` (the layout
before issue 17). Also the refinement direction: one forward pass of a (1, 1, 64³) tile.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_deepdewedge.core import perf
from napari_deepdewedge.core.fourier import observed_mask, rotated_observed_masks
from napari_deepdewedge.core.fit.loss import masked_fourier_loss
from napari_deepdewedge.core.model.rotation import random_rotations
from napari_deepdewedge.core.model.unet import UPSAMPLE_KINDS, UNet3D

TILTS = (-60.0, 60.0)


def make_step(kind, s, channels, depth, batch):
    torch.manual_seed(0)
    net = perf.to_channels_last(UNet3D(channels=channels, depth=depth, residual=False, upsample=kind), "cpu")
    opt = torch.optim.Adam(net.parameters(), lr=4e-4)
    g = torch.Generator().manual_seed(1)
    x = perf.as_input(torch.randn(batch, 1, s, s, s, generator=g), "cpu")
    y = perf.as_input(torch.randn(batch, 1, s, s, s, generator=g), "cpu")
    mask_s = observed_mask((s, s, s), *TILTS, device="cpu", rfft=True)
    m_r = rotated_observed_masks((s, s, s), *TILTS, random_rotations(batch, generator=g), device="cpu", rfft=True)

    def step():
        opt.zero_grad(set_to_none=True)
        masked_fourier_loss(net(x), y, mask_s, m_r).backward()
        opt.step()

    tile = perf.as_input(torch.randn(1, 1, 64, 64, 64, generator=g), "cpu")

    def forward():
        with torch.inference_mode():
            net.eval()
            net(tile)
            net.train()

    return step, forward


def cpu_seconds(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--s", type=int, default=48)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kinds", nargs="*", default=list(UPSAMPLE_KINDS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    jobs = {k: make_step(k, args.s, args.channels, args.depth, args.batch) for k in args.kinds}
    for step, forward in jobs.values():  # warm-up
        step()
        forward()
    fit = {k: [] for k in jobs}
    ref = {k: [] for k in jobs}
    for _ in range(args.rounds):
        for k, (step, forward) in jobs.items():
            fit[k].append(args.batch / cpu_seconds(step))
            ref[k].append(1.0 / cpu_seconds(forward))
    base = "transposed" if "transposed" in jobs else next(iter(jobs))
    print(f"s={args.s}, {args.channels} channels, depth {args.depth}, batch {args.batch}; one thread, process CPU "
          f"time, median of {args.rounds} interleaved rounds")
    print(f"{'upsample':<12} {'fit samples/s':>14} {'ratio':>6}   {'refine 64³ tiles/s':>18} {'ratio':>6}")
    for k in jobs:
        f, r = statistics.median(fit[k]), statistics.median(ref[k])
        fb, rb = statistics.median(fit[base]), statistics.median(ref[base])
        print(f"{k:<12} {f:14.3f} {f / fb:6.3f}   {r:18.3f} {r / rb:6.3f}")


if __name__ == "__main__":
    main()
