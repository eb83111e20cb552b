"""``deepdewedge run`` over a folder of tilt series (pipeline.project): the job file, the fit
subset, and a run killed in the middle of fitting that continues from its latest checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_deepdewedge import cli
from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.io.mrc import write_mrc
from napari_deepdewedge.pipeline.project import (
    JobFile,
    discover_series,
    is_project_input,
    select_fit_subset,
)

STEMS = ("TS_00", "TS_01", "TS_02")
TINY = ["--thickness", "24", "--subtomo-size", "16", "--channels", "4", "--depth", "2",
        "--batch-size", "2", "--strides", "8", "8", "8", "--device", "cpu", "--seed", "1"]


def _write_series(folder: Path, stems=STEMS, ranges=None) -> Path:
    """Small noisy tilt series (21 tilts, 24×32, 5 Å) with their .tlt beside them."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :32]
    for k, stem in enumerate(stems):
        lo, hi = (ranges or {}).get(stem, (-60.0, 60.0))
        base = np.exp(-((yy - 12 - k) ** 2 + (xx - 16) ** 2) / 20.0)
        stack = base[None] + 0.3 * rng.standard_normal((21, 24, 32))
        write_mrc(folder / f"{stem}.mrc", stack.astype(np.float32), 5.0)
        (folder / f"{stem}.tlt").write_text("\n".join(f"{a:.2f}" for a in np.linspace(lo, hi, 21)))
    return folder


def _env():
    src = str(Path(cli.__file__).parents[2])
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))


def test_discover_series_from_folder_glob_and_list(tmp_path):
    _write_series(tmp_path)
    write_mrc(tmp_path / "TS_00_even.mrc", np.zeros((2, 2, 2), np.float32))  # an output
    assert [p.name for p in discover_series(tmp_path, out_dir=tmp_path)] == \
        ["TS_00.mrc", "TS_01.mrc", "TS_02.mrc"]
    assert [p.name for p in discover_series(str(tmp_path / "TS_0[12].mrc"))] == \
        ["TS_01.mrc", "TS_02.mrc"]
    listing = tmp_path / "series.txt"
    listing.write_text("TS_02.mrc  # last first\nTS_00.mrc\n")
    assert [p.name for p in discover_series(listing)] == ["TS_02.mrc", "TS_00.mrc"]
    assert is_project_input(tmp_path) and is_project_input(listing)
    assert not is_project_input(tmp_path / "TS_00.mrc")
    listing.write_text("TS_09.mrc\n")
    with pytest.raises(DDWError, match="TS_09.mrc: tilt series not found"):
        discover_series(listing)


def test_fit_subset_by_stems_or_glob():
    stems = ["TS_01", "TS_02", "TS_10", "TS_11"]
    assert select_fit_subset(stems, None) == stems
    assert select_fit_subset(stems, "TS_1*") == ["TS_10", "TS_11"]
    assert select_fit_subset(stems, "TS_11, TS_01") == ["TS_01", "TS_11"]  # list order kept
    with pytest.raises(DDWError, match="'TS_99' names no tilt series"):
        select_fit_subset(stems, "TS_99")


def test_job_file_refuses_another_fit_subset_once_the_fit_started(tmp_path):
    job = JobFile(tmp_path)
    job.load_or_start({"A": "a.mrc", "B": "b.mrc"}, ["A"])
    job.state["fit"]["state"] = "running"
    job.save()
    with pytest.raises(DDWError, match="fit is on A, not A, B"):
        JobFile(tmp_path).load_or_start({"A": "a.mrc", "B": "b.mrc"}, ["A", "B"])
    # a pending fit may still change its subset; the file is valid JSON after every save
    assert json.loads((tmp_path / "job.json").read_text())["fit"]["on"] == ["A"]


