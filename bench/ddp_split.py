"""How far a plain one-process fit drifts from a 2-rank DDP fit of the same batches (float
rounding only: batches of 3 run other kernels than shares of 2 + 1), and that one process
emulating the ranks (``fit_iter(emulate_ranks=2)``) matches the ranks bit for bit.

    PYTHONPATH=src python bench/ddp_split.py              # the CPU's own kernels
    ONEDNN_MAX_CPU_ISA=SSE41 PYTHONPATH=src python bench/ddp_split.py

The fit is tests/ddp_worker.py's (the DDP test's). Prints one JSON line; the figures are
written beside the test (tests/test_fitting.py::test_ddp_two_ranks_match_one_process).
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"


def main():
    spec = importlib.util.spec_from_file_location("ddp_worker", TESTS / "ddp_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    tmp = Path(tempfile.mkdtemp())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(TESTS / "ddp_worker.py"), str(tmp)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    ranks = torch.load(tmp / "result.pt", weights_only=True)
    torch.set_num_threads(1)  # as the ranks
    e_em, s_em = worker.run(out_dir=tmp / "emulated", emulate_ranks=2)
    e_pl, s_pl = worker.run()
    emulated = torch.load(tmp / "emulated" / "latest.pt", weights_only=True)["state_dict"]

    def rel(a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        return (np.abs(a - b) / np.abs(b)).ravel()

    print(json.dumps(dict(
        isa=os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
        emulated_equals_ranks=bool(ranks["steps"] == s_em and ranks["epochs"] == e_em
                                   and all(torch.equal(v, emulated[k]) for k, v in ranks["state_dict"].items())),
        plain_vs_ranks_steps=[float(f"{x:.2g}") for x in rel(s_pl, ranks["steps"])],
        plain_vs_ranks_epochs_max=float(f"{rel(e_pl, ranks['epochs']).max():.2g}"))))


if __name__ == "__main__":
    main()
