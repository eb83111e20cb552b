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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_leading_double_dash_is_dropped(capsys):
    """torchrun … -m napari_deepdewedge.cli -- fit …  (the '--' shields our options)."""
    assert cli.main(["--", "fit", "--help"]) == 0
    assert "--tomo0" in capsys.readouterr().out


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


# ---------------------------------------------------------------------------------------------
# config files


FLAT_YAML = """\
even: e.mrc
odd: o.mrc
tilt_range: [-60, 60]
subtomo_size: 32
channels: 8
depth: 2
epochs: 7
batch_size: 3
lr: 0.001
val_fraction: 0.2
update_every: 4
seed: 42
device: cpu
"""

DDW_YAML = """\
shared:
  project_dir: ./project
  tomo0_files: [e.mrc]
  tomo1_files: [o.mrc]
  subtomo_size: 32
  mw_angle: 60
  num_workers: 4
  gpu: null
  seed: 42
prepare_data:
  val_fraction: 0.2
  subtomo_extraction_strides: [16, 24, 24]
fit_model:
  unet_params_dict: {chans: 8, num_downsample_layers: 2, drop_prob: 0.0}
  adam_params_dict: {lr: 0.001}
  num_epochs: 7
  batch_size: 3
  update_subtomo_missing_wedges_every_n_epochs: 4
  check_val_every_n_epochs: 1
  logger: csv
refine_tomogram:
  subtomo_overlap: 8
  batch_size: 10
"""


def _fit_args(tmp_path, yaml_text, extra=()):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text)
    parser = cli.build_parser()
    args = parser.parse_args(["fit", "--config", str(cfg), "--out", str(tmp_path / "o"), *extra])
    cli.apply_config(args)
    return args


def test_both_config_layouts_give_the_same_fit_config(tmp_path, capsys):
    configs = []
    for text in (FLAT_YAML, DDW_YAML):
        args = _fit_args(tmp_path, text)
        assert args.even == ["e.mrc"] and args.odd == ["o.mrc"]  # fit takes lists of pairs
        cfg = cli.fit_config(args, tilt_range=cli.tilt_range_for_fit(args), out_dir="o",
                              voxel_size=(1, 1, 1))
        configs.append(cfg)
    flat, ddw = configs
    assert (ddw.tilt_min, ddw.tilt_max) == (-60.0, 60.0)
    for name in ("subtomo_size", "channels", "depth", "epochs", "batch_size", "lr",
                 "val_fraction", "update_every", "seed", "tilt_min", "tilt_max", "device"):
        assert getattr(flat, name) == getattr(ddw, name), name
    assert (flat.subtomo_size, flat.channels, flat.depth, flat.epochs) == (32, 8, 2, 7)
    assert ddw.strides == (16, 24, 24)
    assert "warning" not in capsys.readouterr().err  # no-effect ddw keys are silent


def test_flags_win_over_config_and_unknown_keys_warn(tmp_path, capsys):
    args = _fit_args(tmp_path, FLAT_YAML + "colour: blue\n",
                     extra=["--epochs", "3", "--tilt-range", "-50", "55"])
    err = capsys.readouterr().err
    assert "warning:" in err and "colour" in err
    cfg = cli.fit_config(args, tilt_range=cli.tilt_range_for_fit(args), out_dir=None,
                          voxel_size=(1, 1, 1))
    assert cfg.epochs == 3 and cfg.channels == 8
    assert (cfg.tilt_min, cfg.tilt_max) == (-50.0, 55.0)

    args = _fit_args(tmp_path, DDW_YAML.replace("logger: csv", "logger: csv\n  fancy: 1"))
    assert "fit_model.fancy" in capsys.readouterr().err


