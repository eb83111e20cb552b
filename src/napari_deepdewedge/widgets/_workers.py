"""Background jobs for the dock widgets: napari generator thread workers that can be stopped.

A job is a generator function run by :func:`napari.qt.threading.create_worker`. It yields
progress messages (handled in the GUI thread) and returns an :class:`Outcome`; exceptions never
escape the worker (so napari does not print a raw traceback) but become a plain-words message.

Engine functions such as ``fbp`` or ``refine_halves`` report progress through a callback rather
than by yielding; :func:`run_with_progress` runs such a function on a helper thread and turns its
callback calls into yields. The callback raises :class:`Cancelled` once the job's stop flag is
set, so a cancelled job ends at the engine's next progress report.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

LOG = logging.getLogger("napari_deepdewedge")


class Cancelled(Exception):
    """Raised inside a job when the user (or closing napari) stopped it."""


@dataclass
class Progress:
    """``done`` of ``total`` units of the stage ``stage`` are finished."""

    stage: str
    done: int
    total: int


@dataclass
class Outcome:
    """How a job ended: a value, a message for the user, or cancelled."""

    value: Any = None
    error: str | None = None
    cancelled: bool = False


def friendly_error(exc: BaseException) -> str:
    """The message a user sees for ``exc``: the fix, not a traceback."""
    from ..core.errors import DDWError

    if isinstance(exc, DDWError):
        return str(exc)
    text = str(exc)
    oom_types = ()
    try:  # torch is only imported here if a job already imported it
        import sys

        torch = sys.modules.get("torch")
        if torch is not None:
            oom_types = tuple(
                t for t in (getattr(torch, "OutOfMemoryError", None),
                            getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None))
                if isinstance(t, type)
            )
    except Exception:  # pragma: no cover - defensive
        pass
    if (oom_types and isinstance(exc, oom_types)) or "out of memory" in text.lower():
        return (
            "The GPU ran out of memory. Use a smaller batch size or a smaller sub-tomogram size "
            "(or fewer channels), close other programs using the GPU, or choose the CPU device."
        )
    if isinstance(exc, MemoryError):
        return (
            "Not enough memory (RAM). Use binning, a smaller thickness or a smaller region, "
            "or close other programs."
        )
    return f"Unexpected error ({type(exc).__name__}: {text}). See the console log for details."


def run_with_progress(fn: Callable, stop: threading.Event, stage: str, *args, **kwargs):
    """Generator: run ``fn(*args, progress=cb, **kwargs)`` on a helper thread.

    Yields :class:`Progress` for each ``cb(done, total)`` call and returns ``fn``'s result.
    Raises :class:`Cancelled` once ``stop`` is set (at the engine's next progress report), and
    re-raises any exception of ``fn``.
    """
    messages: queue.Queue = queue.Queue()
    box: dict = {}

    def callback(done, total):
        if stop.is_set():
            raise Cancelled()
        messages.put(Progress(stage, int(done), int(total)))

    def target():
        try:
            box["value"] = fn(*args, progress=callback, **kwargs)
        except BaseException as exc:  # handed to the generator below
            box["error"] = exc

    helper = threading.Thread(target=target, name=f"ddw-{stage}", daemon=True)
    helper.start()
    while helper.is_alive() or not messages.empty():
        try:
            yield messages.get(timeout=0.05)
        except queue.Empty:
            if stop.is_set():
                # keep yielding so that quit() and Cancel are noticed; the engine stops at its
                # next progress callback
                yield Progress(stage, -1, -1)
    helper.join()
    if "error" in box:
        raise box["error"]
    if stop.is_set():
        raise Cancelled()
    return box.get("value")


def part_of(gen, index: int, count: int):
    """Re-yield ``gen``'s :class:`Progress` as part ``index`` of ``count`` equal parts of one
    bar (done/total over the whole job); returns ``gen``'s value."""
    try:
        while True:
            try:
                msg = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(msg, Progress) and msg.total > 0:
                msg = Progress(msg.stage, index * msg.total + msg.done, count * msg.total)
            yield msg
    finally:
        gen.close()


def write_job(job, write: Callable, overwrite: bool):
    """Job generator: ``write(overwrite=overwrite)`` (a pipeline writer) → the written paths as
    strings. A refusal because a file exists (``pipeline.OutputExists``) is RETURNED, not
    raised, so that the dock can ask the user before writing again with ``overwrite=True``."""
    from ..pipeline import OutputExists

    yield Progress("Writing", 0, 1)
    try:
        return [str(path) for path in write(overwrite=overwrite)]
    except OutputExists as exc:
        return exc


class Job:
    """One background job of a widget: its napari worker, stop flag and done flag."""

    def __init__(self, name: str, gen_func: Callable, *args, **kwargs):
        """``gen_func(job, *args, **kwargs)`` is the generator to run.

        When the worker is quit (napari closing quits every worker), the stop flag is set and
        the generator is run to its end on the worker thread, without yielding to the GUI: a
        fit saves its checkpoint, an engine call on a helper thread (:func:`run_with_progress`)
        ends at its next progress report and the helper is joined, so ``done`` means that no
        thread of the job runs any more. Before, a quit abandoned the generator of every job
        but the fit: its helper thread ran on unjoined and ``done`` waited for the GUI thread.
        """
        from napari.qt.threading import create_worker
        from qtpy.QtCore import Qt

        self.name = name
        self.stop = threading.Event()
        self.done = threading.Event()  # the generator has ended (set on the worker thread)
        self.gui_done = False  # its end has been handled in the GUI thread (set by the panel)
        self.drained: list = []  # messages produced after a quit, never yielded to the GUI
        self._inner = gen_func(self, *args, **kwargs)
        self.worker = create_worker(self._run, _start_thread=False)
        self.worker.finished.connect(self.done.set)
        # quit() (e.g. napari closing) runs _finish on the worker thread, right after the abort
        self.worker.aborted.connect(self._finish, Qt.ConnectionType.DirectConnection)

    def _finish(self):
        """Runs on the worker thread right after an abort: let the generator end cleanly."""
        import inspect

        self.stop.set()
        try:
            if inspect.getgeneratorstate(self._inner) == inspect.GEN_CREATED:
                return
            for message in self._inner:
                self.drained.append(message)
        except Cancelled:  # the usual end of a stopped job
            pass
        except BaseException:  # the user asked to stop; only log what went wrong
            LOG.exception("DeepDeWedge %s: error while stopping", self.name)
        finally:
            self.done.set()

    def _run(self):
        try:
            value = yield from self._inner
            return Outcome(value=value)
        except Cancelled:
            return Outcome(cancelled=True)
        except GeneratorExit:
            raise
        except BaseException as exc:  # every failure becomes a message for the user
            LOG.exception("DeepDeWedge %s failed", self.name)
            return Outcome(error=friendly_error(exc))
        finally:
            self.done.set()

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    def start(self) -> None:
        self.worker.start()

    def request_stop(self) -> None:
        """Ask the job to end at its next progress report (keeps the worker running)."""
        self.stop.set()

    def shutdown(self, wait: float = 0.0) -> None:
        """Stop the job, wait up to ``wait`` seconds for it to end, then quit its worker."""
        self.stop.set()
        if wait > 0:
            self.done.wait(wait)
        try:
            self.worker.quit()
        except RuntimeError:  # the worker's Qt object is already gone
            pass
