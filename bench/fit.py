"""Fitting-engine throughput: (a) the data pipeline alone, (b) one full fitting step, (c) the
network forward+backward alone.

Run:  python bench/fit.py            (all parts, default sizes)
      python bench/fit.py --quick    (s = 48 only; seconds on a laptop CPU)
      python bench/fit.py --device cuda
      python bench/fit.py --threads 1   (the figure to quote on a shared machine)
      python bench/fit.py --device cuda --tutorial   (= bench/gpu.sh: the original tutorial's job
                                        size on a GPU; says so and exits 0 without one)
      python bench/fit.py --tutorial --tiny --device cpu --threads 1   (the same job's code at toy
                                        sizes on the CPU: it runs start to finish; tested)

(a) one batch of fitting samples as the fitting loop should make them: random rotation →
    rotate+centre-crop of cube0 and cube1 together, read in place from the channels-last pair
    store (``SubtomoSet.fit_pairs``, ``rotate_center_crop(..., index=)``) → analytic rotated
    masks M_R (rfft half grid) → model input F⁻¹(M·F(x)) and target. Printed as samples/s
    and ms per sample; the headline figure is s = 96 from 136³ cubes on ONE CPU thread
    (target ≤ 100 ms per sample, so that the network, not the data, bounds fitting).
(b) one optimizer step through core.fit.loop (to be provided by the fitting-loop author: see
    ``bench_fit_step``; skipped with a note until then).
(c) U-Net forward + backward + masked Fourier loss on ready inputs, s = 48 / 16 channels and
    s = 96 / 32 channels.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from napari_deepdewedge.core.device import pick_device
from napari_deepdewedge.core.fourier import observed_mask, rotated_observed_masks
from napari_deepdewedge.core.fit.loss import masked_fourier_loss, model_input
from napari_deepdewedge.core.model.rotation import random_rotations, rotate_center_crop, stack_channels_last
from napari_deepdewedge.core.fit.cubes import extraction_size
from napari_deepdewedge.core.model.unet import UNet3D

TILTS = (-60.0, 60.0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(pairs, index, mask_s, s, generator, device):
    """(a) One fitting batch read in place from a channels-last pair store ``(N, 2, E, E, E)``
    (``SubtomoSet.fit_pairs``): returns (x, target, M_R)."""
    rots = random_rotations(len(index), generator=generator)
    rot = rotate_center_crop(pairs, rots.to(device), s, index=index)
    m_r = rotated_observed_masks((s, s, s), *TILTS, rots, device=device, rfft=True)
    x = model_input(rot[:, 0:1], mask_s)
    return x, rot[:, 1:2], m_r


def _store(s: int, n: int, device, seed: int):
    e = extraction_size(s)
    g = torch.Generator().manual_seed(seed)
    return stack_channels_last(torch.randn(n, 1, e, e, e, generator=g), torch.randn(n, 1, e, e, e, generator=g)).to(
        device
    )


class _Clock:
    """Wall and process-CPU time; on a shared machine the CPU time of a 1-thread run is the
    better estimate of the unloaded wall time."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def bench_data_pipeline(s: int, batch_size: int, n_batches: int, device) -> tuple[float, float]:
    """(a) Time ``n_batches`` batches; returns (wall, cpu) milliseconds per sample, best batch."""
    g = torch.Generator().manual_seed(0)
    pairs = _store(s, 2 * batch_size, device, 0)
    mask_s = observed_mask((s, s, s), *TILTS, device=device, rfft=True)
    make_batch(pairs, torch.randperm(len(pairs), generator=g)[:batch_size], mask_s, s, g, device)  # warm-up
    wall, cpu = [], []
    for _ in range(n_batches):
        index = torch.randperm(len(pairs), generator=g)[:batch_size]
        with _Clock(device) as c:
            make_batch(pairs, index, mask_s, s, g, device)
        wall.append(c.wall)
        cpu.append(c.cpu)
    return 1000.0 * min(wall) / batch_size, 1000.0 * min(cpu) / batch_size


