"""How the Fit dock shows a running fit: the pipeline's fit events → progress bar, status line,
loss plot, live preview layer, and the end of the fit (stopped, finished or quit).

A mixin of :class:`._fit.FitWidget` (it uses the dock's form fields, bar, status and state);
kept apart so that the dock module holds the form and the actions only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..pipeline import FitResumed
from ..pipeline.fit_size import FitSizeChosen
from ._common import notify_info, notify_warning, show_image
from ._fit_pairs import FitPairs
from ._names import PREVIEW_NAME


@dataclass
class ShownPreview:
    """A ``PreviewReady`` event with its contrast limits, computed by the fit job on its worker
    (showing the preview then reads nothing of it in the GUI thread)."""

    event: object
    limits: tuple


class FitEventsView:
    """Event handlers of the Fit dock (``launch(on_event=…, on_done=…, on_cancelled=…)``)."""

    # ------------------------------------------------------------------ events
    def _show_config(self, cfg) -> None:
        """Show the settings a resumed fit runs with (its fixed ones come from the checkpoint,
        pipeline.plan_fit), so the form never claims what is not running."""
        from ._fit_fields import set_field

        self.set_fitted_size(cfg.subtomo_size)  # a resumed size is not the user's (t17 size note)
        for name, box in self.fields.items():  # every setting the form shows (settings.py)
            if name not in ("tilt_range", "device", "out_dir", "subtomo_size"):
                set_field(box, getattr(cfg, name))
        self.tilt_min.setValue(cfg.tilt_min)
        self.tilt_max.setValue(cfg.tilt_max)

    def _on_event(self, event):
        from ..core.fit import loop as F

        limits = None
        if isinstance(event, ShownPreview):
            event, limits = event.event, event.limits
        self.events.append(event)
        if isinstance(event, FitPairs):
            self._show_pairs(event)
        elif isinstance(event, FitSizeChosen):  # thinner extra pairs: a smaller cube
            self.set_fitted_size(event.size, event.note.removeprefix("cube size "))
        elif isinstance(event, FitResumed):
            cfg = event.config
            self.loss_plot.clear()
            self.loss_plot.set_signal(_shown_signal(cfg))
            for record in event.history:  # core.fit.log.EpochRecord
                if record.epoch <= event.epoch:
                    self.loss_plot.add_epoch(record.epoch, record.fit_loss, record.val_loss, record.signals)
            self._show_config(cfg)
            self.status.setText(f"Resuming after epoch {event.epoch} of {cfg.epochs}…")
        elif isinstance(event, F.FitStarted):
            self._epochs = event.config.epochs
            self._steps = max(event.steps_per_epoch, 1)
            self._total_steps = self._epochs * self._steps
            self.loss_plot.set_signal(_shown_signal(event.config))
            from ..core.fit.signals import rule_text

            self.status.setText(
                f"{_tomograms(self._pair_names)}: {event.n_fit_cubes} training + "
                f"{event.n_val_cubes} validation cubes, {event.steps_per_epoch} steps per epoch "
                f"on {event.device}. {rule_text(event.config)}.")
        elif isinstance(event, F.StepDone):
            if self._total_steps:
                done = (event.epoch - 1) * self._steps + event.step
                self.set_progress(int(1000 * done / self._total_steps),
                                  fmt=f"epoch {event.epoch}/{self._epochs}")
            self._last_step = event
        elif isinstance(event, F.EpochDone):
            self.loss_plot.truncate_from(event.epoch)
            self.loss_plot.add_epoch(event.epoch, event.fit_loss, event.val_loss, event.signals)
            remaining = (self._epochs - event.epoch) * event.seconds
            val = "" if event.val_loss is None else f", validation {event.val_loss:.4g}"
            self.status.setText(f"Epoch {event.epoch}/{self._epochs}: loss {event.fit_loss:.4g}"
                                f"{val}; {event.seconds:.1f} s/epoch, about {_duration(remaining)} "
                                "left.")
        elif isinstance(event, F.PreviewReady):
            self._show_preview(event, limits)
        elif isinstance(event, F.CheckpointSaved):
            if event.kind in ("latest", "stopped"):
                self.resume_path.setText(str(event.path))
        elif isinstance(event, F.FitFinished):
            self.finished = event

    def _show_pairs(self, event):
        """Before the cubes are cut: which tomograms, the memory estimate, voxel warnings."""
        self._pair_names = list(event.names)
        resuming = len(self.events) > 1 and isinstance(self.events[-2], FitResumed)
        text = f"Preparing sub-tomograms of {_tomograms(event.names)}…"
        if event.memory:
            text += f" ({event.memory})"
        if getattr(event, "masks", None):
            text += " Masks: " + "; ".join(event.masks)
        self.status.setText(f"{self.status.text()} {text}" if resuming else text)
        for warning in event.warnings:
            notify_warning(warning)

    def _show_preview(self, event, limits=None):
        scale, translate = self._geometry
        shifted = (translate[0] + event.z_start * scale[0], translate[1], translate[2])
        layer = show_image(self.viewer, event.volume, PREVIEW_NAME, scale=scale, translate=shifted,
                           contrast=limits,
                           metadata={"ddw_role": "preview", "epoch": event.epoch,
                                     "z_range": (event.z_start, event.z_stop)})
        layer.metadata["epoch"] = event.epoch

    def _on_end(self):
        self.state.fitting = False
        self.loss_plot.flush()

    def _on_done(self, _last_event):
        self._show_end()

    def _show_end(self):
        """The end of a fit, stopped, finished or quit (its events were all handled)."""
        finished = self.finished
        if finished is None:
            self.status.setText("Fitting ended.")
            return
        model = finished.latest_path or finished.best_path
        if finished.stopped:
            self.status.setText(f"Stopped after epoch {finished.epochs_done}; Resume continues "
                                "from the saved checkpoint.")
        elif getattr(finished, "reason", ""):
            self.bar.setValue(1000)
            self.status.setText(f"Finished after {finished.epochs_done} epochs: {finished.reason}. Next: Refine.")
        else:
            self.bar.setValue(1000)
            self.status.setText(f"Finished {finished.epochs_done} epochs. Next: Refine.")
        if model is not None:
            self.resume_path.setText(str(model))
            self.state.out_dir = str(Path(model).parent)
            self.state.checkpoint = str(model)
            self.state.model_version += 1
            if not finished.stopped:
                notify_info(f"Fitting finished; the model is in {Path(model).parent}.")


def _shown_signal(cfg) -> str:
    """The progress signal the loss plot draws: the one that picks best.pt, else the half-map FSC."""
    best_by = getattr(cfg, "best_by", "val_loss")
    return "fsc_area" if best_by == "val_loss" else best_by


def _tomograms(names) -> str:
    """"1 tomogram (TS_01)" or "3 tomograms (TS_01, TS_02, TS_03)" (the first six named)."""
    names = [str(n) or "?" for n in names]
    shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
    count = f"{len(names)} tomogram{'' if len(names) == 1 else 's'}"
    return f"{count} ({shown})" if names else "the halves"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
