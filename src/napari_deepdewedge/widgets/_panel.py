"""The base of every dock: viewer, shared state, and the ONE way to run a background job.

:meth:`DDWPanel.launch` does for every dock what each used to repeat: refuse a second job while
one runs, validate the form (a :class:`DDWError` becomes a notification and no worker starts),
disable the start buttons and enable Cancel, feed :class:`Progress` messages to the progress
bar, and at the end re-enable the buttons and report a failure or a cancel before handing a
value to the dock. Jobs are stopped when the panel closes or leaves its dock and when napari's
main window closes.
"""
from __future__ import annotations

import weakref
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QLabel, QProgressBar, QSizePolicy, QVBoxLayout, QWidget

from ._common import notify_error
from ._state import state_for
from ._workers import Job, Outcome, Progress, write_job

BAR_STEPS = 1000  # progress bars count in 0.1 %


class DDWPanel(QWidget):
    """Base of every DeepDeWedge dock widget: viewer, shared state, and background jobs.

    A quit job (napari closing) still ends cleanly on its worker thread (a fit saves a
    checkpoint first), see :class:`._workers.Job`.
    """

    title = "DeepDeWedge"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self._jobs: list[Job] = []
        self._job: Job | None = None  # the job last started with launch()
        self.bar: QProgressBar | None = None
        self.status: QLabel | None = None
        self.question = None  # the open confirmation box of ask(), if any
        self._filtered_window = None  # weak reference to the main window we watch
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    # -- layout helpers
    def make_progress(self) -> tuple[QProgressBar, QLabel]:
        """The panel's progress bar and status line (launch() drives them)."""
        bar = QProgressBar()
        bar.setRange(0, 1)
        bar.setValue(0)
        bar.setTextVisible(True)
        label = QLabel("")
        label.setWordWrap(True)
        self.bar, self.status = bar, label
        return bar, label

    @staticmethod
    def vbox(widget: QWidget) -> QVBoxLayout:
        lay = QVBoxLayout(widget)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.setSpacing(6)
        return lay

    def set_status(self, text: str) -> None:
        if self.status is not None:
            self.status.setText(text)

    def show_progress(self, message, unit: str | None = None) -> None:
        """Default progress handler: ``Progress`` → bar and status (``"<stage>: <unit> i/n"``)."""
        if not isinstance(message, Progress) or message.total <= 0:
            return
        if self.bar is not None:
            self.bar.setValue(int(BAR_STEPS * message.done / message.total))
        text = message.stage if unit is None else \
            f"{message.stage}: {unit} {message.done}/{message.total}"
        self.set_status(text)

    def ask(self, title: str, text: str, on_yes: Callable[[], None], *,
            yes_text: str = "Replace") -> None:
        """A window-modal Yes/Cancel question that does not block the event loop: ``on_yes()``
        runs if the user confirms. The open box is ``self.question`` (tests click its buttons:
        ``panel.question.button(QMessageBox.StandardButton.Yes).click()``)."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QMessageBox

        buttons = QMessageBox.StandardButton
        box = QMessageBox(QMessageBox.Icon.Warning, title, text,
                          buttons.Yes | buttons.Cancel, self)
        box.button(buttons.Yes).setText(yes_text)
        box.setDefaultButton(buttons.Cancel)
        box.setWindowModality(Qt.WindowModality.WindowModal)

        def answered(_result):
            confirmed = box.clickedButton() is box.button(buttons.Yes)
            self.question = None
            box.deleteLater()
            if confirmed:
                on_yes()

        box.finished.connect(answered)
        self.question = box
        box.open()

    # -- jobs
    @property
    def busy(self) -> bool:
        """A job of this panel has not yet been reported back in the GUI thread."""
        return any(not job.gui_done for job in self._jobs)

    def launch(self, name: str, prepare: Callable[[], Callable], *,
               on_done: Callable[[Any], None],
               on_event: Callable[[Any], None] | None = None,
               on_cancelled: Callable[[], None] | None = None,
               on_end: Callable[[], None] | None = None,
               controls: Iterable[QWidget] = (), cancel: QWidget | None = None,
               busy: str = "", failed: str = "", start_text: str = "Starting…",
               progress_unit: str | None = None) -> bool:
        """Validate and start one background job; False (and a notification) if refused.

        ``prepare()`` runs in the GUI thread: it checks the form (raising ``DDWError`` with the
        fix) and returns the job's generator function with its arguments bound,
        ``work(job) -> Generator`` (``functools.partial``). It must not read layer data (hand
        over :func:`._common.layer_source` objects; the job reads them).

        While the job runs, ``controls`` are disabled and ``cancel`` is enabled. Messages go to
        ``on_event`` (default: :meth:`show_progress`). At the end ``on_end()`` runs first, then
        a failure is notified (status ``failed``), a cancel shows "Cancelled." and calls
        ``on_cancelled()``, and a value goes to ``on_done(value)``.
        """
        from ..core.errors import DDWError

        if self.busy:
            notify_error(busy or f"{self.title}: a job is already running; wait for it or "
                                  "press Cancel.")
            return False
        try:
            work = prepare()
        except DDWError as exc:
            notify_error(str(exc))
            return False
        controls = tuple(controls)
        handler = on_event or (lambda message: self.show_progress(message, progress_unit))
        if self.bar is not None:
            self.bar.setRange(0, BAR_STEPS)
            self.bar.setValue(0)
        self.set_status(start_text)
        self._set_running(controls, cancel, True)

        def finish(outcome: Outcome) -> None:
            for message in job.drained:
                handler(message)  # what a quit job produced while finishing
            self._set_running(controls, cancel, False)
            if on_end is not None:
                on_end()
            if outcome.error:
                self.set_status(f"{failed or name.capitalize() + ' failed'}: see the "
                                "notification.")
                notify_error(outcome.error)
            elif outcome.cancelled:
                self.set_status("Cancelled.")
                if self.bar is not None:
                    self.bar.setValue(0)
                if on_cancelled is not None:
                    on_cancelled()
            else:
                on_done(outcome.value)

        job = Job(name, work)
        self._job = job
        self.start_job(job, handler, finish)
        return True

    @staticmethod
    def _set_running(controls, cancel, running: bool) -> None:
        try:
            for widget in controls:
                widget.setEnabled(not running)
            if cancel is not None:
                cancel.setEnabled(running)
        except RuntimeError:  # deleted with the dock
            pass

    def save_files(self, what: str, write: Callable[..., list], *,
                   controls: Iterable[QWidget] = (), overwrite: bool = False) -> bool:
        """Write files on a worker with ``write(overwrite=...)`` (a pipeline writer such as
        ``write_refined``, bound with ``functools.partial``). When the writer refuses because a
        file exists (``pipeline.OutputExists``), nothing has been written: ask the user, and
        write again with ``overwrite=True`` only if they confirm."""
        controls = tuple(controls)

        def done(value):
            from ..pipeline import OutputExists

            if isinstance(value, OutputExists):
                names = ", ".join(p.name for p in value.paths[:4])
                more = " …" if len(value.paths) > 4 else ""
                self.set_status(f"Not saved: {names}{more} already exist(s).")
                self.ask("Replace files?",
                         f"{len(value.paths)} file(s) already exist in "
                         f"{value.paths[0].parent}:\n{names}{more}\n\nReplace them?",
                         lambda: self.save_files(what, write, controls=controls,
                                                 overwrite=True))
                return
            self.saved = value
            self.set_status("Saved " + ", ".join(Path(p).name for p in value))
            from ._common import notify_info

            notify_info(f"Saved {len(value)} file(s) to {Path(value[0]).parent}")

        return self.launch(f"saving the {what}",
                           lambda: partial(write_job, write=write, overwrite=overwrite),
                           on_done=done, controls=controls, failed="Saving failed",
                           start_text="Writing…")

    def cancel(self, text: str = "Cancelling…") -> None:
        """Ask the running job to end at its next progress report."""
        if self._job is not None and not self._job.gui_done:
            self._job.request_stop()
            self.set_status(text)

    def start_job(self, job: Job, on_yield, on_done) -> Job:
        """Start ``job``; ``on_yield(msg)`` and ``on_done(outcome)`` run in the GUI thread.

        The low-level primitive under :meth:`launch` (the Fourier inspector uses it directly to
        restart its spectra whenever the selection changes)."""
        self._jobs = [j for j in self._jobs if not j.gui_done]
        self._jobs.append(job)
        job.gui_done = False

        def yielded(message):
            try:
                on_yield(message)
            except RuntimeError as exc:  # the dock was deleted (napari closed): drop it
                if "deleted" not in str(exc):
                    raise

        def returned(value):
            try:
                on_done(value if isinstance(value, Outcome) else Outcome(cancelled=True))
            except RuntimeError as exc:
                if "deleted" not in str(exc):
                    raise
            finally:
                job.gui_done = True

        def finished():
            if not job.gui_done:  # quit before returning: report it as cancelled
                returned(None)

        job.worker.yielded.connect(yielded)
        job.worker.returned.connect(returned)
        job.worker.finished.connect(finished)
        job.start()
        return job

    def shutdown(self, wait: float = 10.0) -> None:
        """Stop every job of this panel and of the panels inside it."""
        for job in list(self._jobs):
            job.shutdown(wait=wait)
        for child in self.findChildren(DDWPanel):
            if child is not self:
                for job in list(child._jobs):
                    job.shutdown(wait=wait)

    # -- lifecycle
    def closeEvent(self, event):
        self.shutdown()
        super().closeEvent(event)

    def showEvent(self, event):
        super().showEvent(event)
        window = self.window()
        watched = self._filtered_window() if self._filtered_window is not None else None
        if window is not self and window is not watched:
            window.installEventFilter(self)
            self._filtered_window = weakref.ref(window)

    def changeEvent(self, event):
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and self._jobs:
            self.shutdown()  # napari removed the dock widget
        super().changeEvent(event)

    def eventFilter(self, obj, event):
        watched = self._filtered_window() if self._filtered_window is not None else None
        if obj is watched and event.type() == QEvent.Type.Close:
            if event.spontaneous():
                pass  # napari may still ask the user; its own task manager quits the workers
            else:
                self.shutdown()
        return False
