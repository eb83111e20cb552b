"""Drive the original DeepDeWedge (a checkout of MLI-lab/DeepDeWedge) from our benchmarks.

Its U-Net module imports PyTorch Lightning 1.8 at import time, so it cannot live in our
environment: it runs in its own virtual environment (``bench/peers/setup_ddw.sh DIR``) as a
subprocess (``ddw_runner.py``) started from the same benchmark run, pinned to the same thread
count, fed the same arrays (``.npy`` files in a temporary directory).

API (reused by bench/peer_ddw.py and the quality comparison)::

    ddw = OriginalDDW("/path/to/DeepDeWedge", python="/path/to/ddw-venv/bin/python", threads=2)
    run = ddw.fit(half0, half1, subtomo_size=32, channels=16, depth=3, batch_size=4,
                  epochs=40,                # or steps=N (stops mid-epoch)
                  tilt_range=(-60, 60), strides=None, val_fraction=0.1, update_every=10,
                  lr=4e-4, seed=0, snapshot_epochs=(10, 20))
                  # normalization_batches=1: a step-rate run skips the full statistics pass
    run.samples_per_second()                # fitting samples/s over the timed steps
    run.epochs                              # [{"epoch", "fit_loss", "val_loss", "wall", "cpu", "wall_end", "cpu_end"}]
    refined, seconds = ddw.refine(run, tomo, overlap=16, batch_size=4)            # final model
    refined, seconds = ddw.refine(run, tomo, epoch=10)                            # a snapshot

Arrays are ``(Z, Y, X)`` float32 numpy. The runner's working files live in a temporary
directory owned by the ``OriginalDDW`` (``close()`` or a ``with`` block removes it).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RUNNER = Path(__file__).with_name("ddw_runner.py")


def default_python(ddw_path) -> str:
    """The venv that setup_ddw.sh makes by default: ``DIR/../ddw-venv``."""
    return str(Path(ddw_path).resolve().parent / "ddw-venv" / "bin" / "python")


def mw_angle(tilt_min: float, tilt_max: float) -> float:
    """The original's missing-wedge width for a tilt range (it assumes a symmetric wedge)."""
    return 180.0 - (float(tilt_max) - float(tilt_min))


@dataclass
class PeerFit:
    """What one fit of the original returned."""

    model: str
    snapshots: dict
    steps: list
    epochs: list
    n_fit: int
    n_val: int
    unet: dict
    settings: dict
    threads: int
    extra: dict = field(default_factory=dict)

    def samples_per_second(self, skip: int = 1, compute_only: bool = False) -> float:
        """Samples/s over the steps after the first ``skip`` (warm-up). ``compute_only``: the
        network+loss+Adam part only; otherwise each step's interval including its loader."""
        steps = self.steps[skip:] if len(self.steps) > skip else self.steps
        if compute_only:
            return sum(s["n"] for s in steps) / sum(s["wall_compute"] for s in steps)
        if len(self.steps) <= skip:
            return steps[-1]["n"] / steps[-1]["wall_end"]
        t0 = self.steps[skip - 1]["wall_end"] if skip else 0.0
        return sum(s["n"] for s in steps) / (steps[-1]["wall_end"] - t0)


