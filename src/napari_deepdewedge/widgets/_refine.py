"""Step 4: refine the full halves with the fitted model; optional per-half results and their
disagreement ("consistency"); save as MRC with the voxel size."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QPushButton, QSpinBox

from ._common import (
    DEVICE_TIP,
    add_row,
    device_choices,
    find_layer,
    form_layout,
    geometry,
    hbox,
    layer_source,
    notify_error,
    path_field,
    percentile_limits,
    read_array,
    show_image,
    tip,
)
from ._halves import HalvesPicker
from ._names import PREVIEW_NAME, layer_stem
from ._panel import DDWPanel
from ._workers import Progress, run_with_progress


def _refine_job(job, model_path, tomo0, tomo1, params):
    """Worker generator: the pipeline's refine (as `deepdewedge refine`)."""
    from ..pipeline import RefineRequest, refine

    yield Progress("Loading the model", 0, 1)
    request = RefineRequest(model=model_path, even=read_array(tomo0), odd=read_array(tomo1),
                            **params)  # the halves are read here, on the worker thread
    result = yield from run_with_progress(refine, job.stop, "Refining", request)
    yield Progress("Preparing the display", 0, 1)
    return display_of(result)


@dataclass
class RefinedDisplay:
    """A ``RefineResult`` with what showing it needs, computed on the worker (nothing of the
    volumes is read in the GUI thread): contrast limits per role and the unsigned
    disagreement ``|half0 − half1|`` with its upper limit."""

    result: object
    limits: dict = field(default_factory=dict)
    disagreement: object = None
    disagreement_high: float = 1.0
    levels: list | None = None  # the refined tomogram's pyramid when it is big


#: refined tomograms of at least this size come back as multiscale layers (1 GiB: 256×1024×1024
#: float32); the pyramid costs a seventh more memory
MULTISCALE_BYTES = 1 << 30


def display_of(result) -> RefinedDisplay:
    """:class:`RefinedDisplay` of a ``RefineResult`` (worker side). A refined tomogram of at
    least :data:`MULTISCALE_BYTES` also gets its pyramid (``levels``), shown as a multiscale
    layer: napari's 3D view then renders a coarse level instead of the whole volume."""
    shown = RefinedDisplay(result, {"refined": percentile_limits(result.refined)})
    if result.refined.nbytes >= MULTISCALE_BYTES:
        from ..core.io.omezarr_write import pyramid_levels

        shown.levels = pyramid_levels(result.refined)
    if result.half0 is not None:
        shown.limits["refined even"] = percentile_limits(result.half0)
        shown.limits["refined odd"] = percentile_limits(result.half1)
    if result.difference is not None:
        shown.disagreement = np.abs(result.difference)  # shown unsigned; the file is signed
        high = percentile_limits(shown.disagreement, 0.0, 99.5)[1]
        shown.disagreement_high = high if high > 0 else 1.0
    return shown


#: the Save… dialog's second format: a pyramid napari browses lazily (core.io.omezarr)
OME_ZARR_FILTER = "OME-Zarr 0.4 pyramid (*.zarr)"


