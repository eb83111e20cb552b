"""Refinement throughput: voxels/s for one half-tomogram, ours before vs after issue 10 (and the
original DeepDeWedge's ``_refine_single_tomogram`` with ``--ddw-path``), ratios in one run.

Run:  python bench/refine.py --threads 1            (128×512×512, fast preset, CPU, one thread)
      python bench/refine.py --shape 64 256 256      (quicker)
      python bench/refine.py --shape 64 256 256 --no-before --profile   (where the time goes)
      python bench/refine.py --threads 1 --no-before --tile 96 128 160    (tile edges side by side)
      python bench/refine.py --ddw-path /path/to/DeepDeWedge   (+ the original, its venv)
      python bench/refine.py --device cuda --preset default --batch 8

"before": tiles of the fitting cube, contiguous NCDHW, torch's InstanceNorm3d (bench/levers.py);
"now": the defaults (larger tiles, core.refine.tile_shape; channels-last; memory-bounded batch),
or each ``--tile`` edge in turn. Both pass through the matching filter, as the front ends do.

The model is an untrained U-Net of the preset (the cost does not depend on the weights).
Clock: process CPU time on the CPU (``--clock cpu``, the default there: on a shared machine it
estimates the idle wall time of the threads used), wall time on a GPU or with ``--clock wall``.
``--profile``: the first "now" pass under cProfile (process CPU time), its time split into
convolutions, normalization, other network work, band preparation (standardize + wedge mask),
the matching filter, tile gathering (reflect-indexing, stacking, copies) and the blend.
Printed per pass (statistics, then bands of rows standardized + wedge-masked, network, blend):
seconds, voxels/s, the number of tiles; then the ratio and the peak resident memory of the
process (the tomogram and the output accumulator are one float32 volume each, plus one band of
tile rows and one batch of tiles on the device).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_deepdewedge.core.device import pick_device
sys.path.insert(0, str(Path(__file__).resolve().parent))
from levers import today  # noqa: E402

from napari_deepdewedge.core.refine.tiles import (DEFAULT_TILE, RowPreparer, n_tiles,  # noqa: E402
                                            predict_tiled, standardization_stats, tile_shape)
from napari_deepdewedge.core.fit.cubes import extraction_size  # noqa: E402
from napari_deepdewedge.core.fit.settings import PRESETS  # noqa: E402
from napari_deepdewedge.core.model.unet import UNet3D  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: cProfile functions → the part of refinement they belong to (first match wins)
PROFILE_PARTS = (
    ("network: convolutions", ("conv3d", "conv_transpose3d")),
    ("network: normalization", ("group_norm", "instance_norm", "batch_norm")),
    ("band preparation (standardize, wedge mask)", ("refine.py:__call__", "fft_", "standardization_stats")),
    ("matching filter", ("_symmetric_fir_", "match_resampling", "pad")),
    ("tile gathering (reflect-index, stack, copies)", ("read_tile", "stack", "ascontiguousarray", "ix_",
                                                       "from_numpy", "numpy.array")),
)


def profile_parts(stats) -> dict[str, float]:
    """Seconds per refinement part from a ``pstats.Stats`` (own time of each function); the
    rest of the network's modules count as "network: other", the rest as "blend and bookkeeping"."""
    parts = {name: 0.0 for name, _ in PROFILE_PARTS}
    parts["network: other (activations, concatenation, module calls)"] = 0.0
    parts["blend and bookkeeping"] = 0.0
    for (filename, _line, func), (_cc, _nc, own, _cum, _callers) in stats.stats.items():
        label = f"{filename}:{func}"
        name = next((n for n, keys in PROFILE_PARTS if any(k in label for k in keys)), None)
        if name is None:
            network = "torch" in filename or "unet.py" in filename or func.startswith("<built-in method torch")
            name = ("network: other (activations, concatenation, module calls)" if network
                    else "blend and bookkeeping")
        parts[name] += own
    return parts


def clock(kind: str):
    return time.process_time if kind == "cpu" else time.perf_counter


