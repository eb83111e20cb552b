"""Step 5: compare FBP, refined and (if present) ground truth side by side in napari's grid
mode, with identical contrast limits and their Fourier x–z slices in the row below."""
from __future__ import annotations

from functools import partial

import numpy as np
from qtpy.QtWidgets import QPushButton

from ._common import (
    WrapLabel,
    LayerCombo,
    add_row,
    find_layer,
    form_layout,
    geometry,
    hbox,
    layer_source,
    percentile_limits,
    read_array,
    show_image,
    tip,
)
from ._names import SPECTRUM_SUFFIX
from ._panel import DDWPanel
from ._workers import Progress


def grid_of(viewer):
    """napari's grid model: ``viewer.canvas.grid`` since 0.9, ``viewer.grid`` before."""
    canvas = getattr(viewer, "canvas", None)
    grid = getattr(canvas, "grid", None)
    return grid if grid is not None else viewer.grid


def _compare_job(job, items):
    """Worker generator: the x–z spectra of the compared volumes and one set of contrast limits
    from their pooled values (everything read here, off the GUI thread)."""
    from ..core.fourier import xz_log_power

    spectra, samples = {}, []
    for i, (name, source) in enumerate(items):
        yield Progress(f"spectrum of {name}", i, len(items))
        volume = read_array(source)
        spectra[name] = xz_log_power(volume)
        samples.append(volume[:: max(1, volume.shape[0] // 24)].ravel()[::7])
    return spectra, percentile_limits(np.concatenate(samples))


class CompareWidget(DDWPanel):
    """Compare: the plain reconstruction, the refined one and the truth, side by side."""

    title = "Compare"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._saved_visibility: dict[str, bool] | None = None
        self.compared: list[str] = []
        self.spectrum_layers: list[str] = []
        lay = self.vbox(self)
        form = form_layout()
        # tomograms only (never a tilt series), nothing chosen until there is something to compare
        self.before = LayerCombo(self.viewer, "tomogram", ndim=3, allow_none=True)
        add_row(form, "Before", self.before,
                "The plain reconstruction: the full-series FBP from step 1 (or a half).")
        self.after = LayerCombo(self.viewer, "tomogram", ndim=3, allow_none=True)
        add_row(form, "After", self.after, "The refined tomogram from step 4.")
        self.truth = LayerCombo(self.viewer, "tomogram", ndim=3, allow_none=True)
        add_row(form, "Ground truth", self.truth,
                "Optional: the true volume, when you have one (the sample data does).")
        lay.addLayout(form)
        self.compare_button = tip(QPushButton("Side by side"),
                                  "Show these volumes next to each other (napari grid mode) with "
                                  "the same contrast, and their x–z power spectra below them.")
        self.restore_button = tip(QPushButton("Back to overlay"),
                                  "Leave grid mode and show the layers as before.")
        self.restore_button.setEnabled(False)
        lay.addWidget(hbox(self.compare_button, self.restore_button))
        self.status = WrapLabel("")
        lay.addWidget(self.status)
        self.compare_button.clicked.connect(lambda: self.compare())
        self.restore_button.clicked.connect(self.restore)
        self.state.events.halves_version.connect(self._preselect)
        self.state.events.refined_version.connect(self._preselect)
        self.viewer.layers.events.inserted.connect(self._guess_truth)
        self._preselect()
        self._guess_truth()

    def _preselect(self, *_):
        state = self.state
        before = state.fbp or state.even
        if before:
            self.before.set_layer_name(before)
        if state.refined:
            self.after.set_layer_name(state.refined)

    def _guess_truth(self, *_):
        try:
            if self.truth.layer_name():
                return
            for layer in self.viewer.layers:
                if "ground truth" in layer.name.lower() and layer.ndim == 3:
                    self.truth.set_layer_name(layer.name)
                    return
        except RuntimeError:  # deleted widget
            pass

    def compare(self) -> bool:
        """Arrange the chosen volumes side by side; False (and a notification) if refused."""
        return self.launch("compare", self._prepare, on_done=self._on_done,
                           controls=(self.compare_button,), failed="Failed",
                           start_text="Computing spectra…")

    def _prepare(self):
        from ..core.errors import DDWError

        names = [n for n in (self.before.layer_name(), self.after.layer_name(),
                             self.truth.layer_name()) if n]
        if len(names) < 2 or len(set(names)) != len(names):
            raise DDWError("choose two different volumes to compare (Before and After), "
                           "e.g. the FBP and the refined tomogram")
        for name in names:
            layer = find_layer(self.viewer, name)
            if layer is None or layer.ndim != 3:
                raise DDWError(f"'{name}' is not a 3D volume; choose tomogram layers")
        self.compared = names
        items = [(n, layer_source(find_layer(self.viewer, n))) for n in names]
        return partial(_compare_job, items=items)

    def _on_done(self, value):
        if not value:
            return
        spectra, limits = value
        viewer = self.viewer
        layers = [find_layer(viewer, n) for n in self.compared]
        if any(layer is None for layer in layers):
            self.status.setText("A compared layer was removed meanwhile; press again.")
            return
        if self._saved_visibility is None:
            self._saved_visibility = {layer.name: layer.visible for layer in viewer.layers}
        # identical contrast limits from the pooled values of all compared volumes
        for layer in layers:
            layer.contrast_limits_range = (min(limits[0], layer.contrast_limits_range[0]),
                                           max(limits[1], layer.contrast_limits_range[1]))
            layer.contrast_limits = limits
        # spectra as 2D layers sized like their volume's x–z plane, one grid row below
        self.spectrum_layers = []
        for layer in layers:
            scale, translate = geometry(layer)
            name = layer.name + SPECTRUM_SUFFIX
            show_image(viewer, spectra[layer.name], name, scale=(scale[0], scale[2]),
                       translate=(0.0, translate[2]), colormap="magma",
                       metadata={"ddw_role": "spectrum", "source_layer": layer.name})
            self.spectrum_layers.append(name)
        # grid: napari fills the cells row by row from the *bottom* of the layer list, skipping
        # hidden layers; so show only these, volumes first (in order), then their spectra
        wanted = [l.name for l in layers] + self.spectrum_layers
        for layer in viewer.layers:
            layer.visible = layer.name in wanted
        for name in wanted:
            index = viewer.layers.index(find_layer(viewer, name))
            viewer.layers.move(index, len(viewer.layers))
        grid = grid_of(viewer)
        grid.stride = 1
        grid.shape = (2, len(layers))
        grid.enabled = True
        viewer.reset_view()
        self.restore_button.setEnabled(True)
        self.status.setText(
            f"Top: {', '.join(self.compared)} (contrast {limits[0]:.3g} … {limits[1]:.3g}); "
            "bottom: their x–z power spectra (the missing wedge is the dark bow-tie around "
            "the vertical axis).")

    def restore(self):
        """Grid off; visibility as before; spectra layers removed."""
        viewer = self.viewer
        grid = grid_of(viewer)
        grid.enabled = False
        grid.shape = (-1, -1)
        for name in self.spectrum_layers:
            layer = find_layer(viewer, name)
            if layer is not None:
                viewer.layers.remove(layer)
        self.spectrum_layers = []
        for layer in viewer.layers:
            if self._saved_visibility and layer.name in self._saved_visibility:
                layer.visible = self._saved_visibility[layer.name]
        self._saved_visibility = None
        self.restore_button.setEnabled(False)
        viewer.reset_view()
        self.status.setText("")
