"""Unit tests of the widgets' worker plumbing (widgets/_workers.py and DDWPanel.launch).

They drive the job functions directly or with a tiny worker instead of long widget scenarios:
progress reaching the handler, cancelling mid-job, a failure becoming a notification, and a
quit fit still finishing with a checkpoint. Run under a virtual display (napari thread workers
need a Qt application):  xvfb-run -a python -m pytest tests/test_workers.py -q
"""
from __future__ import annotations

import threading
import time
from functools import partial

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

from napari_deepdewedge.widgets._workers import (  # noqa: E402
    Cancelled,
    Job,
    Progress,
    part_of,
    run_with_progress,
)

WAIT_MS = 60_000


def counting(n, *, progress, delay=0.0, calls=None):
    """An engine-like function: reports ``n`` units of progress, returns their count."""
    for i in range(1, n + 1):
        if delay:
            time.sleep(delay)
        progress(i, n)
        if calls is not None:
            calls.append(i)
    return n


# ------------------------------------------------------------------ generator plumbing, no Qt
def drain(gen):
    """All messages of a job generator and its return value."""
    messages = []
    while True:
        try:
            messages.append(next(gen))
        except StopIteration as stop:
            return messages, stop.value


def test_run_with_progress_turns_callbacks_into_messages_and_returns_the_value():
    stop = threading.Event()
    messages, value = drain(run_with_progress(counting, stop, "counting", 5))
    assert value == 5
    assert [(m.stage, m.done, m.total) for m in messages] == [("counting", i, 5) for i in
                                                               range(1, 6)]


def test_run_with_progress_cancel_mid_job_stops_the_engine_at_its_next_report():
    stop = threading.Event()
    calls: list[int] = []
    gen = run_with_progress(counting, stop, "counting", 1000, delay=0.002, calls=calls)
    seen = [next(gen) for _ in range(3)]
    assert [m.done for m in seen] == [1, 2, 3]
    stop.set()
    with pytest.raises(Cancelled):
        drain(gen)
    assert len(calls) < 1000, "the engine kept running after the stop flag"


def test_run_with_progress_reraises_the_engine_error():
    def broken(*, progress):
        progress(1, 2)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        drain(run_with_progress(broken, threading.Event(), "broken"))


def test_part_of_maps_each_part_onto_one_bar():
    stop = threading.Event()

    def two_parts():
        first = yield from part_of(run_with_progress(counting, stop, "a", 4), 0, 2)
        second = yield from part_of(run_with_progress(counting, stop, "b", 4), 1, 2)
        return first + second

    messages, value = drain(two_parts())
    assert value == 8
    fractions = [m.done / m.total for m in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert fractions[3] == pytest.approx(0.5)  # the end of part 0 is the middle of the bar


# ------------------------------------------------------------------ DDWPanel.launch, tiny jobs
@pytest.fixture
def panel(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QPushButton

    from napari_deepdewedge.widgets._panel import DDWPanel

    viewer = make_napari_viewer()
    widget = DDWPanel(viewer)
    widget.make_progress()
    widget.run_button = QPushButton("Run")
    widget.cancel_button = QPushButton("Cancel")
    widget.cancel_button.setEnabled(False)
    yield widget
    widget.shutdown(wait=5.0)


def errors_since(start):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[start:]
            if str(n.severity).lower().endswith("error")]


def n_notes():
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def _counting_job(job, n, delay):
    value = yield from run_with_progress(counting, job.stop, "Counting", n, delay=delay)
    return value


def launch_counting(panel, n, delay, record):
    return panel.launch(
        "counting", lambda: partial(_counting_job, n=n, delay=delay),
        on_done=lambda value: record.setdefault("value", value),
        on_cancelled=lambda: record.setdefault("cancelled", True),
        controls=(panel.run_button,), cancel=panel.cancel_button, progress_unit="unit")


def test_launch_progress_reaches_the_bar_and_the_value_the_dock(panel, qtbot):
    record: dict = {}
    assert launch_counting(panel, 8, 0.01, record)
    assert panel.busy
    assert not panel.run_button.isEnabled() and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)
    assert record == {"value": 8}
    assert panel.bar.value() == panel.bar.maximum()  # the last Progress: 8 of 8
    assert panel.status.text() == "Counting: unit 8/8"
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_launch_cancel_mid_job(panel, qtbot):
    record: dict = {}
    assert launch_counting(panel, 100_000, 0.001, record)
    qtbot.waitUntil(lambda: panel.bar.value() > 0, timeout=WAIT_MS)
    panel.cancel()
    assert panel.status.text() == "Cancelling…"
    qtbot.waitUntil(lambda: not panel.busy, timeout=10_000)
    assert record == {"cancelled": True}
    assert panel.status.text() == "Cancelled." and panel.bar.value() == 0
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_launch_refuses_while_busy_and_on_invalid_input(panel, qtbot):
    from napari_deepdewedge.core.errors import DDWError

    start = n_notes()
    record: dict = {}

    def invalid():
        raise DDWError("choose the two halves")

    assert not panel.launch("x", invalid, on_done=record.update)
    assert errors_since(start) == ["choose the two halves"]
    assert not panel.busy and panel._job is None
    assert launch_counting(panel, 100_000, 0.001, record)
    assert not launch_counting(panel, 1, 0.0, record)
    assert "already running" in errors_since(start)[-1]
    panel.cancel()
    qtbot.waitUntil(lambda: not panel.busy, timeout=10_000)


