"""Pieces shared by the dock widgets: layer pickers, form rows with tooltips, notifications,
and output layers that keep the input's geometry. The panel base class that owns the jobs is
in :mod:`._panel`, the even/odd picker in :mod:`._halves`, shared names in :mod:`._names`."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from ._labels import ZWSP, WrapLabel, breakable, elide  # noqa: F401  (form helpers)
from ._names import is_tilt_series

NONE_TEXT = "(none)"
ANGSTROM_UNITS = ("angstrom", "angstrom", "angstrom")


# ----------------------------------------------------------------------------- notifications
def notify_error(message: str) -> None:
    from napari.utils import notifications

    notifications.show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils import notifications

    notifications.show_warning(message)


def notify_info(message: str) -> None:
    from napari.utils import notifications

    notifications.show_info(message)


# ----------------------------------------------------------------------------- layers
def is_image(layer) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image) and not getattr(layer, "rgb", False)


def is_labels(layer) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels)


def find_layer(viewer, name: str):
    """The layer called ``name`` or ``None``."""
    if not name:
        return None
    for layer in viewer.layers:
        if layer.name == name:
            return layer
    return None


def geometry(layer) -> tuple[tuple, tuple]:
    """The last three entries of ``scale`` and ``translate`` (Z, Y, X), in Å: a layer in
    nanometres (``napari-ome-zarr`` keeps an OME-Zarr file's units) is converted; a layer
    without physical units (``pixel``) is taken as Å."""
    from ..core.io.omezarr import UNIT_ANGSTROM

    units = [str(u) for u in (getattr(layer, "units", None) or ())][-3:]
    factors = [UNIT_ANGSTROM.get(u, 1.0) for u in units] if len(units) == 3 else [1.0] * 3
    scale = tuple(float(v) * f for v, f in zip(layer.scale[-3:], factors))
    translate = tuple(float(v) * f for v, f in zip(layer.translate[-3:], factors))
    return scale, translate


def layer_source(layer):
    """The layer's full-resolution data object, NOT read: a memory-mapped, dask or zarr array
    stays lazy. Call this in the GUI thread and hand the result to a job, which reads it with
    :func:`read_array` on its worker thread (the GUI never waits for a file or a dask graph)."""
    data = layer.data
    # multiscale (napari's MultiScaleData is no list: napari-ome-zarr's layers): the finest level
    if getattr(layer, "multiscale", False) or isinstance(data, (list, tuple)):
        data = data[0]
    return data


def read_array(source, dtype=None) -> np.ndarray:
    """The data of :func:`layer_source` as a numpy array; for worker threads only (reads a
    memory map, computes a dask array). ``dtype`` converts (no copy if it already has it)."""
    compute = getattr(source, "compute", None)  # dask: one compute, not element by element
    array = compute() if callable(compute) and not isinstance(source, np.ndarray) else source
    return np.asarray(array, dtype=dtype)


def percentile_limits(data, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Contrast limits from percentiles of a sample of ``data``: for a volume the reader's
    blocks of rows (about a million voxels, :func:`.._reader.contrast_sample`), else a strided
    subsample. Jobs call it on their worker and hand the limits to :func:`show_image`."""
    from .._reader import contrast_sample, sample_limits

    if np.ndim(data) == 3:
        return sample_limits(contrast_sample(data), low, high)
    flat = np.asarray(data).reshape(-1)
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 2_000_000 + 1]
    return sample_limits(np.asarray(flat, dtype=np.float32), low, high)


def show_image(viewer, data, name: str, *, scale, translate=(0.0, 0.0, 0.0), metadata=None,
               colormap: str = "gray", blending: str = "translucent", contrast=None,
               visible: bool = True, opacity: float = 1.0):
    """Add ``data`` as image layer ``name``, or replace the data of the layer of that name.

    Keeps the given geometry (scale/translate in Å, (Z, Y, X)) and sets ``contrast``: jobs
    compute it on their worker (:func:`percentile_limits`); without it, it is computed here,
    in the GUI thread, from a sample. ``data`` may be a list of levels, finest first (a
    multiscale layer: :func:`..core.io.omezarr_write.pyramid_levels`).
    """
    levels = isinstance(data, (list, tuple))
    finest = data[0] if levels else data
    limits = contrast if contrast is not None else percentile_limits(finest)
    layer = find_layer(viewer, name)
    if layer is not None and is_image(layer) and layer.ndim == np.ndim(finest) \
            and bool(getattr(layer, "multiscale", False)) == levels:
        layer.data = data
        layer.scale = scale
        layer.translate = translate
        layer.contrast_limits_range = limits
        layer.contrast_limits = limits
        layer.colormap = colormap
        layer.visible = visible
        if metadata:
            layer.metadata.update(metadata)
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    # every layer in Å, as the reader and sample data do (mixed units make napari warn)
    ndim = np.ndim(finest)
    kwargs = {"units": ANGSTROM_UNITS[:ndim]}
    if levels:
        kwargs["multiscale"] = True
    if ndim == 3:
        kwargs["axis_labels"] = ("z", "y", "x")
    return viewer.add_image(
        data, name=name, scale=scale, translate=translate, metadata=dict(metadata or {}),
        colormap=colormap, blending=blending, contrast_limits=limits, visible=visible,
        opacity=opacity, **kwargs,
    )