def test_schedule_and_early_stop_flags_reach_fit_config(tmp_path, capsys):
    args = _fit_args(tmp_path, FLAT_YAML, extra=["--lr", "1e-3", "--lr-schedule", "warmup_cosine",
                                                  "--warmup-epochs", "1", "--early-stop", "4"])
    cfg = cli.fit_config(args, tilt_range=cli.tilt_range_for_fit(args), out_dir=None, voxel_size=(1, 1, 1))
    assert (cfg.lr, cfg.lr_schedule, cfg.warmup_epochs, cfg.early_stop_patience) == (1e-3, "warmup_cosine", 1, 4)
    args = _fit_args(tmp_path, FLAT_YAML + "lr_schedule: warmup_cosine\nearly_stop_patience: 2\n")
    cfg = cli.fit_config(args, tilt_range=cli.tilt_range_for_fit(args), out_dir=None, voxel_size=(1, 1, 1))
    assert (cfg.lr_schedule, cfg.early_stop_patience) == ("warmup_cosine", 2)
    args = _fit_args(tmp_path, FLAT_YAML)
    cfg = cli.fit_config(args, tilt_range=cli.tilt_range_for_fit(args), out_dir=None, voxel_size=(1, 1, 1))
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.early_stop_patience) == ("constant", 0, 0)


def test_mw_angle_and_gpu_mapping():
    from napari_deepdewedge.core.config import normalize_config, tilt_range_from_mw_angle

    assert tilt_range_from_mw_angle(50) == [-65.0, 65.0]
    loaded = normalize_config({"shared": {"gpu": [1, 2], "mw_angle": 70}})
    assert loaded.values == {"device": "cuda:1", "tilt_range": [-55.0, 55.0]}
    assert loaded.layout == "deepdewedge"


def test_bad_configs_are_error_lines(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nchannels: 4\n")
    rc = cli.main(["fit", "--config", str(bad), "--out", str(tmp_path / "o")])
    _assert_one_error(capsys, rc, "bad.yaml", "YAML")

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("epochs: many\n")
    rc = cli.main(["fit", "--config", str(wrong), "--out", str(tmp_path / "o")])
    _assert_one_error(capsys, rc, "epochs")

    two = tmp_path / "two.yaml"
    two.write_text("shared:\n  tomo0_files: [a.mrc, b.mrc]\n  tomo1_files: [c.mrc]\n")
    rc = cli.main(["fit", "--config", str(two), "--out", str(tmp_path / "o")])
    _assert_one_error(capsys, rc, "--even is given 2 times but --odd 1 times")

    rc = cli.main(["fit", "--config", str(tmp_path / "absent.yaml"), "--out", str(tmp_path)])
    _assert_one_error(capsys, rc, "absent.yaml")


# ---------------------------------------------------------------------------------------------
# fit / refine on a tiny pair of tomograms


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """Two noisy halves of one small volume (24×32×32, 8 Å voxels)."""
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(3)
    zz, yy, xx = np.mgrid[:24, :32, :32]
    signal_ = np.zeros((24, 32, 32), np.float32)
    for _ in range(6):
        c = rng.uniform((4, 4, 4), (20, 28, 28))
        signal_ += np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 8.0)
    even = write_mrc(root / "e.mrc", signal_ + 0.5 * rng.standard_normal(signal_.shape), 8.0)
    odd = write_mrc(root / "o.mrc", signal_ + 0.5 * rng.standard_normal(signal_.shape), 8.0)
    return even, odd


@pytest.fixture(scope="module")
def fitted(tiny_pair, tmp_path_factory):
    even, odd = tiny_pair
    out = tmp_path_factory.mktemp("fit")
    rc = cli.main(["fit", "--even", str(even), "--odd", str(odd), "--tilt-range", "-60", "60",
                   "--out", str(out), "--val-fraction", "0.2", "-q", *TINY_FIT])
    assert rc == 0
    return out


def test_fit_writes_checkpoints_and_losses(fitted):
    assert (fitted / "losses.csv").exists()
    lines = (fitted / "losses.csv").read_text().strip().splitlines()
    assert len(lines) >= 2  # header + one epoch
    assert list(fitted.glob("*.pt")) or list(fitted.rglob("*.pt"))


