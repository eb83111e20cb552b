"""Time to quality, ours vs the original DeepDeWedge, on a held-out phantom; and the refinement
tile size's effect on quality.

Run:  python bench/time_to_quality.py --ddw-path /path/to/DeepDeWedge            (reduced size)
      python bench/time_to_quality.py --ddw-path DIR --shape 64 160 160 --epochs 40  (issue size)
      python bench/time_to_quality.py --no-peer                                   (ours only)

Both tools fit the same even/odd FBP halves of a phantom (core.evaluate.phantom, seed 2024, never used
for tuning; 61 tilts ±60°, SNR 0.3) at the original's CPU settings (s = 32, 16 channels,
depth 3, batch 4), each with its own defaults otherwise. The original's model is saved every
``--every`` epochs, ours every ``--ours-every`` (default 1: at this size our grid, with cubes
flush with the far edges, gives ~3× more cubes per epoch than the original's, so our epochs
are ~3× longer); afterwards each snapshot refines both halves (ours: refine_halves; the original: its
``_refine_single_tomogram``), and the average is scored against the ground truth: CC and the
correlation inside the missing wedge. Printed per snapshot: process CPU seconds of fitting so
far (data preparation included for ours; the original's excludes writing its cube files),
CC, wedge correlation; then the CPU time each tool needs to reach the ORIGINAL's final CC and
final wedge correlation, and the ratio. Ours is run with any FitConfig overrides given by
``--set key=value`` (e.g. ``--set lr_schedule=warmup_cosine``).

``--tiles 32 64 96 160:8``: our final model refines with each refinement tile edge (instance
normalization sees the whole tile; ``TILE:OVERLAP`` also sets the tile overlap, default
``ceil(s/3)``), printing the tile shape, CC, wedge correlation and process CPU seconds.
"""
from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_deepdewedge.core import perf  # noqa: E402
from napari_deepdewedge.core.fit.loop import EpochDone, fit_iter  # noqa: E402
from napari_deepdewedge.core.fit.config import FitConfig  # noqa: E402
from napari_deepdewedge.core.reconstruct.halves import split_even_odd  # noqa: E402
from napari_deepdewedge.core.io.mrc import TiltSeries  # noqa: E402
from napari_deepdewedge.core.evaluate.metrics import cc, wedge_correlation  # noqa: E402
from napari_deepdewedge.core.evaluate.phantom import make_sample  # noqa: E402
from napari_deepdewedge.core.reconstruct.fbp import fbp  # noqa: E402
from napari_deepdewedge.core.refine.tiles import default_overlap, tile_shape  # noqa: E402
from napari_deepdewedge.core.refine.tomogram import refine_halves  # noqa: E402

HELD_OUT_SEED = 2024


def phantom_halves(shape, seed=HELD_OUT_SEED, snr=0.3):
    sample = make_sample(tuple(shape), (-60, 60, 2), snr=snr, seed=seed)
    series = TiltSeries(sample.tilt_series, sample.angles, pixel_size=sample.pixel_size)
    even, odd = split_even_odd(series)
    Z = shape[0]
    return fbp(even.data, even.angles, Z), fbp(odd.data, odd.angles, Z), sample.ground_truth


def score(vol, truth):
    return cc(vol, truth), wedge_correlation(vol, truth, -60.0, 60.0)


def first_reaching(rows, cc_target, wedge_target):
    """CPU seconds of the first snapshot at or above each target (None: never)."""
    t_cc = next((r[1] for r in rows if r[2] >= cc_target), None)
    t_w = next((r[1] for r in rows if r[3] >= wedge_target), None)
    return t_cc, t_w


def parse_overrides(items):
    out = {}
    for item in items or ():
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def fit_ours(tomo0, tomo1, truth, args, out_dir: Path, overrides: dict):
    cfg = FitConfig(subtomo_size=args.subtomo_size, channels=16, depth=3, batch_size=4,
                    epochs=args.ours_epochs or args.epochs,
                    checkpoint_every=args.ours_every, out_dir=str(out_dir), device="cpu", seed=0, **overrides)
    cpu0 = time.process_time()
    cpu_at = {}
    for ev in fit_iter(tomo0, tomo1, cfg):
        if isinstance(ev, EpochDone):
            cpu_at[ev.epoch] = time.process_time() - cpu0
            print(f"    ours epoch {ev.epoch}: fit {ev.fit_loss:.4f} ({cpu_at[ev.epoch]:.0f} CPU s)", flush=True)
    rows = []
    for epoch in sorted(e for e in cpu_at if e % args.ours_every == 0):
        path = out_dir / f"epoch_{epoch:04d}.pt"
        res = refine_halves(path, tomo0, tomo1, device="cpu", batch_size=4)
        rows.append((epoch, cpu_at[epoch], *score(res.refined, truth)))
    return rows


def fit_original(ddw, tomo0, tomo1, truth, args):
    from napari_deepdewedge.core.fit.cubes import default_strides

    epochs = list(range(args.every, args.epochs + 1, args.every))
    # the same extraction strides as ours (its own default would be one cube edge: ~4× fewer cubes)
    strides = default_strides(tomo0.shape, args.subtomo_size)
    run = ddw.fit(tomo0, tomo1, subtomo_size=args.subtomo_size, channels=16, depth=3, batch_size=4,
                  epochs=args.epochs, val_fraction=0.1, update_every=10, snapshot_epochs=epochs, strides=strides)
    for e in run.epochs:
        print(f"    original epoch {e['epoch']}: fit {e['fit_loss']:.4f} ({e['cpu_end']:.0f} CPU s)", flush=True)
    cpu_at = {e["epoch"]: e["cpu_end"] + run.extra["normalization_seconds"] for e in run.epochs}
    rows = []
    for epoch in epochs:
        r0, _ = ddw.refine(run, tomo0, epoch=epoch, batch_size=4)
        r1, _ = ddw.refine(run, tomo1, epoch=epoch, batch_size=4)
        # the original returns standardized values; CC and wedge correlation are scale-invariant
        rows.append((epoch, cpu_at[epoch], *score(0.5 * (r0 + r1), truth)))
    return rows