def run_refine(model, tomo, s, overlap, batch, device, tile_size=None, progress=None, timer=time.perf_counter):
    """One refinement pass (statistics, bands, network, blend); returns (seconds, output)."""
    t0 = timer()
    stats = standardization_stats(tomo)
    prep = RowPreparer((tomo.shape[0], tomo.shape[2]), -60, 60, stats)
    out = predict_tiled(model, tomo, s, overlap=overlap, batch_size=batch, device=device, progress=progress,
                        rows=prep, tile_size=tile_size, match_resampling=True)
    _sync(device)
    out *= np.float32(stats[1])
    out += np.float32(stats[0])
    return timer() - t0, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(128, 512, 512), metavar=("Z", "Y", "X"))
    ap.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--overlap", type=int, default=None, help="default ceil(s/3)")
    ap.add_argument("--tile", type=int, nargs="*", default=None,
                    help="refinement tile edge(s) of 'now', each timed in turn (default: core.refine's DEFAULT_TILE)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default=None,
                    help="process CPU time (default on the CPU) or wall time (default on a GPU)")
    ap.add_argument("--no-before", action="store_true", help="skip today's (before issue 10) pass")
    ap.add_argument("--profile", action="store_true", help="split the first 'now' pass's time into its parts")
    ap.add_argument("--ddw-path", default=None, help="also time the original DeepDeWedge's refinement")
    ap.add_argument("--ddw-python", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    clock_name = args.clock or ("cpu" if device.type == "cpu" else "wall")
    timer = clock(clock_name)
    p = PRESETS[args.preset]
    s = p["subtomo_size"]
    shape = tuple(args.shape)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; preset '{args.preset}' (s={s}, {p['channels']} channels, depth {p['depth']}), "
          f"batch {args.batch}; clock: {clock_name} time")
    rng = np.random.default_rng(0)
    tomo = rng.standard_normal(shape, dtype=np.float32)
    torch.manual_seed(0)
    model = UNet3D(channels=p["channels"], depth=p["depth"], residual=False).to(device).eval()
    ov = args.overlap if args.overlap is not None else -(-s // 3)
    edges = args.tile or [None]
    nvox = float(np.prod(shape))
    print(f"tomogram {shape} = {nvox / 1e6:.1f} Mvoxels; before: {n_tiles(shape, s, ov, tile_size=s)} tiles of {s}³; "
          + "; ".join(f"tile {e or DEFAULT_TILE}: {n_tiles(shape, s, ov, e, 2 ** p['depth'])} tiles of "
                      f"{tile_shape(shape, s, ov, e, 2 ** p['depth'])}" for e in edges))
    last = [time.perf_counter()]

    def progress(done, total):
        now = time.perf_counter()
        if now - last[0] > 30 or done == total:
            print(f"  {done}/{total} batches", file=sys.stderr, flush=True)
            last[0] = now

    def timed(tile_size):
        return run_refine(model, tomo, s, ov, args.batch, device, tile_size=tile_size, progress=progress,
                          timer=timer)[0]

    rates = {}
    if not args.no_before:
        with today():
            sec = timed(s)
        rates["before"] = nvox / sec
        print(f"ours before (tiles {s}³, NCDHW): {sec:8.1f} s  {nvox / sec / 1e6:.3f} Mvoxels/s", flush=True)
    for i, edge in enumerate(edges):
        name = f"tile {edge or DEFAULT_TILE}"
        profiler = None
        if args.profile and i == 0:
            import cProfile

            profiler = cProfile.Profile(timer=time.process_time)
            profiler.enable()
        sec = timed(edge)
        if profiler is not None:
            import pstats

            profiler.disable()
            parts = profile_parts(pstats.Stats(profiler))
            total = sum(parts.values())
            print(f"  where the time of '{name}' goes (cProfile, {total:.1f} CPU s):")
            for part, t in sorted(parts.items(), key=lambda kv: -kv[1]):
                print(f"    {part:58s} {t:8.2f} s  {100 * t / total:5.1f} %")
        rates[name] = nvox / sec
        print(f"ours now, {name} {tile_shape(shape, s, ov, edge, 2 ** p['depth'])}, channels-last: {sec:8.1f} s  "
              f"{nvox / sec / 1e6:.3f} Mvoxels/s", flush=True)
    if args.ddw_path:
        from peers.ddw import OriginalDDW

        with OriginalDDW(args.ddw_path, python=args.ddw_python, threads=torch.get_num_threads()) as ddw:
            h = rng.standard_normal((extraction_size(s) + s,) * 3, dtype=np.float32)
            run = ddw.fit(h, h, subtomo_size=s, channels=p["channels"], depth=p["depth"], batch_size=args.batch,
                          steps=1, strides=(s, s, s), update_every=0, validate=False, normalization_batches=1)
            _, sec = ddw.refine(run, tomo, overlap=ov, batch_size=args.batch)
        rates["original"] = nvox / sec
        print(f"original (tiles {s}³):          {sec:8.1f} s  {nvox / sec / 1e6:.3f} Mvoxels/s", flush=True)
    ours_now = [k for k in rates if k.startswith("tile")]
    others = [k for k in rates if not k.startswith("tile")]
    for k in ours_now:
        vs = others or [o for o in ours_now if o != k]  # without "before": the tile edges against each other
        if vs:
            print(f"ratios, {k}: " + ", ".join(f"/{o} ×{rates[k] / rates[o]:.2f}" for o in vs))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux → MB
    print(f"peak resident memory: {peak:.0f} MB (tomogram {nvox * 4 / 2**20:.0f} MB per float32 copy); "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