def test_fit_angles_file_sets_tilt_range(tmp_path):
    tlt = _write_tlt(tmp_path / "ts.tlt", [-54.0, -20.0, 0.0, 30.0, 62.0])
    parser = cli.build_parser()
    args = parser.parse_args(["fit", "--angles", str(tlt), "--out", "o"])
    assert cli.tilt_range_for_fit(args) == (-54.0, 62.0)


def test_fit_errors(tiny_pair, tmp_path, capsys):
    even, odd = tiny_pair
    rc = cli.main(["fit", "--even", str(even), "--odd", str(odd), "--out", str(tmp_path)])
    _assert_one_error(capsys, rc, "--tilt-range")
    other = write_mrc(tmp_path / "small.mrc", np.zeros((8, 8, 8), np.float32))
    rc = cli.main(["fit", "--even", str(even), "--odd", str(other), "--tilt-range", "-60", "60",
                   "--out", str(tmp_path)])
    _assert_one_error(capsys, rc, "shape")
    rc = cli.main(["fit", "--even", str(even), "--odd", str(odd), "--tilt-range", "-60", "60",
                   "--out", str(tmp_path), "--preset", "huge"])
    _assert_one_error(capsys, rc, "huge")


def test_ctrl_c_during_fit_saves_stopped_checkpoint_and_exits_130(tiny_pair, tmp_path,
                                                                   monkeypatch, capsys):
    from napari_deepdewedge.core import fitting

    real_fit_iter = fitting.fit_iter

    def interrupting(*a, **kw):
        sent = False
        for event in real_fit_iter(*a, **kw):
            if type(event).__name__ == "StepDone" and not sent:
                sent = True
                os.kill(os.getpid(), signal.SIGINT)  # as a user pressing Ctrl-C
            yield event

    monkeypatch.setattr(fitting, "fit_iter", interrupting)
    even, odd = tiny_pair
    out = tmp_path / "fit"
    rc = cli.main(["fit", "--even", str(even), "--odd", str(odd), "--tilt-range", "-60", "60",
                   "--out", str(out), *TINY_FIT, "--epochs", "3"])  # the last --epochs wins
    assert rc == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert any("stopped" in p.name for p in out.rglob("*.pt")), list(out.rglob("*"))
    assert "interrupt" in capsys.readouterr().err

    monkeypatch.setattr(fitting, "fit_iter", real_fit_iter)
    rc = cli.main(["fit", "--even", str(even), "--odd", str(odd), "--tilt-range", "-60", "60",
                   "--out", str(out), *TINY_FIT, "--epochs", "3", "-q",
                   "--resume", str(out / "stopped.pt")])
    assert rc == 0
    epochs = [line.split(",")[0] for line in (out / "losses.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_fit_under_torchrun_two_processes(tiny_pair, tmp_path):
    """Two CPU processes (gloo): both join the group, rank 0 alone writes files and prints."""
    even, odd = tiny_pair
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        ["torchrun", "--nproc-per-node", "2", "-m", "napari_deepdewedge.cli", "fit",
         "--tomo0", str(even), "--tomo1", str(odd), "--tilt-range", "-60", "60",
         "--out", str(out), *TINY_FIT, "--batch-size", "4"],
        capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "latest.pt").exists() and (out / "losses.csv").exists()
    assert res.stdout.count("latest checkpoint:") == 1  # printed by rank 0 only


def test_refine_with_halves(tiny_pair, fitted, tmp_path, capsys):
    even, odd = tiny_pair
    ckpt = sorted(fitted.rglob("*.pt"))[0]
    out = tmp_path / "ref" / "tomo.mrc"
    rc = cli.main(["refine", "--even", str(even), "--odd", str(odd), "--model", str(ckpt),
                   "--out", str(out), "--halves", "--device", "cpu", "--batch-size", "3", "-q"])
    assert rc == 0, capsys.readouterr().err
    for name in ("tomo.mrc", "tomo_half0.mrc", "tomo_half1.mrc", "tomo_consistency.mrc"):
        vol = read_mrc(out.parent / name, mmap=False)
        assert vol.data.shape == (24, 32, 32), name
        assert np.allclose(vol.voxel_size, (8.0,) * 3)
        assert np.isfinite(vol.data).all()
    rc = cli.main(["refine", "--even", str(even), "--odd", str(odd), "--model",
                   str(tmp_path / "none.pt"), "--out", str(out)])
    _assert_one_error(capsys, rc, "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    rc = cli.main(["refine", "--even", str(even), "--odd", str(odd), "--model", str(junk),
                   "--out", str(out), "-q"])
    _assert_one_error(capsys, rc, "junk.pt")


