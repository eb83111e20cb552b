"""The Fit dock shows the progress signal's curve, the rule at the start and why a fit ended
early (issue 22). Events are fed to the dock's handler directly (the engine's side is
tests/test_stopping.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui


def test_loss_plot_draws_the_signal_on_its_own_axis(make_napari_viewer):
    from napari_deepdewedge.widgets._plots import LossPlot

    plot = LossPlot(make_napari_viewer())
    plot.add_epoch(1, 1.0, 1.1, {"fsc_area": 0.5, "consistency": 0.9})
    plot.add_epoch(2, 0.9, 1.0, {})  # an epoch without a measurement: no point
    plot.add_epoch(3, 0.8, 0.9, {"fsc_area": 0.7})
    plot.flush()
    assert (plot.signal_epochs, plot.signal_values) == ([1, 3], [0.5, 0.7])
    plot._redraw_now()
    line = plot.ax2.get_lines()[0]
    assert list(line.get_xdata()) == [1, 3] and plot.ax2.get_visible()
    assert len(plot.ax.get_lines()) == 2  # fitting and validation stay on the loss axis
    plot.truncate_from(3)
    assert plot.signal_epochs == [1]
    plot.set_signal("consistency")  # another signal: its own points only
    assert plot.signal_epochs == []


def test_fit_dock_shows_the_rule_the_curve_and_why_it_ended(make_napari_viewer, tmp_path):
    from napari_deepdewedge.core.fit import loop as F

    viewer = make_napari_viewer()
    _dock, fit = viewer.window.add_plugin_dock_widget("napari-deepdewedge", "Fit")
    cfg = F.FitConfig(epochs=30, best_by="consistency", early_stop_patience=5)
    fit._pair_names = ["TS_01"]
    fit._on_event(F.FitStarted(n_fit_cubes=10, n_val_cubes=2, steps_per_epoch=2, device="cpu", config=cfg))
    assert "best.pt: the epoch with the lowest half-map difference" in fit.status.text()
    assert "not improved for 5 epochs (at most 30)" in fit.status.text()
    for epoch, value in ((1, 0.5), (2, 0.4)):
        fit._on_event(F.EpochDone(epoch=epoch, fit_loss=1.0, val_loss=1.0, seconds=1.0,
                                  signals={"fsc_area": 0.6, "consistency": value}))
    assert fit.loss_plot.signal_name == "consistency" and fit.loss_plot.signal_values == [0.5, 0.4]
    model = tmp_path / "best.pt"
    model.write_bytes(b"")
    reason = "the half-map difference has not improved for 5 epochs (best at epoch 2, kept as best.pt)"
    fit._on_event(F.FitFinished(epochs_done=7, stopped=False, latest_path=model, best_path=model, reason=reason))
    fit._show_end()
    assert f"Finished after 7 epochs: {reason}" in fit.status.text()
