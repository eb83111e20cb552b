"""Fine-tuning (--init-from) vs fitting from scratch, and one model on two tomograms (issue 9).

Run:  python bench/finetune.py --threads 2            (reduced size, see below; ~10–15 min on a shared 2-core machine)
      python bench/finetune.py --part finetune        (only the fine-tuning comparison)

Reduced setting (labelled in the output): phantoms 24×48×48 (core.evaluate.phantom seeds 11 and 12),
even/odd halves by angle parity, FBP; s = 16, 8 channels, depth 2, batch 8, lr 4e-4.

* finetune: a model fitted on phantom A (tilts −60…60, ``--source-epochs``) starts a fit on
  phantom B (tilts −48…64) with ``init_from`` (fresh optimizer and schedule); a second fit on
  B starts from scratch with the same settings and seed. Printed: the from-scratch final
  fitting loss L, and for both runs the first epoch whose fitting loss is ≤ L
  (epochs-to-loss). Compared within one run (the machine is shared).
* pooled: on the same two phantoms, a fit on A and B together vs a fit on A alone, with the
  same number of optimizer steps; each model refines B's halves (with B's tilt range) and the
  CC against B's ground truth is printed.

Measured (2-core shared machine, --epochs 8 --source-epochs 8): fine-tuned reaches the
from-scratch final fitting loss 0.725 at epoch 3 (scratch: epoch 8); losses per epoch scratch
0.949 0.980 0.850 0.845 0.838 0.779 0.814 0.725, fine-tuned 0.787 0.813 0.701 0.694 0.716 0.712
0.734 0.659. Pooled, 32 steps each: CC vs B's truth FBP 0.466, A only 0.506, A+B 0.571.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_deepdewedge.core.fit.data import HalfPair
from napari_deepdewedge.core.fit.loop import EpochDone, FitFinished, FitStarted, fit_iter
from napari_deepdewedge.core.fit.config import FitConfig
from napari_deepdewedge.core.reconstruct.halves import split_even_odd
from napari_deepdewedge.core.io.mrc import TiltSeries
from napari_deepdewedge.core.evaluate.metrics import cc
from napari_deepdewedge.core.evaluate.phantom import make_sample
from napari_deepdewedge.core.reconstruct.fbp import fbp
from napari_deepdewedge.core.refine.tomogram import refine_halves

SHAPE = (24, 48, 48)


def phantom_pair(seed: int, tilts: tuple[float, float, float], name: str) -> tuple[HalfPair, np.ndarray]:
    sample = make_sample(SHAPE, tilts, snr=0.3, seed=seed)
    series = TiltSeries(sample.tilt_series, sample.angles, pixel_size=sample.pixel_size)
    even, odd = split_even_odd(series)
    t0, t1 = fbp(even.data, even.angles, SHAPE[0]), fbp(odd.data, odd.angles, SHAPE[0])
    rng = (float(np.min(sample.angles)), float(np.max(sample.angles)))
    return HalfPair(even=t0, odd=t1, tilt_range=rng, name=name, voxel_size=(sample.pixel_size,) * 3), \
        sample.ground_truth


def config(out: Path, epochs: int, **kw) -> FitConfig:
    base = dict(subtomo_size=16, channels=8, depth=2, epochs=epochs, batch_size=8, update_every=5,
                checkpoint_every=0, device="cpu", seed=0, out_dir=str(out))
    base.update(kw)
    return FitConfig(**base)


def run(pairs, cfg, **kw):
    losses, finished, n_fit = [], None, 0
    for ev in fit_iter(None, None, cfg, pairs=pairs, **kw):
        if isinstance(ev, EpochDone):
            losses.append(ev.fit_loss)
            print(f"    {cfg.out_dir and Path(cfg.out_dir).name} epoch {ev.epoch}: fit {ev.fit_loss:.4f}", flush=True)
        elif isinstance(ev, FitStarted):
            n_fit = ev.n_fit_cubes
        elif isinstance(ev, FitFinished):
            finished = ev
    return losses, finished, n_fit


def epochs_to(losses, target) -> int | None:
    return next((i + 1 for i, v in enumerate(losses) if v <= target), None)


def finetune(a, b, work: Path, args) -> None:
    t = time.perf_counter()
    _, src, _ = run([a], config(work / "source", args.source_epochs))
    scratch, _, _ = run([b], config(work / "scratch", args.epochs))
    tuned, _, _ = run([b], config(work / "tuned", args.epochs), init_from=src.latest_path)
    target = scratch[-1]
    e_s, e_t = epochs_to(scratch, target), epochs_to(tuned, target)
    print(f"[finetune, reduced size {SHAPE}, s=16, 8 ch, depth 2] source: phantom A {args.source_epochs} epochs; "
          f"target phantom B, {args.epochs} epochs each", flush=True)
    print("  epoch  scratch  fine-tuned")
    for i, (x, y) in enumerate(zip(scratch, tuned)):
        print(f"  {i + 1:5d}  {x:.4f}   {y:.4f}")
    print(f"  from-scratch final fitting loss {target:.4f}: reached at epoch {e_s} from scratch, at epoch {e_t} "
          f"fine-tuned ({time.perf_counter() - t:.0f} s)", flush=True)


def pooled(a, b, truth_b, work: Path, args) -> None:
    t = time.perf_counter()
    both_cfg = config(work / "both", args.epochs)
    both, fin_both, n_both = run([a, b], both_cfg)
    steps_both = math.ceil(n_both / both_cfg.batch_size) * args.epochs
    # A alone with the same number of optimizer steps
    from napari_deepdewedge.core.fit.cubes import extract_subtomos

    n_one = extract_subtomos(a.even, a.odd, both_cfg.subtomo_size, val_fraction=both_cfg.val_fraction,
                             depth=both_cfg.depth).n_fit
    epochs_one = max(1, round(steps_both / math.ceil(n_one / both_cfg.batch_size)))
    _, fin_one, _ = run([a], config(work / "one", epochs_one))
    lo, hi = b.tilt_range
    scores = {}
    for label, fin in (("A+B", fin_both), ("A only", fin_one)):
        r = refine_halves(str(fin.latest_path), b.even, b.odd, device="cpu", tilt_min=lo, tilt_max=hi)
        scores[label] = cc(r.refined, truth_b)
    fbp_cc = cc(0.5 * (b.even + b.odd), truth_b)
    print(f"[pooled, reduced size {SHAPE}] {steps_both} steps each ({args.epochs} epochs on A+B, {epochs_one} on A): "
          f"CC vs B's truth — FBP {fbp_cc:.3f}, fit on A only {scores['A only']:.3f}, fit on A+B "
          f"{scores['A+B']:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--source-epochs", type=int, default=12)
    ap.add_argument("--part", choices=("all", "finetune", "pooled"), default="all")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    a, _ = phantom_pair(11, (-60, 60, 3), "A")
    b, truth_b = phantom_pair(12, (-48, 64, 3), "B")
    with tempfile.TemporaryDirectory(prefix="ddw-finetune-") as tmp:
        if args.part in ("all", "finetune"):
            finetune(a, b, Path(tmp), args)
        if args.part in ("all", "pooled"):
            pooled(a, b, truth_b, Path(tmp), args)


if __name__ == "__main__":
    main()
