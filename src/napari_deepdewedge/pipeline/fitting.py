"""Fitting as a job: a request in, the engine's typed events out (``Iterator[FitEvent]``).

The rule for what a resumed fit may change is :mod:`napari_deepdewedge.core.resume` (the
engine applies the same rule); :func:`plan_fit` is how a front end asks it before starting.
torch is imported only when a fit is planned or run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ..core.fit_events import FitEvent
from ..core.fit_log import EpochRecord

if TYPE_CHECKING:  # pragma: no cover
    from ..core.fitting import FitConfig


def _load_resume(resume) -> dict:
    from ..core import checkpoint as ckpt

    if isinstance(resume, dict):
        return ckpt.check_payload(resume, require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS)
    return ckpt.load_checkpoint(resume, require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS)


def _plan(requested: "FitConfig", payload: dict, given, name: str) -> "FitConfig":
    from ..core.resume import resumed_config

    return resumed_config(requested, payload, given=given, name=name).validate()


def plan_fit(requested: "FitConfig", resume, *, given=None) -> "FitConfig":
    """The ``FitConfig`` a fit will run with.

    ``resume=None``: ``requested`` (validated). Otherwise ``resume`` is a checkpoint path or a
    loaded payload and the rule of :mod:`core.resume` applies: the checkpoint's fixed
    settings, the request's changeable ones; a fixed setting in ``given`` (all of them when
    ``given is None``) that differs from the checkpoint's raises ``CheckpointError``, as does
    asking for no more epochs than the checkpoint has done.
    """
    if resume is None:
        return requested.validate()
    name = "checkpoint" if isinstance(resume, dict) else Path(resume).name
    return _plan(requested, _load_resume(resume), given, name)


@dataclass(kw_only=True)
class FitRequest:
    """One fit: the two half tomograms ``(Z, Y, X)``, the requested settings, an optional ROI
    mask and checkpoint to resume from (``given``: see :func:`plan_fit`)."""

    even: object
    odd: object
    config: "FitConfig"
    mask: object = None
    resume: str | Path | None = None
    given: frozenset | None = None


@dataclass
class FitResumed(FitEvent):
    """First event of a resumed fit: the planned settings, the checkpoint's completed epochs
    and its loss history (one ``EpochRecord`` per epoch)."""

    config: "FitConfig"
    epoch: int
    history: list[EpochRecord] = field(default_factory=list)


def fit_events(request: FitRequest, *, should_stop: Callable[[], bool] | None = None,
               preview_slab: Callable[[], tuple[int, int]] | None = None) -> Iterator[FitEvent]:
    """Run a fit, yielding ``FitResumed`` (when resuming) and then the engine's events
    (``FitStarted``, ``StepDone`` at least once per step, ``EpochDone``, ``WedgesUpdated``,
    ``CheckpointSaved``, ``PreviewReady``; the last is always ``FitFinished``).

    ``should_stop()`` is polled before every optimizer step; when it returns True the fit saves
    ``stopped.pt`` (with an ``out_dir``) and finishes.
    """
    from ..core.fitting import fit_iter

    config, payload = request.config, None
    if request.resume is not None:
        payload = _load_resume(request.resume)
        config = _plan(request.config, payload, request.given, Path(request.resume).name)
        yield FitResumed(config=config, epoch=int(payload["epoch"]),
                         history=[EpochRecord.from_list(row) for row in payload.get("history") or []])
    yield from fit_iter(request.even, request.odd, config, mask=request.mask, resume=payload,
                        should_stop=should_stop, preview_slab=preview_slab)
