"""Which no-ground-truth signal knows when a fit is done? (issue 22)

Each phantom is fitted far past its quality peak with the fitting engine (core.fit.loop.fit_iter,
the signals measured every epoch: ``FitConfig.signal_every = 1``). Every epoch's model is
scored against the ground truth — both halves refined over the whole volume
(core.refine.tomogram.refine_halves), averaged, CC and in-wedge correlation (core.evaluate.metrics) — and the
signals of core.fit.signals (plus the validation loss, which picks ``best.pt`` today) are
read from the engine's events. For each signal the report gives: the epoch it picks (its best
value over the run), the CC and in-wedge correlation lost there against the best epoch of
each, the epoch a patience-P rule stops at ("stop when the best value is P epochs old") and the
loss of the checkpoint that rule keeps (the best value up to the stop), and the Spearman rank
correlation of the signal (oriented so that higher is better) with the truth CC over epochs.

Phantoms (core.evaluate.phantom.make_sample, held-out seed 2024; even/odd halves by angle parity, each
FBP'd): ``sym60`` ±60° SNR 0.3, ``sym45`` ±45° SNR 0.3, ``lowsnr`` ±60° SNR 0.1, ``asym``
−54…+62° SNR 0.3. No CTF phantom exists in the project yet.

Run each phantom as its own process (one thread), then the report:
    python bench/stopping_study.py --phantom sym60 --epochs 60 --parts /tmp/stop
    ...
    python bench/stopping_study.py --report --parts /tmp/stop --json bench/results_stopping.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 2024
PHANTOMS = {  # name: (tilt min, max, step), SNR
    "sym60": ((-60, 60, 2), 0.3),
    "sym45": ((-45, 45, 2), 0.3),
    "lowsnr": ((-60, 60, 2), 0.1),
    "asym": ((-54, 62, 2), 0.3),
}
SIGNALS = ("val_loss", "val_wedge", "fsc_area", "fsc_143", "wedge_fsc", "consistency")
PATIENCES = (5, 10)


def halves(name: str, shape):
    from napari_deepdewedge.core.reconstruct.halves import split_even_odd
    from napari_deepdewedge.core.io.mrc import TiltSeries
    from napari_deepdewedge.core.evaluate.phantom import make_sample
    from napari_deepdewedge.core.reconstruct.fbp import fbp

    tilt, snr = PHANTOMS[name]
    sample = make_sample(tuple(shape), tilt, snr=snr, seed=SEED)
    series = TiltSeries(sample.tilt_series, sample.angles, pixel_size=sample.pixel_size)
    even, odd = split_even_odd(series)
    Z = shape[0]
    return (fbp(even.data, even.angles, Z), fbp(odd.data, odd.angles, Z), sample.ground_truth,
            float(tilt[0]), float(tilt[1]), sample.pixel_size)


def run_phantom(args) -> dict:
    """Fit one phantom, score every epoch; the per-epoch rows (also written to the part file)."""
    import torch

    from napari_deepdewedge.core.fit.loop import CheckpointSaved, EpochDone, FitConfig, fit_iter
    from napari_deepdewedge.core.evaluate.metrics import cc, wedge_correlation
    from napari_deepdewedge.core.refine.tomogram import refine_halves

    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    t0, t1, truth, tmin, tmax, px = halves(args.phantom, shape)
    base = 0.5 * (t0 + t1)
    part = {"phantom": args.phantom, "shape": list(shape), "subtomo_size": args.subtomo_size,
            "channels": args.channels, "depth": args.depth, "batch": args.batch, "epochs": args.epochs,
            "tilt_range": [tmin, tmax], "snr": PHANTOMS[args.phantom][1], "seed": SEED,
            "fbp_average": {"cc": cc(base, truth), "wedge": wedge_correlation(base, truth, tmin, tmax)},
            "rows": []}
    out = Path(args.parts) / f"{args.phantom}.json"
    cfg = FitConfig(subtomo_size=args.subtomo_size, channels=args.channels, depth=args.depth,
                    batch_size=args.batch, epochs=args.epochs, tilt_min=tmin, tilt_max=tmax, device="cpu",
                    voxel_size=(px,) * 3, seed=0, checkpoint_every=1, signal_every=1)
    print(f"{args.phantom}: {shape}, s={args.subtomo_size}, {args.channels} ch, depth {args.depth}, "
          f"batch {args.batch}, {args.epochs} epochs, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}",
          flush=True)
    pending = {}
    t_start = time.time()

    def enough() -> bool:
        """The study's own end (ground truth allowed here: it only ends the experiment): the wall
        budget, or the truth CC's peak ``--past-peak`` epochs behind."""
        if args.max_wall and time.time() - t_start >= args.max_wall:
            part["ended"] = f"wall budget {args.max_wall:.0f} s"
            return True
        rows = part["rows"]
        if args.past_peak and rows:
            peak = max(rows, key=lambda r: r["cc"])["epoch"]
            if rows[-1]["epoch"] - peak >= args.past_peak:
                part["ended"] = f"{args.past_peak} epochs past the truth CC peak"
                return True
        return False

    with tempfile.TemporaryDirectory(prefix="ddw-stop-") as tmp:
        cfg.out_dir = tmp
        for ev in fit_iter(t0, t1, cfg, should_stop=enough):
            if isinstance(ev, EpochDone):
                pending[ev.epoch] = {"epoch": ev.epoch, "fit_loss": ev.fit_loss, "val_loss": ev.val_loss,
                                     "seconds": ev.seconds, **ev.signals}
            elif isinstance(ev, CheckpointSaved) and ev.kind == "periodic":
                row = pending.pop(ev.epoch)
                t = time.process_time()
                res = refine_halves(ev.path, t0, t1, device="cpu", batch_size=4)
                row["cc"] = cc(res.refined, truth)
                row["wedge"] = wedge_correlation(res.refined, truth, tmin, tmax)
                row["score_cpu"] = time.process_time() - t
                Path(ev.path).unlink()
                part["rows"].append(row)
                print(f"  epoch {row['epoch']:4d}  CC {row['cc']:.4f}  wedge {row['wedge']:.4f}  "
                      f"val {row['val_loss']:.4f}  val_wedge {row['val_wedge']:.4f}  fsc_area {row['fsc_area']:.4f}  "
                      f"wedge_fsc {row['wedge_fsc']:.4f}  fsc_143 {row['fsc_143']:.1f}  "
                      f"consistency {row['consistency']:.4f}  ({row['seconds']:.1f} s fit, "
                      f"{row['score_cpu']:.1f} s score, {time.time() - t_start:.0f} s wall)", flush=True)
                part["wall_seconds"] = time.time() - t_start
                tmp_out = out.with_suffix(".tmp")
                tmp_out.write_text(json.dumps(part, indent=1))
                tmp_out.replace(out)  # the part so far: a killed run still reports its epochs
    part.setdefault("ended", f"all {args.epochs} epochs")
    out.write_text(json.dumps(part, indent=1))
    print(f"  ended: {part['ended']}", flush=True)
    return part


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------
def ranks(x) -> np.ndarray:
    """Ranks (average of ties), 0-based."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra, rb = ranks(a[ok]), ranks(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def analyse(part: dict) -> dict:
    """Per signal: picked epoch, losses vs the best epochs, patience stops, Spearman with CC."""
    from napari_deepdewedge.core.fit.signals import DIRECTION, best_epoch, stop_epoch

    rows = part["rows"]
    by_epoch = {r["epoch"]: r for r in rows}
    history = [[r["epoch"], r["fit_loss"], r["val_loss"], r["seconds"],
                {k: r[k] for k in SIGNALS if k != "val_loss" and r.get(k) is not None}] for r in rows]
    best_cc = max(rows, key=lambda r: r["cc"])
    best_w = max(rows, key=lambda r: r["wedge"])
    last = rows[-1]

    def losses(epoch):
        r = by_epoch[epoch]
        return {"epoch": epoch, "cc": r["cc"], "wedge": r["wedge"], "cc_lost": best_cc["cc"] - r["cc"],
                "wedge_lost": best_w["wedge"] - r["wedge"]}

    out = {"best_cc_epoch": best_cc["epoch"], "best_cc": best_cc["cc"], "best_wedge_epoch": best_w["epoch"],
           "best_wedge": best_w["wedge"], "last": losses(last["epoch"]), "signals": {}}
    cc_series = [r["cc"] for r in rows]
    for name in SIGNALS:
        pick = best_epoch(history, name)
        if pick is None:
            continue
        entry = {"pick": losses(pick),
                 "spearman_cc": spearman([DIRECTION[name] * (r.get(name) if r.get(name) is not None else np.nan)
                                          for r in rows], cc_series),
                 "stops": {}}
        for p in PATIENCES:
            stop = stop_epoch(history, name, p)
            upto = [h for h in history if stop is None or h[0] <= stop]
            kept = best_epoch(upto, name)
            entry["stops"][str(p)] = {"stop": stop, "kept": losses(kept)}
        out["signals"][name] = entry
    return out


def report(parts_dir: Path, json_path: Path | None) -> dict:
    parts = [json.loads(p.read_text()) for p in sorted(Path(parts_dir).glob("*.json"))]
    parts = [p for p in parts if p.get("rows")]
    result = {"run": {"date": datetime.datetime.now().strftime("%Y-%m-%dT%H:%M"), "machine": platform.platform(),
                      "processor": platform.processor(), "cpu_count": os.cpu_count()},
              "phantoms": {}}
    for part in parts:
        a = analyse(part)
        name = part["phantom"]
        result["phantoms"][name] = {k: v for k, v in part.items() if k != "rows"} | {"analysis": a,
                                                                                     "rows": part["rows"]}
        print(f"\n{name}: {tuple(part['shape'])}, tilt {part['tilt_range']}, SNR {part['snr']}, "
              f"{len(part['rows'])}/{part['epochs']} epochs; FBP average CC {part['fbp_average']['cc']:.3f} "
              f"wedge {part['fbp_average']['wedge']:.3f}")
        print(f"  truth: best CC {a['best_cc']:.4f} at epoch {a['best_cc_epoch']}, best in-wedge "
              f"{a['best_wedge']:.4f} at epoch {a['best_wedge_epoch']}; last epoch loses "
              f"{a['last']['cc_lost']:.4f} CC, {a['last']['wedge_lost']:.4f} in-wedge")
        head = f"  {'signal':12s} {'pick':>5s} {'CC lost':>8s} {'wedge lost':>10s}"
        for p in PATIENCES:
            head += f" {'stop P' + str(p):>8s} {'CC lost':>8s} {'wedge lost':>10s}"
        print(head + f" {'Spearman(CC)':>13s}")
        for sig, e in a["signals"].items():
            line = f"  {sig:12s} {e['pick']['epoch']:5d} {e['pick']['cc_lost']:8.4f} {e['pick']['wedge_lost']:10.4f}"
            for p in PATIENCES:
                st = e["stops"][str(p)]
                stop = "-" if st["stop"] is None else str(st["stop"])
                line += f" {stop:>8s} {st['kept']['cc_lost']:8.4f} {st['kept']['wedge_lost']:10.4f}"
            print(line + f" {e['spearman_cc']:13.3f}")
    if parts:
        print("\nmean over phantoms (CC lost / in-wedge lost at the pick; at the P-stop's kept checkpoint):")
        for sig in SIGNALS:
            es = [result["phantoms"][p["phantom"]]["analysis"]["signals"].get(sig) for p in parts]
            if any(e is None for e in es):
                continue
            line = (f"  {sig:12s} pick {np.mean([e['pick']['cc_lost'] for e in es]):.4f} / "
                    f"{np.mean([e['pick']['wedge_lost'] for e in es]):.4f}")
            for p in PATIENCES:
                line += (f"; P{p} {np.mean([e['stops'][str(p)]['kept']['cc_lost'] for e in es]):.4f} / "
                         f"{np.mean([e['stops'][str(p)]['kept']['wedge_lost'] for e in es]):.4f}")
            print(line + f"; Spearman {np.nanmean([e['spearman_cc'] for e in es]):.3f}")
        lasts = [result["phantoms"][p["phantom"]]["analysis"]["last"] for p in parts]
        print(f"  {'last epoch':12s} {np.mean([x['cc_lost'] for x in lasts]):.4f} / "
              f"{np.mean([x['wedge_lost'] for x in lasts]):.4f}")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {json_path}")
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phantom", choices=sorted(PHANTOMS))
    ap.add_argument("--report", action="store_true", help="analyse the part files and print the table")
    ap.add_argument("--parts", default="bench/stopping_parts", help="folder of the per-phantom part files")
    ap.add_argument("--json", default=None, help="with --report: write every figure here")
    ap.add_argument("--shape", type=int, nargs=3, default=(32, 64, 64))
    ap.add_argument("--subtomo-size", type=int, default=16)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-wall", type=float, default=0, help="end this phantom's run after this many wall seconds")
    ap.add_argument("--past-peak", type=int, default=0,
                    help="end this phantom's run this many epochs after the truth CC's peak (0: run all epochs)")
    args = ap.parse_args(argv)
    if args.report:
        report(Path(args.parts), Path(args.json) if args.json else None)
        return
    if not args.phantom:
        ap.error("give --phantom NAME (or --report)")
    Path(args.parts).mkdir(parents=True, exist_ok=True)
    run_phantom(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