class LayerCombo(QComboBox):
    """A drop-down of the viewer's layers of one kind, kept up to date by name.

    ``kind``: "image" (3D grey-value images by default), "tomogram" (3D images that are not tilt
    series, see :func:`._names.is_tilt_series`) or "labels". ``allow_none`` adds an entry
    "(none)" first (and keeps it chosen until a layer is picked).
    """

    layerChanged = Signal(str)

    def __init__(self, viewer, kind: str = "image", ndim: int | None = 3, allow_none: bool = False,
                 parent=None):
        super().__init__(parent)
        self._viewer = viewer
        self._kind = kind
        self._ndim = ndim
        self._allow_none = allow_none
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(6)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        events = viewer.layers.events
        events.inserted.connect(self._on_layers_changed)
        events.removed.connect(self._on_layers_changed)
        events.moved.connect(self._on_layers_changed)
        self.currentTextChanged.connect(self._emit_changed)
        self.refresh()

    def _accepts(self, layer) -> bool:
        if self._kind == "labels":
            ok = is_labels(layer)
        elif self._kind == "tomogram":
            ok = is_image(layer) and not is_tilt_series(layer)
        else:
            ok = is_image(layer)
        return ok and (self._ndim is None or layer.ndim == self._ndim)

    def _on_layers_changed(self, event=None):
        try:
            value = getattr(event, "value", None)
            if value is not None and hasattr(value, "events"):
                value.events.name.connect(self._on_layers_changed)
            self.refresh()
        except RuntimeError:  # this combo box was deleted; napari keeps the callback a while
            pass

    def _emit_changed(self, text: str):
        self.layerChanged.emit("" if text == NONE_TEXT else text)

    def names(self) -> list[str]:
        return [layer.name for layer in self._viewer.layers if self._accepts(layer)]

    def refresh(self) -> None:
        current = self.currentText()
        names = self.names()
        items = ([NONE_TEXT] if self._allow_none else []) + names
        if items == [self.itemText(i) for i in range(self.count())]:
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(items)
        if current in items:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:
            self._emit_changed(self.currentText())

    def set_layer_name(self, name: str) -> None:
        if not name:
            if self._allow_none:
                self.setCurrentText(NONE_TEXT)
            return
        self.refresh()
        if self.findText(name) >= 0:
            self.setCurrentText(name)

    def layer_name(self) -> str:
        text = self.currentText()
        return "" if text == NONE_TEXT else text

    def layer(self):
        return find_layer(self._viewer, self.layer_name())


def tip(widget: QWidget, text: str) -> QWidget:
    widget.setToolTip(text)
    widget.setWhatsThis(text)
    return widget


def add_row(form: QFormLayout, label: str, field, tooltip: str):
    """A form row whose label and field both carry ``tooltip`` (no label: the field spans the
    row)."""
    from qtpy.QtWidgets import QAbstractSpinBox

    lab = QLabel(label)
    lab.setToolTip(tooltip)
    if isinstance(field, QWidget):
        tip(field, tooltip)
        for child in field.findChildren(QWidget):  # the parts of a composite row
            if not child.toolTip():
                child.setToolTip(tooltip)
    if isinstance(field, (QAbstractSpinBox, QComboBox)):
        shrinkable(field, 60)
    if not label:  # a check box or a note under the fields: the whole width, left-aligned
        form.addRow(field)
        return field
    form.addRow(lab, field)
    return field


def hbox(*widgets, stretch_last: bool = False) -> QWidget:
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    from qtpy.QtWidgets import QAbstractSpinBox

    for w in widgets:
        if isinstance(w, (QAbstractSpinBox, QComboBox)):
            shrinkable(w)
        lay.addWidget(w)
    if stretch_last:
        lay.addStretch(1)
    return box


def path_field(placeholder: str, tooltip: str, dialog: str = "file", filters: str = "",
               save: bool = False) -> tuple[QWidget, QLineEdit]:
    """A line edit with a "…" browse button; returns (row widget, line edit)."""
    from qtpy.QtWidgets import QFileDialog

    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    tip(edit, tooltip)
    button = QPushButton("…")
    button.setFixedWidth(28)
    tip(button, "Browse")

    def browse():
        start = edit.text()
        if dialog == "dir":
            path = QFileDialog.getExistingDirectory(edit, "Choose a folder", start)
        elif save:
            path, _ = QFileDialog.getSaveFileName(edit, "Save as", start, filters)
        else:
            path, _ = QFileDialog.getOpenFileName(edit, "Open", start, filters)
        if path:
            edit.setText(path)

    button.clicked.connect(browse)
    return hbox(edit, button), edit


def compact(box):
    """Spin box without +/- buttons (typing and the mouse wheel still work): three fit a row."""
    from qtpy.QtWidgets import QAbstractSpinBox

    box.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)
    return shrinkable(box)


def shrinkable(widget: QWidget, minimum: int = 48) -> QWidget:
    """Let spin boxes and combo boxes shrink below their text width (Qt's default is not to),
    so that forms fit a narrow dock."""
    from qtpy.QtWidgets import QAbstractSpinBox

    widget.setSizePolicy(QSizePolicy.Policy.Preferred, widget.sizePolicy().verticalPolicy())
    widget.setMinimumWidth(minimum)
    if isinstance(widget, QAbstractSpinBox):  # napari's theme asks 70 px for every spin box
        widget.setStyleSheet(f"QAbstractSpinBox {{ min-width: {max(minimum - 12, 20)}px; }}")
    return widget


def form_layout() -> QFormLayout:
    """A label/field form for a narrow dock: a row whose field does not fit beside the labels
    goes under its label (WrapLongRows), so no form is wider than the dock."""
    form = QFormLayout()
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    form.setContentsMargins(0, 0, 0, 0)
    return form


def device_choices() -> list[str]:
    """"auto" plus the devices this machine has (CUDA, MPS, CPU)."""
    try:
        from ..core.device import available_devices

        return ["auto"] + available_devices()
    except Exception:  # torch missing or broken: let the engine report it when used
        return ["auto", "cpu"]


DEVICE_TIP = (
    "Where the computation runs: auto picks a CUDA GPU if there is one, then Apple MPS, "
    "else the CPU."
)