def add_arguments(ap) -> None:
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 96, 96))
    ap.add_argument("--subtomo-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=10, help="the original's epochs (ours fits as many)")
    ap.add_argument("--every", type=int, default=2, help="epochs between the original's snapshots")
    ap.add_argument("--ours-every", type=int, default=1,
                    help="epochs between our snapshots (ours has ~3× more cubes per epoch at this size)")
    ap.add_argument("--ours-epochs", type=int, default=None, help="our epochs (default: --epochs)")
    ap.add_argument("--set", nargs="*", default=(), help="FitConfig overrides for ours, key=value")
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED,
                    help=f"phantom seed (default {HELD_OUT_SEED}, held out: choose settings on another seed)")


def compare(args, ddw=None, tiles=()) -> dict:
    """Fit ours (and the original when ``ddw`` is given) on the held-out phantom, print the
    snapshot table and, with the original, the CPU time ours needs to reach its final CC and
    wedge correlation; returns {"ours": rows, "original": rows, "cc_ratio", "wedge_ratio"}.
    ``tiles``: refinement tile edges to score our final model with, ``TILE`` or ``TILE:OVERLAP``."""
    import os

    threads = torch.get_num_threads()
    label = "" if tuple(args.shape) == (64, 160, 160) and args.epochs >= 40 else "  [REDUCED SIZE]"
    print(f"phantom {tuple(args.shape)} seed {args.seed}, s={args.subtomo_size}, 16 channels, batch 4, "
          f"{args.epochs} epochs, {threads} threads, load {os.getloadavg()[0]:.1f}{label}", flush=True)
    tomo0, tomo1, truth = phantom_halves(args.shape, seed=args.seed)
    base = score(0.5 * (tomo0 + tomo1), truth)
    print(f"  even/odd FBP average: CC {base[0]:.3f}, wedge correlation {base[1]:.3f}")
    result = {"ours": None, "original": None, "cc_ratio": None, "wedge_ratio": None}
    with tempfile.TemporaryDirectory(prefix="ddw-ttq-") as tmp:
        ours = result["ours"] = fit_ours(tomo0, tomo1, truth, args, Path(tmp), parse_overrides(args.set))
        theirs = result["original"] = fit_original(ddw, tomo0, tomo1, truth, args) if ddw is not None else None
        print("\n  ours:   epoch  CPU s    CC  wedge")
        for r in ours:
            print(f"          {r[0]:5d} {r[1]:6.0f} {r[2]:6.3f} {r[3]:6.3f}")
        if theirs:
            print("  original: epoch  CPU s    CC  wedge")
            for r in theirs:
                print(f"          {r[0]:5d} {r[1]:6.0f} {r[2]:6.3f} {r[3]:6.3f}")
            cc_final, w_final = theirs[-1][2], theirs[-1][3]
            o_cc, o_w = first_reaching(ours, cc_final, w_final)
            t_total = theirs[-1][1]
            print(f"\n  the original's final: CC {cc_final:.3f}, wedge {w_final:.3f} after {t_total:.0f} CPU s")
            for key, name, t in (("cc_ratio", "CC", o_cc), ("wedge_ratio", "wedge correlation", o_w)):
                msg = "not reached" if t is None else f"{t:.0f} CPU s = {t / t_total:.2f} of the original's time"
                result[key] = None if t is None else t / t_total
                print(f"  ours reaches its final {name}: {msg}")
        if tiles:
            final = Path(tmp) / f"epoch_{ours[-1][0]:04d}.pt"
            print(f"\n  refinement tile edge (our epoch-{ours[-1][0]} model, fitting cube {args.subtomo_size}):")
            for spec in tiles:
                tile, _, ov = str(spec).partition(":")
                tile, ov = int(tile), (int(ov) if ov else default_overlap(args.subtomo_size))
                edges = tile_shape(args.shape, args.subtomo_size, ov, tile, 8)
                t = time.process_time()
                res = refine_halves(final, tomo0, tomo1, device="cpu", batch_size=4, tile_size=tile, overlap=ov)
                sec = time.process_time() - t
                c, w = score(res.refined, truth)
                print(f"    tile {tile:4d} overlap {ov:3d} {edges}: CC {c:.4f}, wedge {w:.4f}, {sec:.1f} CPU s",
                      flush=True)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ddw-path", default=None)
    ap.add_argument("--ddw-python", default=None)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiles", nargs="*", default=(), help="refinement tile edges, TILE or TILE:OVERLAP")
    add_arguments(ap)
    args = ap.parse_args(argv)
    import os

    threads = args.threads or perf.usable_cores()
    torch.set_num_threads(threads)
    if args.no_peer or not args.ddw_path:
        compare(args, None, args.tiles)
    else:
        from peers.ddw import OriginalDDW

        with OriginalDDW(args.ddw_path, python=args.ddw_python, threads=threads) as ddw:
            compare(args, ddw, args.tiles)
    print(f"load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
