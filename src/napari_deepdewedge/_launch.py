"""Open napari with the sample tilt series and the DeepDeWedge dock (``deepdewedge napari``)."""
from __future__ import annotations

PLUGIN = "napari-deepdewedge"
DOCK = "DeepDeWedge"


def open_viewer(*, sample: bool = True, screenshot: str | None = None) -> int:
    """Show napari with the plugin's dock (and sample data); with ``screenshot``, save a PNG of
    the whole window and close instead of entering the event loop."""
    import napari

    viewer = napari.Viewer(title="napari-deepdewedge")
    if sample:
        viewer.open_sample(PLUGIN, "tilt_series")
    viewer.window.add_plugin_dock_widget(PLUGIN, DOCK)
    if screenshot is None:
        napari.run()
        return 0
    from qtpy.QtWidgets import QApplication

    viewer.window._qt_window.resize(1400, 900)
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(path=screenshot, canvas_only=False)
    viewer.close()
    return 0
