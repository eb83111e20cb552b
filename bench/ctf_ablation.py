"""The CTF in the fit: the controlled ablation that chooses ``FitConfig.ctf_loss``'s default.

Four ways, on the project's CTF phantom (core.evaluate.ctf_phantom), each condition one seeded
series, the same fit settings and seed for every way:

  uncorrected   halves reconstructed without phase flipping, plain masked loss
  flip          phase-flipped halves (pipeline.reconstruct_halves with the true per-view defoci),
                plain masked loss
  flip_ctfloss  phase-flipped halves, FitConfig.ctf_loss (prediction × the target half's
                tilt-averaged |CTF| before the masked loss: the network gives the CTF-free volume)
  wiener        phase-flipped halves, the TARGET half Wiener-filtered before fitting:
                F(y)·g/(g² + ε), g its tilt-averaged |CTF| (the same radial envelope), ε = WIENER_EPS;
                the input half and the loss as in 'flip' (bench only: a preprocessing of the
                target, no fit change)

Conditions: pixel size 5 and 10 Å × mean defocus 2.5 and 5 µm (±0.3 µm per view, the gradient
across the tilted specimen, 300 kV, Cs 2.7 mm, A 0.07), phantom seed 3.

Figures, against the truth (the output keeps the images' contrast, dense dark: −volume is
compared): CC, FSC-0.143 crossing in pixels (2 = Nyquist; lower is better), and the
correlation inside the missing wedge (core.evaluate.metrics.wedge_correlation) — of the
refined result (both halves through best.pt, averaged) and of the full FBP (uncorrected and
phase flipped).

Run:  OMP_NUM_THREADS=1 nohup python bench/ctf_ablation.py > /tmp/ctf_ablation.log 2>&1 &
      (--quick: one condition, 3 epochs — a smoke run)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CONDITIONS = [dict(pixel=5.0, defocus=2.5), dict(pixel=5.0, defocus=5.0),
              dict(pixel=10.0, defocus=2.5), dict(pixel=10.0, defocus=5.0)]
WAYS = ("uncorrected", "flip", "flip_ctfloss", "wiener")
WIENER_EPS = 0.05
SHAPE = (32, 96, 96)
TILTS = (-60.0, 60.0, 3.0)
SNR = 0.5
SEED = 3
FIT = dict(subtomo_size=16, channels=8, depth=2, batch_size=8, epochs=20, update_every=5,
           signal_every=0, seed=0, device="cpu")


def wiener(volume: np.ndarray, ctf, voxel: float, eps: float) -> np.ndarray:
    """``F⁻¹(F(v)·g/(g² + eps))`` with ``g`` the tilt-averaged |CTF| of ``ctf`` (radial)."""
    from napari_deepdewedge.core.ctf import tilt_averaged_abs_ctf

    shape = volume.shape
    f = [np.fft.fftfreq(n) / voxel for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1]) / voxel]
    radius = np.sqrt(f[0][:, None, None] ** 2 + f[1][None, :, None] ** 2 + f[2][None, None, :] ** 2)
    samples = np.linspace(0, float(radius.max()), 2048)
    g = np.interp(radius, samples, tilt_averaged_abs_ctf(ctf, samples))
    spec = np.fft.rfftn(volume.astype(np.float64)) * (g / (g * g + eps))
    return np.fft.irfftn(spec, s=shape, axes=(0, 1, 2)).astype(np.float32)


def scores(volume, truth, pixel, tilt_range) -> dict:
    from napari_deepdewedge.core.evaluate.metrics import cc, fsc, fsc_crossing, wedge_correlation

    v = -np.asarray(volume, dtype=np.float32)
    freqs, curve = fsc(v, truth, pixel)
    crossing = fsc_crossing(freqs, curve) / pixel
    return {"cc": round(cc(v, truth), 4),
            "fsc143_px": round(float(crossing), 2) if np.isfinite(crossing) else None,
            "wedge_cc": round(wedge_correlation(v, truth, *tilt_range), 4)}


MODEL = "best"  # which checkpoint is refined: "best" (lowest validation loss, as `run`) or "latest"


def fit_and_refine(even, odd, ctf, cfg_kw, out_dir: Path) -> tuple[np.ndarray, float]:
    from napari_deepdewedge.core.fit.config import FitConfig
    from napari_deepdewedge.core.fit.loop import FitFinished, fit_iter
    from napari_deepdewedge.core.fit.pairs import HalfPair
    from napari_deepdewedge.core.refine.tomogram import refine_halves

    cfg = FitConfig(out_dir=str(out_dir), **cfg_kw)
    pair = HalfPair(even=even, odd=odd, tilt_range=cfg.tilt_range, voxel_size=cfg.voxel_size, ctf=ctf,
                    name="TS")
    t0 = time.perf_counter()
    finished = None
    for ev in fit_iter(None, None, cfg, pairs=[pair]):
        if isinstance(ev, FitFinished):
            finished = ev
    seconds = time.perf_counter() - t0
    model = (finished.best_path if MODEL == "best" else None) or finished.latest_path
    return refine_halves(model, even, odd, device="cpu", batch_size=cfg.batch_size).refined, seconds


def run_condition(pixel: float, defocus: float, epochs: int, ways, work: Path, fit_seed: int = 0) -> dict:
    from napari_deepdewedge.core.ctf import PhaseFlip, ctf_from_record
    from napari_deepdewedge.core.evaluate.ctf_phantom import make_ctf_sample
    from napari_deepdewedge.core.io.mrc import TiltSeries
    from napari_deepdewedge.core.reconstruct.fbp import fbp
    from napari_deepdewedge.pipeline.halves import HalvesRequest, reconstruct_halves

    t0 = time.perf_counter()
    s = make_ctf_sample(SHAPE, TILTS, pixel_size=pixel, defocus_um=defocus, snr=SNR, seed=SEED,
                        device="cpu")
    series = TiltSeries(s.tilt_series, s.angles, pixel_size=pixel, meta={"ctf": s.ctf})
    tilt_range = (float(s.angles.min()), float(s.angles.max()))
    out = {"pixel_A": pixel, "defocus_um": defocus, "views": int(s.angles.size),
           "simulate_s": round(time.perf_counter() - t0, 1)}
    out["fbp_uncorrected"] = scores(fbp(s.tilt_series, s.angles, SHAPE[0]), s.ground_truth, pixel, tilt_range)
    flip = PhaseFlip(s.ctf, s.angles, pixel)
    out["fbp_flip"] = scores(fbp(s.tilt_series, s.angles, SHAPE[0], phase_flip=flip), s.ground_truth,
                             pixel, tilt_range)
    plain = reconstruct_halves(HalvesRequest(series=series, thickness=SHAPE[0], ctf=False, device="cpu"))
    flipped = reconstruct_halves(HalvesRequest(series=series, thickness=SHAPE[0], device="cpu"))
    cfg_kw = dict(FIT, epochs=epochs, seed=fit_seed, tilt_min=tilt_range[0], tilt_max=tilt_range[1],
                  voxel_size=(pixel,) * 3)
    for way in ways:
        even, odd, ctf, kw = flipped.even, flipped.odd, None, dict(cfg_kw)
        if way == "uncorrected":
            even, odd = plain.even, plain.odd
        elif way == "flip_ctfloss":
            ctf, kw["ctf_loss"] = flipped.ctf, True
        elif way == "wiener":
            odd = wiener(odd, ctf_from_record(flipped.ctf["odd"]), pixel, WIENER_EPS)
        refined, seconds = fit_and_refine(even, odd, ctf, kw, work / f"p{pixel:g}_d{defocus:g}_{way}")
        out[way] = dict(scores(refined, s.ground_truth, pixel, tilt_range), fit_s=round(seconds, 1))
        print(json.dumps({"pixel": pixel, "defocus": defocus, way: out[way]}), flush=True)
    return out


def table(results) -> str:
    """The Markdown table of docs/benchmarks-ctf.md."""
    rows = ["| pixel, defocus | FBP | FBP flipped | uncorrected | flip | flip + CTF loss | Wiener target |",
            "|---|---|---|---|---|---|---|"]

    def cell(d):
        return "—" if d is None else f"{d['cc']:.3f} / {d['fsc143_px'] or '∞'} / {d['wedge_cc']:.3f}"

    for r in results:
        rows.append(f"| {r['pixel_A']:g} Å, {r['defocus_um']:g} µm | {cell(r['fbp_uncorrected'])} | "
                    f"{cell(r['fbp_flip'])} | " + " | ".join(cell(r.get(w)) for w in WAYS) + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=FIT["epochs"])
    ap.add_argument("--pixel", type=float, action="append", help="only these pixel sizes")
    ap.add_argument("--defocus", type=float, action="append", help="only these defoci")
    ap.add_argument("--fit-seed", type=int, default=FIT["seed"],
                    help="FitConfig.seed (weights, cube split and order): the fit-to-fit scatter")
    ap.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    ap.add_argument("--quick", action="store_true", help="one condition, 3 epochs")
    ap.add_argument("--model", choices=("best", "latest"), default=MODEL,
                    help="refine with best.pt (default, as `run`) or the last epoch's latest.pt")
    ap.add_argument("--json", default=str(Path(__file__).with_name("results_ctf_ablation.json")))
    args = ap.parse_args(argv)
    MODEL = args.model
    torch.manual_seed(0)
    conditions = [c for c in CONDITIONS if (not args.pixel or c["pixel"] in args.pixel)
                  and (not args.defocus or c["defocus"] in args.defocus)]
    if args.quick:
        conditions, args.epochs = conditions[:1], 3
    results = []
    with tempfile.TemporaryDirectory(prefix="ddw-ctf-ablation-") as tmp:
        for c in conditions:
            results.append(run_condition(c["pixel"], c["defocus"], args.epochs, args.ways, Path(tmp),
                                         args.fit_seed))
            Path(args.json).write_text(json.dumps({"settings": dict(FIT, epochs=args.epochs, seed=args.fit_seed,
                                                                    shape=SHAPE,
                                                                    tilts=TILTS, snr=SNR, phantom_seed=SEED,
                                                                    model=args.model,
                                                                    wiener_eps=WIENER_EPS),
                                                   "results": results}, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
