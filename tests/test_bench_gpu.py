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
