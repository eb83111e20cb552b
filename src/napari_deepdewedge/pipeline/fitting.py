"""Fitting as a job: a request in, the engine's typed events out (``Iterator[FitEvent]``).

The rule for what a resumed fit may change is :mod:`napari_deepdewedge.core.fit.resume` (the
engine applies the same rule); :func:`plan_fit` is how a front end asks it before starting.
torch is imported only when a fit is planned or run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ..core.fit.pairs import HalfPair  # noqa: F401  (the contract's pipeline.fitting.HalfPair)
from ..core.fit.events import FitEvent
from ..core.fit.log import EpochRecord

if TYPE_CHECKING:  # pragma: no cover
    from ..core.fit.config import FitConfig


def _planned(requested: "FitConfig", resume, given) -> tuple["FitConfig", dict | None]:
    """The one resume plan: ``(config, payload)`` — ``requested`` validated without
    ``resume``; else the checkpoint (loaded once) and the rule of ``core.fit.resume`` applied.
    The engine then only checks the planned config against the checkpoint."""
    if resume is None:
        return requested.validate(), None
    from ..core.fit.resume import load_resume, resumed_config

    payload, name = load_resume(resume)
    return resumed_config(requested, payload, given=given, name=name).validate(), payload


def plan_fit(requested: "FitConfig", resume, *, given=None) -> "FitConfig":
    """The ``FitConfig`` a fit will run with.

    ``resume=None``: ``requested`` (validated). Otherwise ``resume`` is a checkpoint path or a
    loaded payload and the rule of :mod:`core.fit.resume` applies: the checkpoint's fixed
    settings, the request's changeable ones; a fixed setting in ``given`` (all of them when
    ``given is None``) that differs from the checkpoint's raises ``CheckpointError``, as does
    asking for no more epochs than the checkpoint has done.
    """
    return _planned(requested, resume, given)[0]


@dataclass(kw_only=True)
class FitRequest:
    """One fit: the half pairs (``pairs``, each with its own tilt range, ROI mask and
    standardization) — or one pair as ``even``/``odd`` ``(Z, Y, X)`` + optional ROI ``mask``
    with the config's tilt range —, the requested settings, an optional checkpoint to resume
    from (``given``: see :func:`plan_fit`) or to start from (``init_from``: fine-tuning, weights
    only, fresh optimizer and schedule, same architecture)."""

    config: "FitConfig"
    even: object = None
    odd: object = None
    mask: object = None
    mask_source: object = None  # what made ``mask`` (pipeline.masks), recorded in the checkpoint
    pairs: list[HalfPair] | None = None
    resume: str | Path | None = None
    init_from: str | Path | None = None
    given: frozenset | None = None
    ctf: dict | None = None  # the halves' CTF (pipeline.Halves.ctf) for the single pair: ctf_loss

    def half_pairs(self) -> list[HalfPair]:
        """The pairs this request fits on (the single-pair fields turned into one pair)."""
        if self.pairs:
            if self.even is not None or self.odd is not None or self.mask is not None:
                from ..core.errors import DDWError

                raise DDWError("a fit request takes either pairs or even/odd (and mask), not both")
            return list(self.pairs)
        c = self.config
        return [HalfPair(even=self.even, odd=self.odd, tilt_range=c.tilt_range, mask=self.mask,
                         voxel_size=tuple(c.voxel_size), mask_source=self.mask_source, ctf=self.ctf)]

    def planned_config(self) -> "FitConfig":
        """``config`` with pair 0's tilt range and voxel size (what the engine fits with)."""
        return self.config.for_pair(self.half_pairs()[0])


@dataclass(frozen=True)
class FinishedFit:
    """A fit that needs no more epochs: the checkpoint refinement uses (``model``) and the
    epochs it has done."""

    model: Path
    epochs_done: int


def finished_fit(request: FitRequest) -> FinishedFit | None:
    """Whether ``request.resume`` names a fit that is already over for this request.

    Over means: the checkpoint has done the requested epochs, or its history already meets the
    request's early-stopping rule (``best_by`` not improved for ``early_stop_patience`` epochs). Then the result names ``best.pt`` beside the
    checkpoint (else the checkpoint itself) for refinement; ``None`` when there is more to fit
    or nothing to resume. The checkpoint must match the request as a resume would (the fixed
    settings in ``given``, the same tomograms), else ``CheckpointError``: a job never goes on
    with another job's model.

    The one place a front end decides "skip the fit, refine" (``run`` on one series and a
    project's job). Continuing such a checkpoint is still refused by the engine
    (``core.fit.resume.resumed_config``: "raise epochs"), so ``fit --resume`` stays strict.
    """
    if request.resume is None:
        return None
    from ..core.fit.resume import check_resume_inputs, fixed_config, load_resume
    from ..core.fit.signals import should_stop

    checkpoint = Path(request.resume)
    payload, _ = load_resume(checkpoint)
    config = fixed_config(request.planned_config(), payload, given=request.given, name=checkpoint.name)
    done = int(payload["epoch"])
    history = payload.get("history") or []
    if done < config.epochs and not should_stop(history, config.best_by, config.early_stop_patience):
        return None
    check_resume_inputs(payload, [pair.record() for pair in request.half_pairs()])
    best = checkpoint.parent / "best.pt"
    return FinishedFit(model=best if best.exists() else checkpoint, epochs_done=done)


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
    from ..core.fit.loop import fit_iter

    if request.resume is not None and request.init_from is not None:
        from ..core.errors import DDWError

        raise DDWError("give either a checkpoint to resume (--resume) or one to start from (--init-from), not both")
    config, payload = _planned(request.planned_config(), request.resume, request.given)
    resume_dir = None
    if payload is not None:
        resume_dir = Path(request.resume).parent
        yield FitResumed(config=config, epoch=int(payload["epoch"]),
                         history=[EpochRecord.from_list(row) for row in payload.get("history") or []])
    yield from fit_iter(None, None, config, pairs=request.half_pairs(), resume=payload, resume_dir=resume_dir,
                        init_from=request.init_from, should_stop=should_stop, preview_slab=preview_slab)
