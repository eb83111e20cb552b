"""Progress on stderr: a tqdm bar on a terminal; in a log file, a few plain lines.

Under a batch scheduler (``sbatch``, ``nohup … > log``) stderr is not a terminal and a bar
would write every update into the log. There, :class:`Progress` prints one line every ~10 %
(``refine: 40 % (24/60 batch, 12 s)``) and :class:`FitReport` one line per epoch
(``fit epoch 3/40: loss 0.1234 val 0.1187 (12.3 s)``), with the same figures as the bars.
"""
from __future__ import annotations

import sys
import time

from .output import is_rank_zero


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


class _BarOwner:
    """Closes its bar (a tqdm bar or a :class:`Progress`, if it made one) on ``close()`` and
    at the end of a ``with``."""

    bar = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Progress(_BarOwner):
    """An engine ``progress(done, total)`` callback that shows a bar or plain lines."""

    def __init__(self, label: str, *, quiet: bool = False, unit: str | None = "it", stream=None,
                 step: float = 0.1):
        """``unit=None``: the totals are not countable things (e.g. per-mille of a job): the
        plain lines show the percentage only."""
        self.label, self.unit, self.step = label, unit, step
        self.stream = stream if stream is not None else sys.stderr
        self.disabled = quiet or not is_rank_zero()
        self.bar = None
        self.t0 = time.perf_counter()
        self.last_mark = 0

    def __call__(self, done: int, total: int) -> None:
        if self.disabled:
            return
        if is_terminal(self.stream):
            self._bar(done, total)
        else:
            self._line(done, total)

    def _bar(self, done, total):
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.label, unit=self.unit or "‰", file=self.stream,
                            dynamic_ncols=True, leave=True)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def _line(self, done, total):
        if total <= 0:
            return
        mark = int(done * (1.0 / self.step) // total)  # completed tenths (with step 0.1)
        if mark <= self.last_mark:
            return
        self.last_mark = mark
        count = f"{done}/{total} {self.unit}, " if self.unit else ""
        print(f"{self.label}: {100 * done // total:3d} % ({count}"
              f"{time.perf_counter() - self.t0:.0f} s)", file=self.stream, flush=True)


class FitReport(_BarOwner):
    """Shows fitting events: a bar over epochs on a terminal, else one line per epoch."""

    def __init__(self, *, quiet: bool = False, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.disabled = quiet or not is_rank_zero()
        self.bar = None
        self.epochs = 0

    def __call__(self, event) -> None:
        if self.disabled:
            return
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is not None:
            handler(event)

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _on_FitSizeChosen(self, event) -> None:
        self._print(f"{event.note}; give --subtomo-size to choose")

    def _on_FitResumed(self, event) -> None:
        self._print(f"resuming after epoch {event.epoch}")

    def _on_FitStarted(self, event) -> None:
        cfg = event.config
        self.epochs = cfg.epochs
        self._print(f"fitting on {event.device}: {event.n_fit_cubes} fitting + "
                    f"{event.n_val_cubes} validation cubes of {cfg.subtomo_size}³, U-Net "
                    f"{cfg.channels} channels × depth {cfg.depth}, {event.steps_per_epoch} "
                    "steps/epoch")
        from ..core.fit.signals import rule_text

        self._print(rule_text(cfg))
        if is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.epochs, desc="fit", unit="epoch", file=self.stream,
                            dynamic_ncols=True)

    def _on_StepDone(self, event) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"step {event.step}/{event.steps_per_epoch} "
                                     f"loss {event.loss:.4g}", refresh=True)

    def _on_EpochDone(self, event) -> None:
        losses = f"loss {event.fit_loss:.4g}"
        if event.val_loss is not None:
            losses += f" val {event.val_loss:.4g}"
        if self.bar is None:
            self._print(f"fit epoch {event.epoch}/{self.epochs}: {losses} ({event.seconds:.1f} s)")
            return
        self.bar.n = event.epoch
        self.bar.set_postfix_str(losses, refresh=False)
        self.bar.refresh()

    def _on_CheckpointSaved(self, event) -> None:
        if event.kind == "stopped":
            self._print(f"saved {event.path}")


class BatchReport(_BarOwner):
    """Shows a batch refinement's events (pipeline.batch): a line per tomogram with the
    overall count, and a bar (or plain lines) over the current tomogram's tiles. Rank 0 only;
    voxel-size warnings come from the rank that refines the tomogram."""

    def __init__(self, *, quiet: bool = False, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.disabled = quiet or not is_rank_zero()
        self.bar = None  # the current tomogram's Progress

    def __call__(self, event) -> None:
        kind = type(event).__name__
        if kind == "VoxelSizeWarning":
            print(f"warning: {event.message}", file=self.stream, flush=True)
            return
        if self.disabled:
            return
        tag = f"[{event.index + 1}/{event.total}] {event.name}"
        if kind == "TomogramStarted":
            self.close()
            self.bar = Progress(f"refine {tag}", unit="batch", stream=self.stream)
        elif kind == "TomogramProgress" and self.bar is not None:
            self.bar(event.done, event.of)
        elif kind == "TomogramFinished":
            self.close()
            what = "kept (finished earlier)" if event.skipped else f"refined in {event.seconds:.1f} s"
            print(f"{tag}: {what}; {event.finished_overall}/{event.total} finished overall",
                  file=self.stream, flush=True)

class ProjectReport(_BarOwner):
    """One line per tomogram and step of a project (pipeline.project.ProjectStep)."""

    def __init__(self, *, quiet: bool = False, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.disabled = quiet or not is_rank_zero()

    def __call__(self, event) -> None:
        if self.disabled or event.state == "started":
            return
        what = "kept (done earlier)" if event.state == "kept" else "done"
        print(f"{event.stage} [{event.index + 1}/{event.total}] {event.name}: {what}",
              file=self.stream, flush=True)
