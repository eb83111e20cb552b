"""Batch refinement figures (issue 9): per-tomogram time in one batch (model loaded once) vs one
command per tomogram, 1 vs 2 torchrun ranks, and peak host memory against the batch length.

    PYTHONPATH=src python bench/batch_refine.py --n 4 --shape 48 96 96 --out /tmp/bench_batch

Every run is a separate process with OMP_NUM_THREADS=1 (so 2 ranks use 2 cores, 1 rank one);
peak memory is /usr/bin/time's maximum resident set size. Compare the figures as ratios
within one run: the machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SRC = str(Path(__file__).resolve().parents[1] / "src")
CLI = [sys.executable, "-m", "napari_deepdewedge.cli"]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))


def timed(command) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one process."""
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *command], env=env(),
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(res.stderr[-3000:])
    rss = int(re.search(r"MAXRSS (\d+)", res.stderr).group(1)) / 1024
    return wall, rss


def make_data(root: Path, n: int, shape) -> list[Path]:
    from napari_deepdewedge.core.io.mrc import write_mrc

    rng = np.random.default_rng(0)
    evens = []
    for k in range(n):
        signal = rng.standard_normal(shape).astype(np.float32)
        write_mrc(root / "rec" / f"T{k}_even.mrc", signal + rng.standard_normal(shape), 8.0)
        write_mrc(root / "rec" / f"T{k}_odd.mrc", signal + rng.standard_normal(shape), 8.0)
        evens.append(root / "rec" / f"T{k}_even.mrc")
    return evens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 96, 96))
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_batch"))
    a = ap.parse_args()
    root = a.out
    evens = make_data(root, a.n, tuple(a.shape))
    model = root / "model"
    subprocess.run([*CLI, "fit", "--even", str(evens[0]), "--odd", str(evens[0]).replace(
        "_even", "_odd"), "--tilt-range", "-60", "60", "--out", str(model), "--overwrite",
        "--subtomo-size", "32", "--channels", "8", "--depth", "2", "--epochs", "1", "--device",
        "cpu", "-q"], env=env(), check=True, capture_output=True)
    ckpt = str(model / "latest.pt")
    common = ["--model", ckpt, "--device", "cpu", "-q", "--overwrite"]
    glob = str(root / "rec" / "*_even.mrc")

    one_by_one = 0.0
    for even in evens:
        wall, _ = timed([*CLI, "refine", "--even", str(even), "--odd",
                         str(even).replace("_even", "_odd"), "--out",
                         str(root / "single" / even.name.replace("_even", "_refined")), *common])
        one_by_one += wall
    batch_wall, batch_rss = timed([*CLI, "refine", "--even", glob, "--out", str(root / "b1"),
                                   *common])
    two_wall, _ = timed(["torchrun", "--nproc-per-node", "2", "-m", "napari_deepdewedge.cli",
                         "--", "refine", "--even", glob, "--out", str(root / "b2"), *common])
    first_wall, first_rss = timed([*CLI, "refine", "--even", str(evens[0]), "--out",
                                   str(root / "b0"), *common])
    tomo_mb = int(np.prod(a.shape)) * 4 / 2**20
    print(f"{a.n} tomograms of {a.shape[0]}×{a.shape[1]}×{a.shape[2]} ({tomo_mb:.1f} MB float32 "
          f"per half), model 32³ cubes, 8 channels, depth 2; OMP_NUM_THREADS=1 per process")
    print(f"one command per tomogram: {one_by_one / a.n:.2f} s per tomogram (total {one_by_one:.1f} s)")
    print(f"one batch command:        {batch_wall / a.n:.2f} s per tomogram (total {batch_wall:.1f} s)"
          f"  ratio {one_by_one / batch_wall:.2f}×")
    print(f"batch, 2 torchrun ranks:  {two_wall / a.n:.2f} s per tomogram (total {two_wall:.1f} s)"
          f"  speed-up {batch_wall / two_wall:.2f}× over 1 rank")
    print(f"peak RSS: batch of 1: {first_rss:.0f} MB, batch of {a.n}: {batch_rss:.0f} MB "
          f"(+{(batch_rss - first_rss) / max(a.n - 1, 1):.1f} MB per extra tomogram)")


if __name__ == "__main__":
    main()
