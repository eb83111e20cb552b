"""The napari dock widgets, driven like a user would (issue 4 acceptance).

Run under a virtual display:  xvfb-run -a python -m pytest tests/test_widgets.py -x -q
Widgets are loaded through napari's plugin system (the npe2 manifest), never imported directly
for docking. Everything is tiny (32×48×48 phantom, 16³ cubes, 4-channel depth-2 U-Net).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui
sys.path.insert(0, str(Path(__file__).parent))
from gui_probe import set_tiny_fit  # noqa: E402  (the tiny fit form, shared with the probes)

from conftest import PLUGIN, dock  # noqa: E402  (the one dock helper)
ROOT = Path(__file__).resolve().parents[1]
TINY_SHAPE = (32, 48, 48)
PIXEL = 10.0
WAIT_MS = 120_000


# ----------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny_sample():
    """Layer-data tuples of a tiny phantom: tilt series (angles in metadata) + ground truth."""
    from napari_deepdewedge._sample_data import sample_layers

    return sample_layers(shape=TINY_SHAPE, tilt_range=(-60.0, 60.0, 4.0), snr=0.5, seed=3)


def add_sample(viewer, layers):
    for data, kwargs, _kind in layers:
        viewer.add_image(data, **kwargs)


class Notes:
    """Collects napari notifications emitted while a test runs."""

    def __init__(self):
        from napari.utils.notifications import notification_manager

        self.manager = notification_manager
        self.start = len(notification_manager.records)

    @property
    def new(self):
        return self.manager.records[self.start:]

    def errors(self):
        return [str(n.message) for n in self.new if str(n.severity).lower().endswith("error")]

    def mark(self):
        self.start = len(self.manager.records)


def wait_idle(qtbot, panel, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: not panel.busy, timeout=timeout)


def layer(viewer, name):
    names = [lay.name for lay in viewer.layers]
    assert name in names, f"no layer '{name}' among {names}"
    return viewer.layers[name]


def tiny_fit_settings(fit, out_dir, epochs=2):
    set_tiny_fit(fit, out_dir, epochs)


# ----------------------------------------------------------------------------------- tests
def test_manifest_widgets_dock_through_plugin_system(make_napari_viewer):
    import npe2

    from napari_deepdewedge import widgets

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    names = [w.display_name for w in manifest.contributions.widgets]
    expected = {
        "DeepDeWedge": widgets.DeepDeWedgeWidget,
        "Tilt series → halves": widgets.TiltSeriesWidget,
        "Fourier inspector": widgets.FourierInspectorWidget,
        "Fit": widgets.FitWidget,
        "Refine": widgets.RefineWidget,
        "Compare": widgets.CompareWidget,
        "Refine many": widgets.BatchRefineWidget,
    }
    assert set(names) == set(expected)
    viewer = make_napari_viewer()
    for name in names:
        dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert isinstance(widget, expected[name]), name
        assert dock_widget.isVisible() or not viewer.window._qt_window.isVisible()
    combined = viewer.window.add_plugin_dock_widget(PLUGIN, "DeepDeWedge")[1]
    assert [type(s) for s in combined.steps] == [
        widgets.TiltSeriesWidget, widgets.FourierInspectorWidget, widgets.FitWidget,
        widgets.RefineWidget, widgets.CompareWidget]
    # every parameter a user can touch explains itself
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

    for step in combined.steps:
        for child in step.findChildren((QAbstractSpinBox, QComboBox, QLineEdit, QAbstractButton)):
            if child.parent() is not None and type(child).__name__ in ("QLineEdit",) and \
                    isinstance(child.parent(), (QAbstractSpinBox, QComboBox)):
                continue  # the editor inside a spin/combo box
            assert child.toolTip().strip(), f"{type(step).__name__}: {type(child).__name__} " \
                                            f"'{getattr(child, 'text', lambda: '')()}' has no tooltip"


def test_end_to_end_tiny_phantom(make_napari_viewer, qtbot, tiny_sample, tmp_path):
    """reconstruct → inspector → fit (loss plot, preview) → refine (+consistency) → save →
    compare, all through the combined dock, in napari thread workers."""
    import mrcfile

    t_start = time.perf_counter()
    viewer = make_napari_viewer()
    add_sample(viewer, tiny_sample)
    notes = Notes()
    ddw = dock(viewer, "DeepDeWedge")

    # 1. tilt series → halves (angles from the layer metadata, thickness from metadata)
    step1 = ddw.tiltseries
    assert step1.series.layer_name() == "phantom tilt series"
    assert step1.thickness.value() == TINY_SHAPE[0]
    assert "angles" in step1.angle_summary.text()
    step1.device.setCurrentText("cpu")
    assert step1.reconstruct()
    assert step1.busy
    wait_idle(qtbot, step1)
    assert not notes.errors(), notes.errors()
    for key in ("even", "odd", "FBP"):
        lay = layer(viewer, f"phantom {key}")
        assert lay.data.shape == TINY_SHAPE
        np.testing.assert_allclose(lay.scale, (PIXEL,) * 3)
        assert lay.contrast_limits[0] < lay.contrast_limits[1]
    assert ddw.state.even == "phantom even" and ddw.state.odd == "phantom odd"
    assert ddw.state.tilt_min == pytest.approx(-60.0) and ddw.state.tilt_max == pytest.approx(60.0)
    assert not layer(viewer, "phantom tilt series").visible

    # 2. Fourier inspector: the halves are preselected; spectra computed off the GUI thread
    insp = ddw.inspector
    qtbot.waitUntil(lambda: set(insp.images) == {"phantom even", "phantom odd"}, timeout=WAIT_MS)
    assert insp.images["phantom even"].shape == (TINY_SHAPE[0], TINY_SHAPE[2])
    assert insp.panel.titles == ["phantom even", "phantom odd"]
    added = insp.add_layers()
    assert added == ["phantom even x–z power", "phantom odd x–z power"]
    spec = layer(viewer, "phantom even x–z power")
    assert spec.data.shape == (TINY_SHAPE[0], TINY_SHAPE[2])
    assert "phantom even wedge edges" in [lay.name for lay in viewer.layers]
    for name in added + ["phantom even wedge edges", "phantom odd wedge edges"]:
        viewer.layers.remove(name)

    # 3. fit: halves preselected, a few epochs in the worker, loss plot and preview
    fit = ddw.fit
    assert fit.even.layer_name() == "phantom even" and fit.odd.layer_name() == "phantom odd"
    assert fit.tilt_min.value() == pytest.approx(-60.0)
    tiny_fit_settings(fit, tmp_path / "run", epochs=2)
    assert fit.start()
    assert ddw.state.fitting
    wait_idle(qtbot, fit)
    assert not notes.errors(), notes.errors()
    assert fit.finished is not None and not fit.finished.stopped
    assert fit.loss_plot.epochs == [1, 2]
    assert len(fit.loss_plot.fit_losses) == 2
    assert all(np.isfinite(fit.loss_plot.fit_losses))
    preview = layer(viewer, "DDW preview")
    assert preview.data.shape[1:] == TINY_SHAPE[1:] and preview.data.shape[0] == 16
    np.testing.assert_allclose(preview.scale, (PIXEL,) * 3)
    assert Path(ddw.state.checkpoint).is_file()
    assert (tmp_path / "run" / "losses.csv").is_file()

    # 4. refine: the model just fitted is preselected; per-half results + consistency
    ref = ddw.refine
    assert ref.model_path.text() == ddw.state.checkpoint
    assert ref.even.layer_name() == "phantom even"
    ref.device.setCurrentText("cpu")
    ref.keep_halves.setChecked(True)
    assert ref.refine()
    wait_idle(qtbot, ref)
    assert not notes.errors(), notes.errors()
    for name in ("phantom refined", "phantom refined even", "phantom refined odd",
                 "phantom consistency"):
        lay = layer(viewer, name)
        assert lay.data.shape == TINY_SHAPE
        np.testing.assert_allclose(lay.scale, (PIXEL,) * 3)
    assert np.isfinite(layer(viewer, "phantom refined").data).all()
    assert layer(viewer, "phantom consistency").colormap.name == "inferno"
    assert not layer(viewer, "DDW preview").visible

    # save: MRC with the voxel size, per-half results beside it
    target = tmp_path / "out" / "phantom_refined.mrc"
    assert ref.save(str(target))
    wait_idle(qtbot, ref)
    assert target.is_file() and (tmp_path / "out" / "phantom_refined_consistency.mrc").is_file()
    with mrcfile.open(target) as mrc:
        assert mrc.data.shape == TINY_SHAPE
        assert float(mrc.voxel_size.x) == pytest.approx(PIXEL)
        assert float(mrc.voxel_size.z) == pytest.approx(PIXEL)

    # 5. compare: FBP | refined | ground truth in a grid, same contrast, spectra below
    cmp_ = ddw.compare
    assert cmp_.before.layer_name() == "phantom FBP"
    assert cmp_.after.layer_name() == "phantom refined"
    assert cmp_.truth.layer_name() == "phantom ground truth"
    assert cmp_.compare()
    wait_idle(qtbot, cmp_)
    grid = viewer.canvas.grid
    assert grid.enabled and tuple(grid.shape) == (2, 3)
    limits = {tuple(layer(viewer, n).contrast_limits) for n in cmp_.compared}
    assert len(limits) == 1
    # volumes in the top row in order, each one's spectrum right under it
    for col, name in enumerate(cmp_.compared):
        for row, shown in enumerate((name, name + " x–z power")):
            index = viewer.layers.index(layer(viewer, shown))
            assert grid.position(index, viewer.layers) == (row, col), shown
    cmp_.restore()
    assert not grid.enabled
    assert not [lay.name for lay in viewer.layers if lay.name.endswith("x–z power")]

    elapsed = time.perf_counter() - t_start
    print(f"\nend-to-end widget test: {elapsed:.1f} s")
    (ROOT / ".pytest_widget_e2e_seconds").write_text(f"{elapsed:.1f}\n") if os.getenv(
        "DDW_RECORD_TIMING") else None


def _halves(viewer, tiny_sample, shape_odd=None):
    """Two noisy copies of the ground truth as halves (no reconstruction needed)."""
    truth = tiny_sample[1][0].astype(np.float32)
    rng = np.random.default_rng(0)
    even = truth + rng.normal(0, truth.std(), truth.shape).astype(np.float32)
    odd = truth + rng.normal(0, truth.std(), truth.shape).astype(np.float32)
    if shape_odd is not None:
        odd = odd[tuple(slice(0, n) for n in shape_odd)]
    meta = {"tilt_min": -60.0, "tilt_max": 60.0, "ddw_role": "even"}
    viewer.add_image(even, name="cell even", scale=(PIXEL,) * 3, metadata=dict(meta))
    viewer.add_image(odd, name="cell odd", scale=(PIXEL,) * 3, metadata=dict(meta, ddw_role="odd"))


def test_stop_returns_quickly_and_resume_continues(make_napari_viewer, qtbot, tiny_sample, tmp_path):
    from napari_deepdewedge.core.fit import loop as F
    from napari_deepdewedge.core.model.checkpoint import load_checkpoint
    from napari_deepdewedge.widgets._fit import Resumed

    viewer = make_napari_viewer()
    _halves(viewer, tiny_sample)
    fit = dock(viewer, "Fit")
    fit.even.set_layer_name("cell even")
    fit.odd.set_layer_name("cell odd")
    tiny_fit_settings(fit, tmp_path / "run", epochs=200)
    fit.preview_every.setValue(0)
    assert fit.start()
    qtbot.waitUntil(lambda: any(isinstance(e, F.StepDone) for e in fit.events), timeout=WAIT_MS)
    t0 = time.perf_counter()
    fit.stop()
    qtbot.waitUntil(lambda: not fit.running, timeout=10_000)
    took = time.perf_counter() - t0
    print(f"\nStop returned control after {took:.2f} s")
    assert took < 5.0, f"Stop took {took:.1f} s"
    qtbot.waitUntil(lambda: fit.finished is not None, timeout=5_000)
    assert fit.finished.stopped
    stopped = tmp_path / "run" / "stopped.pt"
    assert stopped.is_file()
    assert fit.resume_path.text() == str(stopped)
    assert fit.start_button.isEnabled() and not fit.stop_button.isEnabled()
    payload = load_checkpoint(stopped)
    done_epochs, done_step = int(payload["epoch"]), int(payload["step"])
    steps_before = [e for e in fit.events if isinstance(e, F.StepDone)]
    del payload

    # Resume: continues exactly after the saved step (not from scratch)
    fit.epochs.setValue(done_epochs + 1)
    assert fit.resume()
    wait_idle(qtbot, fit)
    events = fit.events
    assert isinstance(events[0], Resumed) and events[0].epoch == done_epochs
    first_step = next(e for e in events if isinstance(e, F.StepDone))
    assert (first_step.epoch, first_step.step) == (done_epochs + 1, done_step + 1)
    assert fit.finished is not None and not fit.finished.stopped
    assert fit.finished.epochs_done == done_epochs + 1
    assert fit.loss_plot.epochs == list(range(1, done_epochs + 2))
    assert len(steps_before) >= 1

    # closing the dock during a fit stops the worker and still leaves a checkpoint
    stopped.unlink()
    fit.epochs.setValue(done_epochs + 50)
    fit.resume_path.setText(str(tmp_path / "run" / "latest.pt"))
    assert fit.resume()
    n = len(fit.events)
    qtbot.waitUntil(lambda: any(isinstance(e, F.StepDone) for e in fit.events[n:]) or
                    not fit.running, timeout=WAIT_MS)
    t0 = time.perf_counter()
    fit.close()
    assert time.perf_counter() - t0 < 10.0
    assert not fit._job.running  # the worker thread has ended
    qtbot.waitUntil(lambda: not fit.running, timeout=5_000)
    assert stopped.is_file()


def test_bad_selections_notify_and_start_no_worker(make_napari_viewer, qtbot, tiny_sample, tmp_path):
    viewer = make_napari_viewer()
    ddw = dock(viewer, "DeepDeWedge")
    notes = Notes()

    # nothing loaded: every step refuses with a notification, no worker
    assert not ddw.tiltseries.reconstruct()
    assert not ddw.fit.start()
    assert not ddw.refine.refine()
    assert not ddw.compare.compare()
    errors = notes.errors()
    assert len(errors) == 4, errors
    assert "tilt-series layer" in errors[0] and "halves" in errors[1]
    for step in ddw.steps:
        assert not step.busy and not step._jobs

    # a 2D image is not offered as a tilt series / half, so it is refused too
    notes.mark()
    viewer.add_image(np.zeros((48, 48), np.float32), name="flat")
    assert ddw.tiltseries.series.layer_name() == ""
    assert not ddw.tiltseries.reconstruct()
    assert len(notes.errors()) == 1

    # halves of different shapes
    notes.mark()
    _halves(viewer, tiny_sample, shape_odd=(32, 48, 40))
    fit = ddw.fit
    fit.even.set_layer_name("cell even")
    fit.odd.set_layer_name("cell odd")
    fit.out_dir.setText(str(tmp_path))
    assert not fit.start()
    assert "different shapes" in notes.errors()[-1]
    ddw.refine.even.set_layer_name("cell even")
    ddw.refine.odd.set_layer_name("cell odd")
    ddw.refine.model_path.setText(str(tmp_path / "missing.pt"))
    assert not ddw.refine.refine()
    assert "different shapes" in notes.errors()[-1]
    # same layer twice / a missing checkpoint / wrong angle count
    fit.odd.set_layer_name("cell even")
    assert not fit.start()
    assert "two different layers" in notes.errors()[-1]
    viewer.add_image(np.zeros((7, 48, 48), np.float32), name="stack",
                     metadata={"tilt_angles": [0.0, 1.0, 2.0]})
    ddw.tiltseries.series.set_layer_name("stack")
    assert not ddw.tiltseries.reconstruct()
    assert "3 tilt angles" in notes.errors()[-1] and "7 projections" in notes.errors()[-1]
    for step in ddw.steps:
        assert not step.busy and not step._jobs


def test_screenshot_of_combined_dock(make_napari_viewer, qtbot, tiny_sample, tmp_path):
    """The docked combined widget renders (not blank) and is saved for docs/gui.md."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    add_sample(viewer, tiny_sample)
    ddw = dock(viewer, "DeepDeWedge")
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.02)
    out = tmp_path / "dock.png"
    pixmap = ddw.grab()
    assert pixmap.save(str(out))
    from qtpy.QtGui import QImage

    image = QImage(str(out)).convertToFormat(QImage.Format.Format_Grayscale8)
    width, height = image.width(), image.height()
    assert width >= 300 and height >= 300
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    pixels = np.frombuffer(ptr, np.uint8).reshape(height, image.bytesPerLine())[:, :width]
    assert pixels.std() > 10, "the dock screenshot looks blank"
    assert len(np.unique(pixels)) > 20
    whole = viewer.screenshot(canvas_only=False, flash=False)
    assert whole.std() > 10
    if os.getenv("DDW_SAVE_SCREENSHOTS"):
        target = ROOT / "docs" / "screenshot_dock_test.png"
        pixmap.save(str(target))


