"""The base of every dock: viewer, shared state, and the ONE way to run a background job.

:meth:`DDWPanel.launch` does for every dock what each used to repeat: refuse a second job while
one runs, validate the form (a :class:`DDWError` becomes a notification and no worker starts),
disable the start buttons and enable Cancel, feed :class:`Progress` messages to the progress
bar, and at the end re-enable the buttons and report a failure or a cancel before handing a
value to the dock. Jobs are stopped when the panel closes or leaves its dock and when napari's
main window closes.
"""
from __future__ import annotations

import time
import weakref
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QLabel, QProgressBar, QSizePolicy, QVBoxLayout, QWidget

from ._common import WrapLabel, notify_error
from ._state import state_for
from ._workers import Job, Outcome, Progress, write_job

BAR_STEPS = 1000  # progress bars count in 0.1 %
# Progress (bar, status line) is shown at most this often. QProgressBar.setValue repaints at
# once, and every repaint of napari's window composes its OpenGL canvas (software GL here): at
# one message per engine step, that was a stall of 20–80 ms each (bench/viewer_load.py).
PROGRESS_EVERY_S = 0.25


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
        self._turns: deque = deque()  # steps of in_turns() not yet run
        self._progress_shown_at = -float("inf")  # time.monotonic() of the last shown progress
        self._progress_wanted = None  # (bar value, status text, bar format) not yet shown
        self._progress_timer = None  # shows _progress_wanted when PROGRESS_EVERY_S is up
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
        label = WrapLabel("")
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

    def show_progress(self, message, unit: str | None = None, status: str | None = None) -> None:
        """Default progress handler: ``Progress`` → bar and status (``"<stage>: <unit> i/n"``,
        or ``status`` if given), through :meth:`set_progress`."""
        if not isinstance(message, Progress) or message.total <= 0:
            return
        text = message.stage if unit is None else \
            f"{message.stage}: {unit} {message.done}/{message.total}"
        self.set_progress(int(BAR_STEPS * message.done / message.total),
                          status=text if status is None else status)

    def set_progress(self, value: int, *, status: str | None = None,
                     fmt: str | None = None) -> None:
        """Show bar ``value`` (and the ``status`` text and bar format ``fmt`` if given) now, or —
        within ``PROGRESS_EVERY_S`` of the last shown — when that time is up; a newer call
        replaces one not yet shown. The end of a job shows the last at once
        (:meth:`flush_progress`)."""
        self._progress_wanted = (value, status, fmt)
        if self._progress_timer is not None and self._progress_timer.isActive():
            return
        wait = self._progress_shown_at + PROGRESS_EVERY_S - time.monotonic()
        if wait <= 0:
            self._show_wanted_progress()
            return
        if self._progress_timer is None:
            from qtpy.QtCore import QTimer

            self._progress_timer = QTimer(self)
            self._progress_timer.setSingleShot(True)
            self._progress_timer.timeout.connect(self._show_wanted_progress)
        self._progress_timer.start(int(1000 * wait) + 1)

    def flush_progress(self, show: bool = True) -> None:
        """Show the progress not yet shown now (``show=False``: drop it)."""
        if self._progress_timer is not None:
            self._progress_timer.stop()
        if show:
            self._show_wanted_progress()
        self._progress_wanted = None

    def _show_wanted_progress(self) -> None:
        if self._progress_wanted is None:
            return
        value, status, fmt = self._progress_wanted
        self._progress_wanted = None
        self._progress_shown_at = time.monotonic()
        if self.bar is not None:
            if fmt is not None:
                self.bar.setFormat(fmt)
            self.bar.setValue(value)
        if status is not None:
            self.set_status(status)

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
        """A job of this panel has not yet been reported back in the GUI thread, or the steps
        that show its result (:meth:`in_turns`) have not all run."""
        return bool(self._turns) or any(not job.gui_done for job in self._jobs)

    def in_turns(self, *steps: Callable[[], None]) -> None:
        """Run ``steps`` in order, one per turn of the Qt event loop (``QTimer.singleShot(1)``),
        so that the viewer paints and answers input between them: adding a napari layer
        (its vispy visual, its controls, the selection change) blocks the GUI thread for
        0.1–0.4 s on this machine, and a job's result used to add three or four in one slot.
        The panel stays :attr:`busy` until the last step has run."""
        if not steps:
            return
        idle = not self._turns
        self._turns.extend(steps)
        if idle:
            self._schedule_turn()

    def _schedule_turn(self) -> None:
        from qtpy.QtCore import QTimer

        # 1 ms, not 0: a 0 ms chain is run as posted events, which Qt's glib dispatcher serves
        # before overdue timers, so the timers of the viewer (and the stall meter) would wait
        # for the whole chain; a 1 ms timer lets every overdue timer fire first.
        QTimer.singleShot(1, self._next_turn)

    def _next_turn(self) -> None:
        if not self._turns:
            return
        step = self._turns.popleft()
        try:
            step()
        except RuntimeError as exc:  # the dock or a layer's Qt object is gone (napari closed)
            self._turns.clear()
            if "deleted" not in str(exc):
                raise
        except BaseException:
            self._turns.clear()  # never leave the panel busy for ever
            raise
        if self._turns:
            self._schedule_turn()

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
            self.flush_progress()  # the last progress first, then the end
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
            self.flush_progress(show=False)  # no older progress over the text
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
