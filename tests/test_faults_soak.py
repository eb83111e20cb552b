"""Long runs (issue 12): 200 tiny fitting epochs with wedge updates, validation, checkpoints and
previews, in this process. Memory must not grow (RSS sampled every 20 epochs after a warm-up
that has seen every kind of work once — wedge updates, validation, a checkpoint and a preview,
both first due at epoch 50 — so epoch 60 is the base: growth < 5 %) and no file handle may leak
(/proc/self/fd counted at the same points and after the run; the base is again epoch 60: before
the process settles the count can be higher — 18 at epoch 20, then 16 for good on an AMD EPYC
with AVX-512, issue 17 — and a count above the settled one later is a leak)."""
from __future__ import annotations

import gc
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from napari_deepdewedge.core.fit import loop as ft

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

EPOCHS, EVERY, WARM_UP = 200, 20, 60


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fd_growth(fds: dict[int, int], after: int, warm_up: int) -> dict[int, int]:
    """Descriptors open beyond the settled count (the sample at ``warm_up``), per later sample
    and at the end (key -1); empty when nothing leaked."""
    base = fds[warm_up]
    grown = {e: n - base for e, n in fds.items() if e > warm_up and n > base}
    if after > base:
        grown[-1] = after - base
    return grown


def test_fd_check_tolerates_settling_and_catches_a_leak():
    """The descriptor check: the pattern seen on a faster machine (one transient pair closed
    before the warm-up ends) passes; one descriptor more per checkpoint after it fails."""
    settling = {20: 18, 40: 16, 60: 16, 80: 16, 100: 16, 200: 16}
    assert _fd_growth(settling, 16, 60) == {}
    leaking = {20: 16, 40: 16, 60: 16, 80: 16, 100: 17, 150: 18, 200: 19}
    assert _fd_growth(leaking, 19, 60) == {100: 1, 150: 2, 200: 3, -1: 3}
    assert _fd_growth({60: 16, 80: 16}, 17, 60) == {-1: 1}  # left open when the run ends


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_200_epochs_do_not_grow_memory_or_leak_file_handles(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0, t1 = worker.tiny_halves(shape=(24, 32, 40))  # 6 cubes: 5 fitting (2 steps), 1 validation
        config = worker.tiny_config(tmp_path / "soak", epochs=EPOCHS, update_every=5, validate_every=2,
                                    checkpoint_every=50, preview_every=50)
        rss, fds, kinds = {}, {}, set()
        for event in ft.fit_iter(t0, t1, config):
            kinds.add(type(event).__name__)
            if isinstance(event, ft.EpochDone) and event.epoch % EVERY == 0:
                gc.collect()
                rss[event.epoch], fds[event.epoch] = _rss(), _open_fds()
        gc.collect()
        fds_after = _open_fds()
    finally:
        torch.set_num_threads(threads)
    assert {"WedgesUpdated", "CheckpointSaved", "PreviewReady", "FitFinished"} <= kinds
    base = rss[WARM_UP]
    growth = {e: (r - base) / base for e, r in rss.items() if e > WARM_UP}
    print("RSS MB:", {e: round(r / 2**20, 1) for e, r in rss.items()}, "growth %:",
          {e: round(100 * g, 2) for e, g in growth.items()}, "fds:", fds, fds_after)
    assert len(growth) == (EPOCHS - WARM_UP) // EVERY
    # the first preview (epoch 50) grows the allocator's pool once (+26 MB seen with the 96³
    # refinement tiles); after it, a leak would grow with the epochs
    assert max(growth.values()) < 0.05, growth
    # descriptors: none above the settled count after the warm-up, nor after the run
    assert _fd_growth(fds, fds_after, WARM_UP) == {}, (fds, fds_after)