def test_quit_or_close_during_fit_ends_cleanly_with_checkpoint(make_napari_viewer, qtbot,
                                                                tiny_sample, tmp_path):
    """napari quits workers when it closes; a quit fit still saves stopped.pt, and closing the
    viewer mid-fit returns within seconds with the checkpoint written."""
    from napari_deepdewedge.core.fit import loop as F

    viewer = make_napari_viewer()
    _halves(viewer, tiny_sample)
    fit = dock(viewer, "Fit")
    fit.even.set_layer_name("cell even")
    fit.odd.set_layer_name("cell odd")
    tiny_fit_settings(fit, tmp_path / "run", epochs=200)
    fit.preview_every.setValue(0)
    stopped = tmp_path / "run" / "stopped.pt"

    # worker.quit(), as napari's task manager does on exit
    assert fit.start()
    qtbot.waitUntil(lambda: any(isinstance(e, F.StepDone) for e in fit.events), timeout=WAIT_MS)
    fit._job.worker.quit()
    qtbot.waitUntil(lambda: not fit.running, timeout=10_000)
    assert fit._job.stop.is_set() and stopped.is_file()
    assert fit.start_button.isEnabled()
    assert fit.finished is not None and fit.finished.stopped
    assert fit.resume_path.text() == str(stopped)

    # closing the viewer window
    stopped.unlink()
    assert fit.start()
    qtbot.waitUntil(lambda: any(isinstance(e, F.StepDone) for e in fit.events), timeout=WAIT_MS)
    job = fit._job
    t0 = time.perf_counter()
    viewer.close()
    assert time.perf_counter() - t0 < 10.0
    assert job.done.wait(5.0)
    assert stopped.is_file()


