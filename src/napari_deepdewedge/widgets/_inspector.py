"""Step 2: Fourier inspector — central x–z slices of the log power spectra of chosen volumes,
with the expected missing-wedge boundaries drawn on top (before and after refinement), and the
zeros of the CTF at the mean defocus when the volume's layer knows it (``metadata["ddw_ctf"]``,
:func:`..core.ctf.mean_ctf_record`, which step 1 and Refine put there)."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QListWidget,
    QListWidgetItem,
    QPushButton,
)

from ._common import (
    add_row,
    compact,
    find_layer,
    form_layout,
    geometry,
    hbox,
    is_image,
    layer_source,
    notify_error,
    notify_warning,
    read_array,
    tip,
)
from ._names import is_tilt_series
from ._panel import DDWPanel
from ._plots import CTF_COLOUR, WEDGE_COLOUR, SpectraPanel
from ._workers import Job, Progress

MAX_PANELS = 4
CTF_KEY = "ddw_ctf"  # layer metadata: core.ctf.mean_ctf_record of the series, or None
NO_DEFOCUS_TIP = ("No defocus is known for the shown volumes, so their CTF zeros cannot be "
                  "drawn. Step 1 records it (phase flipped or not) when the tilt series has a "
                  "defocus file beside it (<stem>.defocus, <stem>_ctffind4.txt …) or RELION/Warp "
                  "metadata.")


def _spectra_job(job, items):
    """Worker generator: the x–z log power slice of every (name, key, array)."""
    from ..core.fourier import xz_log_power

    results = []
    for i, (name, key, array) in enumerate(items):
        if job.stop.is_set():
            return None
        yield Progress(f"spectrum of {name}", i, len(items))
        results.append((name, key, xz_log_power(read_array(array))))
    return results


class FourierInspectorWidget(DDWPanel):
    """Fourier inspector: see the missing wedge in the x–z power spectrum of each volume."""

    title = "Fourier inspector"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._cache: dict = {}  # key → image
        self._generation = 0
        self._job = None
        self.images: dict[str, np.ndarray] = {}  # shown: layer name → x–z image
        lay = self.vbox(self)

        self.layers = QListWidget()
        self.layers.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.layers.setMaximumHeight(92)
        tip(self.layers, "Tick the 3D volumes whose spectra you want to see (at most four); by "
                         "default the two halves, and the refined tomogram once it exists.")
        lay.addWidget(self.layers)

        form = form_layout()
        self.tilt_min = self._angle_box(self.state.tilt_min, "Most negative tilt angle (degrees)")
        self.tilt_max = self._angle_box(self.state.tilt_max, "Most positive tilt angle (degrees)")
        self.show_wedge = QCheckBox("edges")
        self.show_wedge.setChecked(True)
        tip(self.show_wedge, "Draw the expected wedge boundaries (dashed cyan lines) for this tilt range.")
        add_row(form, "Tilt range", hbox(self.tilt_min, self.tilt_max, self.show_wedge),
                "The tilt range of the data; outside the two dashed lines (around the kz axis) "
                "is the missing wedge, where a plain reconstruction has no signal.")
        self.show_ctf = QCheckBox("CTF zeros (dotted rings)")
        self._ctf_wanted = True  # the user's choice, kept while no defocus is known
        self.show_ctf.setChecked(False)
        self.show_ctf.setEnabled(False)
        tip(self.show_ctf, NO_DEFOCUS_TIP)
        form.addRow(self.show_ctf)
        lay.addLayout(form)

        self.panel = SpectraPanel(self.viewer)
        tip(self.panel, "Central x–z slice (ky = 0) of each volume's log power spectrum: kx "
                        "across, kz down. A dark bow-tie around the vertical axis is the missing "
                        "wedge; after refinement it should be filled.")
        lay.addWidget(self.panel)
        self.add_button = tip(QPushButton("Add as layers"),
                              "Put these spectra into the viewer as image layers "
                              "('<name> x–z power'), beside the volumes, with the wedge edges.")
        self.add_button.clicked.connect(self.add_layers)
        lay.addWidget(hbox(self.add_button, stretch_last=True))

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self.update_spectra)

        events = self.viewer.layers.events
        events.inserted.connect(self._on_layers_changed)
        events.removed.connect(self._on_layers_changed)
        self.layers.itemChanged.connect(lambda *_: self._schedule())
        self.tilt_min.valueChanged.connect(self._redraw)
        self.tilt_max.valueChanged.connect(self._redraw)
        self.show_wedge.toggled.connect(self._redraw)
        self.show_ctf.clicked.connect(self._on_ctf_clicked)
        self.state.events.halves_version.connect(self._on_state)
        self.state.events.refined_version.connect(self._on_state)
        self._fill_list()
        self._on_state()

    @staticmethod
    def _angle_box(value, text):
        box = QDoubleSpinBox()
        box.setRange(-89.9, 89.9)
        box.setDecimals(1)
        box.setSuffix("°")
        box.setValue(value)
        tip(box, text)
        return compact(box)

    # ------------------------------------------------------------------ selection
    def _volume_names(self) -> list[str]:
        """3D image layers that are volumes (tilt series are left out)."""
        return [layer.name for layer in self.viewer.layers
                if is_image(layer) and layer.ndim == 3 and not is_tilt_series(layer)]

    def _fill_list(self, checked: set[str] | None = None):
        if checked is None:
            checked = set(self.checked_names())
        names = self._volume_names()
        self.layers.blockSignals(True)
        self.layers.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in checked else Qt.CheckState.Unchecked)
            self.layers.addItem(item)
        self.layers.blockSignals(False)

    def checked_names(self) -> list[str]:
        out = []
        for i in range(self.layers.count()):
            item = self.layers.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(item.text())
        return out

    def set_checked(self, names) -> None:
        """Tick exactly ``names`` (those that exist) and recompute."""
        self._fill_list(set(names))
        self._schedule()

    def _on_layers_changed(self, event=None):
        try:
            value = getattr(event, "value", None)
            if value is not None and hasattr(value, "events"):
                value.events.name.connect(self._on_layers_changed)
                value.events.data.connect(self._on_layer_data)
            before = self.checked_names()
            self._fill_list()
            if self.checked_names() != before:
                self._schedule()
        except RuntimeError:  # widget already deleted
            pass

    def _on_layer_data(self, event=None):
        try:
            if event is not None and getattr(event, "source", None) is not None:
                if event.source.name in self.checked_names():
                    self._schedule()
        except RuntimeError:
            pass

    def _on_state(self, *_):
        state = self.state
        self.tilt_min.setValue(state.tilt_min)
        self.tilt_max.setValue(state.tilt_max)
        wanted = [n for n in (state.even, state.odd, state.refined) if n]
        if state.refined:
            wanted = [n for n in (state.even, state.refined) if n]
        if wanted:
            self.set_checked(wanted)

    def _schedule(self):
        self._timer.start()

    # ------------------------------------------------------------------ compute
    def update_spectra(self) -> bool:
        """Compute (off the GUI thread) the spectra of the ticked volumes and show them."""
        names = self.checked_names()
        if len(names) > MAX_PANELS:
            notify_warning(f"Showing the first {MAX_PANELS} of {len(names)} ticked volumes.")
            names = names[:MAX_PANELS]
        todo = []
        self._order = names
        for name in names:
            layer = find_layer(self.viewer, name)
            if layer is None or layer.ndim != 3:
                continue
            key = self._key(layer)
            if key not in self._cache:
                todo.append((name, key, layer_source(layer)))
        if self._job is not None and self._job.running:
            self._job.request_stop()
        self._generation += 1
        if not todo:
            self._show_cached()
            return False
        generation = self._generation
        self._job = self.start_job(Job("spectra", _spectra_job, todo), lambda msg: None,
                                   lambda outcome: self._on_done(outcome, generation))
        return True

    def _on_done(self, outcome, generation):
        if outcome.error:
            notify_error(outcome.error)
            return
        if outcome.cancelled or not outcome.value:
            return
        for name, key, image in outcome.value:
            self._cache[key] = image
        if generation == self._generation:  # late results of an older selection are dropped
            self._show_cached()

    @staticmethod
    def _key(layer):
        """Cache key: the layer's name and the identity and shape of its data."""
        return (layer.name, id(layer.data), tuple(layer.data.shape))

    def _show_cached(self):
        self.images = {}
        keep = set()
        for name in getattr(self, "_order", []):
            layer = find_layer(self.viewer, name)
            if layer is None:
                continue
            key = self._key(layer)
            if key in self._cache:
                self.images[name] = self._cache[key]
                keep.add(key)
        self._cache = {k: v for k, v in self._cache.items() if k in keep}  # only what is shown
        self._redraw()

    def _lines_for(self, shape):
        if not self.show_wedge.isChecked():
            return None
        from ..core.errors import DDWError
        from ..core.fourier import wedge_boundary_lines

        try:
            return wedge_boundary_lines(shape, self.tilt_min.value(), self.tilt_max.value())
        except DDWError:
            return None

    # ------------------------------------------------------------------ CTF zeros
    def ctf_record(self, name: str) -> dict | None:
        """The mean CTF step 1 recorded on layer ``name`` (or None: no defocus known)."""
        layer = find_layer(self.viewer, name)
        record = (layer.metadata or {}).get(CTF_KEY) if layer is not None else None
        return record if isinstance(record, dict) and record.get("defocus_um") else None

    def _update_ctf_toggle(self) -> None:
        """Enable the CTF toggle when a shown volume knows its defocus; else disable it with a
        tooltip saying why (no error)."""
        known = {name: self.ctf_record(name) for name in self.images}
        known = {name: record for name, record in known.items() if record is not None}
        self.show_ctf.blockSignals(True)
        self.show_ctf.setEnabled(bool(known))
        self.show_ctf.setChecked(bool(known) and self._ctf_wanted)
        self.show_ctf.blockSignals(False)
        if not known:
            tip(self.show_ctf, NO_DEFOCUS_TIP)
            return
        lines = [f"{name}: {record['defocus_um']:.2f} µm mean defocus ({record.get('summary', '')})"
                 for name, record in known.items()]
        tip(self.show_ctf, "Draw the zeros of the CTF at the mean defocus (dotted green "
                           "circles, up to Nyquist): there the microscope transfers no contrast, "
                           "so the spectrum shows dark rings; between them the contrast flips, "
                           "which phase flipping corrects.\n" + "\n".join(lines))

    def _on_ctf_clicked(self, checked: bool) -> None:
        self._ctf_wanted = bool(checked)
        self._redraw()

    def _rings_for(self, name: str, shape):
        """The CTF zeros of layer ``name`` over its spectrum (core.ctf.xz_zero_radii), or None."""
        if not (self.show_ctf.isEnabled() and self.show_ctf.isChecked()):
            return None
        record = self.ctf_record(name)
        layer = find_layer(self.viewer, name)
        if record is None or layer is None:
            return None
        from ..core.ctf import xz_zero_radii
        from ..core.errors import DDWError

        optics = {key: float(record[key]) for key in
                  ("voltage", "cs", "amplitude_contrast", "phase_shift") if key in record}
        try:  # the spectrum's kx runs along the volume's X: its voxel size sets the units
            return xz_zero_radii(shape, float(geometry(layer)[0][2]), float(record["defocus_um"]),
                                 **optics)
        except (DDWError, TypeError, ValueError):
            return None

    def _redraw(self, *_):
        items = list(self.images.items())
        self._update_ctf_toggle()
        lines = [self._lines_for(image.shape) for _, image in items]
        rings = [self._rings_for(name, image.shape) for name, image in items]
        self.panel.set_spectra(items, lines, rings)

    # ------------------------------------------------------------------ layers
    def add_layers(self) -> list[str]:
        """Add the shown spectra as 2D image layers beside their volumes (+ wedge edges)."""
        if not self.images:
            notify_warning("No spectra to add yet: tick one or more volumes first.")
            return []
        added = []
        offset_x = None
        for name, image in self.images.items():
            layer = find_layer(self.viewer, name)
            if layer is None:
                continue
            scale, translate = geometry(layer)
            extent_x = layer.data.shape[-1] * scale[2]
            if offset_x is None:
                offset_x = translate[2] + extent_x * 1.05
            spec_scale = (scale[0], scale[2])
            spec_translate = (translate[1], offset_x)
            out_name = f"{name} x–z power"
            from ._common import show_image

            show_image(self.viewer, image, out_name, scale=spec_scale, translate=spec_translate,
                       colormap="magma", metadata={"ddw_role": "spectrum", "source_layer": name})
            lines = self._lines_for(image.shape)
            if lines is not None:
                shapes_name = f"{name} wedge edges"
                old = find_layer(self.viewer, shapes_name)
                if old is not None:
                    self.viewer.layers.remove(old)
                self.viewer.add_shapes(
                    [np.asarray(seg) for seg in lines], shape_type="line", edge_color=WEDGE_COLOUR, edge_width=max(image.shape) / 150, name=shapes_name,
                    scale=spec_scale, translate=spec_translate, opacity=0.8,
                    units=("angstrom", "angstrom"))
            self._add_rings_layer(name, image.shape, spec_scale, spec_translate)
            added.append(out_name)
            offset_x += image.shape[1] * scale[2] * 1.05
        return added

    def _add_rings_layer(self, name, shape, scale, translate) -> None:
        """The CTF zeros as ellipses in a Shapes layer ``'<name> CTF zeros'`` over the spectrum
        layer (removed when none are drawn)."""
        rings_name = f"{name} CTF zeros"
        old = find_layer(self.viewer, rings_name)
        if old is not None:
            self.viewer.layers.remove(old)
        rings = self._rings_for(name, shape)
        if rings is None or not len(rings):
            return
        cz, cx = shape[0] // 2, shape[1] // 2
        boxes = [np.array([[cz - rz, cx - rx], [cz - rz, cx + rx], [cz + rz, cx + rx],
                           [cz + rz, cx - rx]]) for rz, rx in rings]
        self.viewer.add_shapes(boxes, shape_type="ellipse", edge_color=CTF_COLOUR,
                               face_color="transparent", edge_width=max(shape) / 250,
                               name=rings_name, scale=scale, translate=translate, opacity=0.8,
                               units=("angstrom", "angstrom"))
