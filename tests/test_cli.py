"""The command line: argument layout, error lines and exit codes, configs, and every command on
tiny data (seconds each). Most tests call ``main([...])`` in-process; one subprocess proves the
console script and its exit code."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_deepdewedge import cli
from napari_deepdewedge.core.io import read_mrc, write_mrc

PIXEL = 5.0
# the tiniest fitting that runs the whole engine: 16³ cubes, 4 channels, depth 2, one epoch
TINY_FIT = ["--subtomo-size", "16", "--channels", "4", "--depth", "2", "--epochs", "1",
            "--batch-size", "2", "--strides", "8", "16", "16", "--device", "cpu", "--seed", "1"]


def _assert_one_error(capsys, rc, *fragments):
    assert rc == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _stack(n_tilts=21, ny=24, nx=32, seed=0):
    """A small noisy 'tilt series': projections of a few blobs plus noise (shape is what counts)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx]
    base = np.exp(-((yy - ny / 2) ** 2 + (xx - nx / 2) ** 2) / 20.0)
    return (base[None] + 0.3 * rng.standard_normal((n_tilts, ny, nx))).astype(np.float32)


def _write_tlt(path: Path, angles) -> Path:
    path.write_text("\n".join(f"{a:.2f}" for a in angles) + "\n")
    return path


@pytest.fixture
def tilt_stack(tmp_path):
    """TS.mrc (21 tilts, −60…60 step 6, 5 Å pixels) with TS.tlt beside it."""
    path = write_mrc(tmp_path / "TS.mrc", _stack(), voxel_size=PIXEL)
    _write_tlt(tmp_path / "TS.tlt", np.arange(-60, 61, 6.0))
    return path


# ---------------------------------------------------------------------------------------------
# parser and console script


