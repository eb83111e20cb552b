"""A first-time user's click path on the built-in sample with the docks' own defaults (issue 17):
File > Open Sample → the *DeepDeWedge* panel → *Reconstruct* → *Fit* (only the epochs lowered)
→ *Refine* gives a refined layer, with no error notification on the way.

Nothing else is set: device, preset, cube size, batch, validation, wedge updates, previews and the
output folder (under ``~``, here a temporary home) are the docks' defaults. The sample is the real
one (64×128×128 halves): the *fast* preset's 48-voxel cube (cut at 68) does not fit its 64
slices, so the form lowers it to 40 and says so.

    xvfb-run -a python -m pytest tests/test_widgets_sample_defaults.py -q
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

pytestmark = pytest.mark.gui

PLUGIN = "napari-deepdewedge"
WAIT_MS = 600_000
SAMPLE_SHAPE = (64, 128, 128)  # the sample's halves (Z, Y, X)
PIXEL = 10.0  # Å, the sample's voxel size


def errors_since(start):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[start:]
            if str(n.severity).lower().endswith("error")]


def n_notes():
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def test_sample_reconstruct_fit_refine_with_the_docks_defaults(make_napari_viewer, qtbot,
                                                               monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the default output folder is under ~
    viewer = make_napari_viewer()
    start = n_notes()
    viewer.open_sample(PLUGIN, "tilt_series")
    ddw = viewer.window.add_plugin_dock_widget(PLUGIN, "DeepDeWedge")[1]

    # Reconstruct with the defaults
    step1 = ddw.tiltseries
    qtbot.mouseClick(step1.run_button, _left())
    qtbot.waitUntil(lambda: not step1.busy, timeout=WAIT_MS)
    assert not errors_since(start), errors_since(start)
    assert viewer.layers["phantom even"].data.shape == SAMPLE_SHAPE

    # Fit with the defaults, only the epochs lowered
    fit = ddw.fit
    assert fit.even.layer_name() == "phantom even" and fit.odd.layer_name() == "phantom odd"
    assert fit.preset.currentText() == "fast"  # no GPU here
    # the preset's 48 does not fit 64 slices: the largest size that does, said in the form
    assert fit.subtomo_size.value() == 40
    assert "48 → 40" in fit.size_note.text() and "64" in fit.size_note.text()
    out_dir = Path(fit.out_dir.text())
    assert out_dir.parent == home / "deepdewedge-runs"
    fit.epochs.setValue(1)
    qtbot.mouseClick(fit.start_button, _left())
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    assert not errors_since(start), errors_since(start)
    assert fit.finished is not None and not fit.finished.stopped
    assert fit.finished.epochs_done == 1
    assert (out_dir / "latest.pt").is_file()
    started = [e for e in fit.events if type(e).__name__ == "FitStarted"]
    assert started[0].config.subtomo_size == 40

    # Refine with the model just fitted
    ref = ddw.refine
    assert ref.model_path.text() == ddw.state.checkpoint
    qtbot.mouseClick(ref.run_button, _left())
    qtbot.waitUntil(lambda: not ref.busy, timeout=WAIT_MS)
    assert not errors_since(start), errors_since(start)
    refined = viewer.layers["phantom refined"]
    assert refined.data.shape == SAMPLE_SHAPE
    np.testing.assert_allclose(refined.scale, (PIXEL,) * 3)
    assert np.isfinite(refined.data).all() and float(np.std(refined.data)) > 0

    # a size the user types is kept: one that does not fit is refused, naming the largest that
    # does; choosing a preset fits its size again
    fit.subtomo_size.setValue(48)
    assert fit.size_note.text() == ""
    start = n_notes()
    assert not fit.start(overwrite=True)
    assert len(errors_since(start)) == 1 and "at most 40" in errors_since(start)[0]
    fit.preset.setCurrentText("balanced")
    assert fit.subtomo_size.value() == 40 and fit.size_note.text().startswith("96 → 40")


def _left():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton
