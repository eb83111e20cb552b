"""Peak memory of refining a tomogram larger than one would like to hold in memory (issue 12).

Run:  python bench/refine_memory.py                          (512×1024×1024 float32 = 2 GB on disk)
      python bench/refine_memory.py --shape 128 512 512      (quicker)
      python bench/refine_memory.py --output memory          (result held in memory, as refine_halves does)

Writes a memory-mapped MRC of noise into ``--dir`` (default: a temporary folder, removed at the
end), then refines it with ``core.refine.refine_tomogram`` — statistics pass, then band by band
(standardize + wedge-mask ``s`` rows, tile, tiny *untrained* U-Net, blend) — into a memory-mapped
output MRC (``--output file``, default) or an in-memory array. Memory is sampled every 5 ms:

* ``RssAnon``: anonymous memory — what the process really holds (arrays, torch buffers);
* ``RssFile``: pages of the memory-mapped input/output files currently resident — page cache the
  kernel may drop (clean) or write back (dirty) whenever memory is needed, not a requirement;
* ``VmHWM``: the kernel's peak resident set (anonymous + file pages).

The figure to quote is the peak ``RssAnon`` above the baseline after loading torch.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def status() -> dict:
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class Sampler(threading.Thread):
    def __init__(self, period=0.005):
        super().__init__(daemon=True)
        self.period, self.stop_flag, self.peak = period, threading.Event(), {}

    def run(self):
        while not self.stop_flag.is_set():
            for k, v in status().items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            time.sleep(self.period)

    def stop(self):
        self.stop_flag.set()
        self.join()
        for k, v in status().items():
            self.peak[k] = max(self.peak.get(k, 0), v)
        return self.peak


def mb(n) -> str:
    return f"{n / 2**20:8.1f} MB"


def write_noise(path: Path, shape, seed=0) -> None:
    import mrcfile

    rng = np.random.default_rng(seed)
    with mrcfile.new_mmap(path, shape=tuple(shape), mrc_mode=2, overwrite=True) as mrc:
        step = max(1, (64 << 20) // (4 * shape[0] * shape[2]))  # ~64 MB at a time
        for y0 in range(0, shape[1], step):
            n = min(step, shape[1] - y0)
            mrc.data[:, y0:y0 + n] = rng.standard_normal((shape[0], n, shape[2]), dtype=np.float32)


def main(argv=None) -> None:
    import mrcfile

    from napari_deepdewedge.core.io.mrc import read_mrc
    from napari_deepdewedge.core.refine.tiles import n_tiles
    from napari_deepdewedge.core.refine.tomogram import refine_tomogram
    from napari_deepdewedge.core.model.unet import UNet3D

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 1024, 1024), metavar=("Z", "Y", "X"))
    ap.add_argument("--subtomo", type=int, default=64, help="tile edge s (default 64)")
    ap.add_argument("--model", choices=("conv", "unet"), default="conv",
                    help="conv: one untrained 3×3×3 convolution (default; the data path is what scales with the "
                         "volume); unet: an untrained U-Net of --channels/--depth (its activations add a fixed "
                         "per-batch amount; ~1 s per 64³ tile on this CPU, so use a smaller --shape)")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", choices=("file", "memory"), default="file")
    ap.add_argument("--dir", default=None, help="folder for the input/output files (default: a temporary one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ddw_refine_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    src, dst = folder / "big.mrc", folder / "big_refined.mrc"
    try:
        t = time.perf_counter()
        write_noise(src, args.shape)
        size = src.stat().st_size
        print(f"input  {src}: {tuple(args.shape)} float32, {size / 2**30:.2f} GB on disk "
              f"(written in {time.perf_counter() - t:.0f} s)")
        tomo = read_mrc(src).data
        assert isinstance(tomo, np.memmap)
        torch.manual_seed(0)
        if args.model == "unet":
            net = UNet3D(channels=args.channels, depth=args.depth).eval()
            label = f"U-Net {args.channels} ch × depth {args.depth}"
        else:
            net = torch.nn.Conv3d(1, 1, 3, padding=1).eval()
            label = "one 3×3×3 convolution"
        refine_tomogram(net, tomo[:, :args.subtomo], -60, 60, subtomo_size=args.subtomo, device="cpu",
                        batch_size=args.batch)  # warm-up: kernels, allocator
        base = status()
        print(f"baseline after torch and warm-up: RssAnon {mb(base['RssAnon'])}, VmRSS {mb(base['VmRSS'])}")
        tiles = n_tiles(tomo.shape, args.subtomo)
        print(f"refining: s={args.subtomo}, {tiles} tiles, {label} (untrained), "
              f"batch {args.batch}, {args.threads} threads, output to {args.output}")

        sampler = Sampler()
        sampler.start()
        t = time.perf_counter()
        if args.output == "file":
            with mrcfile.new_mmap(dst, shape=tuple(args.shape), mrc_mode=2, overwrite=True) as out:
                refine_tomogram(net, tomo, -60, 60, subtomo_size=args.subtomo, device="cpu",
                                batch_size=args.batch, out=out.data)
        else:
            result = refine_tomogram(net, tomo, -60, 60, subtomo_size=args.subtomo, device="cpu",
                                     batch_size=args.batch)
            del result
        seconds = time.perf_counter() - t
        peak = sampler.stop()
        anon = peak["RssAnon"] - base["RssAnon"]
        print(f"refined in {seconds:.0f} s ({np.prod(args.shape) / seconds / 1e6:.1f} Mvoxel/s)")
        print(f"peak RssAnon {mb(peak['RssAnon'])}  (+{mb(anon)} above baseline = "
              f"{100 * anon / size:.1f} % of the volume)")
        print(f"peak RssFile {mb(peak['RssFile'])}  (resident pages of the mapped files; reclaimable)")
        print(f"peak VmHWM   {mb(peak['VmHWM'])}  (kernel high-water mark, anonymous + file pages)")
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for p in (src, dst):
                p.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