def test_console_script_help_and_bad_input_exit_code(tmp_path):
    exe = shutil.which("deepdewedge")
    cmd = [exe] if exe else [sys.executable, "-m", "napari_deepdewedge.cli"]
    ok = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0
    for command in ("reconstruct", "fit", "refine", "run", "demo"):
        assert command in ok.stdout
    bad = subprocess.run(
        cmd + ["reconstruct", str(tmp_path / "nope.mrc"), "--tilt-range", "-60", "60", "3",
               "--thickness", "8", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope.mrc" in lines[0]
    assert "Traceback" not in bad.stderr


def test_module_entry_point_runs(tmp_path):
    """``python -m napari_deepdewedge.cli`` is what torchrun launches."""
    res = subprocess.run([sys.executable, "-m", "napari_deepdewedge.cli", "fit", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--tilt-range" in res.stdout


def test_help_does_not_import_torch():
    code = ("import sys; from napari_deepdewedge import cli; cli.build_parser(); "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False"


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main(["reconstruct", "x.mrc", "--out", str(tmp_path)]) == 2  # no --thickness
    assert "--thickness" in capsys.readouterr().err
    assert cli.main(["fit", "--epochs", "zero"]) == 2
    assert cli.main(["reconstruct", "x.mrc", "--thickness", "8", "--out", str(tmp_path),
                     "--angles", "a.tlt", "--tilt-range", "-60", "60", "3"]) == 2
    assert cli.main([]) == 2
    assert cli.main(["--version"]) == 0


def test_preset_names_match_engine():
    from napari_deepdewedge.core.unet import PRESETS

    assert set(cli.PRESET_NAMES) == set(PRESETS)


# ---------------------------------------------------------------------------------------------
# reconstruct


def test_reconstruct_autodetects_angles_bins_and_writes_voxel_size(tilt_stack, tmp_path, capsys):
    out = tmp_path / "rec"
    rc = cli.main(["reconstruct", str(tilt_stack), "--thickness", "6", "--bin", "2",
                   "--device", "cpu", "--full", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    for label in ("even", "odd", "full"):
        vol = read_mrc(out / f"TS_{label}.mrc", mmap=False)
        assert vol.data.shape == (6, 12, 16)
        assert vol.data.dtype == np.float32
        assert np.allclose(vol.voxel_size, (2 * PIXEL,) * 3)
        assert np.isfinite(vol.data).all() and vol.data.std() > 0
    even = read_mrc(out / "TS_even.mrc", mmap=False).data
    odd = read_mrc(out / "TS_odd.mrc", mmap=False).data
    assert not np.allclose(even, odd)  # independent halves


def test_reconstruct_tilt_range_and_tilt_axis_x(tmp_path, capsys):
    stack = write_mrc(tmp_path / "A.ali", _stack(n_tilts=11, ny=24, nx=32), voxel_size=PIXEL)
    out = tmp_path / "rec"
    rc = cli.main(["reconstruct", str(stack), "--tilt-range", "-50", "50", "10", "--tilt-axis-x",
                   "--thickness", "8", "--device", "cpu", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    vol = read_mrc(out / "A_even.mrc")
    assert vol.data.shape == (8, 32, 24)  # Y and X swapped
    assert not (out / "A_full.mrc").exists()


def test_reconstruct_even_odd_frame_halves(tmp_path, capsys):
    write_mrc(tmp_path / "TS_01_EVN.mrc", _stack(seed=1), voxel_size=PIXEL)
    write_mrc(tmp_path / "TS_01_ODD.mrc", _stack(seed=2), voxel_size=PIXEL)
    _write_tlt(tmp_path / "TS_01.tlt", np.arange(-60, 61, 6.0))  # beside the stack name
    out = tmp_path / "rec"
    rc = cli.main(["reconstruct", "--even-odd", str(tmp_path / "TS_01_EVN.mrc"),
                   str(tmp_path / "TS_01_ODD.mrc"), "--thickness", "6", "--device", "cpu",
                   "--full", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    even = read_mrc(out / "TS_01_even.mrc", mmap=False)
    odd = read_mrc(out / "TS_01_odd.mrc", mmap=False)
    full = read_mrc(out / "TS_01_full.mrc", mmap=False)
    assert even.data.shape == odd.data.shape == full.data.shape == (6, 24, 32)
    assert np.allclose(even.voxel_size, (PIXEL,) * 3)
    assert np.allclose(full.data, 0.5 * (even.data + odd.data), atol=1e-5)


def test_reconstruct_bad_inputs(tmp_path, capsys):
    good = write_mrc(tmp_path / "TS.mrc", _stack(), voxel_size=PIXEL)
    common = ["--thickness", "6", "--device", "cpu", "--out", str(tmp_path / "o"), "-q"]

    rc = cli.main(["reconstruct", str(tmp_path / "missing.mrc"), "--tilt-range", "-60", "60", "6"]
                  + common)
    _assert_one_error(capsys, rc, "missing.mrc", "not found")

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    rc = cli.main(["reconstruct", str(text), "--tilt-range", "-60", "60", "6"] + common)
    _assert_one_error(capsys, rc, "notes.txt", "MRC")

    broken = tmp_path / "broken.mrc"
    broken.write_bytes(b"this is not an MRC header" * 3)
    rc = cli.main(["reconstruct", str(broken), "--tilt-range", "-60", "60", "6"] + common)
    _assert_one_error(capsys, rc, "broken.mrc")

    rc = cli.main(["reconstruct", str(good), "--tilt-range", "-60", "60", "3"] + common)
    _assert_one_error(capsys, rc, "41", "21")  # 41 angles vs 21 projections

    _write_tlt(tmp_path / "wrong.tlt", np.arange(-60, 61, 10.0))
    rc = cli.main(["reconstruct", str(good), "--angles", str(tmp_path / "wrong.tlt")] + common)
    _assert_one_error(capsys, rc, "13", "21")

    _write_tlt(tmp_path / "radians.tlt", list(np.arange(-60, 60, 6.0)) + [95.0])
    rc = cli.main(["reconstruct", str(good), "--angles", str(tmp_path / "radians.tlt")] + common)
    _assert_one_error(capsys, rc, "95", "90")

    rc = cli.main(["reconstruct", str(good)] + common)  # no angles, no .tlt beside the stack
    _assert_one_error(capsys, rc, "--angles")

    rc = cli.main(["reconstruct", str(good), "--even-odd", str(good), str(good),
                   "--tilt-range", "-60", "60", "6"] + common)
    _assert_one_error(capsys, rc, "not both")

    rc = cli.main(["reconstruct", "--tilt-range", "-60", "60", "6"] + common)
    _assert_one_error(capsys, rc, "no input")

    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.mrc"))


def test_unwritable_output_is_one_error_line(tilt_stack, tmp_path, capsys):
    blocker = tmp_path / "file_not_dir"
    blocker.write_text("x")
    rc = cli.main(["reconstruct", str(tilt_stack), "--thickness", "4", "--device", "cpu",
                   "--out", str(blocker / "sub"), "-q"])
    _assert_one_error(capsys, rc)