def test_launch_failure_becomes_one_notification(panel, qtbot):
    from napari_deepdewedge.core.errors import DDWError

    def failing(job):
        yield Progress("x", 0, 1)
        raise DDWError("the halves differ; make them alike")

    start = n_notes()
    done: list = []
    assert panel.launch("refinement", lambda: failing, on_done=done.append,
                        controls=(panel.run_button,))
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)
    assert done == []
    assert errors_since(start) == ["the halves differ; make them alike"]
    assert panel.status.text() == "Refinement failed: see the notification."
    assert panel.run_button.isEnabled()


# ------------------------------------------------------------------ a quit fit saves a checkpoint
def test_quit_fit_job_finishes_with_a_stopped_checkpoint(qtbot, tmp_path):
    """napari quits every worker on exit: the fit job still ends cleanly on its thread, saves
    stopped.pt, and keeps its last events (FitFinished) for the dock to show."""
    from napari.qt.threading import create_worker  # noqa: F401  (a Qt app is needed)

    from napari_deepdewedge.core.fit import loop as F
    from napari_deepdewedge.core.fit.config import FitConfig
    from napari_deepdewedge.core.model.checkpoint import load_checkpoint
    from napari_deepdewedge.widgets._fit import _fit_job

    rng = np.random.default_rng(0)
    base = rng.normal(size=(24, 32, 32)).astype(np.float32)
    tomo0 = base + rng.normal(size=base.shape).astype(np.float32)
    tomo1 = base + rng.normal(size=base.shape).astype(np.float32)
    config = FitConfig(subtomo_size=16, channels=4, depth=2, epochs=500, batch_size=2,
                       device="cpu", out_dir=str(tmp_path), val_fraction=0.0,
                       update_every=0).validate()
    job = Job("fit", _fit_job, tomo0, tomo1, None, config, None, lambda: None)
    seen: list = []
    job.worker.yielded.connect(seen.append)
    job.start()
    qtbot.waitUntil(lambda: any(isinstance(e, F.StepDone) for e in seen), timeout=WAIT_MS)
    job.worker.quit()
    assert job.done.wait(30.0), "the quit fit did not end"
    assert job.stop.is_set()
    stopped = tmp_path / "stopped.pt"
    assert stopped.is_file()
    finished = [e for e in job.drained if isinstance(e, F.FitFinished)]
    assert len(finished) == 1 and finished[0].stopped
    assert finished[0].epochs_done < config.epochs
    payload = load_checkpoint(stopped)
    # it holds the steps done before the quit (epoch, step within the epoch), not a fresh start
    assert (int(payload["epoch"]), int(payload["step"])) > (0, 0)


# ------------------------------------------------------------------ the GUI thread between steps
def test_in_turns_lets_the_event_loop_turn_between_steps(panel, qtbot):
    """A job's result layers are added one per event-loop turn: a 5 ms timer fires between
    two steps (all in one slot, or a 0 ms chain that Qt serves before overdue timers, it
    would not), the order is kept, and the panel is busy until the last step has run."""
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    seen = []  # (step, ticks so far) when each step ran

    def step(name):
        seen.append((name, len(ticks)))
        time.sleep(0.03)  # longer than the timer's interval: it is overdue after each step

    panel.in_turns(*(partial(step, name) for name in "abc"))
    assert panel.busy and seen == []  # nothing runs in the calling slot
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)
    timer.stop()
    assert [name for name, _ in seen] == ["a", "b", "c"]
    counts = [count for _, count in seen]
    assert counts[0] < counts[1] < counts[2], seen


def test_progress_is_shown_at_most_every_interval_and_the_last_at_once(panel, qtbot):
    """Hundreds of progress messages → a few bar updates (each one repaints the window), and
    the last message is shown when the job ends."""
    from napari_deepdewedge.widgets import _panel

    shown = []
    panel.bar.valueChanged.connect(shown.append)
    record: dict = {}
    t0 = time.monotonic()
    assert launch_counting(panel, 300, 0.002, record)
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)
    elapsed = time.monotonic() - t0
    assert record == {"value": 300}
    assert shown[-1] == panel.bar.maximum() and panel.status.text() == "Counting: unit 300/300"
    # at most one per interval (+ the reset at the start, the first and the last)
    assert len(shown) <= elapsed / _panel.PROGRESS_EVERY_S + 3, (len(shown), elapsed)
    assert len(shown) < 300


def test_loss_plot_redraws_at_most_every_interval_and_keeps_every_point(make_napari_viewer,
                                                                        qtbot):
    from napari_deepdewedge.widgets._plots import LossPlot

    plot = LossPlot(make_napari_viewer())
    redraws = []
    original = plot._redraw_now
    plot._pending.timeout.disconnect()
    plot._redraw_now = lambda: (redraws.append(list(plot.epochs)), original())
    plot._pending.timeout.connect(plot._redraw_now)
    plot._last_redraw = -float("inf")
    for epoch in range(1, 6):  # five epochs in a burst (a resumed fit's history)
        plot.add_epoch(epoch, 1.0 / epoch, 1.2 / epoch)
    assert redraws == [[1]]  # the first at once, the rest wait
    qtbot.waitUntil(lambda: len(redraws) == 2, timeout=5_000)
    assert redraws[1] == [1, 2, 3, 4, 5]  # one redraw for the four others
    fit_line = plot.ax.get_lines()[0]
    assert list(fit_line.get_xdata()) == [1, 2, 3, 4, 5]
    plot.add_epoch(6, 0.1)
    plot.flush()  # the end of a fit draws a waiting point at once
    assert redraws[-1] == [1, 2, 3, 4, 5, 6]
