"""Time-to-quality levers (core/fit/schedule.py): learning-rate schedule and early stopping, as
functions and inside the fitting loop."""
import importlib.util
from pathlib import Path

import pytest
import torch

from napari_deepdewedge.core.fit import loop as ft
from napari_deepdewedge.core.fit.config import FitConfig
from napari_deepdewedge.core.fit import schedule as sc
from napari_deepdewedge.core.errors import DDWError

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def test_constant_schedule_is_the_base_rate():
    assert all(sc.lr_at(4e-4, "constant", 10, 2, e, s, 5) == 4e-4 for e in (1, 5, 10) for s in (0, 4))


def test_warmup_cosine_known_values():
    lr = lambda e, s: sc.lr_at(1.0, "warmup_cosine", 10, 2, e, s, 5)  # noqa: E731
    assert lr(1, 0) == pytest.approx(1 / 10)  # first of 10 warm-up steps
    assert lr(2, 4) == pytest.approx(1.0)  # last warm-up step
    assert lr(10, 4) == pytest.approx(sc.FINAL_LR_FRACTION)  # last step
    assert lr(6, 4) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine (20 of 40)
    after = [lr(e, s) for e in range(3, 11) for s in range(5)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    with pytest.raises(ValueError):
        sc.lr_at(1.0, "linear", 10, 0, 1, 0, 5)


def test_early_stopping_decision():
    h = [[1, 1.0, 0.9, 1], [2, 0.9, 0.8, 1], [3, 0.8, 0.85, 1], [4, 0.7, 0.81, 1]]
    assert sc.epochs_since_best(h) == 2
    assert sc.should_stop_early(h, 2) and not sc.should_stop_early(h, 3) and not sc.should_stop_early(h, 0)
    assert sc.epochs_since_best([[1, 1.0, None, 1]]) is None
    assert not sc.should_stop_early([[1, 1.0, None, 1]], 1)


def test_config_rejects_unknown_schedule():
    with pytest.raises(DDWError, match="lr_schedule"):
        FitConfig(lr_schedule="step").validate()
    with pytest.raises(DDWError, match="early_stop_patience"):
        FitConfig(early_stop_patience=-1).validate()


def test_loop_follows_schedule_and_stops_on_plateau(tmp_path):
    t0, t1 = worker.tiny_halves()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = worker.tiny_config(tmp_path / "a", epochs=3, lr_schedule="warmup_cosine", warmup_epochs=1)
        events = list(ft.fit_iter(t0, t1, cfg))
        payload = torch.load(tmp_path / "a" / "latest.pt", weights_only=True)
        # the optimizer's rate after the last step is the schedule's last value (3 steps/epoch)
        assert payload["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
            sc.lr_at(cfg.lr, "warmup_cosine", 3, 1, 3, 2, 3))
        assert events[-1].epochs_done == 3
        # a learning rate too small to move the validation loss: patience 1 ends the fit early
        cfg = worker.tiny_config(tmp_path / "b", epochs=6, lr=1e-12, update_every=0, early_stop_patience=1)
        events = list(ft.fit_iter(t0, t1, cfg))
        done = events[-1]
        assert isinstance(done, ft.FitFinished) and not done.stopped
        # the weights cannot move, so the validation loss repeats: best at epoch 1, stop after 2
        assert done.epochs_done == 2
        vals = [e.val_loss for e in events if isinstance(e, ft.EpochDone)]
        assert len(vals) == 2 and vals[1] == pytest.approx(vals[0], rel=1e-6)
    finally:
        torch.set_num_threads(n)
