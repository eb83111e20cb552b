"""Step 3: fit the U-Net to the two halves in a background worker, with a live loss plot, a
live preview of the refined view, Stop (saves a checkpoint) and Resume. The form (setting rows,
presets, the fitted cube size, the FitConfig) is :mod:`._fit_form`; its event handlers are
:mod:`._fit_view`."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from qtpy.QtWidgets import QComboBox, QPushButton

from ..pipeline import FitResumed
from ._common import (
    add_row,
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
from ._fit_fields import set_field  # noqa: F401  (re-exported: tests/test_settings.py)
from ._fit_form import FitForm
from ._fit_mask import MaskRow
from ._fit_pairs import MorePairsRow, fit_request, pair_source, pairs_message
from ._fit_view import FitEventsView, ShownPreview
from ._halves import HalvesPicker
from ._panel import DDWPanel
from ._plots import LossPlot

# The first event of a resumed fit (the planned settings and the checkpoint's loss history).
Resumed = FitResumed


def _fit_job(job, tomo0, tomo1, mask, config, resume, slab, source=None, extra=(),
             size_typed=True, **mask_kw):
    """Worker generator: the pipeline's fit_events (as `deepdewedge fit`), one event per
    optimizer step at least, after a ``FitPairs`` message (the tomograms and their memory).
    The picked pair is read and the ``extra`` pairs are opened here
    (:func:`._fit_pairs.fit_request`); ``source``: the picked pair's name and file paths,
    recorded in the checkpoint as the CLI does. A resume follows the pipeline's one rule
    (``plan_fit``): the checkpoint's fixed settings, the form's changeable ones
    (``given=frozenset()``: the form's fixed fields are not compared; the dock shows the
    checkpoint's values when it resumes). A preview's contrast is computed here, so that
    showing it reads nothing in the GUI thread. A cube size the user did not type
    (``size_typed``) is lowered to fit the ``extra`` pairs too (``pipeline.fit_size``; the
    form has fitted it to the picked pair), announced by a ``FitSizeChosen``."""
    from ..core.fit.loop import PreviewReady
    from ..pipeline import fit_events
    from ..pipeline.fit_size import FitSizeChosen, with_fitting_size

    request = fit_request(tomo0, tomo1, mask, config, resume, source, extra, **mask_kw)
    request, note = with_fitting_size(request, typed=size_typed)
    if note is not None:
        yield FitSizeChosen(request.config.subtomo_size, note)
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


class FitWidget(FitForm, FitEventsView, DDWPanel):
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
        self.more_pairs = MorePairsRow(form, self._picked_name)
        self.mask_row = MaskRow(self, form)  # the sample mask: a Labels layer, Auto (issue 20)
        self.mask = self.mask_row.combo
        self.preset = QComboBox()
        add_row(form, "Preset", self.preset,
                "Starting values: 'fast' for a laptop CPU (small cubes, few channels); "
                "'default' for a GPU (the published settings); 'balanced' in between.")
        self.fields = self._setting_rows(form)  # setting name → widget; also self.<name>
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
                            "validation cubes. Green (right axis): the half-map FSC of the two "
                            "halves refined on a fixed crop, measured without ground truth "
                            "(docs/stopping.md).")
        lay.addWidget(self.loss_plot)

        from ..core.fit.settings import PRESETS

        self._presets = dict(PRESETS)
        self.preset.addItems(list(self._presets))
        gpu = any(d.startswith("cuda") for d in device_choices())
        if gpu and "default" in self._presets:  # the published settings when a GPU is there
            self.preset.setCurrentText("default")
        self.preset.currentTextChanged.connect(self.apply_preset)
        # the size is fitted when a preset or the halves change, not when the depth does:
        # a user who set the size the form already showed (no valueChanged) and then the
        # depth would otherwise see it replaced (tests/test_widgets.py's tiny fit did)
        self.subtomo_size.valueChanged.connect(self._on_size_changed)
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
        thick = min(n_z, self.subtomo_size.value())
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
        even, odd = self.halves.layers()
        mask = self.mask_row.job_inputs(even.data)  # mask, mask_name, mask_origin, extra_auto
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
        if resume is None:  # a resume runs with its checkpoint's cube size
            self._check_size_fits(even.data.shape)
        cfg = self.config()
        if cfg.out_dir is None:
            raise DDWError("choose an output folder for the checkpoints (Resume and Refine "
                           "need them)")
        if resume is not None and not Path(resume).is_file():
            raise DDWError(f"checkpoint {resume} not found; choose stopped.pt or latest.pt of "
                           "an earlier fit under 'Resume from'")
        return dict(tomo0=tomo0, tomo1=tomo1, config=cfg, resume=resume,
                    source=pair_source(even, odd), size_typed=self._size_typed,
                    extra=self.more_pairs.pairs(cfg.tilt_range), **mask)

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
