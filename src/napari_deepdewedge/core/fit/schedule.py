"""Time-to-quality levers of the fitting loop (issue 10): learning-rate schedule and early
stopping on a validation plateau. Pure functions of the loop's state, so that a resumed run
makes the same decisions. Both are off by default (``FitConfig.lr_schedule = "constant"``,
``FitConfig.early_stop_patience = 0``), which keeps the original method's constant Adam rate
and fixed epoch count; see bench/time_to_quality.py for their measured effect.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "warmup_cosine")
#: the cosine decays to this fraction of the base rate at the last epoch
FINAL_LR_FRACTION = 0.1


def lr_at(base_lr: float, schedule: str, epochs: int, warmup_epochs: int, epoch: int, step: int,
          steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``epoch`` (1-based).

    ``constant``: ``base_lr``. ``warmup_cosine``: linear warm-up from ``base_lr / steps`` over
    ``warmup_epochs`` epochs, then a cosine from ``base_lr`` down to
    ``FINAL_LR_FRACTION · base_lr`` at the end of epoch ``epochs``.
    """
    if schedule == "constant":
        return float(base_lr)
    if schedule != "warmup_cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    steps_per_epoch = max(1, int(steps_per_epoch))
    t = (int(epoch) - 1) * steps_per_epoch + int(step) + 1  # steps done after this one
    warm = max(0, int(warmup_epochs)) * steps_per_epoch
    total = max(1, int(epochs) * steps_per_epoch)
    if warm and t <= warm:
        return float(base_lr) * t / warm
    frac = min(1.0, (t - warm) / max(1, total - warm))
    low = FINAL_LR_FRACTION * float(base_lr)
    return low + (float(base_lr) - low) * 0.5 * (1.0 + math.cos(math.pi * frac))


def epochs_since_best(history) -> int | None:
    """Epochs since the lowest validation loss in ``history`` rows ``[epoch, fit, val, s]``
    (``None`` when no row has a validation loss)."""
    rows = [(r[0], r[2]) for r in history if r[2] is not None]
    if not rows:
        return None
    best_epoch = min(rows, key=lambda r: (r[1], r[0]))[0]
    return int(history[-1][0]) - int(best_epoch)


def should_stop_early(history, patience: int) -> bool:
    """True when ``patience`` > 0 and the validation loss has not improved for that many epochs."""
    if patience <= 0:
        return False
    since = epochs_since_best(history)
    return since is not None and since >= patience
