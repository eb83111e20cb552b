"""bench/gpu.sh's job (bench/fit.py --tutorial) must run start to finish on a CUDA machine with
no edits. No GPU is lent to this project, so the same code runs here at toy sizes on the CPU
(--tiny: only the sizes differ), and the real job must say there is no GPU and exit 0."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "bench" / "fit.py"), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_tutorial_job_runs_start_to_finish_at_toy_size_on_cpu():
    r = _run("--tutorial", "--tiny", "--device", "cpu", "--threads", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}:" in out
    assert "fitting:" in out and "1000 epochs ≈" in out
    assert "refinement of (24, 40, 40)" in out


def test_tutorial_job_without_a_gpu_says_so_and_exits_zero():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real job (bench/gpu.sh), not this message")
    r = _run("--tutorial", "--device", "cuda")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no CUDA GPU on this machine" in r.stdout
    assert "epoch 1" not in r.stdout
