"""bench/gpu.sh on a machine without a CUDA GPU: says so and exits 0 (no GPU work attempted)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine gpu.sh runs the real (long) benchmark")
def test_gpu_bench_without_gpu_says_so_and_exits_0():
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU" in proc.stdout
    assert "samples/s" not in proc.stdout  # nothing was measured


def test_gpu_bench_job_runs_start_to_finish_at_toy_size_on_cpu():
    """No GPU is lent to this project, so the job's code (fit_iter with wedge updates, the
    extrapolation, refinement, the memory meter) runs here at toy sizes (--tiny: only the sizes
    differ); a CUDA machine then only adds the torch.cuda calls of bench/fit.py's meter."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fit.py"), "--tutorial", "--tiny", "--device", "cpu",
                           "--threads", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}:" in proc.stdout
    assert "fitting:" in proc.stdout and "1000 epochs ≈" in proc.stdout
    assert "refinement of (24, 40, 40)" in proc.stdout
