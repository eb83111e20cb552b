"""Screenshots of the docked widgets for docs/gui.md, from a real napari window (opt-in, slow).

    DDW_SAVE_SCREENSHOTS=1 xvfb-run -a -s "-screen 0 1600x1000x24" \
        python -m pytest tests/test_widgets_screenshots.py -q -s

Runs the whole flow on the napari sample (File > Open Sample) with a small network on the CPU
and writes docs/screenshot_*.png. Every picture is checked not to be blank.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not os.getenv("DDW_SAVE_SCREENSHOTS"),
                       reason="set DDW_SAVE_SCREENSHOTS=1 to (re)make the docs/gui.md screenshots"),
]

DOCS = Path(__file__).resolve().parents[1] / "docs"
PLUGIN = "napari-deepdewedge"
EPOCHS = int(os.getenv("DDW_SCREENSHOT_EPOCHS", "4"))


def _settle(qtbot, ms=300):
    qtbot.wait(ms)


def _close_toasts(window):
    from qtpy.QtWidgets import QWidget

    for widget in window.findChildren(QWidget):
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()


def _save(image, path: Path, width: int | None = None):
    """Save a QImage/QPixmap (optionally scaled to ``width``), check it is not blank."""
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QImage

    if not isinstance(image, QImage):
        image = image.toImage()
    if width and image.width() > width:
        image = image.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
    grey = image.convertToFormat(QImage.Format.Format_Grayscale8)
    ptr = grey.constBits()
    ptr.setsize(grey.sizeInBytes())
    pixels = np.frombuffer(ptr, np.uint8).reshape(grey.height(), grey.bytesPerLine())
    assert pixels[:, : grey.width()].std() > 10, f"{path.name} looks blank"
    assert image.save(str(path)), path
    try:  # 256-colour PNG: a third of the size, no visible difference for these pictures
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    except ImportError:
        pass
    print(f"saved {path} ({image.width()}×{image.height()}, {path.stat().st_size // 1024} kB)")


def _window_shot(viewer, qtbot, path, width=1100):
    window = viewer.window._qt_window
    _close_toasts(window)
    _settle(qtbot)
    _save(window.grab(), path, width)


def test_readme_screenshots(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1400, 900)
    viewer.open_sample(PLUGIN, "tilt_series")
    dock_widget, ddw = viewer.window.add_plugin_dock_widget(PLUGIN, "DeepDeWedge")
    _settle(qtbot, 500)

    # step 1 and 2: halves and their spectra
    assert ddw.tiltseries.reconstruct()
    qtbot.waitUntil(lambda: not ddw.tiltseries.busy, timeout=300_000)
    qtbot.waitUntil(lambda: len(ddw.inspector.images) == 2, timeout=60_000)
    _window_shot(viewer, qtbot, DOCS / "screenshot_halves.png")
    _save(dock_widget.grab(), DOCS / "screenshot_dock.png")

    # step 3: fit with live loss and preview
    fit = ddw.fit
    fit.subtomo_size.setValue(32)
    fit.channels.setValue(8)
    fit.depth.setValue(2)
    fit.epochs.setValue(EPOCHS)
    fit.preview_every.setValue(2)
    fit.update_every.setValue(2)
    fit.out_dir.setText(str(tmp_path / "run"))
    for section in ddw.sections[:2]:
        section.collapse(animate=False)
    assert fit.start()
    qtbot.waitUntil(lambda: not fit.busy, timeout=3_600_000)
    assert len(fit.loss_plot.epochs) == EPOCHS
    from qtpy.QtWidgets import QScrollArea

    ddw.findChild(QScrollArea).ensureWidgetVisible(fit.loss_plot, 0, 0)
    _window_shot(viewer, qtbot, DOCS / "screenshot_fit.png")

    # step 4 and 5: refine, compare in a grid with the spectra underneath
    ddw.refine.keep_halves.setChecked(True)
    assert ddw.refine.refine()
    qtbot.waitUntil(lambda: not ddw.refine.busy, timeout=1_800_000)
    assert ddw.compare.compare()
    qtbot.waitUntil(lambda: not ddw.compare.busy, timeout=300_000)
    ddw.findChild(QScrollArea).ensureWidgetVisible(ddw.compare, 0, 0)
    _window_shot(viewer, qtbot, DOCS / "screenshot_compare.png")
