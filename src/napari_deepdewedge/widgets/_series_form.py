"""Step 1's tilt-series form: the input stacks, the three angle sources, binning, thickness,
filter, device and the CTF switch, with the help text of every field, and what the form reads
from the layer and its files (the angles and the defocus through the one metadata resolver,
``core.io.tilt_metadata``). A mixin of :class:`._tiltseries.TiltSeriesWidget`, which owns the
job."""
from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ._common import (
    DEVICE_TIP,
    LayerCombo,
    WrapLabel,
    add_row,
    compact,
    device_choices,
    elide,
    form_layout,
    hbox,
    notify_error,
    path_field,
    tip,
)
from ._names import layer_stem

ANGLES_LAYER = "From the layer"
ANGLES_FILE = "Angle or metadata file"
ANGLE_FILE_FILTER = ("Tilt angles (*.tlt *.rawtlt *.mdoc *.aln *.xml *.tomostar *.star);;"
                     "All files (*)")
ANGLES_RANGE = "Range: min, max, step"


class SeriesForm:
    """The tilt-series page of step 1 and the angles and CTF it resolves."""

    # ------------------------------------------------------------------ layout
    def _build_series_page(self) -> QWidget:
        page = QWidget()
        form = form_layout()
        page.setLayout(form)
        self.series = LayerCombo(self.viewer, "image", ndim=3)
        open_button = QPushButton("…")
        open_button.setFixedWidth(28)
        tip(open_button, "Open a tilt-series file (.st, .ali, .mrc, …) as a new layer.")
        open_button.clicked.connect(self._open_file)
        add_row(form, "Tilt series", hbox(self.series, open_button),
                "The aligned tilt series (projections × Y × X), tilt axis along Y. "
                "For frame halves: the EVN (even frames) series.")
        self.series_odd = LayerCombo(self.viewer, "image", ndim=3)
        add_row(form, "ODD series", self.series_odd,
                "The tilt series made from the odd movie frames (same size and angles).")
        self.angle_source = QComboBox()
        self.angle_source.addItems([ANGLES_LAYER, ANGLES_FILE, ANGLES_RANGE])
        add_row(form, "Angles", self.angle_source,
                "Where the tilt angles come from: the layer (files opened with this plugin "
                "read the angle or metadata file beside them; the sample data carries its "
                "angles), a file (IMOD .tlt/.rawtlt, SerialEM .mdoc, AreTomo .aln, Warp "
                ".xml/.tomostar, RELION 5 .star), or a regular range.")
        row, self.angle_file = path_field("path/to/series.tlt",
                                          "Tilt angles of this stack: IMOD .tlt/.rawtlt, "
                                          "SerialEM .mdoc, AreTomo .aln, Warp .xml/.tomostar or "
                                          "RELION 5 tomograms.star. Views the file marks "
                                          "excluded are left out.",
                                          filters=ANGLE_FILE_FILTER)
        add_row(form, "Angle file", row, self.angle_file.toolTip())
        self.tilt_min = self._angle_box(-60.0, "Most negative tilt angle, degrees.")
        self.tilt_max = self._angle_box(60.0, "Most positive tilt angle, degrees.")
        self.tilt_step = QDoubleSpinBox()
        self.tilt_step.setRange(0.1, 30.0)
        self.tilt_step.setDecimals(2)
        self.tilt_step.setValue(3.0)
        self.tilt_step.setSuffix("°")
        compact(self.tilt_step)
        tip(self.tilt_step, "Angular step between projections, degrees.")
        add_row(form, "Range", hbox(self.tilt_min, self.tilt_max, self.tilt_step),
                "Tilt angles min, max and step in degrees (min, min+step, …, max), used in "
                "projection order.")
        self.angle_summary = WrapLabel("")
        form.addRow(self.angle_summary)
        self.axis_x = QCheckBox("Tilt axis along X")
        tip(self.axis_x, "Tick if the tilt axis of your stack runs along X (horizontal) instead "
                         "of Y; the stack is transposed before reconstruction.")
        form.addRow(self.axis_x)
        self.binning = QSpinBox()
        self.binning.setRange(1, 32)
        self.binning.setValue(1)
        self.bin_mode = QComboBox()
        self.bin_mode.addItems(["fourier", "average"])
        tip(self.bin_mode, "How to bin: 'fourier' crops the spectrum (no aliasing), 'average' "
                           "takes block means (faster).")
        add_row(form, "Binning", hbox(self.binning, self.bin_mode),
                "Shrink the projections by this factor before reconstructing: 2 makes the "
                "tomogram 8× smaller and everything after much faster.")
        # thickness in OUTPUT (binned) voxels: the same number means the same tomogram here
        # and in `deepdewedge reconstruct --thickness` (pipeline.HalvesRequest.thickness)
        self.thickness = QSpinBox()
        self.thickness.setRange(1, 100000)
        self.thickness.setValue(256)
        self._auto_thickness = None  # (unbinned thickness from the layer, value it gave)
        add_row(form, "Thickness", hbox(self.thickness, QLabel("binned voxels"),
                                        stretch_last=True),
                "Height (Z) of the tomogram in binned voxels (after binning), as "
                "'deepdewedge reconstruct --thickness'; a bit more than the sample's "
                "thickness. Filled in from the layer when it says how thick the sample is.")
        self.binning.valueChanged.connect(self._update_auto_thickness)
        self.apodization = QComboBox()
        self.apodization.addItems(["cosine", "hamming", "none"])
        add_row(form, "Filter", self.apodization,
                "Roll-off of the ramp filter towards the highest frequencies: cosine or "
                "Hamming reduce noise, none keeps the pure ramp.")
        self.device = QComboBox()
        self.device.addItems(device_choices())
        add_row(form, "Device", self.device, DEVICE_TIP)
        self.full = QCheckBox("Also the full tilt series (FBP)")
        self.full.setChecked(True)
        tip(self.full, "Also reconstruct all projections together: the usual tomogram, "
                       "useful to compare with the refined result.")
        form.addRow(self.full)
        self.ctf = QCheckBox("Phase flip (the microscope's CTF)")
        self.ctf.setChecked(True)
        tip(self.ctf, "Phase flip every projection with its defocus, read from a file beside "
                      "the stack (<stem>.defocus, <stem>_ctffind4.txt, <stem>_CTF.txt …) or "
                      "from the RELION/Warp metadata, as `deepdewedge reconstruct` does "
                      "(docs/cli.md, 'The CTF'). Off: no correction.")
        self.ctf.toggled.connect(self._update_angle_summary)
        form.addRow(self.ctf)
        self.invert = QCheckBox("Invert contrast (dense material bright)")
        tip(self.invert, "By default the tomograms keep the images' contrast: dense material "
                         "dark. Checked: multiplied by −1 (`--invert`).")
        form.addRow(self.invert)
        self.ctf_summary = WrapLabel("")
        form.addRow(self.ctf_summary)
        return page

    @staticmethod
    def _angle_box(value: float, text: str) -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setRange(-89.9, 89.9)
        box.setDecimals(1)
        box.setValue(value)
        box.setSuffix("°")
        tip(box, text)
        return compact(box)

    def _set_row_visible(self, field: QWidget, visible: bool):
        form = field.parentWidget().layout()
        label = form.labelForField(field)
        field.setVisible(visible)
        if label is not None:
            label.setVisible(visible)

    def _on_series_changed(self, name: str):
        layer = self.series.layer()
        if layer is None:
            self._update_angle_summary()
            return
        meta = layer.metadata or {}
        try:
            unbinned = int(meta["thickness"]) if "thickness" in meta else None
        except (TypeError, ValueError):
            unbinned = None
        if unbinned:
            self._auto_thickness = (unbinned, None)
            self._update_auto_thickness()
        if "tilt_angles" in meta:
            self.angle_source.setCurrentText(ANGLES_LAYER)
        elif meta.get("angle_file"):
            self.angle_file.setText(str(meta["angle_file"]))
        self._update_angle_summary()

    def _update_auto_thickness(self, *_):
        """Keep a thickness taken from the layer (in unbinned pixels) right for the binning,
        unless the user has typed another value since."""
        if self._auto_thickness is None:
            return
        unbinned, given = self._auto_thickness
        if given is not None and self.thickness.value() != given:
            self._auto_thickness = None  # the user chose a thickness: leave it alone
            return
        value = max(1, -(-unbinned // self.binning.value()))
        self.thickness.setValue(value)
        self._auto_thickness = (unbinned, value)

    def _open_file(self):
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self, "Open a tilt series", "",
            "Tilt series (*.st *.ali *.mrc *.mrcs *.rec *.map);;All files (*)")
        if not path:
            return
        try:
            layers = self.viewer.open(path, plugin="napari-deepdewedge")
        except Exception as exc:  # reader errors carry the fix
            notify_error(f"Could not open {path}: {exc}")
            return
        if layers:
            self.series.set_layer_name(layers[0].name)

    # ------------------------------------------------------------------ angles
    def _tilt_metadata_for(self, layer, n_tilts: int, ctf=None):
        """Resolve the tilt angles the user chose (core.io.tilt_metadata.resolve_tilt_metadata,
        as the reader and the CLI do), and with ``ctf="auto"`` the views' CTF (``.ctf``);
        raises DDWError with the fix."""
        from ..core.io import tilt_metadata
        from ..core.errors import DDWError

        meta = layer.metadata or {}
        source = self.angle_source.currentText()
        if source == ANGLES_LAYER:
            values = meta.get("tilt_angles")
            if values is None:
                reason = meta.get("tilt_metadata_error")
                raise DDWError(reason or (
                    f"layer '{layer.name}' carries no tilt angles; choose 'Angle or metadata "
                    "file' or 'Range' under Angles"))
            return tilt_metadata.resolve_tilt_metadata(
                list(values), n_tilts, meta.get("source_path"),
                exclude=meta.get("excluded_views") or None, ctf=ctf)
        if source == ANGLES_FILE:
            path = self.angle_file.text().strip()
            if not path:
                raise DDWError("no angle file given; choose the angle or metadata file of this "
                               "stack (.tlt, .mdoc, .aln, .xml, .tomostar, .star)")
            return tilt_metadata.resolve_tilt_metadata(
                path, n_tilts, meta.get("source_path") or layer.name,
                frame_shape=tuple(layer.data.shape[1:]), ctf=ctf)
        return tilt_metadata.resolve_tilt_metadata(
            (self.tilt_min.value(), self.tilt_max.value(), self.tilt_step.value()), n_tilts,
            meta.get("source_path"), ctf=ctf)

    def _angles_for(self, layer, n_tilts: int) -> np.ndarray:
        """The angles of the views used (see :meth:`_tilt_metadata_for`)."""
        return self._tilt_metadata_for(layer, n_tilts).angles

    def _update_angle_summary(self, *_):
        source = self.angle_source.currentText()
        self._set_row_visible(self.angle_file.parentWidget(), source == ANGLES_FILE)
        self._set_row_visible(self.tilt_min.parentWidget(), source == ANGLES_RANGE)
        layer = self.series.layer()
        if layer is None:
            self.angle_summary.setText("Choose a tilt-series layer (or open a file with …).")
            return
        try:
            found = self._tilt_metadata_for(layer, int(layer.data.shape[0]))
        except Exception as exc:
            self.angle_summary.setText(f"<span style='color:#e0a040'>{exc}</span>")
            return
        stored = (layer.metadata or {}).get("tilt_metadata") or {}
        from_layer = source == ANGLES_LAYER and stored.get("summary")
        # the reader's summary names the file the layer's angles came from
        self.angle_summary.setText(stored["summary"] if from_layer else found.summary())
        self._update_ctf_summary(layer)

    def _update_ctf_summary(self, layer) -> None:
        """The defocus the reconstruction will phase flip with (or why none): one short line,
        the whole story in its tooltip."""
        if not hasattr(self, "ctf_summary"):  # the form is still being built
            return
        if not self.ctf.isChecked():
            self._ctf_line("CTF: off (not corrected)",
                           "Phase flipping is switched off: the tomograms keep the contrast "
                           "reversals of the microscope's CTF.")
            return
        try:
            found = self._tilt_metadata_for(layer, int(layer.data.shape[0]), ctf="auto")
        except Exception as exc:
            self._ctf_line(f"<span style='color:#e0a040'>CTF: {exc}</span>", f"CTF: {exc}")
            return
        if found.ctf is not None:
            ctf = found.ctf
            where = ctf.source.name if ctf.source is not None else ctf.kind
            lo, hi = float(ctf.defocus.min()), float(ctf.defocus.max())
            self._ctf_line(f"CTF: {ctf.count} defoci from {elide(where)}, {lo:.2f}…{hi:.2f} µm",
                           f"CTF: {ctf.summary()}; phase flipped when you press Reconstruct.")
        elif (layer.metadata or {}).get("synthetic"):
            self._ctf_line("CTF: none (synthetic sample)",
                           "The built-in sample is simulated without a CTF: there is nothing "
                           "to correct.")
        else:
            stem = layer_stem(layer.name)
            self._ctf_line("CTF: no defocus file found (not corrected)",
                           f"No defocus file beside the stack ({stem}.defocus, "
                           f"{stem}_ctffind4.txt, {stem}_CTF.txt …) and none in the angle "
                           "metadata (RELION/Warp), so the projections are not phase flipped. "
                           "Put the file beside the stack, or choose the RELION/Warp metadata "
                           "under Angles (the CLI also takes --ctf FILE).")

    def _ctf_line(self, text: str, full: str) -> None:
        self.ctf_summary.setText(text)
        self.ctf_summary.setToolTip(full)
