"""The events ``fit_iter`` yields: one base class, one dataclass per kind (no torch import).

``FitStarted`` → (``StepDone``… ``EpochDone`` [``WedgesUpdated``] ``CheckpointSaved``…
[``PreviewReady``])… → ``FitFinished`` (always last). See docs/contracts-engine.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .config import FitConfig


class FitEvent:
    """Base class of everything ``fit_iter`` yields (``Iterator[FitEvent]``)."""

    __slots__ = ()


@dataclass
class FitStarted(FitEvent):
    n_fit_cubes: int
    n_val_cubes: int
    steps_per_epoch: int
    device: str
    config: FitConfig


@dataclass
class StepDone(FitEvent):
    epoch: int
    step: int
    steps_per_epoch: int
    loss: float


@dataclass
class EpochDone(FitEvent):
    epoch: int
    fit_loss: float
    val_loss: float | None
    seconds: float
    signals: dict = field(default_factory=dict)  # core.fit.signals: name → value, this epoch's


@dataclass
class WedgesUpdated(FitEvent):
    epoch: int


@dataclass
class PreviewReady(FitEvent):
    epoch: int
    z_start: int
    z_stop: int
    volume: np.ndarray = field(repr=False)


@dataclass
class CheckpointSaved(FitEvent):
    epoch: int
    path: Path
    kind: str  # latest | best | periodic | stopped


@dataclass
class FitFinished(FitEvent):
    epochs_done: int
    stopped: bool
    latest_path: Path | None
    best_path: Path | None
    reason: str = ""  # why it ended before its epochs (core.fit.signals.stop_reason), else ""