def pipeline_breakdown(s: int, batch_size: int, device, reps: int = 3) -> dict:
    """(a) CPU ms per sample of each stage of ``make_batch`` (best of ``reps``), plus the
    alternative of gathering the batch by copying (``torch.cat`` of cube0/cube1) first."""
    g = torch.Generator().manual_seed(1)
    pairs = _store(s, 2 * batch_size, device, 1)
    c0, c1 = pairs[:, 0:1].contiguous(), pairs[:, 1:2].contiguous()
    index = torch.randperm(len(pairs), generator=g)[:batch_size]
    mask_s = observed_mask((s, s, s), *TILTS, device=device, rfft=True)
    rots = random_rotations(batch_size, generator=g)
    rot = rotate_center_crop(pairs, rots.to(device), s, index=index)
    stages = {
        "rotations": lambda: random_rotations(batch_size, generator=g),
        "rotate+crop in place (2 ch)": lambda: rotate_center_crop(pairs, rots.to(device), s, index=index),
        "masks M_R": lambda: rotated_observed_masks((s, s, s), *TILTS, rots, device=device, rfft=True),
        "model input": lambda: model_input(rot[:, 0:1], mask_s),
        "[alt: cat copy + rotate+crop]": lambda: rotate_center_crop(
            torch.cat([c0[index], c1[index]], dim=1), rots.to(device), s
        ),
    }
    out = {}
    for name, fn in stages.items():
        fn()
        best = float("inf")
        for _ in range(reps):
            with _Clock(device) as c:
                fn()
            best = min(best, c.cpu if device.type == "cpu" else c.wall)
        out[name] = 1000.0 * best / batch_size
    return out


