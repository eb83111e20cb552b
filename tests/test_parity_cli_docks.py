"""Parity: the same job through the command line and through the docks writes the same files.

One tiny tilt series (its .tlt beside it) goes through

- the CLI: ``deepdewedge reconstruct --bin 2 --full``, ``fit`` (tiny U-Net, seed 0),
  ``refine --halves``;
- the docks: File > Open, *Tilt series → halves* (binning 2, the same thickness) and its *Save…*,
  *Fit* with the same settings, *Refine* with per-half results and its *Save…*.

Every file (reconstructions, checkpoints, loss log, refined results) must have the same name,
shape, voxel size and origin, and the same contents BIT FOR BIT: everything here is
deterministic on the CPU with the same seed (the same engine functions on the same float32
arrays, in the same order, with the same torch thread count), so no tolerance is allowed. The
only exceptions are fields that are not results: the ``seconds`` column of losses.csv, and the
``out_dir``/``preview_every``/``device`` entries of the checkpoints' config (where the files
went, whether the dock showed live previews, the device name the user chose).

    xvfb-run -a python -m pytest tests/ -k parity -q
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

pytestmark = pytest.mark.gui

PLUGIN = "napari-deepdewedge"
WAIT_MS = 300_000
SHAPE = (32, 48, 48)  # phantom (Z, Y, X): binned by 2 → 16 × 24 × 24 tomograms
THICKNESS = 16  # binned voxels, in both front ends
PIXEL = 10.0
ORIGIN = (0.0, 30.0, -20.0)  # Å, (Z, Y, X): every output keeps it
FIT = dict(subtomo_size=8, channels=4, depth=1, epochs=2, batch_size=4, update_every=1,
           val_fraction=0.1)
REFINE_BATCH = 4
# checkpoint config fields that say where/how a run was shown, not what it computed
NOT_RESULTS = {"out_dir", "preview_every", "device"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """TS.mrc (voxel size and origin in the header) and TS.tlt beside it."""
    from napari_deepdewedge.core.io.mrc import write_mrc
    from napari_deepdewedge.core.evaluate.phantom import make_sample

    folder = tmp_path_factory.mktemp("inputs")
    sample = make_sample(shape=SHAPE, tilt_range=(-60.0, 60.0, 4.0), snr=0.5, seed=5,
                         pixel_size=PIXEL)
    stack = folder / "TS.mrc"
    write_mrc(stack, sample.tilt_series, voxel_size=(PIXEL,) * 3, origin=ORIGIN)
    (folder / "TS.tlt").write_text("".join(f"{a:.2f}\n" for a in sample.angles))
    return stack, folder / "TS.tlt"


def run_cli(*argv):
    from napari_deepdewedge.cli import main

    assert main([str(a) for a in argv]) == 0, argv


def cli_outputs(stack, tlt, out: Path):
    run_cli("reconstruct", stack, "--thickness", THICKNESS, "--bin", 2, "--full",
            "--device", "cpu", "--out", out, "--quiet")
    run_cli("fit", "--even", out / "TS_even.mrc", "--odd", out / "TS_odd.mrc", "--angles", tlt,
            "--out", out / "model", "--device", "cpu", "--seed", 0, "--preset", "fast",
            "--subtomo-size", FIT["subtomo_size"], "--channels", FIT["channels"],
            "--depth", FIT["depth"], "--epochs", FIT["epochs"],
            "--batch-size", FIT["batch_size"], "--update-every", FIT["update_every"],
            "--val-fraction", FIT["val_fraction"], "--lr-schedule", "warmup_cosine",
            "--warmup-epochs", 1, "--early-stop", 50, "--quiet")
    run_cli("refine", "--even", out / "TS_even.mrc", "--odd", out / "TS_odd.mrc",
            "--model", out / "model" / "latest.pt", "--out", out / "TS_refined.mrc",
            "--halves", "--batch-size", REFINE_BATCH, "--device", "cpu", "--quiet")


def dock_outputs(viewer, qtbot, stack, out: Path):
    ddw = viewer.window.add_plugin_dock_widget(PLUGIN, "DeepDeWedge")[1]
    layers = viewer.open(str(stack), plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["TS"]

    step1 = ddw.tiltseries
    step1.series.set_layer_name("TS")
    assert "31 angles" in step1.angle_summary.text()  # read from TS.tlt beside the stack
    step1.binning.setValue(2)
    step1.thickness.setValue(THICKNESS)
    step1.full.setChecked(True)
    step1.device.setCurrentText("cpu")
    assert step1.reconstruct()
    qtbot.waitUntil(lambda: not step1.busy, timeout=WAIT_MS)
    assert step1.save(str(out))
    qtbot.waitUntil(lambda: not step1.busy, timeout=WAIT_MS)

    fit = ddw.fit
    assert (fit.even.layer_name(), fit.odd.layer_name()) == ("TS even", "TS odd")
    fit.preset.setCurrentText("fast")
    fit.device.setCurrentText("cpu")
    for box, key in ((fit.subtomo_size, "subtomo_size"), (fit.channels, "channels"),
                     (fit.depth, "depth"), (fit.epochs, "epochs"), (fit.batch_size, "batch_size"),
                     (fit.update_every, "update_every"), (fit.val_fraction, "val_fraction")):
        box.setValue(FIT[key])
    fit.lr_schedule.setCurrentText("warmup_cosine")
    fit.warmup_epochs.setValue(1)
    fit.early_stop_patience.setValue(50)
    fit.preview_every.setValue(1)  # as a user watches it: previews must not change the fit
    fit.out_dir.setText(str(out / "model"))
    assert fit.start()
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    assert fit.finished is not None and not fit.finished.stopped

    ref = ddw.refine
    assert ref.model_path.text() == str(out / "model" / "latest.pt")
    ref.keep_halves.setChecked(True)
    ref.batch.setValue(REFINE_BATCH)
    ref.device.setCurrentText("cpu")
    assert ref.refine()
    qtbot.waitUntil(lambda: not ref.busy, timeout=WAIT_MS)
    assert ref.save(str(out / "TS_refined.mrc"))
    qtbot.waitUntil(lambda: not ref.busy, timeout=WAIT_MS)
    return ddw


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_same_mrc(a: Path, b: Path):
    import mrcfile

    with mrcfile.open(a, permissive=True) as ma, mrcfile.open(b, permissive=True) as mb:
        assert ma.data.shape == mb.data.shape, a.name
        assert ma.data.dtype == mb.data.dtype, a.name
        for axis in "xyz":
            assert float(getattr(ma.voxel_size, axis)) == float(getattr(mb.voxel_size, axis))
            assert float(getattr(ma.header.origin, axis)) == float(getattr(mb.header.origin, axis))
        np.testing.assert_array_equal(ma.data, mb.data, err_msg=a.name)


def assert_same_checkpoint(a: Path, b: Path):
    from napari_deepdewedge.core.model.checkpoint import load_checkpoint

    # a fitting-state file (the wedge-updated cubes) is not a model checkpoint
    need = {"require": ("fit0",)} if a.name.startswith("fit_state_") else {}
    pa, pb = load_checkpoint(a, **need), load_checkpoint(b, **need)
    assert set(pa) == set(pb), a.name
    for key in pa:
        va, vb = pa[key], pb[key]
        if key == "config":
            va = {k: v for k, v in va.items() if k not in NOT_RESULTS}
            vb = {k: v for k, v in vb.items() if k not in NOT_RESULTS}
        if key == "inputs":  # where the halves were read from is not a result (their name is)
            va = [{k: v for k, v in row.items() if not k.endswith("_path")} for row in va]
            vb = [{k: v for k, v in row.items() if not k.endswith("_path")} for row in vb]
        if key == "history":  # [epoch, fit loss, val loss, seconds]: the time is not a result
            va = [row[:3] for row in va]
            vb = [row[:3] for row in vb]
        assert_same_value(va, vb, f"{a.name}:{key}")


def assert_same_value(a, b, where):
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_value(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_value(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def losses_without_time(path: Path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return [row[:3] for row in rows]


def test_parity_cli_and_docks_write_the_same_files(make_napari_viewer, qtbot, inputs, tmp_path):
    stack, tlt = inputs
    cli_dir, dock_dir = tmp_path / "cli", tmp_path / "dock"
    cli_outputs(stack, tlt, cli_dir)
    viewer = make_napari_viewer()
    ddw = dock_outputs(viewer, qtbot, stack, dock_dir)

    names = files_under(cli_dir)
    assert names == files_under(dock_dir)
    for expected in ("TS_even.mrc", "TS_odd.mrc", "TS_full.mrc", "TS_refined.mrc",
                     "TS_refined_half0.mrc", "TS_refined_half1.mrc",
                     "TS_refined_consistency.mrc", "model/latest.pt", "model/best.pt",
                     "model/losses.csv"):
        assert expected in names, names
    for name in names:
        a, b = cli_dir / name, dock_dir / name
        if name.endswith(".mrc"):
            assert_same_mrc(a, b)
        elif name.endswith(".pt"):
            assert_same_checkpoint(a, b)
        elif name.endswith(".csv"):
            assert losses_without_time(a) == losses_without_time(b)
        else:
            assert a.read_bytes() == b.read_bytes(), name

    # the files hold what the docks show: the binned geometry, the signed consistency map
    import mrcfile

    with mrcfile.open(cli_dir / "TS_even.mrc") as mrc:
        assert mrc.data.shape == (THICKNESS, SHAPE[1] // 2, SHAPE[2] // 2)
        assert float(mrc.voxel_size.x) == 2 * PIXEL
    even_layer = viewer.layers["TS even"]
    np.testing.assert_allclose(even_layer.scale, (2 * PIXEL,) * 3)
    np.testing.assert_allclose(even_layer.translate, ORIGIN)
    with mrcfile.open(dock_dir / "TS_refined_consistency.mrc") as mrc:
        signed = np.asarray(mrc.data)
    with mrcfile.open(dock_dir / "TS_refined_half0.mrc") as h0, \
            mrcfile.open(dock_dir / "TS_refined_half1.mrc") as h1:
        np.testing.assert_array_equal(signed, np.asarray(h0.data) - np.asarray(h1.data))
    assert signed.min() < 0 < signed.max()
    shown = viewer.layers[ddw.refine.outputs["consistency"]].data
    np.testing.assert_array_equal(shown, np.abs(signed))
