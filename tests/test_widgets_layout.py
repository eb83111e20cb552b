"""Nothing of the docks is cut off at the right edge: the combined panel (every step open) and
each dock on its own fit the width napari gives their dock in a 1700×1050 and a 1280×800
window, on the built-in sample, with a long layer name; and the CTF line is short.

    xvfb-run -a -s "-screen 0 1800x1100x24" python -m pytest tests/test_widgets_layout.py -q
"""
from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

pytestmark = pytest.mark.gui

PLUGIN = "napari-deepdewedge"
WINDOWS = [(1700, 1050), (1280, 800)]
LONG_NAME = "TS_0042_lamella_north_site_B_bin4_aligned_ctfcorrected_tilt_series"


def _settle(qtbot, window, size):
    window.resize(*size)
    qtbot.wait(400)


def _overhang(body, width: int) -> list[str]:
    """Visible widgets of ``body`` that reach past ``width`` pixels (what the dock cuts off)."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QWidget

    out = []
    for widget in body.findChildren(QWidget):
        if not widget.isVisibleTo(body) or widget.width() <= 0:
            continue
        right = widget.mapTo(body, QPoint(widget.width(), 0)).x()
        if right > width:
            text = getattr(widget, "text", None)
            label = text() if callable(text) else ""
            out.append(f"{type(widget).__name__} {label[:30]!r} ends at {right} > {width}")
    return out


@pytest.mark.parametrize("size", WINDOWS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_combined_panel_fits_its_dock(make_napari_viewer, qtbot, size):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "tilt_series")
    viewer.layers["phantom tilt series"].name = LONG_NAME
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "DeepDeWedge")[1]
    for section in panel.sections:
        section.expand(animate=False)
    panel.tiltseries.series.set_layer_name(LONG_NAME)
    _settle(qtbot, viewer.window._qt_window, size)
    scroll = panel.findChild(QScrollArea)
    body, room = scroll.widget(), scroll.viewport().width()
    # the panel's minimum size hint (every step open) is no wider than the dock's viewport:
    # before the fix it was 374 px in a 325–338 px viewport at both window sizes
    assert body.minimumSizeHint().width() <= room, (body.minimumSizeHint().width(), room)
    assert body.width() <= room
    assert not _overhang(body, room)
    # the sample has no defocus file: a short line says so, the tooltip says more
    line = panel.tiltseries.ctf_summary
    assert line.text() == "CTF: none (synthetic sample)"
    assert "simulated without a CTF" in line.toolTip()


@pytest.mark.parametrize("size", WINDOWS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_each_dock_alone_fits_the_width_of_the_combined_dock(make_napari_viewer, qtbot, size):
    """A dock on its own is as narrow as the combined panel's viewport (napari would otherwise
    widen that dock and squeeze the canvas): before the fix the Fit dock asked 350 px."""
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "tilt_series")
    combined = viewer.window.add_plugin_dock_widget(PLUGIN, "DeepDeWedge")[1]
    names = ["Tilt series → halves", "Fourier inspector", "Fit", "Refine", "Compare"]
    docked = [viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in names]
    _settle(qtbot, viewer.window._qt_window, size)
    room = combined.findChild(QScrollArea).viewport().width()
    wide = {name: panel.minimumSizeHint().width() for name, panel in zip(names, docked)
            if panel.minimumSizeHint().width() > room}
    assert not wide, (wide, room)
    for name, panel in zip(names, docked):
        assert not _overhang(panel, panel.width()), name


def test_long_words_break_and_paths_elide(qtbot):
    from napari_deepdewedge.widgets._common import ZWSP, WrapLabel, breakable, elide

    assert breakable("CTF: 16 defoci from TS_ctffind4.txt") == "CTF: 16 defoci from TS_ctffind4.txt"
    long = breakable(f"from {LONG_NAME}.mrc")
    assert long.replace(ZWSP, "") == f"from {LONG_NAME}.mrc" and long.count(ZWSP) == 11
    # HTML tags are left alone
    assert breakable(f"<span style='color:#e0a040_{'x' * 30}'>a</span>").count(ZWSP) == 0
    assert elide("short.txt") == "short.txt"
    cut = elide(LONG_NAME + ".defocus", 32)
    assert len(cut) == 32 and cut.startswith("TS_0042_lamella") and cut.endswith("ted_tilt_series.defocus"[-16:])
    label = WrapLabel(f"Saved {LONG_NAME}_even.mrc")
    qtbot.addWidget(label)
    assert label.text() == f"Saved {LONG_NAME}_even.mrc"  # as given, without the break points
    assert label.minimumSizeHint().width() <= WrapLabel.MIN_WIDTH