def test_frame_halves_and_ready_tomograms(make_napari_viewer, qtbot, tiny_sample):
    from napari_deepdewedge.widgets import _tiltseries as T

    viewer = make_napari_viewer()
    series, kwargs, _ = tiny_sample[0]
    rng = np.random.default_rng(1)
    for suffix in ("EVN", "ODD"):
        noisy = series + rng.normal(0, series.std(), series.shape).astype(np.float32)
        viewer.add_image(noisy, **dict(kwargs, name=f"TS_01_{suffix}"))
    ddw = dock(viewer, "DeepDeWedge")
    step1 = ddw.tiltseries
    step1.mode.setCurrentText(T.MODE_FRAMES)
    assert step1.series_odd.isVisibleTo(step1)
    step1.series.set_layer_name("TS_01_EVN")
    step1.series_odd.set_layer_name("TS_01_ODD")
    step1.binning.setValue(2)
    step1.full.setChecked(True)
    step1.device.setCurrentText("cpu")
    assert step1.reconstruct()
    wait_idle(qtbot, step1)
    for key in ("even", "odd"):
        lay = layer(viewer, f"TS_01 {key}")
        assert lay.data.shape == (TINY_SHAPE[0] // 2, TINY_SHAPE[1] // 2, TINY_SHAPE[2] // 2)
        np.testing.assert_allclose(lay.scale, (2 * PIXEL,) * 3)
    # the full FBP of frame halves is on the halves' scale: the mean of the two (as in the CLI)
    halves_mean = 0.5 * (layer(viewer, "TS_01 even").data + layer(viewer, "TS_01 odd").data)
    full = layer(viewer, "TS_01 FBP").data
    np.testing.assert_allclose(full, halves_mean, atol=1e-4 * np.abs(halves_mean).max())
    assert ddw.fit.even.layer_name() == "TS_01 even"

    # two ready tomograms: the odd partner is found by name; Fit/Refine preselect them
    viewer.layers["TS_01 even"].name = "tomo even"
    viewer.layers["TS_01 odd"].name = "tomo odd"
    step1.mode.setCurrentText(T.MODE_TOMOS)
    step1.tomo_even.set_layer_name("tomo even")
    assert step1.tomo_odd.layer_name() == "tomo odd"
    version = ddw.state.halves_version
    assert step1.use_tomograms()
    assert ddw.state.halves_version == version + 1
    assert ddw.fit.even.layer_name() == "tomo even" and ddw.refine.odd.layer_name() == "tomo odd"


def test_error_messages_say_what_to_do():
    from napari_deepdewedge.core.errors import DDWError
    from napari_deepdewedge.widgets._workers import friendly_error

    oom = friendly_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "smaller batch size" in oom and "sub-tomogram size" in oom
    assert friendly_error(DDWError("the two halves differ; fix it")) == "the two halves differ; fix it"
    assert "RAM" in friendly_error(MemoryError())
    assert "ValueError" in friendly_error(ValueError("odd"))
