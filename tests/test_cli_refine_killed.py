"""`deepdewedge refine` killed with SIGKILL (issue 12): the partial output never appears as a
finished file, and rerunning the same command completes (with `--overwrite` only where a
finished file of the killed run exists). Faults are injected, not waited for: the child's
`os.replace` (the rename that publishes an atomically written file) stops at the N-th call and
tells the test, which then kills it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from gui_probe import tiny_model  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
SHAPE = (16, 32, 32)

# the child: `deepdewedge ARGS`, its N-th rename (os.replace) hangs after writing a marker
CHILD = """
import os, sys, time
from pathlib import Path
marker, hang_at = Path(sys.argv[1]), int(sys.argv[2])
real_replace, calls = os.replace, [0]
def replace(src, dst):
    calls[0] += 1
    if calls[0] == hang_at:
        marker.write_text(str(dst))
        time.sleep(600)
    return real_replace(src, dst)
os.replace = replace
from napari_deepdewedge.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _env():
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from napari_deepdewedge.core.io.mrc import write_mrc

    folder = tmp_path_factory.mktemp("refine_inputs")
    rng = np.random.default_rng(0)
    for name in ("TS_even", "TS_odd"):
        write_mrc(folder / f"{name}.mrc", rng.normal(size=SHAPE).astype(np.float32), 10.0)
    model = tiny_model(folder / "model.pt")
    return folder, model


def refine_args(inputs, out, *extra):
    folder, model = inputs
    return ["refine", "--even", str(folder / "TS_even.mrc"), "--odd", str(folder / "TS_odd.mrc"),
            "--model", str(model), "--out", str(out), "--device", "cpu", "--quiet", *extra]


def run_cli(args):
    return subprocess.run([sys.executable, "-m", "napari_deepdewedge.cli", *args],
                          env=_env(), capture_output=True, text=True, timeout=600)


def kill_at_rename(args, tmp_path, nth: int) -> Path:
    """Start the command, SIGKILL it while its ``nth`` rename is about to publish a file;
    returns the path that rename would have written."""
    marker = tmp_path / f"marker{nth}"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), str(nth), *args],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never reached its rename"
        time.sleep(0.05)
    time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert child.returncode == -signal.SIGKILL
    return Path(marker.read_text())


def finished_files(folder: Path) -> list[str]:
    """What a user sees as results: visible .mrc files."""
    return sorted(p.name for p in folder.glob("*.mrc") if not p.name.startswith("."))


def read(path):
    import mrcfile

    with mrcfile.open(path, permissive=False) as mrc:
        return np.array(mrc.data)


def test_killed_refine_leaves_no_finished_file_and_the_same_command_completes(inputs,
                                                                              tmp_path):
    reference_dir = tmp_path / "reference"
    assert run_cli(refine_args(inputs, reference_dir / "TS_refined.mrc")).returncode == 0
    expected = read(reference_dir / "TS_refined.mrc")

    out = tmp_path / "out" / "TS_refined.mrc"
    args = refine_args(inputs, out)
    published = kill_at_rename(args, tmp_path, nth=1)  # the refined volume is fully written
    assert published == out
    assert finished_files(out.parent) == []  # only a hidden temporary, never TS_refined.mrc
    leftovers = [p.name for p in out.parent.iterdir()]
    assert all(name.startswith(".TS_refined.mrc.") and name.endswith(".tmp")
               for name in leftovers), leftovers

    rerun = run_cli(args)  # the same command, no flag needed
    assert rerun.returncode == 0, rerun.stderr
    np.testing.assert_array_equal(read(out), expected)
    assert [p.name for p in out.parent.iterdir()] == ["TS_refined.mrc"]  # the stale temp too


def test_killed_refine_with_halves_is_rerun_with_overwrite(inputs, tmp_path):
    out = tmp_path / "out" / "TS_refined.mrc"
    args = refine_args(inputs, out, "--halves")
    # the per-half files are written first and the main file last (pipeline.refining), so an
    # existing TS_refined.mrc means a complete set: kill at the 4th rename, the main file's
    published = kill_at_rename(args, tmp_path, nth=4)
    assert published == out
    assert finished_files(out.parent) == ["TS_refined_consistency.mrc", "TS_refined_half0.mrc",
                                          "TS_refined_half1.mrc"]
    for name in finished_files(out.parent):
        read(out.with_name(name))  # what is there is complete

    refused = run_cli(args)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "--overwrite" in refused.stderr
    rerun = run_cli([*args, "--overwrite"])
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "TS_refined.mrc", "TS_refined_consistency.mrc", "TS_refined_half0.mrc",
        "TS_refined_half1.mrc"]  # the killed write's temporary removed by the rerun
    half0, half1 = read(out.with_name("TS_refined_half0.mrc")), \
        read(out.with_name("TS_refined_half1.mrc"))
    np.testing.assert_allclose(read(out), (half0 + half1) / 2, atol=1e-5)
