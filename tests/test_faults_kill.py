"""Killed at any moment (issue 12): ``deepdewedge fit`` in a subprocess is SIGKILLed at points
chosen from its observed progress — while a checkpoint file is being written (the kill is sent
the moment a ``.<name>.*.tmp`` temporary appears in the output folder) and the moment the loss
log gains the row of a randomly drawn epoch (the row is appended before that epoch's
checkpoints are written) — and resumed with ``--resume latest.pt`` each time. The final weights
and the loss log must equal those of an uninterrupted run bit for bit (CPU, one thread), and no
temporary may be left behind. Kills are driven by files appearing, never by wall-clock delays
(issue 17: random delays let a faster machine finish the fit before they ran out), and the test
checks that every planned kill landed before the fit ended and where it was aimed."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_deepdewedge
from napari_deepdewedge.core.model import checkpoint as ckpt
from napari_deepdewedge.core.fit.state import resume_cubes
from napari_deepdewedge.core.io.mrc import write_mrc

EPOCHS = 12  # room for every planned kill (each run is killed after at most 2 new epochs)
# 33 fitting cubes of 16³ (batch 8: 5 steps per epoch); a checkpoint is ~2 MB
FIT = ["--tilt-range", "-60", "60", "--subtomo-size", "16", "--channels", "4", "--depth", "2",
       "--epochs", str(EPOCHS), "--batch-size", "8", "--strides", "8", "16", "8", "--device", "cpu",
       "--seed", "1", "--update-every", "2", "--checkpoint-every", "3", "--val-fraction", "0.1", "-q"]
SRC = str(Path(napari_deepdewedge.__file__).resolve().parents[1])
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_pair")
    rng = np.random.default_rng(3)
    shape = (32, 64, 48)
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    signal_ = np.zeros(shape, np.float32)
    for _ in range(10):
        c = rng.uniform((4, 4, 4), np.array(shape) - 4)
        signal_ += np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 8.0)
    even = write_mrc(root / "e.mrc", signal_ + 0.5 * rng.standard_normal(shape), 8.0)
    odd = write_mrc(root / "o.mrc", signal_ + 0.5 * rng.standard_normal(shape), 8.0)
    return even, odd


def _command(halves, out: Path, resume: Path | None):
    even, odd = halves
    cmd = [sys.executable, "-m", "napari_deepdewedge.cli", "fit", "--even", str(even), "--odd", str(odd),
           "--out", str(out), *FIT]
    return cmd + (["--resume", str(resume)] if resume is not None else [])


def _temporaries(folder: Path, pattern: str = ".tmp") -> set[str]:
    """Names of write temporaries in ``folder`` (``pattern`` ".pt.": checkpoint writes only)."""
    try:
        return {n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".tmp") and pattern in n}
    except FileNotFoundError:
        return set()


def _log_rows(out: Path) -> int:
    """Epoch rows in ``losses.csv`` (0 when absent)."""
    try:
        return max(0, len((out / "losses.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _row_appended(out: Path, wall: float, epoch: int):
    """A ``ready()`` that turns true when this run (started at ``wall``) has appended the loss
    row of ``epoch``: the log is rewritten from the checkpoint's history when the loop starts
    (so a row a killed run left ahead of its checkpoint does not count), then one row per epoch."""
    csv = out / "losses.csv"

    def ready() -> bool:
        try:
            fresh = csv.stat().st_mtime > wall
        except FileNotFoundError:
            return False
        return fresh and _log_rows(out) >= epoch

    return ready


def _epoch_on_disk(out: Path) -> int:
    """Epoch of the checkpoint a resume would use (latest.pt, or latest.prev.pt if it is bad)."""
    if not (out / "latest.pt").exists() and not ckpt.previous_path(out / "latest.pt").exists():
        return 0
    with warnings.catch_warnings():  # a fallback to latest.prev.pt is allowed here
        warnings.simplefilter("ignore")
        return int(ckpt.load_checkpoint(out / "latest.pt", require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS)["epoch"])


def _next_checkpoint_write(out: Path, wall: float, stale: set[str]):
    """A ``ready()`` that turns true when a checkpoint temporary appears after this run (started
    at ``wall``) has completed at least one ``latest.pt`` — so every kill also makes progress."""
    seen = set(stale)
    latest = out / "latest.pt"

    def ready() -> bool:
        now = _temporaries(out, ".pt.")
        if not seen.issuperset(stale | {"saved"}):
            seen.update(now)  # temporaries of the write that produced this run's first latest.pt
            if latest.exists() and latest.stat().st_mtime > wall:
                seen.add("saved")
            return False
        return bool(now - seen)

    return ready


def _kill_when(proc, ready, timeout=120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; False if it finished first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    proc.kill()
    raise AssertionError("the fit neither reached the kill point nor finished")


def _final_state(out: Path):
    payload = ckpt.load_checkpoint(out / "latest.pt", require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS, fallback=False)
    rows = [line.split(",")[:3] for line in (out / "losses.csv").read_text().splitlines()]
    return payload, rows


def test_sigkill_at_random_points_and_inside_checkpoint_writes_resumes_bit_identically(halves, tmp_path):
    ref_dir = tmp_path / "reference"
    done = subprocess.run(_command(halves, ref_dir, None), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reference, ref_rows = _final_state(ref_dir)
    assert len(ref_rows) == EPOCHS + 1

    rng = random.Random(12)
    out = tmp_path / "killed"
    # kill points, each driven by observed progress: "write" = the moment a checkpoint (or
    # fitting-state) temporary appears once this run has saved an epoch; "row" = the moment the
    # loss log gains the row of an epoch drawn at random 1–2 epochs ahead (between the log row
    # and that epoch's checkpoints)
    plan = ["write", "row", "write", "row", "write"]
    log = []  # (mode, epoch on disk before, target row, killed inside a checkpoint write, epoch on disk after)
    for mode in plan:
        before = _epoch_on_disk(out)
        assert before < EPOCHS - 1, log  # the plan fits in the epochs: no kill can be skipped
        resume = out / "latest.pt" if before else None
        stale = _temporaries(out, ".pt.")
        wall = time.time()
        proc = subprocess.Popen(_command(halves, out, resume), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        target = None
        if mode == "write":
            ready = _next_checkpoint_write(out, wall, stale)
        else:
            target = before + rng.randint(1, 2)
            ready = _row_appended(out, wall, target)
        # the kill must land before the fit ends (a fit that finished first fails here)
        assert _kill_when(proc, ready), (mode, proc.returncode, proc.stderr.read()[-2000:], log)
        assert proc.returncode == -signal.SIGKILL
        inside = bool(_temporaries(out, ".pt.") - stale)
        after = _epoch_on_disk(out)  # a complete checkpoint is always there to resume from
        log.append((mode, before, target, inside, after))
        assert after >= before and after < EPOCHS, log
        if mode == "row":
            # killed once the target row was written: its epoch's checkpoint is complete or not
            # yet (the kill races only with that epoch's own checkpoint writes), never later
            assert _log_rows(out) >= target and after in (target - 1, target), log
    print("kill log (mode, epoch before, target row, killed inside a write, epoch after):", log)
    assert len(log) == len(plan), log
    # the moment a temporary appears the write has only just begun; a kill may still come a
    # moment late on a machine that writes 2 MB faster than this loop polls, but not every time
    assert sum(1 for mode, *_, inside, _ in log if mode == "write" and inside) >= 2, log

    if _epoch_on_disk(out) < EPOCHS:  # finish without interruption
        resume = out / "latest.pt" if _epoch_on_disk(out) else None
        done = subprocess.run(_command(halves, out, resume), env=ENV, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    resumed, rows = _final_state(out)
    assert resumed["epoch"] == EPOCHS
    for name, value in reference["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    # the wedge-updated cubes too (in the fitting-state file each checkpoint refers to)
    assert torch.equal(resume_cubes(reference, ref_dir), resume_cubes(resumed, out))
    assert rows == ref_rows  # epoch, fit loss, validation loss: identical, no gaps or repeats
    best, ref_best = (ckpt.load_checkpoint(d / "best.pt", fallback=False) for d in (out, ref_dir))
    assert best["epoch"] == ref_best["epoch"]  # even when a kill came between latest.pt and best.pt
    for name, value in ref_best["state_dict"].items():
        assert torch.equal(value, best["state_dict"][name]), name
    assert _temporaries(out) == set()  # stale temporaries of killed writes were cleaned up
    assert ckpt.load_checkpoint(ckpt.previous_path(out / "latest.pt"), fallback=False)["epoch"] == EPOCHS - 1
