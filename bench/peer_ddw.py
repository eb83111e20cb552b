"""Ours vs the original DeepDeWedge, side by side in one run, same inputs, same thread count.

Run:  bash bench/peers/setup_ddw.sh /path/to/DeepDeWedge          (once: its own venv)
      python bench/peer_ddw.py --ddw-path /path/to/DeepDeWedge     (fitting step, both configs)
      python bench/peer_ddw.py --ddw-path DIR --levers             (+ our speed levers, each on/off)
      python bench/peer_ddw.py --ddw-path DIR --refine             (+ refinement voxels/s)
      python bench/peer_ddw.py --ddw-path DIR --refine --quality   (everything issue 10 asks for,
                                                                    then one table of ratios)

The original's U-Net module imports PyTorch Lightning 1.8, so it runs in its own venv as a
subprocess of this run (bench/peers/ddw.py, ddw_runner.py), with the same arrays and the same
``torch.set_num_threads``. Its own classes do its work: ``extract_subtomos`` (cubes written as
its ``prepare_data`` lays them out), ``SubtomoDataset`` (rotation, masks), ``Unet3D``,
``masked_loss``, Adam, ``_refine_single_tomogram``.

(1) Fitting step, samples/s: optimizer steps on the same half tomograms, each step timed
    from the end of the previous one (so a step includes making its batch: the original's data
    loader, our rotate-from-store pipeline); the first step is a warm-up. Configurations: the
    original's CPU settings (s = 32, 16 channels, depth 3, batch 4) and s = 48 / 16 channels.
    Ours and theirs alternate ``--rounds`` times (the machine is shared); the median round
    counts. Also printed: the network+loss+Adam part alone (the original's step minus its
    loader; ours on ready inputs), so the two sources of the ratio are visible.
(2) ``--levers``: our step with the levers added one by one, in the same rounds (s = 32
    config): ``today`` (contiguous NCDHW, torch's InstanceNorm3d), ``+channels_last`` (torch's
    norm still copies back to NCDHW), ``+group-norm IN`` (a layout-keeping norm: the engine
    before the fused kernel), ``now`` (the fused norm + LeakyReLU, the default), plus 1 thread
    vs all, and the bf16 probe's verdict.
(3) ``--refine``: refinement of one (Z, Y, X) half with an untrained model of each side
    (cost does not depend on the weights): the original's ``_refine_single_tomogram`` vs our
    ``refine_tomogram`` (today's tiling and the new default).
(4) ``--quality``: time to quality on a held-out phantom (bench/time_to_quality.py, its
    options ``--shape``, ``--epochs``, ``--every``, ``--ours-every``, ``--ours-epochs``,
    ``--set``): the CPU time ours needs to reach the original's final CC and in-wedge
    correlation, as a fraction of the original's time.
The run ends with one table: each measure, ours, the original, and the ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import time_to_quality  # noqa: E402
from levers import levers, today  # noqa: E402
from peers.ddw import OriginalDDW  # noqa: E402

from napari_deepdewedge.core import perf  # noqa: E402
from napari_deepdewedge.core.model import unet as unet_mod  # noqa: E402
from napari_deepdewedge.core.fit.config import FitConfig  # noqa: E402
from napari_deepdewedge.core.fit.loop import StepDone, fit_iter  # noqa: E402

CONFIGS = {"ddw-cpu": (32, 16, 4), "s48": (48, 16, 4)}
CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock_name = "cpu"  # set by --clock


def now() -> float:
    return CLOCK[clock_name]()


def ours_fit_rate(half0, half1, s: int, channels: int, batch: int, steps: int, *, depth: int = 3,
                  strides=None, tilt_range=(-60.0, 60.0)) -> float:
    """Samples/s of our fitting loop (``fit_iter``) over ``steps`` steps after one warm-up."""
    cfg = FitConfig(subtomo_size=s, channels=channels, depth=depth, batch_size=batch, epochs=10**6,
                    strides=strides, val_fraction=0.0, update_every=0, validate_every=10**6, checkpoint_every=0,
                    tilt_min=tilt_range[0], tilt_max=tilt_range[1], device="cpu", out_dir=None)
    stamps: list[float] = []
    for ev in fit_iter(half0, half1, cfg, should_stop=lambda: len(stamps) > steps):
        if isinstance(ev, StepDone):
            stamps.append(now())
    return batch * steps / (stamps[steps] - stamps[0])


def ours_network_rate(s: int, channels: int, batch: int, steps: int, depth: int = 3) -> float:
    """Samples/s of our U-Net forward + loss + backward + Adam on ready inputs."""
    from napari_deepdewedge.core.fourier import observed_mask, rotated_observed_masks
    from napari_deepdewedge.core.fit.loss import masked_fourier_loss
    from napari_deepdewedge.core.model.rotation import random_rotations

    torch.manual_seed(0)
    net = perf.to_channels_last(unet_mod.UNet3D(channels=channels, depth=depth, residual=False), "cpu")
    opt = torch.optim.Adam(net.parameters(), lr=4e-4)
    x = perf.as_input(torch.randn(batch, 1, s, s, s), "cpu")
    y = torch.randn(batch, 1, s, s, s)
    mask = observed_mask((s, s, s), -60, 60, rfft=True)
    m_r = rotated_observed_masks((s, s, s), -60, 60, random_rotations(batch), rfft=True)
    times = []
    for i in range(steps + 1):
        t = now()
        opt.zero_grad(set_to_none=True)
        masked_fourier_loss(net(x), y, mask, m_r).backward()
        opt.step()
        times.append(now() - t)
    return batch * steps / sum(times[1:])


def halves_for(s: int, seed: int = 0):
    """Two independent noise halves giving ≥ 36 fitting cubes at stride s (both tools)."""
    e = int(np.ceil(np.sqrt(2) * s / 2) * 2)
    n = e + 5 * s
    rng = np.random.default_rng(seed)
    shape = (e + s, n, n)
    return rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)


def fitting_comparison(ddw: OriginalDDW, names, steps: int, rounds: int, with_levers: bool) -> dict:
    results = {}
    for name in names:
        s, ch, b = CONFIGS[name]
        h0, h1 = halves_for(s)
        variants = {"now": dict()}
        if with_levers and name == "ddw-cpu":  # levers at the original's settings only (time)
            variants = {"today": dict(channels_last=False, norm="torch"),
                        "+channels_last": dict(channels_last=True, norm="torch"),
                        "+group-norm IN": dict(channels_last=True, norm="group_norm"),
                        "now": dict()}
        rates = {k: [] for k in [*variants, "original", "original net", "ours net"]}
        for r in range(rounds):
            for k, flags in variants.items():
                with levers(**flags):
                    rates[k].append(ours_fit_rate(h0, h1, s, ch, b, steps, strides=(s, s, s)))
            run = ddw.fit(h0, h1, subtomo_size=s, channels=ch, depth=3, batch_size=b, steps=steps + 1,
                          strides=(s, s, s), update_every=0, validate=False, normalization_batches=1)
            rates["original"].append(run.samples_per_second(skip=1, clock=clock_name))
            rates["original net"].append(run.samples_per_second(skip=1, compute_only=True, clock=clock_name))
            rates["ours net"].append(ours_network_rate(s, ch, b, steps))
            print(f"  [{name} round {r + 1}/{rounds}] " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items()),
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        results[name] = med
        print(f"\n  {name}: s={s}, {ch} channels, depth 3, batch {b} — samples/s (median of {rounds} rounds)")
        for k, v in med.items():
            if k in ("original", "original net", "ours net"):
                continue
            print(f"    ours {k:15s} {v:6.2f}   ×{v / med['original']:.2f} vs original ({med['original']:.2f})"
                  + (f", ×{v / med['today']:.2f} vs today" if "today" in med and k != "today" else ""))
        print(f"    network+loss+Adam only: ours {med['ours net']:.2f} vs original {med['original net']:.2f} "
              f"→ ×{med['ours net'] / med['original net']:.2f}")
    return results


def refine_comparison(ddw: OriginalDDW, shape, batch: int) -> None:
    from napari_deepdewedge.core.refine.tomogram import refine_tomogram
    from napari_deepdewedge.core.model.unet import UNet3D

    s, ch, _ = CONFIGS["s48"]
    rng = np.random.default_rng(1)
    tomo = rng.standard_normal(shape, dtype=np.float32)
    h0, h1 = halves_for(s)
    run = ddw.fit(h0, h1, subtomo_size=s, channels=ch, depth=3, batch_size=batch, steps=1, strides=(s, s, s),
                  update_every=0, validate=False, normalization_batches=1)
    _, their_s = ddw.refine(run, tomo, overlap=-(-s // 3), batch_size=batch, clock=clock_name)
    torch.manual_seed(0)
    net = UNet3D(channels=ch, depth=3, residual=False)
    nvox = float(np.prod(shape))
    t = now()
    with today():
        refine_tomogram(net, tomo, -60, 60, subtomo_size=s, batch_size=batch, device="cpu", tile_size=s)
    today_s = now() - t
    t = now()
    refine_tomogram(net, tomo, -60, 60, subtomo_size=s, batch_size=batch, device="cpu")
    now_s = now() - t
    print(f"\n  refinement of {shape} (s={s}, {ch} channels), Mvoxels/s: original {nvox / their_s / 1e6:.3f}, "
          f"ours today {nvox / today_s / 1e6:.3f}, ours now {nvox / now_s / 1e6:.3f} → ×{their_s / now_s:.2f} vs "
          f"original, ×{today_s / now_s:.2f} vs today (load {os.getloadavg()[0]:.1f})")
    return {"original": nvox / their_s / 1e6, "today": nvox / today_s / 1e6, "now": nvox / now_s / 1e6}


def print_summary(fits: dict, refine: dict | None, quality: dict | None) -> None:
    """One table of what issue 10 asks for: ours, the original, and the ratio."""
    print("\nsummary (ours vs the original, this run):")
    print(f"  {'measure':44s} {'ours':>9s} {'original':>9s} {'ratio':>7s}")
    for name, med in fits.items():
        s, ch, b = CONFIGS[name]
        print(f"  {f'fitting samples/s, s={s}, {ch} ch, batch {b}':44s} {med['now']:9.2f} {med['original']:9.2f} "
              f"×{med['now'] / med['original']:6.2f}")
    if refine:
        print(f"  {'refinement Mvoxels/s':44s} {refine['now']:9.3f} {refine['original']:9.3f} "
              f"×{refine['now'] / refine['original']:6.2f}")
        print(f"  {'refinement Mvoxels/s vs ours before issue 10':44s} {refine['now']:9.3f} {refine['today']:9.3f} "
              f"×{refine['now'] / refine['today']:6.2f}  (before)")
    if quality and quality.get("original"):
        t_orig = quality["original"][-1][1]
        for key, name in (("cc_ratio", "CPU s to the original's final CC"),
                          ("wedge_ratio", "CPU s to its final in-wedge correlation")):
            r = quality[key]
            ours = "never" if r is None else f"{r * t_orig:9.0f}"
            print(f"  {name:44s} {ours:>9s} {t_orig:9.0f} " + ("" if r is None else f" {r:6.2f} of its time"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ddw-path", required=True, help="checkout of MLI-lab/DeepDeWedge")
    ap.add_argument("--ddw-python", default=None, help="its venv's python (default DIR/../ddw-venv/bin/python)")
    ap.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levers", action="store_true")
    ap.add_argument("--refine", action="store_true")
    ap.add_argument("--refine-shape", type=int, nargs=3, default=(64, 256, 256))
    ap.add_argument("--quality", action="store_true", help="time to quality (bench/time_to_quality.py)")
    time_to_quality.add_arguments(ap)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="process CPU time (default; with --threads 1 the unloaded wall time of a shared "
                         "machine) or wall time")
    args = ap.parse_args(argv)
    global clock_name
    clock_name = args.clock
    threads = args.threads or perf.usable_cores()
    torch.set_num_threads(threads)
    probe = perf.probe_bf16_cpu()
    print(f"clock: {args.clock} time; torch {torch.__version__}, {threads} threads on {perf.usable_cores()} usable cores, "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"bf16 probe: supported={probe.supported}, fp32 {probe.fp32_seconds * 1e3:.1f} ms, bf16 "
          f"{probe.bf16_seconds * 1e3:.1f} ms, rel. error {probe.rel_error:.3g} → "
          f"{'bf16 autocast' if probe.worth_it else 'fp32'}")
    with OriginalDDW(args.ddw_path, python=args.ddw_python, threads=threads) as ddw:
        print("\n(1) fitting step")
        fits = fitting_comparison(ddw, args.configs, args.steps, args.rounds, args.levers)
        refine = quality = None
        if args.levers:
            s, ch, b = CONFIGS["ddw-cpu"]
            h0, h1 = halves_for(s)
            one = []
            for n in (1, threads):
                torch.set_num_threads(n)
                one.append(ours_fit_rate(h0, h1, s, ch, b, args.steps, strides=(s, s, s)))
            torch.set_num_threads(threads)
            print(f"\n  threads (ours now, ddw-cpu, samples per {clock_name} second): 1 thread {one[0]:.2f}, "
                  f"{threads} threads {one[1]:.2f} (×{one[1] / one[0]:.2f}; use --clock wall on an idle machine)")
        if args.refine:
            print("\n(3) refinement")
            refine = refine_comparison(ddw, tuple(args.refine_shape), 4)
        if args.quality:
            print("\n(4) time to quality")
            quality = time_to_quality.compare(args, ddw)
    print_summary(fits, refine, quality)
    print(f"\nload average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
