"""Automatic sample masks (issue 20): coverage on phantoms with a known specimen, the time on a
300×1024×1024 pair, and what the mask does to fitting (time to quality) on the thin slab.

Run:  OMP_NUM_THREADS=2 python bench/mask.py                 (coverage + time to quality)
      python bench/mask.py --only coverage --seeds $(seq 0 19)
      python bench/mask.py --only big                         (300×1024×1024 float32 timing;
                                                              writes 2.4 GB of halves to --tmp)

Coverage: for every phantom kind of core.evaluate.mask_phantoms (thin slab = a third of Z, tilted slab,
slab with gold beads and a contamination blob above it), halves reconstructed by the project's
FBP from a simulated tilt series (±60°, 3° steps, SNR 0.3), the fraction of specimen voxels
and of empty voxels each mask keeps:

* ``auto``: core.fit.sample_mask.auto_mask (defaults), from both halves;
* ``single``: the single-tomogram recipe of IsoNet's mask, as we understand it from its docs
  (our code): the halves' average binned 2×, smoothed, a voxel kept when its local mean AND
  its local standard deviation are both above their volume's median, the outer 10 % of Z
  rows at each end dropped.

Time to quality: the same thin-slab phantom (96³, seed 7; one of the seeds the mask's rule was
chosen on), fitted with and without the automatic mask (``fast``-like small settings: 16³ cubes, 8 channels, depth 2);
after every epoch both halves are refined and scored against the ground truth (CC inside the
specimen). Printed: cubes per epoch, CPU seconds to each epoch, CC; and the CPU seconds each
run needs to reach the unmasked run's final CC.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_deepdewedge.core.evaluate.mask_phantoms import KINDS, mask_phantom_halves  # noqa: E402
from napari_deepdewedge.core.fit.sample_mask import auto_mask  # noqa: E402


def single_tomogram_mask(even, odd, keep=0.5, z_crop=0.2, sigma=1.5):
    """The single-tomogram baseline (see the module doc)."""
    import torch.nn.functional as F

    vol = torch.from_numpy(0.5 * (np.asarray(even, np.float32) + np.asarray(odd, np.float32)))
    Z, Y, X = vol.shape
    small = F.avg_pool3d(vol[None, None, : Z // 2 * 2, : Y // 2 * 2, : X // 2 * 2], 2)

    def blur(a, s):
        r = int(np.ceil(3 * s))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / s) ** 2)
        k = k / k.sum()
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = -1
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
            a = F.conv3d(F.pad(a, pad, mode="replicate"), k.view(shape))
        return a

    smooth = blur(small, sigma)
    mean = blur(smooth, 2 * sigma)
    std = (blur(smooth**2, 2 * sigma) - mean**2).clamp_min(0).sqrt()
    m = (mean > mean.quantile(keep)) & (std > std.flatten().kthvalue(int(keep * std.numel())).values)
    m = m[0, 0].repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2).numpy()
    out = np.zeros((Z, Y, X), bool)
    out[: m.shape[0], : m.shape[1], : m.shape[2]] = m
    cut = int(round(Z * z_crop / 2))
    out[:cut] = False
    out[Z - cut:] = False
    return out


def coverage(args) -> None:
    print(f"coverage (specimen kept / empty kept, %), shape {tuple(args.shape)}, seeds {args.seeds}")
    print(f"{'kind':8s} {'seed':>4s}  {'auto':>11s}  {'single':>11s}  auto s")
    totals = {}
    for kind in KINDS:
        for seed in args.seeds:
            ph = mask_phantom_halves(tuple(args.shape), kind, seed=seed, snr=0.3)
            t0 = time.perf_counter()
            auto = auto_mask(ph.even, ph.odd).mask
            seconds = time.perf_counter() - t0
            single = single_tomogram_mask(ph.even, ph.odd)
            row = []
            for name, m in (("auto", auto), ("single", single)):
                spec, empty = 100 * m[ph.specimen].mean(), 100 * m[~ph.specimen].mean()
                totals.setdefault((kind, name), []).append((spec, empty))
                row.append(f"{spec:5.1f}/{empty:5.1f}")
            print(f"{kind:8s} {seed:4d}  {row[0]:>11s}  {row[1]:>11s}  {seconds:.2f}", flush=True)
    print("over the seeds: mean, worst (lowest specimen, highest empty), volumes meeting the target "
          "(≥ 90 % of the specimen and ≤ 25 % of the empty space):")
    for kind in KINDS:
        cells = []
        for name in ("auto", "single"):
            a = np.array(totals[(kind, name)])
            met = int(((a[:, 0] >= 90) & (a[:, 1] <= 25)).sum())
            cells.append(f"{name} {a[:, 0].mean():5.1f}/{a[:, 1].mean():5.1f}, worst {a[:, 0].min():5.1f}/"
                         f"{a[:, 1].max():5.1f}, {met}/{len(a)} meet the target")
        print(f"  {kind:8s} " + "; ".join(cells))


def big(args) -> None:
    """auto_mask on a 300×1024×1024 float32 pair of memory-mapped files: noise, plus a common
    smooth signal in rows 100–199 (the specimen)."""
    shape = (300, 1024, 1024)
    folder = Path(args.tmp or tempfile.mkdtemp())
    paths = [folder / "big_even.f32", folder / "big_odd.f32"]
    signal_rng = np.random.default_rng(3)
    fields = [signal_rng.standard_normal((10, 64, 64)).astype(np.float32) for _ in range(10)]
    for path, seed in zip(paths, (1, 2)):
        if path.exists() and path.stat().st_size == 4 * np.prod(shape):
            continue
        m = np.memmap(path, np.float32, "w+", shape=shape)
        rng = np.random.default_rng(seed)
        for z in range(0, 300, 10):
            block = rng.standard_normal((10, 1024, 1024), dtype=np.float32)
            if 100 <= z < 200:
                block += 0.5 * np.repeat(np.repeat(fields[(z - 100) // 10], 16, 1), 16, 2)
            m[z:z + 10] = block
        m.flush()
        del m
    even, odd = (np.memmap(p, np.float32, "r", shape=shape) for p in paths)
    print(f"300×1024×1024 float32 halves (memory-mapped, page cache warm after the first run); "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    from napari_deepdewedge.core.fit import sample_mask as sm

    for run in range(args.repeats):
        t0 = time.perf_counter()
        b = sm.auto_bin(shape)
        sm._binned(even, b, torch.device("cpu"))
        t_bin = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = auto_mask(even, odd)
        total = time.perf_counter() - t0
        rows = np.flatnonzero(result.mask[:, 512, 512])
        print(f"  run {run + 1}: auto_mask {total:.1f} s (reading + binning one half: {t_bin:.1f} s); "
              f"{result.summary()}; rows kept at the centre {rows.min()}–{rows.max()} (signal in 100–199)",
              flush=True)


def time_to_quality(args) -> None:
    from napari_deepdewedge.core.fit.loop import EpochDone, FitConfig, FitStarted, fit_iter
    from napari_deepdewedge.core.evaluate.metrics import cc
    from napari_deepdewedge.core.refine.tomogram import refine_halves

    ph = mask_phantom_halves((96, 96, 96), "thin", seed=7, snr=0.3)
    mask = auto_mask(ph.even, ph.odd)
    spec, empty = mask.mask[ph.specimen].mean(), mask.mask[~ph.specimen].mean()
    print(f"time to quality: thin slab 96³ seed 7; auto mask keeps {100 * spec:.0f} % of the specimen, "
          f"{100 * empty:.0f} % of the empty space")
    results = {}
    for name, m in (("no mask", None), ("auto mask", mask.mask)):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = FitConfig(subtomo_size=16, channels=8, depth=2, batch_size=4, epochs=args.epochs,
                            checkpoint_every=1, out_dir=tmp, device="cpu", seed=0, update_every=2,
                            preview_every=0)
            cpu0 = time.process_time()
            cpu_at, cubes = {}, None
            for ev in fit_iter(ph.even, ph.odd, cfg, mask=m):
                if isinstance(ev, FitStarted):
                    cubes = (ev.n_fit_cubes, ev.n_val_cubes)
                if isinstance(ev, EpochDone):
                    cpu_at[ev.epoch] = time.process_time() - cpu0
            rows = []
            for epoch in sorted(cpu_at):
                res = refine_halves(Path(tmp) / f"epoch_{epoch:04d}.pt", ph.even, ph.odd, device="cpu",
                                    batch_size=4)
                rows.append((epoch, cpu_at[epoch], cc(res.refined, ph.truth, mask=ph.specimen)))
        results[name] = rows
        print(f"  {name}: {cubes[0]} fitting + {cubes[1]} validation cubes per epoch")
        for epoch, cpu, q in rows:
            print(f"    epoch {epoch}: {cpu:6.1f} CPU s, CC in the specimen {q:.3f}", flush=True)
    for goal in (0.5, 0.7, 0.75):
        cells = []
        for name, rows in results.items():
            reach = next((cpu for _, cpu, q in rows if q >= goal), None)
            cells.append(f"{name} " + (f"{reach:.0f} CPU s" if reach is not None else "—"))
        print(f"  time to CC ≥ {goal}: " + ", ".join(cells))
    target = results["no mask"][-1][2]
    for name, rows in results.items():
        reach = next((cpu for _, cpu, q in rows if q >= target), None)
        print(f"  {name}: reaches the unmasked final CC {target:.3f} after "
              + (f"{reach:.1f} CPU s" if reach is not None else "— (not within the epochs)")
              + f"; final CC {rows[-1][2]:.3f} after {rows[-1][1]:.1f} CPU s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("coverage", "big", "quality"))
    ap.add_argument("--shape", type=int, nargs=3, default=(96, 96, 96))
    ap.add_argument("--seeds", type=int, nargs="+", default=tuple(range(8)))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tmp", help="folder for the 300×1024×1024 halves (2.4 GB)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.only in (None, "coverage"):
        coverage(args)
    if args.only == "big":
        big(args)
    if args.only in (None, "quality"):
        time_to_quality(args)


if __name__ == "__main__":
    main()
