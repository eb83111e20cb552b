"""The checkpoint payload of a fitting run: built by ``fit_iter`` after each epoch (and when
stopped mid-epoch), parsed when it resumes. The file format itself (keys, atomic writes,
verification, loading) is :mod:`..model.checkpoint`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CheckpointError
from ..model.checkpoint import FORMAT_TAG, FORMAT_VERSION, matching_filter_of
from .log import EpochRecord, EpochTally


def build_fit_payload(*, net, config, subtomo_size: int, stats, epoch: int, step: int, optimizer,
                      scaler, generator, fit_state, perm, tally, best_val_loss, history, n_fit: int,
                      n_val: int, inputs=None) -> dict:
    """The checkpoint of a fit after ``epoch`` completed epochs and ``step`` steps of the next.

    ``net``: the bare ``UNet3D`` (not a DDP wrapper); ``config``: the ``FitConfig``; ``stats``:
    per-half ``(mean, std)`` or None; ``generator``: the loop's CPU ``torch.Generator``;
    ``fit_state``: the name of the fitting-state file (core.fit.state) or None; ``inputs``: the
    half pairs' records (``fit_data.HalfPair.record``); ``perm``: this epoch's order (mid-epoch only);
    ``tally``: ``fit_log.EpochTally``; ``history``: ``fit_log.EpochRecord`` list.
    """
    return {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "arch": net.arch_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "subtomo_size": subtomo_size,
        "tilt_min": float(config.tilt_min),
        "tilt_max": float(config.tilt_max),
        "voxel_size": [float(v) for v in config.voxel_size],
        "standardization": None if stats is None else [list(st) for st in stats],
        "epoch": int(epoch),
        "step": int(step),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"generator": generator.get_state()},  # the loop draws only from this generator
        "fit_state": fit_state,
        "inputs": list(inputs or []),
        "resampling": config.resampling,
        "matching_filter": matching_filter_of(config.resampling),
        "perm": None if perm is None else perm.clone(),
        "partial": tally.as_list(),
        "best_val_loss": best_val_loss,
        "history": [record.as_list() for record in history],
        "config": config.to_dict(),
        "n_fit_cubes": n_fit,
        "n_val_cubes": n_val,
    }


@dataclass
class FitResumeState:
    """Where a fit stands in a checkpoint, beyond the weights and the cubes."""

    epoch: int                 # completed epochs
    step: int                  # steps done in the next epoch (0 = at an epoch boundary)
    perm: object               # that epoch's cube order (a mid-epoch checkpoint), else None
    tally: EpochTally
    best_val_loss: float | None
    history: list[EpochRecord]
    optimizer: dict
    scaler: dict | None
    generator: object          # the CPU torch.Generator state


def parse_fit_payload(payload: dict, n_fit: int) -> FitResumeState:
    """The resume state of a fit's checkpoint; ``CheckpointError`` if the mid-epoch part does
    not fit ``n_fit`` cubes."""
    step, perm = int(payload["step"]), payload.get("perm")
    if perm is not None and len(perm) != n_fit or (step > 0 and perm is None):
        raise CheckpointError("cannot resume: the checkpoint's mid-epoch state is incomplete; resume from latest.pt")
    return FitResumeState(
        epoch=int(payload["epoch"]), step=step, perm=perm,
        tally=EpochTally.from_list(payload.get("partial")),
        best_val_loss=payload.get("best_val_loss"),
        history=[EpochRecord.from_list(row) for row in payload["history"]],
        optimizer=payload["optimizer"], scaler=payload.get("scaler"),
        generator=payload["rng"]["generator"],
    )
