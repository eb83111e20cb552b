"""Step 3: fit the U-Net to the two halves in a background worker, with a live loss plot, a
live preview of the refined view, Stop (saves a checkpoint) and Resume."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QPushButton, QSpinBox

from ..pipeline import FitResumed
from ._common import (
    DEVICE_TIP,
    LayerCombo,
    add_row,
    compact,
    device_choices,
    form_layout,
    geometry,
    hbox,
    layer_source,
    notify_error,
    path_field,
    percentile_limits,
    tip,
)
from ._fit_pairs import MorePairsRow, fit_request, pair_source, pairs_message
from ._halves import HalvesPicker
from ._names import PREVIEW_NAME
from ._fit_view import FitEventsView, ShownPreview
from ._panel import DDWPanel
from ._plots import LossPlot

# The first event of a resumed fit (the planned settings and the checkpoint's loss history).
Resumed = FitResumed


def _fit_job(job, tomo0, tomo1, mask, config, resume, slab, source=None, extra=()):
    """Worker generator: the pipeline's fit_events (as `deepdewedge fit`), one event per
    optimizer step at least, after a ``FitPairs`` message (the tomograms and their memory).
    The picked pair is read and the ``extra`` pairs are opened here
    (:func:`._fit_pairs.fit_request`); ``source``: the picked pair's name and file paths,
    recorded in the checkpoint as the CLI does. A resume follows the pipeline's one rule
    (``plan_fit``): the checkpoint's fixed settings, the form's changeable ones
    (``given=frozenset()``: the form's fixed fields are not compared; the dock shows the
    checkpoint's values when it resumes). A preview's contrast is computed here, so that
    showing it reads nothing in the GUI thread."""
    from ..core.fit.loop import PreviewReady
    from ..pipeline import fit_events

    request = fit_request(tomo0, tomo1, mask, config, resume, source, extra)
    if request.resume is None:
        yield pairs_message(request, request.planned_config())
    last = None
    for event in fit_events(request, should_stop=job.stop.is_set, preview_slab=slab):
        last = event
        yield ShownPreview(event, percentile_limits(event.volume)) \
            if isinstance(event, PreviewReady) else event
        if isinstance(event, FitResumed):  # the checkpoint's settings define the cubes
            yield pairs_message(request, event.config)
    return last


def _spin(lo, hi, value, step=1, suffix=""):
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    return box


class FitWidget(FitEventsView, DDWPanel):
    """Fit: learn denoising and wedge filling from the two halves (Noise2Noise, Fourier masks)."""

    title = "Fit"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._slab = None  # (z0, z1) of the live preview, read by the worker thread
        self._z_size = 0
        self._out_dir_edited = False
        self.events: list = []  # every event of the current run (for status and tests)
        self.finished = None  # the last FitFinished
        lay = self.vbox(self)

        form = form_layout()
        self.halves = HalvesPicker(
            self.viewer, form, parent=self,
            even_tip="Tomogram of the even half (from step 1). The network learns to predict "
                     "the odd half from it, with rotations, so noise and the missing wedge are "
                     "learned away.",
            odd_tip="Tomogram of the odd half; same size as the even one.")
        self.even, self.odd = self.halves.even, self.halves.odd
        self.mask = LayerCombo(self.viewer, "labels", ndim=3, allow_none=True)
        add_row(form, "ROI mask", self.mask,
                "Optional Labels layer (same size as the halves) marking the sample: training "
                "cubes are taken only where at least 30 % of the cube is labelled. Paint one to "
                "skip empty ice or vacuum.")
        self.more_pairs = MorePairsRow(form, self._picked_name)
        self.preset = QComboBox()
        add_row(form, "Preset", self.preset,
                "Starting values: 'fast' for a laptop CPU (small cubes, few channels); "
                "'default' for a GPU (the published settings); 'balanced' in between.")
        self.size = _spin(8, 256, 48, 8, " px")
        add_row(form, "Cube size", self.size,
                "Edge of the training sub-tomograms in voxels (a multiple of 2^depth). Larger "
                "cubes see more context but need more memory; 96 is the published value.")
        self.channels = _spin(2, 256, 16)
        self.depth = _spin(1, 5, 3)
        tip(self.depth, "Number of down-sampling levels of the U-Net (3 is standard).")
        add_row(form, "Channels, depth", hbox(self.channels, self.depth),
                "Width of the network (channels of the first level; 64 as published, 32 "
                "nearly as good and much faster) and its number of levels.")
        self.epochs = _spin(1, 100000, 50)
        add_row(form, "Epochs", self.epochs,
                "How many passes over all training cubes. Good results often appear after a "
                "few dozen; the paper fits hundreds. Raise it to continue a finished fit with "
                "Resume.")
        self.batch = _spin(1, 256, 5)
        add_row(form, "Batch size", self.batch,
                "Cubes per optimizer step. Lower it if the GPU runs out of memory.")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1e-1)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(4e-4)
        add_row(form, "Learning rate", self.lr,
                "Step size of the Adam optimizer; 0.0004 is the published value. Lower it if "
                "the loss jumps around.")
        self.lr_schedule = QComboBox()
        self.lr_schedule.addItems(["constant", "warmup_cosine"])
        self.warmup = _spin(0, 10000, 0, suffix=" ep")
        tip(self.warmup, "warmup_cosine: epochs of linear warm-up to the learning rate.")
        add_row(form, "LR schedule", hbox(self.lr_schedule, self.warmup),
                "constant (the published way) or warmup_cosine: a linear warm-up over the "
                "given epochs, then a cosine down to 0.1 × the rate at the last epoch. With a "
                "rate of 0.001 and 1 warm-up epoch a fit reaches a given quality sooner, but "
                "is no better after many epochs (README, 'Time to quality').")
        self.early_stop = _spin(0, 10000, 0, suffix=" ep")
        add_row(form, "Early stop", self.early_stop,
                "Stop when the validation loss has not improved for this many epochs "
                "(0 = never).")
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.5)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(0.1)
        add_row(form, "Validation", self.val_fraction,
                "Fraction of the cubes held out to check the fit on data it does not learn "
                "from (the orange curve). 0 disables validation.")
        self.update_every = _spin(0, 10000, 10, suffix=" ep")
        add_row(form, "Wedge update", self.update_every,
                "Every this many epochs the network's own prediction fills the missing wedge "
                "of the inputs (0 = never). The published value is 10.")
        self.preview_every = _spin(0, 10000, 10, suffix=" ep")
        add_row(form, "Preview every", self.preview_every,
                f"Every this many epochs the current model refines the slab around the slice "
                f"you are looking at and shows it as the layer '{PREVIEW_NAME}' (0 = off).")
        self.tilt_min = QDoubleSpinBox()
        self.tilt_max = QDoubleSpinBox()
        for box, value in ((self.tilt_min, -60.0), (self.tilt_max, 60.0)):
            box.setRange(-89.9, 89.9)
            box.setDecimals(1)
            box.setSuffix("°")
            box.setValue(value)
            compact(box)
        add_row(form, "Tilt range", hbox(self.tilt_min, self.tilt_max),
                "Tilt range of the data (filled in from the halves); it defines the missing "
                "wedge.")
        self.device = QComboBox()
        self.device.addItems(device_choices())
        add_row(form, "Device", self.device, DEVICE_TIP)
        row, self.out_dir = path_field("folder for checkpoints",
                                       "Folder for checkpoints (latest.pt, best.pt, stopped.pt) "
                                       "and losses.csv. Resume and Refine read from it.",
                                       dialog="dir")
        add_row(form, "Output folder", row, self.out_dir.toolTip())
        row, self.resume_path = path_field("checkpoint to resume from",
                                           "Checkpoint to continue from with Resume: "
                                           "stopped.pt or latest.pt of an earlier run "
                                           "(filled in when a fit stops).",
                                           filters="Checkpoints (*.pt);;All files (*)")
        add_row(form, "Resume from", row, self.resume_path.toolTip())
        lay.addLayout(form)

        self.start_button = tip(QPushButton("Start"), "Fit a new model in the background.")
        self.stop_button = tip(QPushButton("Stop"),
                               "Stop after the current step; a checkpoint (stopped.pt) is saved "
                               "so that Resume can continue exactly there.")
        self.resume_button = tip(QPushButton("Resume"),
                                 "Continue fitting from the checkpoint under 'Resume from' "
                                 "(up to the number of epochs above).")
        self.stop_button.setEnabled(False)
        lay.addWidget(hbox(self.start_button, self.stop_button, self.resume_button))
        self.bar, self.status = self.make_progress()
        tip(self.bar, "Fitting progress over all epochs.")
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        self.loss_plot = LossPlot(self.viewer)
        tip(self.loss_plot, "Loss per epoch (log scale): blue = fitting cubes, orange = held-out "
                            "validation cubes. Validation flattening out means further epochs "
                            "bring little.")
        lay.addWidget(self.loss_plot)

        # presets come from the engine (torch is imported here, when the dock opens)
        try:
            from ..core.model.unet import PRESETS
        except Exception:  # pragma: no cover - engine import problem shows when fitting
            PRESETS = {"fast": dict(subtomo_size=48, channels=16, depth=3)}
        self._presets = dict(PRESETS)
        self.preset.addItems(list(self._presets))
        gpu = any(d.startswith("cuda") for d in device_choices())
        if gpu and "default" in self._presets:  # the published settings when a GPU is there
            self.preset.setCurrentText("default")
        self.preset.currentTextChanged.connect(self.apply_preset)
        self.apply_preset(self.preset.currentText())

        self.start_button.clicked.connect(lambda: self.start())
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(lambda: self.resume())
        self.out_dir.textEdited.connect(lambda *_: setattr(self, "_out_dir_edited", True))
        self.even.layerChanged.connect(self._on_even_changed)
        self.state.events.halves_version.connect(self._on_halves)
        self.viewer.dims.events.current_step.connect(self._update_slab)
        self.viewer.dims.events.ndisplay.connect(self._update_slab)
        self._on_halves()

    # ------------------------------------------------------------------ form
    def apply_preset(self, name: str) -> None:
        values = self._presets.get(name)
        if not values:
            return
        self.size.setValue(int(values.get("subtomo_size", self.size.value())))
        self.channels.setValue(int(values.get("channels", self.channels.value())))
        self.depth.setValue(int(values.get("depth", self.depth.value())))

    def _on_halves(self, *_):
        state = self.state
        self.halves.set_pair(state.even, state.odd)
        self.tilt_min.setValue(state.tilt_min)
        self.tilt_max.setValue(state.tilt_max)
        if state.source and not self._out_dir_edited:
            self.out_dir.setText(str(Path.home() / "deepdewedge-runs" / state.source.replace(" ", "_")))

    def _on_even_changed(self, name: str):
        layer = self.even.layer()
        if layer is None:
            return
        meta = layer.metadata or {}
        if "tilt_min" in meta and "tilt_max" in meta:
            self.tilt_min.setValue(float(meta["tilt_min"]))
            self.tilt_max.setValue(float(meta["tilt_max"]))
        self._update_slab()

    def config(self):
        """The FitConfig of the form (raises DDWError for values the engine refuses)."""
        from ..core.fit.config import FitConfig

        layer = self.even.layer()
        voxel = geometry(layer)[0] if layer is not None else (1.0, 1.0, 1.0)
        out_dir = self.out_dir.text().strip() or None
        cfg = FitConfig(
            subtomo_size=self.size.value(), channels=self.channels.value(),
            depth=self.depth.value(), epochs=self.epochs.value(), batch_size=self.batch.value(),
            lr=float(self.lr.value()), lr_schedule=self.lr_schedule.currentText(),
            warmup_epochs=self.warmup.value(), early_stop_patience=self.early_stop.value(),
            val_fraction=float(self.val_fraction.value()),
            update_every=self.update_every.value(), tilt_min=float(self.tilt_min.value()),
            tilt_max=float(self.tilt_max.value()), device=self.device.currentText(),
            out_dir=out_dir, preview_every=self.preview_every.value(),
            voxel_size=tuple(float(v) for v in voxel),
        )
        return cfg.validate()

    # ------------------------------------------------------------------ preview slab
    def _update_slab(self, *_):
        """Rows of the live preview: the viewed slice ± s/2, or a central slab in 3D view."""
        try:
            layer = self.even.layer()
        except RuntimeError:
            return
        if layer is None:
            self._slab = None
            return
        n_z = int(layer.data.shape[0])
        thick = min(n_z, self.size.value())
        z = n_z // 2
        dims = self.viewer.dims
        if dims.ndisplay == 2 and len(dims.point) >= 3 and (dims.ndim - 3) in dims.not_displayed:
            scale, translate = geometry(layer)
            z = int(round((dims.point[-3] - translate[0]) / scale[0]))
            z = min(max(z, 0), n_z - 1)
        z0 = min(max(z - thick // 2, 0), n_z - thick)
        self._slab = (int(z0), int(z0 + thick))
        self._z_size = n_z

    def _preview_slab(self):
        """Called by the worker thread: only reads a tuple prepared in the GUI thread."""
        return self._slab

    # ------------------------------------------------------------------ actions
    def _inputs(self):
        """Lazy sources for the engine (read by the worker), or raise DDWError naming what is
        wrong."""
        from ..core.errors import DDWError
        from ..core.reconstruct.halves import check_same_shape

        even, odd = self.halves.layers()
        mask = None
        mask_layer = self.mask.layer()
        if mask_layer is not None:
            check_same_shape(even.data, mask_layer.data, what="halves and ROI mask")
            mask = layer_source(mask_layer)
        smallest = min(even.data.shape)
        if self.size.value() > smallest:
            raise DDWError(f"cube size {self.size.value()} is larger than the halves "
                           f"({'×'.join(map(str, even.data.shape))}); choose a cube size of at "
                           f"most {smallest // 8 * 8}")
        return even, odd, layer_source(even), layer_source(odd), mask

    def start(self, resume: str | None = None, *, overwrite: bool = False) -> bool:
        """Start fitting (or resume); False (and a notification) if the input is refused.

        A new fit into a folder that holds an earlier fit's checkpoints would replace them: the
        user is asked first (``self.question``), and 'Resume from' is set to the checkpoint to
        continue instead; the fit starts only once they choose to start afresh."""
        if resume is None and not overwrite and not self.busy and self._ask_if_earlier_fit():
            return False
        return self.launch(
            "fit", lambda: self._prepare(resume), on_done=self._on_done,
            on_event=self._on_event, on_cancelled=self._show_end, on_end=self._on_end,
            controls=(self.start_button, self.resume_button), cancel=self.stop_button,
            busy="A fit is already running; press Stop first.", failed="Fitting failed",
            start_text="Preparing sub-tomograms…")

    def _ask_if_earlier_fit(self) -> bool:
        from ..pipeline import OutputExists, refuse_earlier_fit

        folder = self.out_dir.text().strip()
        try:
            if folder:
                refuse_earlier_fit(folder)
        except OutputExists as exc:
            if exc.resume_from is not None:
                self.resume_path.setText(str(exc.resume_from))
            self.status.setText("This folder holds an earlier fit: Resume continues it.")
            self.ask("Earlier fit in this folder",
                     f"{folder} already holds checkpoints of an earlier fit "
                     f"({', '.join(p.name for p in exc.paths[:3])}).\n\nStart a new fit and "
                     "replace them? (Cancel, then Resume, continues the earlier fit.)",
                     lambda: self.start(overwrite=True), yes_text="Start afresh")
            return True
        return False

    def _picked_name(self) -> str:
        even, odd = self.even.layer(), self.odd.layer()
        return pair_source(even, odd)["name"] if even is not None and odd is not None else ""

    def job_inputs(self, resume=None) -> dict:
        """The fit job's inputs (:func:`._fit_pairs.fit_request`'s arguments), checked; nothing
        is read here (GUI thread). DDWError naming what is wrong."""
        from ..core.errors import DDWError

        even, odd, tomo0, tomo1, mask = self._inputs()
        cfg = self.config()
        if cfg.out_dir is None:
            raise DDWError("choose an output folder for the checkpoints (Resume and Refine "
                           "need them)")
        if resume is not None and not Path(resume).is_file():
            raise DDWError(f"checkpoint {resume} not found; choose stopped.pt or latest.pt of "
                           "an earlier fit under 'Resume from'")
        return dict(tomo0=tomo0, tomo1=tomo1, mask=mask, config=cfg, resume=resume,
                    source=pair_source(even, odd),
                    extra=self.more_pairs.pairs((cfg.tilt_min, cfg.tilt_max)))

    def _prepare(self, resume):
        inputs = self.job_inputs(resume)
        even, _odd = self.halves.layers()
        self._even_name = even.name
        self._geometry = geometry(even)
        self._update_slab()
        self.events = []
        self.finished = None
        if resume is None:
            self.loss_plot.clear()
        self._total_steps = None
        self._pair_names = []
        self.bar.setFormat("%p%")
        self.state.fitting = True
        return partial(_fit_job, slab=self._preview_slab, **inputs)

    def resume(self, path: str | None = None) -> bool:
        """Continue from ``path`` (default: the 'Resume from' field, else the output folder)."""
        path = path or self.resume_path.text().strip()
        if not path:
            folder = Path(self.out_dir.text().strip() or ".")
            for name in ("stopped.pt", "latest.pt"):
                if (folder / name).is_file():
                    path = str(folder / name)
                    break
        if not path:
            notify_error("No checkpoint to resume from: choose one under 'Resume from' "
                         "(stopped.pt or latest.pt of an earlier fit).")
            return False
        self.resume_path.setText(path)
        return self.start(resume=path)

    def stop(self):
        """Ask the fit to stop after the current step (it saves stopped.pt first)."""
        if self.running:
            self.cancel("Stopping after this step; saving a checkpoint…")
            self.stop_button.setEnabled(False)

    @property
    def running(self) -> bool:
        """A fit runs or its end has not been shown yet."""
        return self._job is not None and not getattr(self._job, "gui_done", True)