# ---------------------------------------------------------------------------------------------
# run and demo


def test_run_whole_pipeline(tmp_path, capsys):
    stack = write_mrc(tmp_path / "TS.st", _stack(n_tilts=21, ny=32, nx=32, seed=4), PIXEL)
    _write_tlt(tmp_path / "TS.rawtlt", np.arange(-60, 61, 6.0))
    out = tmp_path / "job"
    rc = cli.main(["run", str(stack), "--thickness", "24", "--out", str(out), "-q", *TINY_FIT])
    assert rc == 0, capsys.readouterr().err
    for name in ("TS_even.mrc", "TS_odd.mrc", "TS_refined.mrc", "TS_refined_half0.mrc",
                 "TS_refined_half1.mrc", "TS_refined_consistency.mrc"):
        vol = read_mrc(out / name, mmap=False)
        assert vol.data.shape == (24, 32, 32), name
        assert np.allclose(vol.voxel_size, (PIXEL,) * 3)
    assert (out / "model" / "losses.csv").exists()


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = cli.main(["demo", "--out", str(out), "--size", "tiny", "--device", "cpu", "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for name in ("demo_refined.mrc", "demo_fbp.mrc", "demo_ground_truth.mrc"):
        vol = read_mrc(out / name, mmap=False)
        assert vol.data.shape == cli.DEMO_SIZES["tiny"]["shape"]
    assert (out / "demo_comparison.png").stat().st_size > 10_000
    assert "CC" in captured.out and "refined" in captured.out
    import json

    figures = json.loads((out / "demo_metrics.json").read_text())
    for key in ("fbp_full", "fbp_even_odd_mean", "refined"):
        assert -1.0 <= figures["cc"][key] <= 1.0
    assert figures["cc"]["fbp_full"] > 0.1  # the reconstruction resembles the phantom


# ---------------------------------------------------------------------------------------------
# nothing overwritten by surprise; progress in logs


def test_reconstruct_refuses_to_overwrite_without_flag(tilt_stack, tmp_path, capsys):
    out = tmp_path / "rec"
    args = ["reconstruct", str(tilt_stack), "--thickness", "4", "--device", "cpu", "--out",
            str(out), "-q"]
    assert cli.main(args) == 0
    before = (out / "TS_even.mrc").stat().st_mtime_ns
    capsys.readouterr()
    rc = cli.main(args)
    _assert_one_error(capsys, rc, "TS_even.mrc", "--overwrite")
    assert (out / "TS_even.mrc").stat().st_mtime_ns == before
    assert cli.main(args + ["--overwrite"]) == 0


def test_fit_without_subtomo_size_lowers_the_presets_cube_to_fit_the_halves(tiny_pair, tmp_path,
                                                                          capsys):
    """No --subtomo-size: the preset's 48 (cut at 68) cannot fit 24 slices, so the fit takes the
    largest that does (16 at depth 2, cut at 24) and says so in one line; a resume keeps the
    checkpoint's size (also with --preset given); a typed size keeps the engine's error."""
    from napari_deepdewedge.core.checkpoint import load_checkpoint

    even, odd = tiny_pair
    base = ["fit", "--even", str(even), "--odd", str(odd), "--tilt-range", "-60", "60",
            "--channels", "4", "--depth", "2", "--batch-size", "2", "--strides", "8", "16", "16",
            "--device", "cpu", "--seed", "1"]
    out = tmp_path / "m"
    assert cli.main([*base, "--out", str(out), "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "cube size 48 → 16: the halves are 24 voxels thick (a 48 cube is cut at 68); give " \
           "--subtomo-size to choose" in err
    assert load_checkpoint(out / "latest.pt")["config"]["subtomo_size"] == 16
    assert cli.main([*base, "--out", str(out), "--epochs", "2", "--preset", "fast",
                     "--resume", str(out / "latest.pt")]) == 0
    assert "cube size" not in capsys.readouterr().err
    latest = load_checkpoint(out / "latest.pt")
    assert (latest["epoch"], latest["config"]["subtomo_size"]) == (2, 16)
    rc = cli.main([*base, "--out", str(tmp_path / "typed"), "--epochs", "1", "--subtomo-size", "20"])
    _assert_one_error(capsys, rc, "extraction cube of edge 30", "at most 16")


def test_fit_into_a_folder_with_checkpoints_names_the_resume_command(tiny_pair, tmp_path, capsys):
    import shlex

    even, odd = tiny_pair
    out = tmp_path / "model"
    args = ["fit", "--even", str(even), "--odd", str(odd), "--tilt-range", "-60", "60",
            "--out", str(out), "-q", *TINY_FIT]
    assert cli.main(args) == 0
    capsys.readouterr()
    rc = cli.main(args + ["--epochs", "2"])
    line = _assert_one_error(capsys, rc, f"--resume {out / 'latest.pt'}", "--overwrite")
    command = line.split("run: ", 1)[1].split(" ; or", 1)[0]
    assert shlex.split(command)[0] == "deepdewedge"
    assert cli.main(shlex.split(command)[1:]) == 0  # the command it gives works as is
    epochs = [row.split(",")[0] for row in (out / "losses.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]
    # --overwrite starts afresh: the earlier periodic/stopped checkpoints are gone
    (out / "epoch_0009.pt").write_bytes(b"stale")
    assert cli.main(args + ["--overwrite"]) == 0
    assert not (out / "epoch_0009.pt").exists()
    epochs = [row.split(",")[0] for row in (out / "losses.csv").read_text().splitlines()[1:]]
    assert epochs == ["1"]


def test_progress_in_a_log_is_a_few_plain_lines(tiny_pair, fitted, tilt_stack, tmp_path, capsys):
    """stderr is not a terminal under pytest's capture, as under sbatch / nohup > log."""
    even, odd = tiny_pair
    rc = cli.main(["fit", "--even", str(even), "--odd", str(odd), "--tilt-range", "-60", "60",
                   "--out", str(tmp_path / "m"), *TINY_FIT, "--epochs", "3"])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = err.splitlines()
    assert "\r" not in err and "\x1b" not in err
    assert [line.split(":")[0] for line in lines if line.startswith("fit epoch")] == \
        ["fit epoch 1/3", "fit epoch 2/3", "fit epoch 3/3"]
    assert "best.pt: the epoch with the lowest validation loss; runs all 3 epochs" in lines  # the rule
    assert len(lines) <= 7, lines  # header + rule + 3 epochs + summary

    ckpt = sorted(fitted.glob("latest.pt"))[0]
    rc = cli.main(["refine", "--even", str(even), "--odd", str(odd), "--model", str(ckpt),
                   "--out", str(tmp_path / "r.mrc"), "--device", "cpu", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "\r" not in err
    assert 2 <= len(lines) <= 10 and all(line.startswith("refine: ") for line in lines), lines
    assert lines[-1].startswith("refine: 100 %")

    rc = cli.main(["reconstruct", str(tilt_stack), "--thickness", "4", "--device", "cpu",
                   "--full", "--out", str(tmp_path / "rec")])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) <= 12, lines
    # progress lines, then one line on what was done about the CTF, then the summary
    assert lines[-3].startswith("reconstruct: 100 %") and lines[-2].startswith("CTF: ")
    assert lines[-1].startswith("reconstructed 3")


def test_progress_bar_on_a_terminal_and_lines_per_tenth_elsewhere():
    import io

    from napari_deepdewedge.cli.progress import Progress

    log = io.StringIO()
    with Progress("refine", unit="batch", stream=log) as progress:
        for done in range(1, 201):
            progress(done, 200)
    lines = log.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"refine: {p:3d} %" for p in range(10, 101, 10)]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    with Progress("refine", unit="batch", stream=tty) as progress:
        for done in range(1, 201):
            progress(done, 200)
    assert "\r" in tty.getvalue() and "200/200" in tty.getvalue()  # a tqdm bar


def _tensor_meta(value):
    """What selects a kernel: shape, strides (memory format), dtype, storage offset."""
    import torch

    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), str(value.dtype), value.storage_offset())
    if isinstance(value, float):
        return repr(value)  # NaN != NaN: compare floats by their text
    return value if isinstance(value, (int, bool, str, type(None))) else type(value).__name__


@pytest.fixture
def fit_records(monkeypatch):
    """Per call of ``core.fitting.fit_iter``: every tensor operation it runs (aten op, the meta of
    every argument, thread count, in order) and a hash of every network input's values."""
    import hashlib

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from napari_deepdewedge.core import fitting, unet

    records = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            flat, _ = tree_flatten((args, kwargs or {}))
            records[-1].append((str(func), tuple(_tensor_meta(a) for a in flat), torch.get_num_threads()))
            return out

    forward = unet.UNet3D.forward

    def recorded_forward(self, x):
        data = hashlib.sha1(x.detach().contiguous().cpu().numpy().tobytes()).hexdigest()
        records[-1].append(("network input", _tensor_meta(x), data, torch.is_grad_enabled(), self.training))
        return forward(self, x)

    fit_iter = fitting.fit_iter

    def recorded_fit_iter(*args, **kwargs):
        records.append([])
        events = fit_iter(*args, **kwargs)
        while True:
            with Record():  # not across the yield: the caller's own work is not the fit's
                event = next(events, None)
            if event is None:
                return
            yield event

    monkeypatch.setattr(unet.UNet3D, "forward", recorded_forward)
    monkeypatch.setattr(fitting, "fit_iter", recorded_fit_iter)
    return records


def test_parity_cli_and_pipeline_write_the_same_files(tilt_stack, tmp_path, capsys, fit_records):
    """The CLI adds nothing to the pipeline's jobs: reconstruct (binning 2), fit a tiny model and
    refine with per-half outputs through the CLI and through pipeline calls (what the docks
    call) give the same file names, shapes, voxel sizes and bit-identical contents (CPU, one
    thread, same seed). The two fits do the same work on the same tensors — every tensor
    operation with the same shapes, strides and dtypes in the same order, the network fed the
    same values — which is what makes the files bit-identical on any CPU (issue 17: an AVX-512
    machine picks kernels by layout and batch where AVX2 happened not to). The fit has
    several cubes per batch (3 fitting cubes in steps of 2 and 1, 2 validation cubes in one
    batch), so batching and layout differences would show."""
    import torch

    from napari_deepdewedge.core import perf
    from napari_deepdewedge.core.fitting import FitConfig
    from napari_deepdewedge.core.io import load_tilt_series
    from napari_deepdewedge.pipeline import (FitRequest, HalvesRequest, RefineRequest, fit_events,
                                             reconstruct_halves, refine, write_halves,
                                             write_refined)

    perf.probe_bf16_cpu()  # the once-per-process precision probe, run outside both fits
    by_cli, by_api = tmp_path / "cli", tmp_path / "api"
    assert cli.main(["reconstruct", str(tilt_stack), "--thickness", "12", "--bin", "2", "--full",
                     "--device", "cpu", "--out", str(by_cli), "-q"]) == 0
    fit_flags = ["--subtomo-size", "8", "--channels", "4", "--depth", "2", "--epochs", "2",
                 "--batch-size", "2", "--strides", "1", "1", "1", "--val-fraction", "0.4",
                 "--device", "cpu", "--seed", "1"]
    assert cli.main(["fit", "--even", str(by_cli / "TS_even.mrc"), "--odd", str(by_cli / "TS_odd.mrc"),
                     "--angles", str(tilt_stack.with_suffix(".tlt")), "--out", str(by_cli / "model"),
                     "-q", *fit_flags]) == 0
    assert cli.main(["refine", "--even", str(by_cli / "TS_even.mrc"), "--odd", str(by_cli / "TS_odd.mrc"),
                     "--model", str(by_cli / "model" / "best.pt"), "--out", str(by_cli / "TS_refined.mrc"),
                     "--halves", "--device", "cpu", "-q"]) == 0

    series = load_tilt_series(tilt_stack)
    halves = reconstruct_halves(HalvesRequest(series=series, thickness=12, binning=2, want_full=True,
                                              device="cpu"))
    write_halves(by_api, halves.stem, halves)
    config = FitConfig.from_preset("fast", subtomo_size=8, channels=4, depth=2, epochs=2, batch_size=2,
                                   strides=(1, 1, 1), val_fraction=0.4, device="cpu", seed=1,
                                   tilt_min=halves.tilt_range[0], tilt_max=halves.tilt_range[1],
                                   out_dir=str(by_api / "model"), voxel_size=halves.voxel_size)
    finished = list(fit_events(FitRequest(even=halves.even, odd=halves.odd, config=config)))[-1]
    result = refine(RefineRequest(model=finished.best_path, even=halves.even, odd=halves.odd,
                                  device="cpu", keep_halves=True))
    write_refined(by_api / "TS_refined.mrc", result, halves.voxel_size, halves.origin)

    assert len(fit_records) == 2
    inputs = [[r for r in rec if r[0] == "network input"] for rec in fit_records]
    batches = sorted({r[1][0][0] for r in inputs[0]})
    assert batches == [1, 2], batches  # batches of 2 and of 1 were fed (the test can see batching)
    assert inputs[0] == inputs[1]  # the network: same calls, layouts, values, modes, order
    for i, (a, b) in enumerate(zip(*fit_records)):
        assert a == b, (i, a, b)  # every tensor operation of the two fits
    assert len(fit_records[0]) == len(fit_records[1])

    names = sorted(p.name for p in by_cli.glob("*.mrc"))
    assert names == sorted(p.name for p in by_api.glob("*.mrc")) == [
        "TS_even.mrc", "TS_full.mrc", "TS_odd.mrc", "TS_refined.mrc", "TS_refined_consistency.mrc",
        "TS_refined_half0.mrc", "TS_refined_half1.mrc"]
    for name in names:
        a, b = read_mrc(by_cli / name, mmap=False), read_mrc(by_api / name, mmap=False)
        assert a.data.shape == b.data.shape and a.data.shape[0] == 12, name
        assert np.allclose(a.voxel_size, (2 * PIXEL,) * 3) and np.allclose(b.voxel_size, a.voxel_size)
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    weights = [torch.load(d / "model" / "best.pt", weights_only=True)["state_dict"] for d in (by_cli, by_api)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


@pytest.mark.parametrize("residual", [True, False])
def test_ddw_yaml_residual_reaches_fit_config(tmp_path, capsys, residual):
    """unet_params_dict.residual of the original layout sets FitConfig.residual (both ways, so
    neither the default nor a preset can pass for it)."""
    text = DDW_YAML.replace("drop_prob: 0.0}", f"drop_prob: 0.0, residual: {str(residual).lower()}}}")
    args = _fit_args(tmp_path, text)
    from napari_deepdewedge.cli.fitting import fit_config
    from napari_deepdewedge.cli.inputs import tilt_range_for_fit

    cfg = fit_config(args, tilt_range=tilt_range_for_fit(args), out_dir="o", voxel_size=(1, 1, 1))
    assert cfg.residual is residual
    assert "residual" not in capsys.readouterr().err  # translated, not warned about as unknown


def test_ddw_yaml_residual_must_be_boolean(tmp_path):
    from napari_deepdewedge.core.config import normalize_config
    from napari_deepdewedge.core.errors import DDWError

    with pytest.raises(DDWError, match="residual must be true or false"):
        normalize_config({"fit_model": {"unet_params_dict": {"residual": "yes"}}})