def bench_network(s: int, channels: int, batch_size: int, reps: int, device, depth: int = 3) -> tuple[float, float]:
    """(c) Forward + backward + loss + Adam step on ready inputs; returns (wall, cpu) seconds per
    sample (best of ``reps``)."""
    torch.manual_seed(0)
    net = UNet3D(channels=channels, depth=depth).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=4e-4)
    x = torch.randn(batch_size, 1, s, s, s, device=device)
    y = torch.randn(batch_size, 1, s, s, s, device=device)
    mask_s = observed_mask((s, s, s), *TILTS, device=device, rfft=True)
    m_r = rotated_observed_masks((s, s, s), *TILTS, random_rotations(batch_size), device=device, rfft=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = masked_fourier_loss(net(x), y, mask_s, m_r)
        loss.backward()
        opt.step()

    step()  # warm-up
    wall, cpu = [], []
    for _ in range(reps):
        with _Clock(device) as c:
            step()
        wall.append(c.wall)
        cpu.append(c.cpu)
    return min(wall) / batch_size, min(cpu) / batch_size


# ---------------------------------------------------------------------------------------------
# (b) FULL FITTING STEP — placeholder for the fitting-loop author.
# Replace the body with one optimizer step driven by core.fit.loop (data pipeline + network +
# loss + optimizer, as fit_iter runs it) and return samples/s. main() prints a note instead of a
# figure while this raises NotImplementedError.
# ---------------------------------------------------------------------------------------------
def bench_fit_step(s: int, channels: int, batch_size: int, reps: int, device) -> float:
    """(b) Optimizer steps exactly as ``core.fit.loop.fit_iter`` runs them (shuffle, rotations,
    rotate+crop from the pair store, M_R, model input, U-Net, loss, backward, Adam); returns
    samples/s. A volume that yields exactly ``batch_size`` fitting cubes (no validation, no wedge
    updates, no files) makes every epoch one full step; the first step is the warm-up, the figure
    is the best of the ``reps`` following ones (time between consecutive ``StepDone`` events)."""
    import numpy as np

    from napari_deepdewedge.core.fit.config import FitConfig
    from napari_deepdewedge.core.fit.loop import StepDone, fit_iter

    e = extraction_size(s)
    shape = (e, e, e + batch_size - 1)  # strides 1 → exactly batch_size cubes along X
    rng = np.random.default_rng(0)
    tomo0 = rng.standard_normal(shape, dtype=np.float32)
    tomo1 = rng.standard_normal(shape, dtype=np.float32)
    cfg = FitConfig(subtomo_size=s, channels=channels, depth=3, epochs=1 + max(1, reps), batch_size=batch_size,
                    strides=(1, 1, 1), val_fraction=0.0, update_every=0, validate_every=10**6,
                    checkpoint_every=0, device=str(device), out_dir=None)
    stamps = []
    for ev in fit_iter(tomo0, tomo1, cfg):
        if isinstance(ev, StepDone):
            _sync(device)
            stamps.append(time.perf_counter())
    steps = np.diff(stamps)
    return batch_size / float(steps.min())


#: the original DeepDeWedge tutorial's job: 144 fitting cubes of 96³, 64 channels, batch 5,
#: 1000 epochs (14.5 h on one L40 with the original), refinement of a 300×1000×1000 tomogram
TUTORIAL = dict(cubes=144, s=96, channels=64, depth=3, batch=5, epochs=1000, update_every=10,
                refine_shape=(300, 1000, 1000), original_hours=14.5)
#: the same job scaled down so that its code runs start to finish on a CPU in seconds
#: (``--tiny``; tests/test_bench_gpu.py): nothing but the sizes differ
TINY_TUTORIAL = dict(TUTORIAL, s=16, channels=4, depth=2, batch=5, refine_shape=(24, 40, 40))


class _DeviceMeter:
    """Synchronize / name / peak memory of the device the job runs on: torch.cuda on CUDA, the
    process's peak resident memory elsewhere (the --tiny CPU run)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.cuda else f"{self.device} (scaled-down job)"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB (Linux)


def tutorial_job(device_name: str, epochs: int = 3, tiny: bool = False) -> int:
    """(d) The tutorial's job size on a CUDA GPU: a few epochs of ``fit_iter`` (AMP fp16 and
    channels_last_3d, as it runs on CUDA), the epoch time extrapolated to 1000 epochs (with a
    wedge update every 2 epochs here, every 10 in the extrapolation), one refinement of a
    300×1000×1000 tomogram, peak GPU memory. Without a CUDA GPU it says so and returns 0.
    ``tiny``: the same code on any device with :data:`TINY_TUTORIAL` sizes (a check that the
    job runs start to finish; its figures mean nothing)."""
    import numpy as np

    from napari_deepdewedge.core import perf
    from napari_deepdewedge.core.fit.loop import EpochDone, FitStarted, fit_iter
    from napari_deepdewedge.core.fit.config import FitConfig
    from napari_deepdewedge.core.refine.tomogram import refine_tomogram

    if not tiny and (not device_name.startswith("cuda") or not torch.cuda.is_available()):
        print(f"no CUDA GPU on this machine (device '{device_name}', torch.cuda.is_available() = "
              f"{torch.cuda.is_available()}): the tutorial-size GPU benchmark needs one; nothing to do")
        return 0
    device = torch.device(device_name)
    meter = _DeviceMeter(device)
    job = TINY_TUTORIAL if tiny else TUTORIAL
    s, e = job["s"], extraction_size(job["s"])
    # 4 × 6 × 6 = 144 cubes of edge e at stride s, no validation cubes
    shape = (e + 3 * s, e + 5 * s, e + 5 * s)
    rng = np.random.default_rng(0)
    tomo0 = rng.standard_normal(shape, dtype=np.float32)
    tomo1 = rng.standard_normal(shape, dtype=np.float32)
    epochs = max(3, int(epochs))
    cfg = FitConfig(subtomo_size=s, channels=job["channels"], depth=job["depth"], batch_size=job["batch"],
                    epochs=epochs, strides=(s, s, s), val_fraction=0.0, update_every=2, validate_every=10**6,
                    checkpoint_every=0, device=str(device), out_dir=None)
    dtype = perf.pick_autocast(device)
    print(f"{meter.name()}, torch {torch.__version__}; autocast {dtype}, channels_last_3d "
          f"{perf.use_channels_last(device.type)}; tomograms {shape}, {job['cubes']} cubes of {s}³ (from {e}³), "
          f"{job['channels']} channels, batch {job['batch']}", flush=True)
    meter.reset_peak()
    times, n_fit = {}, None
    for ev in fit_iter(tomo0, tomo1, cfg):
        if isinstance(ev, FitStarted):
            n_fit = ev.n_fit_cubes
        if isinstance(ev, EpochDone):
            times[ev.epoch] = ev.seconds
            print(f"  epoch {ev.epoch}: {ev.seconds:.1f} s ({n_fit / ev.seconds:.1f} samples/s)"
                  + ("  [includes a wedge update]" if ev.epoch % 2 == 0 else "")
                  + ("  [warm-up]" if ev.epoch == 1 else ""), flush=True)
    fit_peak = meter.peak_gib()
    plain = [times[k] for k in times if k > 1 and k % 2]
    epoch_s = min(plain)
    update_s = max(0.0, times[2] - epoch_s)
    total_h = (job["epochs"] * epoch_s + job["epochs"] // job["update_every"] * update_s) / 3600
    print(f"fitting: {n_fit / epoch_s:.1f} samples/s, {epoch_s:.1f} s per epoch, wedge update {update_s:.1f} s → "
          f"{job['epochs']} epochs ≈ {total_h:.2f} h (the original: {job['original_hours']} h on one L40); "
          f"peak memory {fit_peak:.2f} GiB", flush=True)
    del tomo0, tomo1
    torch.manual_seed(0)
    from napari_deepdewedge.core.model.unet import UNet3D

    net = UNet3D(channels=job["channels"], depth=job["depth"], residual=False).to(device)
    tomo = rng.standard_normal(job["refine_shape"], dtype=np.float32)
    meter.reset_peak()
    meter.sync()
    t = time.perf_counter()
    refined = refine_tomogram(net, tomo, -60, 60, subtomo_size=s, batch_size=8, device=device, amp=True)
    meter.sync()
    ref_s = time.perf_counter() - t
    if refined.shape != tomo.shape or not np.isfinite(refined).all():
        raise SystemExit(f"refinement returned shape {refined.shape} (expected {tomo.shape}) or non-finite values")
    print(f"refinement of {job['refine_shape']}: {ref_s:.1f} s per half ({np.prod(job['refine_shape']) / ref_s / 1e6:.2f} "
          f"Mvoxels/s), peak memory {meter.peak_gib():.2f} GiB")
    return 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tutorial", action="store_true",
                    help="the original tutorial's job size on a CUDA GPU (bench/gpu.sh); exits 0 without a GPU")
    ap.add_argument("--epochs", type=int, default=3, help="--tutorial: epochs to time (≥ 3)")
    ap.add_argument("--tiny", action="store_true",
                    help="--tutorial on any device at toy sizes: checks the job runs start to finish")
    ap.add_argument("--quick", action="store_true", help="s = 48 only")
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--reps", type=int, default=1, help="timed network steps per configuration")
    ap.add_argument("--no-network", action="store_true", help="skip (c), the slow part on a CPU")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tutorial:
        raise SystemExit(tutorial_job(args.device, args.epochs, tiny=args.tiny))
    device = pick_device(args.device)
    configs = [(48, 16)] if args.quick else [(48, 16), (96, 32)]
    threads = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}, torch {torch.__version__}, {threads} threads, load average {load:.1f} "
          f"on {os.cpu_count()} CPUs")
    print("times: wall / process CPU; on a busy machine the 1-thread CPU time estimates the idle wall time")

    print("\n(a) data pipeline: rotation → rotate+crop cube0/cube1 → M_R → model input, target")
    runs = [(threads, s) for s, _ in configs]
    if device.type == "cpu" and threads > 1:
        runs += [(1, s) for s, _ in configs]
    for n_thr, s in runs:
        torch.set_num_threads(n_thr)
        e = extraction_size(s)
        wall, cpu = bench_data_pipeline(s, args.batch, n_batches=3, device=device)
        flag = "   <- target ≤ 100 ms" if (s == 96 and n_thr == 1) else ""
        print(f"  s={s:3d} from {e}³, batch {args.batch}, {n_thr} thr: {wall:6.1f} / {cpu:6.1f} ms per sample "
              f"({1000 / wall:5.1f} samples/s wall){flag}")
    torch.set_num_threads(1 if device.type == "cpu" else threads)
    s_b = configs[-1][0]
    parts = pipeline_breakdown(s_b, args.batch, device)
    print(f"  breakdown at s={s_b}, 1 thr (ms per sample): " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    torch.set_num_threads(threads)

    print("\n(b) full fitting step (core.fit.loop)")
    for s, ch in configs:
        try:
            sps = bench_fit_step(s, ch, args.batch, args.reps, device)
        except NotImplementedError as exc:
            print(f"  skipped: {exc}")
            break
        print(f"  s={s:3d}, {ch:2d} channels, batch {args.batch}: {sps:6.2f} samples/s")

    if args.no_network:
        return
    print(f"\n(c) network forward + backward + loss + Adam step, {threads} thr")
    for s, ch in configs:
        batch = args.batch if s <= 48 or device.type != "cpu" else 1
        wall, cpu = bench_network(s, ch, batch, args.reps, device)
        print(f"  s={s:3d}, {ch:2d} channels, batch {batch}: {wall:7.2f} s wall / {cpu:7.2f} s CPU per sample "
              f"({1 / wall:6.3f} samples/s wall)")


if __name__ == "__main__":
    main()