class OriginalDDW:
    def __init__(self, ddw_path, python: str | None = None, threads: int | None = None, work_dir=None):
        self.ddw_path = str(Path(ddw_path).resolve())
        if not (Path(self.ddw_path) / "ddw" / "utils" / "unet.py").exists():
            raise SystemExit(f"error: {ddw_path} is not a DeepDeWedge checkout (no ddw/utils/unet.py)")
        self.python = python or default_python(self.ddw_path)
        if not Path(self.python).exists():
            raise SystemExit(f"error: no Python at {self.python}; make the venv with "
                             f"bash bench/peers/setup_ddw.sh {self.ddw_path}")
        self.threads = int(threads or os.cpu_count() or 1)
        self._own = work_dir is None
        self.work = Path(work_dir or tempfile.mkdtemp(prefix="ddw_peer_"))
        self._n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._own:
            shutil.rmtree(self.work, ignore_errors=True)

    def _run(self, task: str, job: dict, quiet: bool = True) -> dict:
        self._n += 1
        d = self.work / f"{task}_{self._n:03d}"
        d.mkdir(parents=True)
        job = dict(job, task=task, ddw_path=self.ddw_path, work_dir=str(d), threads=self.threads,
                   result=str(d / "result.json"))
        (d / "job.json").write_text(json.dumps(job))
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        env.pop("PYTHONPATH", None)  # our package must not leak into its environment
        proc = subprocess.run([self.python, str(RUNNER), str(d / "job.json")], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise RuntimeError(f"the original DeepDeWedge's {task} failed (exit {proc.returncode})")
        return json.loads((d / "result.json").read_text())

    def _save(self, name: str, arr) -> str:
        path = self.work / f"{name}_{self._n + 1:03d}.npy"
        np.save(path, np.ascontiguousarray(arr, dtype=np.float32))
        return str(path)

    def fit(self, half0, half1, *, subtomo_size: int, channels: int, depth: int = 3, batch_size: int = 5,
            epochs: int | None = None, steps: int | None = None, tilt_range=(-60.0, 60.0), strides=None,
            val_fraction: float = 0.0, update_every: int = 10, lr: float = 4e-4, seed: int = 0,
            residual: bool = True, standardize: bool = True, validate: bool = True, snapshot_epochs=(),
            num_workers: int = 0, normalization_batches: int | None = None) -> PeerFit:
        """Fit the original's U-Net on two half tomograms (see module doc); ``epochs`` and/or
        ``steps`` bound the run."""
        if epochs is None and steps is None:
            raise ValueError("give epochs or steps")
        settings = dict(subtomo_size=int(subtomo_size), channels=int(channels), depth=int(depth),
                        batch_size=int(batch_size), epochs=epochs, steps=steps, mw_angle=mw_angle(*tilt_range),
                        strides=None if strides is None else [int(v) for v in strides],
                        val_fraction=float(val_fraction), update_every=int(update_every), lr=float(lr),
                        seed=int(seed), residual=bool(residual), standardize=bool(standardize),
                        validate=bool(validate), snapshot_epochs=[int(e) for e in snapshot_epochs],
                        num_workers=int(num_workers), normalization_batches=normalization_batches)
        job = dict(settings, half0=self._save("half0", half0), half1=self._save("half1", half1))
        r = self._run("fit", job)
        return PeerFit(model=r["model"], snapshots={int(k): v for k, v in r["snapshots"].items()}, steps=r["steps"],
                       epochs=r["epochs"], n_fit=r["n_fit"], n_val=r["n_val"], unet=r["unet"], settings=settings,
                       threads=r["threads"], extra={"normalization_seconds": r["normalization_seconds"]})

    def refine(self, run: PeerFit, tomo, *, epoch: int | None = None, overlap: int | None = None,
               batch_size: int = 4, standardize: bool = True) -> tuple[np.ndarray, float]:
        """Refine ``tomo`` with the original's ``_refine_single_tomogram`` and the model of
        ``run`` (its final state, or the snapshot of ``epoch``); returns (array, wall seconds)."""
        s = run.settings["subtomo_size"]
        model = run.model if epoch is None else run.snapshots[int(epoch)]
        job = dict(model=model, unet=run.unet, tomo=self._save("tomo", tomo), subtomo_size=s,
                   overlap=int(overlap if overlap is not None else -(-s // 3)), mw_angle=run.settings["mw_angle"],
                   batch_size=int(batch_size), standardize=bool(standardize))
        r = self._run("refine", job)
        out = np.load(r["refined"])
        return out, float(r["wall"])
