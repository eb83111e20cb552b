"""Refinement throughput: voxels/s for one half-tomogram through ``core.refine.refine_tomogram``.

Run:  python bench/refine.py                         (128×512×512, fast preset, CPU)
      python bench/refine.py --shape 64 256 256      (quicker)
      python bench/refine.py --device cuda --preset default --batch 8

The model is an untrained U-Net of the preset (the cost does not depend on the weights).
Printed: the statistics pass, the tiled pass (bands of rows standardized + wedge-masked, network, blend), the total, voxels/s, the
number of tiles, and the peak resident memory of the process (the tomogram and the output
accumulator are one float32 volume each, plus one band of s rows; one batch of tiles on the device).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch

from napari_deepdewedge.core.device import pick_device
from napari_deepdewedge.core.refine import RowPreparer, n_tiles, predict_tiled, standardization_stats
from napari_deepdewedge.core.unet import PRESETS, UNet3D


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(128, 512, 512), metavar=("Z", "Y", "X"))
    ap.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--overlap", type=int, default=None, help="default ceil(s/3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    p = PRESETS[args.preset]
    s = p["subtomo_size"]
    shape = tuple(args.shape)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"preset '{args.preset}' (s={s}, {p['channels']} channels, depth {p['depth']}), batch {args.batch}")
    rng = np.random.default_rng(0)
    tomo = rng.standard_normal(shape, dtype=np.float32)
    torch.manual_seed(0)
    model = UNet3D(channels=p["channels"], depth=p["depth"]).to(device).eval()
    tiles = n_tiles(shape, s, args.overlap)
    print(f"tomogram {shape} = {np.prod(shape) / 1e6:.1f} Mvoxels, {tiles} tiles of {s}³")

    t0 = time.perf_counter()
    stats = standardization_stats(tomo)
    prep = RowPreparer((shape[0], shape[2]), -60, 60, stats)
    t1 = time.perf_counter()
    last = [t1]

    def progress(done, total):
        now = time.perf_counter()
        if now - last[0] > 30 or done == total:
            print(f"  {done}/{total} batches, {now - t1:.0f} s", file=sys.stderr, flush=True)
            last[0] = now

    out = predict_tiled(model, tomo, s, overlap=args.overlap, batch_size=args.batch, device=device,
                        progress=progress, rows=prep)
    _sync(device)
    out *= np.float32(stats[1])
    out += np.float32(stats[0])
    t2 = time.perf_counter()
    nvox = float(np.prod(shape))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux → MB
    print(f"statistics:               {t1 - t0:7.2f} s")
    print(f"bands: mask + network + blend {t2 - t1:7.2f} s  ({tiles / (t2 - t1):.2f} tiles/s)")
    print(f"total:                    {t2 - t0:7.2f} s  → {nvox / (t2 - t0) / 1e6:.3f} Mvoxels/s per half "
          f"(refine_halves does two halves)")
    print(f"peak resident memory:     {peak:7.0f} MB (tomogram {nvox * 4 / 2**20:.0f} MB per float32 copy)")


if __name__ == "__main__":
    main()
