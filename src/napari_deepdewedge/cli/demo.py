"""``deepdewedge demo``: the whole pipeline on the built-in phantom, against its ground truth."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..pipeline import FitRequest, HalvesRequest, reconstruct_halves, refuse_existing
from .commands import EXIT_INTERRUPTED, refine_and_write
from .demo_report import demo_figure, demo_metrics, print_demo
from .fitting import claim_fit_folder, fit_config, given_fields, run_fit
from .progress import Progress

# demo sizes: phantom (shape (Z, Y, X), tilt range (min, max, step), SNR) and the fitting
# settings the demo uses on top of the 'fast' preset (any flag overrides them). "small" is the
# README's demo: ≈ 3 CPU-minutes (CC vs ground truth 0.35 → 0.70); "tiny" is for tests.
DEMO_SIZES = {
    "tiny": dict(shape=(32, 48, 48), tilt_range=(-60.0, 60.0, 4.0), snr=2.0,
                 fit=dict(epochs=1, subtomo_size=16, channels=4, depth=2, strides=(8, 16, 16))),
    "small": dict(shape=(64, 96, 96), tilt_range=(-60.0, 60.0, 3.0), snr=0.5,
                  fit=dict(epochs=20, subtomo_size=24, channels=8, strides=(12, 16, 16),
                           update_every=5, lr=1e-3)),
    "medium": dict(shape=(96, 160, 160), tilt_range=(-60.0, 60.0, 2.0), snr=0.5,
                   fit=dict(epochs=40, subtomo_size=32, channels=16, strides=(16, 24, 24),
                            update_every=5, lr=1e-3)),
}
DEMO_SEED = 20240817  # a phantom seed that no test or benchmark fits on (held out)
DEMO_PIXEL_SIZE = 10.0
DEMO_FILES = ("demo_refined.mrc", "demo_fbp.mrc", "demo_ground_truth.mrc", "demo_comparison.png",
              "demo_metrics.json")


def _sample(size: str, seed: int):
    """The phantom's tilt series (as a TiltSeries) and its ground truth."""
    import numpy as np

    from ..core.io.mrc import TiltSeries
    from ..core.evaluate.phantom import make_sample

    spec = DEMO_SIZES[size]
    sample = make_sample(shape=spec["shape"], tilt_range=spec["tilt_range"], snr=spec["snr"],
                         seed=seed, pixel_size=DEMO_PIXEL_SIZE)
    series = TiltSeries(data=np.asarray(sample.tilt_series, dtype=np.float32),
                        angles=np.asarray(sample.angles, dtype=np.float64),
                        pixel_size=float(sample.pixel_size), name="demo")
    return series, np.asarray(sample.ground_truth, dtype=np.float32)


def _demo_fit_settings(args, size: str) -> None:
    """The demo's fitting settings under any flag the user gave: fast preset, small cubes."""
    if args.preset is None:
        args.preset = "fast"
    own_size = args.subtomo_size is not None  # then the automatic strides suit it better
    for key, value in DEMO_SIZES[size]["fit"].items():
        if key == "strides" and own_size:
            continue
        if getattr(args, key) is None:
            setattr(args, key, value)


def cmd_demo(args) -> int:
    from ..core.io.mrc import write_mrc

    size = args.size or "small"
    seed = DEMO_SEED if args.phantom_seed is None else args.phantom_seed
    out = Path(args.out)
    refuse_existing([out / name for name in DEMO_FILES], overwrite=args.overwrite)
    claim_fit_folder(args, out / "model")
    seconds = {}
    t_start = time.perf_counter()
    series, gt = _sample(size, seed)
    with Progress("reconstruct", quiet=args.quiet, unit=None) as bar:
        halves = reconstruct_halves(HalvesRequest(series=series, thickness=gt.shape[0],
                                                  device=args.device, want_full=True), progress=bar)
    seconds["reconstruct"] = time.perf_counter() - t_start

    _demo_fit_settings(args, size)
    config = fit_config(args, tilt_range=halves.tilt_range, out_dir=out / "model",
                        voxel_size=halves.voxel_size)
    t0 = time.perf_counter()
    finished, interrupted = run_fit(args, FitRequest(even=halves.even, odd=halves.odd,
                                                     config=config, given=given_fields(args)))
    seconds["fit"] = time.perf_counter() - t0
    if finished is None or (finished.stopped and interrupted):
        return EXIT_INTERRUPTED
    model_path = finished.best_path or finished.latest_path
    t0 = time.perf_counter()
    refined_path = refine_and_write(args, str(model_path), halves.even, halves.odd,
                                    out / "demo_refined.mrc", keep_halves=False,
                                    voxel_size=halves.voxel_size, origin=halves.origin,
                                    overwrite=args.overwrite)[0]
    seconds["refine"] = time.perf_counter() - t0
    from ..core.io.mrc import read_mrc

    refined = read_mrc(refined_path, mmap=False).data
    paths = {
        "refined": refined_path,
        "fbp": write_mrc(out / "demo_fbp.mrc", halves.full, halves.voxel_size),
        "ground_truth": write_mrc(out / "demo_ground_truth.mrc", gt, halves.voxel_size),
    }
    volumes = {"fbp_full": halves.full, "fbp_even_odd_mean": 0.5 * (halves.even + halves.odd),
               "refined": refined}
    figures = demo_metrics(gt, volumes, halves.tilt_range[:2], float(halves.voxel_size[0]))
    seconds["total"] = time.perf_counter() - t_start
    figures["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    figures.update(size=size, shape=list(gt.shape), epochs=int(finished.epochs_done))
    paths["figure"] = demo_figure(out / "demo_comparison.png", halves.full, refined, gt)
    with open(out / "demo_metrics.json", "w", encoding="utf-8") as fh:
        json.dump(figures, fh, indent=2)
    print_demo(figures, paths, out)
    return 0
