"""Where does the period-2 texture of refined volumes come from? (issue 17)

Run:  python bench/quality.py --quick --out DIR        (a fitted model in DIR/best.pt)
      python bench/period2.py --checkpoint DIR/best.pt --quick [--upsample transposed]

Rebuilds quality.py's held-out phantom halves (same seed, shape, tilts) and prints
core.evaluate.metrics.period2_peak_ratio (median / max over the 7 Nyquist-lattice frequencies of the
power over its shell's median) at every stage of refinement:

  FBP halves, the prepared network input (standardized, wedge-masked, matching filter);
  one network tile (the middle ``--tile``³ of the prepared half, no blending);
  the refinement of one half (core.refine.tomogram.refine_tomogram) with its default tiles and with
  tiles of the fitting cube's size (many overlaps: the blending at work);

each for the fitted model and for a freshly initialised model of the same layout (seed 0,
the fitted model's normalization), and for ``--upsample`` layouts given (fresh weights: which
layers make the texture before any fitting).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_deepdewedge.core.model.checkpoint import load_model
from napari_deepdewedge.core.reconstruct.halves import split_even_odd
from napari_deepdewedge.core.io.mrc import TiltSeries
from napari_deepdewedge.core.evaluate.metrics import period2_peak_ratio
from napari_deepdewedge.core.evaluate.phantom import make_sample
from napari_deepdewedge.core.reconstruct.fbp import fbp
from napari_deepdewedge.core.refine.tiles import prepare_half, standardization_stats
from napari_deepdewedge.core.refine.tomogram import refine_tomogram
from napari_deepdewedge.core.model.rotation import match_resampling
from napari_deepdewedge.core.model.unet import UNet3D


def fmt(vol) -> str:
    r = period2_peak_ratio(vol)
    return f"{r['median']:9.2f} / {r['max']:9.2f}   " + " ".join(f"{k}:{v:.3g}" for k, v in r["ratios"].items())


def fresh_like(model, seed=0, **overrides):
    arch = {**model.arch_dict(), **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet3D(**arch)
    net.set_normalization(float(model.loc), float(model.scale))
    return net.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 160, 160))
    ap.add_argument("--snr", type=float, default=0.3)
    ap.add_argument("--quick", action="store_true", help="quality.py --quick's phantom (32×96×96)")
    ap.add_argument("--tile", type=int, default=0,
                    help="edge of the one-tile run (default: the whole half, no blending)")
    ap.add_argument("--upsample", nargs="*", default=[], help="also fresh models with these up-sampling layers")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (32, 96, 96) if args.quick else tuple(args.shape)
    sample = make_sample(shape, (-60, 60, 2), snr=args.snr, seed=args.seed)
    series = TiltSeries(sample.tilt_series, sample.angles, pixel_size=sample.pixel_size)
    even, odd = split_even_odd(series)
    tomo0 = fbp(even.data, even.angles, shape[0])
    tomo1 = fbp(odd.data, odd.angles, shape[0])
    tmin, tmax = float(np.min(sample.angles)), float(np.max(sample.angles))
    model, meta = load_model(args.checkpoint, "cpu")
    s = int(meta["subtomo_size"])
    print(f"phantom {shape}; checkpoint {args.checkpoint}: {model.arch_dict()}, s={s}")
    print(f"{'stage':<46} {'median':>9} / {'max':>9}   per frequency")
    print(f"{'ground truth':<46} {fmt(sample.ground_truth)}")
    print(f"{'FBP half 0':<46} {fmt(tomo0)}")
    print(f"{'FBP half 1':<46} {fmt(tomo1)}")
    stats = standardization_stats(tomo0)
    prep = prepare_half(tomo0, tmin, tmax, stats)
    print(f"{'prepared half 0 (standardized, masked)':<46} {fmt(prep)}")
    matched = match_resampling(torch.from_numpy(prep)[None], "trilinear")[0].numpy()
    print(f"{'... + matching filter (network input)':<46} {fmt(matched)}")
    m = 2 ** model.depth
    t = [min(args.tile or n, n) // m * m for n in shape]
    c = [(n - e) // 2 for n, e in zip(shape, t)]
    tile = torch.from_numpy(np.ascontiguousarray(matched[c[0]:c[0] + t[0], c[1]:c[1] + t[1], c[2]:c[2] + t[2]]))
    print(f"{f'input tile {tuple(t)}':<46} {fmt(tile.numpy())}")
    models = [("fitted", model), ("fresh (seed 0)", fresh_like(model))]
    models += [(f"fresh, upsample={u}", fresh_like(model, upsample=u)) for u in args.upsample]
    for name, net in models:
        with torch.inference_mode():
            out = net(tile[None, None])[0, 0].numpy()
        print(f"{f'{name}: one tile':<46} {fmt(out)}")
        ref = refine_tomogram(net, tomo0, tmin, tmax, subtomo_size=s, batch_size=2, device="cpu",
                              standardize=stats)
        print(f"{f'{name}: refined half 0 (default tiles)':<46} {fmt(ref)}")
        ref = refine_tomogram(net, tomo0, tmin, tmax, subtomo_size=s, batch_size=2, device="cpu",
                              standardize=stats, tile_size=s)
        print(f"{f'{name}: refined half 0 ({s}³ tiles, blended)':<46} {fmt(ref)}")


if __name__ == "__main__":
    main()
