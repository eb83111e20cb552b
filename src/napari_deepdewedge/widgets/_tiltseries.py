"""Step 1: tilt series → two independent half-tomograms (even/odd), through the pipeline's
reconstruct_halves (the same call as `deepdewedge reconstruct`). The tilt-series form (fields,
angles, CTF line) is in :mod:`._series_form`, the "two tomograms" mode in :mod:`._tomograms`, the
worker side in :mod:`._reconstruct_job`; this module runs the job and shows its result."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QComboBox, QPushButton, QStackedWidget

from ._common import (
    add_row,
    find_layer,
    form_layout,
    geometry,
    hbox,
    layer_source,
    notify_error,
    show_image,
    tip,
)
from ..core.ctf import mean_ctf_record
from ._names import layer_stem
from ._panel import DDWPanel
from ._reconstruct_job import pixel_size_of, reconstruct_job
from ._series_form import ANGLES_FILE, ANGLES_LAYER, ANGLES_RANGE, SeriesForm  # noqa: F401
from ._tomograms import TomogramsMode

MODE_SPLIT = "One tilt series → even/odd"
MODE_FRAMES = "Two frame-half tilt series"
MODE_TOMOS = "Two tomograms (already made)"


class TiltSeriesWidget(SeriesForm, TomogramsMode, DDWPanel):
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

    # ------------------------------------------------------------------ mode
    def _on_mode(self, mode: str):
        tomos = mode == MODE_TOMOS
        self.pages.setCurrentIndex(1 if tomos else 0)
        self._set_row_visible(self.series_odd, mode == MODE_FRAMES)
        self.run_button.setVisible(not tomos)
        self.cancel_button.setVisible(not tomos)
        self.save_button.setVisible(not tomos)
        self.use_button.setVisible(tomos)
        self._update_angle_summary()


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
        shown = found.ctf if found.ctf is not None else self._defocus_to_show(layer, data.shape[0])
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
                      ctf=found.ctf, ctf_record=None if shown is None else mean_ctf_record(shown))
        return layer, inputs, params

    def _defocus_to_show(self, layer, n_tilts: int):
        """With Phase flip off, the defocus beside the stack all the same, only for the
        Fourier inspector's CTF zeros (why uncorrected data show rings); nothing is corrected
        with it, so a file that cannot be read or does not fit is left out silently."""
        if self.ctf.isChecked():
            return None
        from ..core.io.ctf_formats import check_pixel_size

        try:
            view = self._tilt_metadata_for(layer, int(n_tilts), ctf="auto").ctf
            if view is not None:
                check_pixel_size(view, pixel_size_of(layer))
            return view
        except Exception:  # display only: never refuse a reconstruction over it
            return None

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
        self._flipped = bool(params["ctf"]) and inputs["ctf"] is not None
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
                    if self._flipped and result.ctf else "not corrected")
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
