"""Step 1: tilt series → two independent half-tomograms (even/odd), through the pipeline's
reconstruct_halves (the same call as `deepdewedge reconstruct`). The "two tomograms" mode is in
:mod:`._tomograms`, the worker side in :mod:`._reconstruct_job`.

Slightly over 400 lines: most of it is the form (input stacks, three angle sources, binning,
thickness, filter, device) with the help text of every field, which reads best in one place."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QWidget,
)

from ._common import (
    WrapLabel,
    elide,
    DEVICE_TIP,
    LayerCombo,
    add_row,
    compact,
    device_choices,
    find_layer,
    form_layout,
    geometry,
    hbox,
    layer_source,
    notify_error,
    path_field,
    show_image,
    tip,
)
from ._names import layer_stem
from ._panel import DDWPanel
from ._reconstruct_job import pixel_size_of, reconstruct_job
from ._tomograms import TomogramsMode

MODE_SPLIT = "One tilt series → even/odd"
MODE_FRAMES = "Two frame-half tilt series"
MODE_TOMOS = "Two tomograms (already made)"

ANGLES_LAYER = "From the layer"
ANGLES_FILE = "Angle or metadata file"
ANGLE_FILE_FILTER = ("Tilt angles (*.tlt *.rawtlt *.mdoc *.aln *.xml *.tomostar *.star);;"
                     "All files (*)")
ANGLES_RANGE = "Range: min, max, step"

class TiltSeriesWidget(TomogramsMode, DDWPanel):
    """Tilt series → halves: reconstruct the even and odd half-tomograms (or pick two)."""

    title = "Tilt series → halves"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        lay = self.vbox(self)

        form = form_layout()
        self.mode = QComboBox()
        self.mode.addItems([MODE_SPLIT, MODE_FRAMES, MODE_TOMOS])
        add_row(form, "Input", self.mode,
                "What you start from: one aligned tilt series (its projections are split by "
                "angle order into even and odd halves); two tilt series from the even and odd "
                "movie frames (Warp/AreTomo _EVN/_ODD); or two tomograms you already "
                "reconstructed from independent halves.")
        lay.addLayout(form)

        # --- pages: tilt-series inputs vs. ready tomograms
        self.pages = QStackedWidget()
        self.pages.addWidget(self._build_series_page())
        self.pages.addWidget(self._build_tomo_page())
        lay.addWidget(self.pages)

        self.bar, self.status = self.make_progress()
        self.run_button = tip(QPushButton("Reconstruct"),
                              "Back-project the two halves in the background; the results "
                              "appear as '<name> even' and '<name> odd' layers.")
        self.cancel_button = tip(QPushButton("Cancel"), "Stop the reconstruction.")
        self.cancel_button.setEnabled(False)
        self.save_button = tip(QPushButton("Save…"),
                               "Write the even and odd tomograms (and the full FBP) into a "
                               "folder as <name>_even.mrc, <name>_odd.mrc, <name>_full.mrc, "
                               "the files 'deepdewedge reconstruct' writes.")
        self.save_button.setEnabled(False)
        self.use_button = tip(QPushButton("Use as halves"),
                              "Take the two chosen tomograms as the even/odd halves for fitting.")
        lay.addWidget(hbox(self.run_button, self.cancel_button, self.save_button,
                           self.use_button))
        lay.addWidget(self.bar)
        lay.addWidget(self.status)

        self.mode.currentTextChanged.connect(self._on_mode)
        self.series.layerChanged.connect(self._on_series_changed)
        self.angle_source.currentTextChanged.connect(self._update_angle_summary)
        self.angle_file.textChanged.connect(self._update_angle_summary)
        for box in (self.tilt_min, self.tilt_max, self.tilt_step):
            box.valueChanged.connect(self._update_angle_summary)
        self.run_button.clicked.connect(self.reconstruct)
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button.clicked.connect(self.use_tomograms)
        self._on_mode(self.mode.currentText())
        self._on_series_changed(self.series.layer_name())

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

    def _on_mode(self, mode: str):
        tomos = mode == MODE_TOMOS
        self.pages.setCurrentIndex(1 if tomos else 0)
        self._set_row_visible(self.series_odd, mode == MODE_FRAMES)
        self.run_button.setVisible(not tomos)
        self.cancel_button.setVisible(not tomos)
        self.save_button.setVisible(not tomos)
        self.use_button.setVisible(tomos)
        self._update_angle_summary()

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

    # ------------------------------------------------------------------ actions
    def _validate(self):
        """Everything the worker needs, or raise DDWError naming the problem and the fix."""
        from ..core.errors import DDWError
        from ..core.reconstruct.halves import check_same_shape

        mode = self.mode.currentText()
        layer = self.series.layer()
        if layer is None:
            raise DDWError("no tilt-series layer chosen; open a tilt series (or File > Open "
                           "Sample > DeepDeWedge) and pick it under 'Tilt series'")
        if layer.ndim != 3:
            raise DDWError(f"layer '{layer.name}' is {layer.ndim}D; a tilt series is a 3D stack "
                           "(projections × Y × X)")
        data = layer_source(layer)  # not read here: the worker reads it
        odd = None
        if mode == MODE_FRAMES:
            odd_layer = self.series_odd.layer()
            if odd_layer is None or odd_layer.name == layer.name:
                raise DDWError("choose two different tilt series: the EVN one under "
                               "'Tilt series' and the ODD one under 'ODD series'")
            odd = layer_source(odd_layer)
            check_same_shape(data, odd, what="frame-half tilt series")
        found = self._tilt_metadata_for(layer, int(data.shape[0]),
                                        ctf="auto" if self.ctf.isChecked() else None)
        if found.ctf is not None:
            from ..core.io.ctf_formats import check_pixel_size

            check_pixel_size(found.ctf, pixel_size_of(layer))
        angles = found.angles
        keep = found.keep  # views the metadata excludes but the stack still holds: the worker drops them
        axis_x = self.axis_x.isChecked()
        ny, nx = (data.shape[2], data.shape[1]) if axis_x else data.shape[1:]
        binning = self.binning.value()
        if min(ny, nx) // binning < 4:
            raise DDWError(f"binning {binning} leaves fewer than 4 pixels of the "
                           f"{ny}×{nx} projections; use less binning")
        apod = self.apodization.currentText()
        params = dict(  # a pipeline.HalvesRequest: the same fields as the CLI's options
            thickness=self.thickness.value(),  # binned voxels, as the CLI's --thickness
            binning=binning, bin_mode=self.bin_mode.currentText(),
            apodization=None if apod == "none" else apod, device=self.device.currentText(),
            want_full=self.full.isChecked(), ctf=self.ctf.isChecked(),
            invert=self.invert.isChecked(),
        )
        names = [layer_stem(layer.name)] if odd is None else [layer.name, odd_layer.name]
        inputs = dict(data=data, data_odd=odd, angles=angles, keep=keep, axis_x=axis_x, names=names,
                      pixel_size=pixel_size_of(layer), origin=geometry(layer)[1],
                      ctf=found.ctf)
        return layer, inputs, params

    def reconstruct(self) -> bool:
        """Start the reconstruction worker; False (and a notification) if the input is refused."""
        return self.launch(
            "reconstruction", self._prepare, on_done=self._on_done,
            controls=(self.run_button,), cancel=self.cancel_button,
            busy="A reconstruction is already running; wait for it or press Cancel.",
            failed="Failed")

    def _prepare(self):
        layer, inputs, params = self._validate()
        self._source = layer
        self._invert = params["invert"]
        return partial(reconstruct_job, inputs=inputs, params=params)

    def _on_done(self, result):
        """Show the pipeline's Halves as layers ``"<stem> even"``, ``"<stem> odd"`` (and
        ``"<stem> FBP"``) with its voxel size and origin and the contrast the worker computed
        (``_reconstruct_job.Reconstructed``); Save… writes them. One layer per event-loop turn
        (:meth:`in_turns`): the viewer paints between them."""
        halves = self.halves_result = result.halves
        base = layer_stem(halves.stem)
        tmin, tmax = (float(v) for v in halves.tilt_range)
        scale = tuple(float(v) for v in halves.voxel_size)
        translate = tuple(float(v) for v in halves.origin)
        names = {key: f"{base} {key}" for key, data in
                 (("even", halves.even), ("odd", halves.odd), ("FBP", halves.full))
                 if data is not None}

        def add(key, data):
            # ddw_ctf: the mean CTF the Fourier inspector draws the zeros of (None: unknown)
            meta = {"tilt_min": tmin, "tilt_max": tmax, "voxel_size": scale,
                    "ddw_role": key.lower(), "ddw_source": base, "ddw_ctf": result.ctf}
            show_image(self.viewer, data, names[key], scale=scale, translate=translate,
                       metadata=meta, visible=(key == "even"), contrast=result.limits[key])

        def finish():
            try:
                self._source.visible = False
            except RuntimeError:
                pass
            self._centre_view(names["even"])
            state = self.state
            state.source = base
            state.tilt_min, state.tilt_max = tmin, tmax
            state.fbp = names.get("FBP", "")
            state.even, state.odd = names["even"], names["odd"]
            state.halves_version += 1  # observers preselect the new halves
            self.bar.setValue(1000)
            self.save_button.setEnabled(True)
            shape = halves.even.shape
            self.status.setText(f"Done: '{names['even']}' and '{names['odd']}', "
                                f"{shape[0]}×{shape[1]}×{shape[2]} voxels of {scale[0]:.3g} Å. "
                                "Save… writes them as MRC.")
            dense = "bright" if self._invert else "dark"
            done = (f"phase flipped at {result.ctf['defocus_um']:.2f} µm mean defocus"
                    if result.ctf else "not corrected")
            self._ctf_line(f"CTF: {done}; dense material {dense}", halves.ctf_summary)

        volumes = {"even": halves.even, "odd": halves.odd, "FBP": halves.full}
        self.status.setText("Showing the halves…")
        self.in_turns(*(partial(add, key, volumes[key]) for key in names), finish)

    def save(self, folder: str | None = None) -> bool:
        """Write the halves (and the full FBP) into ``folder`` as ``<stem>_even.mrc``,
        ``<stem>_odd.mrc``, ``<stem>_full.mrc`` — the names of `deepdewedge reconstruct`. An
        existing file is replaced only after the user confirms."""
        halves = getattr(self, "halves_result", None)
        if halves is None:
            notify_error("Nothing to save yet: press Reconstruct first.")
            return False
        if folder is None:
            from qtpy.QtWidgets import QFileDialog

            folder = QFileDialog.getExistingDirectory(self, "Save the halves into",
                                                      self.state.out_dir or str(Path.home()))
            if not folder:
                return False
        from ..pipeline import write_halves

        return self.save_files("halves", partial(write_halves, folder, halves.stem, halves),
                               controls=(self.save_button,))

    def _centre_view(self, name: str):
        layer = find_layer(self.viewer, name)
        if layer is None:
            return
        self.viewer.reset_view()
        try:
            centre = layer.data_to_world(np.asarray(layer.data.shape) // 2)
            point = list(self.viewer.dims.point)
            point[-3] = float(centre[-3])
            self.viewer.dims.point = point
        except Exception:  # a viewer with other dimensions: leave the slider alone
            pass