def test_project_with_a_fit_subset_and_per_series_wedges(tmp_path, capsys):
    series = _write_series(tmp_path / "ts", ranges={"TS_01": (-48.0, 64.0)})
    out = tmp_path / "proj"
    rc = cli.main(["run", str(series), "--out", str(out), "--fit-on", "TS_01", "--epochs", "1",
                   "-q", *TINY])
    assert rc == 0, capsys.readouterr().err
    job = json.loads((out / "job.json").read_text())
    assert job["stage"] == "done" and job["fit"]["on"] == ["TS_01"]
    assert job["tomograms"]["TS_01"]["tilt_range"] == [-48.0, 64.0]  # its own .tlt
    assert job["tomograms"]["TS_00"]["tilt_range"] == [-60.0, 60.0]
    assert [job["tomograms"][s]["fitted_with"] for s in STEMS] == [None, "model/best.pt", None]
    assert all(job["tomograms"][s]["refined"] for s in STEMS)
    assert all((out / f"{s}_refined.mrc").exists() for s in STEMS)
    from napari_deepdewedge.core.model.checkpoint import load_checkpoint

    inputs = load_checkpoint(out / "model" / "best.pt")["inputs"]
    assert [i["name"] for i in inputs] == ["TS_01"] and inputs[0]["tilt_range"] == [-48.0, 64.0]


def test_run_killed_after_the_last_checkpoint_before_the_job_file_said_done(tmp_path, capsys):
    """The fit's last checkpoint is written but job.json still says 'running' (a kill between
    the two): the same command takes the finished fit (pipeline.finished_fit), fits nothing."""
    series = _write_series(tmp_path / "ts", stems=STEMS[:1])
    out = tmp_path / "proj"
    command = ["run", str(series), "--out", str(out), "--epochs", "1", "-q", *TINY]
    assert cli.main(command) == 0, capsys.readouterr().err
    job = json.loads((out / "job.json").read_text())
    job["stage"] = "fit"
    job["fit"].update(state="running", checkpoint=None, epochs_done=0)
    job["tomograms"]["TS_00"].update(fitted_with=None, refined=False, refined_with=None)
    (out / "job.json").write_text(json.dumps(job))
    (out / "TS_00_refined.mrc").unlink()
    fit_files = {p.name: p.stat().st_mtime_ns for p in (out / "model").iterdir()}

    assert cli.main(command) == 0, capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "model").iterdir()} == fit_files
    job = json.loads((out / "job.json").read_text())
    assert job["stage"] == "done"
    assert (job["fit"]["state"], job["fit"]["checkpoint"], job["fit"]["epochs_done"]) == \
        ("done", "model/best.pt", 1)
    assert job["tomograms"]["TS_00"]["fitted_with"] == "model/best.pt"
    assert (out / "TS_00_refined.mrc").exists()


def test_run_killed_while_fitting_continues_from_latest_checkpoint(tmp_path):
    series = _write_series(tmp_path / "ts")
    out = tmp_path / "proj"
    command = [sys.executable, "-m", "napari_deepdewedge.cli", "run", str(series), "--out",
               str(out), "--epochs", "8", "--checkpoint-every", "0", *TINY]
    observed = []  # (stage, fit state) of every job file read while the job ran

    def watch(proc, stop_when=None):
        while proc.poll() is None:
            job_path = out / "job.json"
            if job_path.exists():
                job = json.loads(job_path.read_text())  # must parse at every moment
                observed.append((job["stage"], job["fit"]["state"]))
            if stop_when is not None and stop_when():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.02)

    first = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watch(first, stop_when=lambda: (out / "model" / "latest.pt").exists())
    assert first.returncode == -signal.SIGKILL, "the fit ended before it could be killed"
    job = json.loads((out / "job.json").read_text())
    assert job["stage"] == "fit" and job["fit"]["state"] == "running"
    assert all(job["tomograms"][s]["reconstructed"] for s in STEMS)
    halves_mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("TS_*_even.mrc")}

    second = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    watch(second)
    err = second.stderr.read()
    assert second.returncode == 0, err[-2000:]
    assert "resuming after epoch" in err
    resumed_after = int(err.split("resuming after epoch")[1].split()[0])
    assert 1 <= resumed_after < 8
    assert err.count("kept (done earlier)") == 3  # no reconstruction redone
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("TS_*_even.mrc")} == halves_mtimes
    epochs = [int(line.split(",")[0])
              for line in (out / "model" / "losses.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, 9))  # each epoch once: continued, not restarted
    job = json.loads((out / "job.json").read_text())
    assert job["stage"] == "done" and job["fit"]["state"] == "done"
    assert job["fit"]["epochs_done"] == 8
    assert all(job["tomograms"][s]["refined"] for s in STEMS)
    assert ("fit", "running") in observed and ("done", "done") in observed