class RefineWidget(DDWPanel):
    """Refine: apply the fitted model to both full halves and average them."""

    title = "Refine"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.outputs: dict[str, str] = {}  # role → layer name of the last refinement
        self.result = None  # the last RefineResult (pipeline.refine)
        self._ctf = None  # the halves' mean CTF (metadata ddw_ctf), set when a job starts
        lay = self.vbox(self)
        form = form_layout()
        self.halves = HalvesPicker(
            self.viewer, form, parent=self,
            even_tip="Tomogram of the even half (the one fitted on).",
            odd_tip="Tomogram of the odd half; same size.")
        self.even, self.odd = self.halves.even, self.halves.odd
        row, self.model_path = path_field(
            "model checkpoint (.pt)",
            "The fitted model: filled in with the model just fitted (latest.pt); pick best.pt "
            "(lowest validation loss) or any other checkpoint instead.",
            filters="Checkpoints (*.pt);;All files (*)")
        add_row(form, "Model", row, self.model_path.toolTip())
        self.overlap = QSpinBox()
        self.overlap.setRange(0, 512)
        self.overlap.setSpecialValueText("auto")
        self.overlap.setSuffix(" px")
        add_row(form, "Overlap", self.overlap,
                "Overlap of neighbouring cubes, blended smoothly; 'auto' uses a third of the "
                "cube size. More overlap hides seams but takes longer.")
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(4)
        add_row(form, "Batch size", self.batch,
                "Cubes refined at once; lower it if the GPU runs out of memory.")
        self.device = QComboBox()
        self.device.addItems(device_choices())
        add_row(form, "Device", self.device, DEVICE_TIP)
        self.keep_halves = QCheckBox("Per-half results + consistency")
        tip(self.keep_halves, "Also show each half refined on its own and where the two disagree "
                              "('<name> consistency', bright = disagreement): a check against "
                              "details the model may have invented.")
        form.addRow(self.keep_halves)
        lay.addLayout(form)

        self.run_button = tip(QPushButton("Refine"), "Refine both halves in the background and "
                                                     "show the average as '<name> refined'.")
        self.cancel_button = tip(QPushButton("Cancel"), "Stop the refinement.")
        self.cancel_button.setEnabled(False)
        self.save_button = tip(QPushButton("Save…"), "Write the refined tomogram (and the per-half "
                                                     "results, if shown) as MRC with the voxel "
                                                     "size.")
        self.save_button.setEnabled(False)
        lay.addWidget(hbox(self.run_button, self.cancel_button, self.save_button))
        self.bar, self.status = self.make_progress()
        lay.addWidget(self.bar)
        lay.addWidget(self.status)

        self.run_button.clicked.connect(lambda: self.refine())
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(lambda: self.save())
        self.state.events.halves_version.connect(self._on_halves)
        self.state.events.model_version.connect(self._on_model)
        self._on_halves()
        self._on_model()

    def _on_halves(self, *_):
        self.halves.set_pair(self.state.even, self.state.odd)

    def _on_model(self, *_):
        if self.state.checkpoint:
            self.model_path.setText(self.state.checkpoint)

    # ------------------------------------------------------------------ refine
    def _inputs(self):
        from ..core.errors import DDWError

        if self.state.fitting:
            raise DDWError("a fit is still running; wait for it to finish (or Stop it) before "
                           "refining")
        even, odd = self.halves.layers()
        path = self.model_path.text().strip()
        if not path:
            raise DDWError("no model chosen; fit one in step 3 or pick a checkpoint (.pt) file")
        if not Path(path).is_file():
            raise DDWError(f"model checkpoint {path} not found; pick an existing .pt file")
        return even, odd, path

    def refine(self) -> bool:
        """Start the refinement worker; False (and a notification) if the input is refused."""
        return self.launch(
            "refinement", self._prepare, on_done=self._on_done,
            controls=(self.run_button,), cancel=self.cancel_button,
            busy="A refinement is already running; wait for it or press Cancel.",
            start_text="Loading the model…", progress_unit="batch")

    def _prepare(self):
        even, odd, path = self._inputs()
        meta = even.metadata or {}
        self._base = str(meta.get("ddw_source") or layer_stem(even.name))
        self._geometry = geometry(even)
        self._ctf = meta.get("ddw_ctf")  # the halves' mean CTF: the refined volume keeps it
        self._keep = self.keep_halves.isChecked()
        params = dict(overlap=self.overlap.value() or None, batch_size=self.batch.value(),
                      device=self.device.currentText(), keep_halves=self._keep)
        return partial(_refine_job, model_path=path, tomo0=layer_source(even),
                       tomo1=layer_source(odd), params=params)

    def _on_done(self, shown: RefinedDisplay):
        """Show the refined tomogram (and, kept, the refined halves and their consistency map),
        one layer per event-loop turn (:meth:`in_turns`): the viewer paints between them."""
        result = self.result = shown.result  # what Save… writes (the signed difference too)
        scale, translate = self._geometry
        base = self._base
        common = {"voxel_size": scale, "tilt_min": self.state.tilt_min,
                  "tilt_max": self.state.tilt_max, "ddw_source": base,
                  "model": self.model_path.text().strip(), "ddw_ctf": self._ctf}
        self.outputs = {}

        def add(role, data, **look):
            name = f"{base} {role}"
            show_image(self.viewer, data, name, scale=scale, translate=translate,
                       metadata={**common, "ddw_role": role.replace(" ", "_"),
                                 **look.pop("metadata", {})}, **look)
            self.outputs[role] = name

        steps = []
        if self._keep and result.half0 is not None:
            for role, data in (("refined even", result.half0), ("refined odd", result.half1)):
                steps.append(partial(add, role, data, visible=False,
                                     contrast=shown.limits[role]))
        steps.append(partial(add, "refined", shown.levels or result.refined,
                             contrast=shown.limits["refined"]))
        if self._keep and shown.disagreement is not None:
            steps.append(partial(
                add, "consistency", shown.disagreement,
                metadata={"description": "|refined even − refined odd|: bright where the two "
                                         "halves disagree"},
                colormap="inferno", blending="additive", opacity=0.8,
                contrast=(0.0, shown.disagreement_high)))

        def finish():
            preview = find_layer(self.viewer, PREVIEW_NAME)
            if preview is not None:
                preview.visible = False
            refined_name = self.outputs["refined"]
            self.state.refined = refined_name
            self.state.refined_version += 1
            self.bar.setValue(1000)
            self.save_button.setEnabled(True)
            self.status.setText(f"Done: '{refined_name}'. Save… writes it as MRC or "
                                "OME-Zarr; Compare shows it beside the FBP.")

        self.status.setText("Showing the result…")
        self.in_turns(*steps, finish)

    # ------------------------------------------------------------------ save
    def save(self, path: str | None = None) -> bool:
        """Write the last refinement with the pipeline's write_refined, under the CLI's names:
        ``OUT.mrc`` and, with per-half results, ``OUT_half0.mrc``, ``OUT_half1.mrc`` and
        ``OUT_consistency.mrc`` (the SIGNED half0 − half1; the layer shows its absolute value),
        with the voxel size and origin of the halves; ``OUT.zarr`` (or the dialog's OME-Zarr
        choice) writes the same names as OME-Zarr pyramids. Existing files are replaced only after
        the user confirms."""
        from ..pipeline import write_refined

        result = self.result
        if result is None:
            notify_error("Nothing to save yet: run Refine first.")
            return False
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            folder = self.state.out_dir or str(Path.home())
            suggestion = str(Path(folder) / f"{self._base.replace(' ', '_')}_refined.mrc")
            path, chosen = QFileDialog.getSaveFileName(
                self, "Save the refined tomogram", suggestion,
                f"MRC (*.mrc);;{OME_ZARR_FILTER}")
            if not path:
                return False
            if chosen == OME_ZARR_FILTER and not path.lower().endswith(".zarr"):
                path = str(Path(path).with_suffix(".zarr"))
        from ..core.io.omezarr_write import provenance_record

        scale, translate = self._geometry
        record = provenance_record(model=self.model_path.text().strip() or None,
                                   command="napari: Refine dock")
        return self.save_files("refined tomogram",
                               partial(write_refined, path, result, scale, translate,
                                       provenance=record),
                               controls=(self.save_button,))
