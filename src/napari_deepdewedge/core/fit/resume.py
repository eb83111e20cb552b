"""The one rule for what a resumed fit may change (used by ``fit_iter`` and ``pipeline.plan_fit``),
and :func:`check_resume_inputs`: a resumed fit runs on the tomograms it was fitted on.

Every ``FitConfig`` field is in exactly one of two tables, derived from the ``resume=`` of its
row in :mod:`.settings` (a test checks that):

* :data:`RESUME_FIXED` — settings that define the data, the model, the sampling or the loss.
  A resumed fit continues with the checkpoint's values; a run that *asks* for a different
  value is refused (``CheckpointError`` naming the setting).
* :data:`RESUME_CHANGEABLE` — settings that may change between the run that saved the
  checkpoint and the one resuming from it; the resuming run's values are used.

``given`` says which fields the caller asked for explicitly: ``None`` means all of them (the
engine's strict check), a set of names means only those are compared and every other fixed
field is taken from the checkpoint (a front end that lets the user leave settings unset).

No torch import here.
"""
from __future__ import annotations

import dataclasses
import math

from pathlib import Path

from ..errors import CheckpointError
from ..model import checkpoint as ckpt
from .settings import resume_table

#: fixed for a resume: field → why; changeable: field → what changing it means. Both are read
#: from the settings' rows (``core.fit.settings``: each row's ``resume=``), the one declaration.
RESUME_FIXED = resume_table(fixed=True)
RESUME_CHANGEABLE = resume_table(fixed=False)


def load_resume(resume) -> tuple[dict, str]:
    """``(payload, name)`` of the checkpoint to resume from: a path, or a payload already loaded
    (by the pipeline, which plans the resume), checked for every key a resume needs; ``name``
    is what error messages call it. The one loader of the pipeline's plan and the engine's
    check."""
    require = ckpt.MODEL_KEYS + ckpt.RESUME_KEYS
    if isinstance(resume, dict):
        return ckpt.check_payload(resume, require=require), "checkpoint"
    return ckpt.load_checkpoint(resume, require=require), Path(resume).name


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if a is None or b is None:
            return a is b
        a, b = tuple(a), tuple(b)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
            return a == b
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def fixed_config(requested, payload: dict, *, given=None, name: str = "checkpoint"):
    """``requested`` with the checkpoint's fixed settings (no check of the epochs).

    Raises :class:`CheckpointError` when a fixed setting the caller asked for (all of them with
    ``given=None``) differs from the checkpoint's.
    """
    saved = dict(payload.get("config") or {})
    arch = payload.get("arch")
    if "residual" not in saved and isinstance(arch, dict) and "residual" in arch:
        saved["residual"] = arch["residual"]  # older checkpoints: the network says what it is
    fixed = {}
    for key in RESUME_FIXED:
        if key not in saved:  # an older checkpoint that did not store it: nothing to compare
            continue
        old = tuple(saved[key]) if isinstance(saved[key], list) else saved[key]
        new = getattr(requested, key)
        if (given is None or key in given) and not _same(old, new):
            raise CheckpointError(
                f"cannot resume from {name}: it was fitted with {key}={old!r} but this run has "
                f"{key}={new!r}; use the same {key} (or start a new fit)"
            )
        fixed[key] = old
    return dataclasses.replace(requested, **fixed)


def resumed_config(requested, payload: dict, *, given=None, name: str = "checkpoint"):
    """The ``FitConfig`` to resume with: the checkpoint's fixed settings, the request's others.

    Raises :class:`CheckpointError` as :func:`fixed_config` does, and when the checkpoint has
    already done the requested number of epochs (a front end that wants to go on to refinement
    with such a checkpoint asks ``pipeline.fitting.finished_fit`` first).
    """
    planned = fixed_config(requested, payload, given=given, name=name)
    done = int(payload.get("epoch", 0))
    if done >= planned.epochs:
        raise CheckpointError(
            f"cannot resume from {name}: it has already done {done} epochs and this run asks for "
            f"{planned.epochs}; raise epochs above {done} to continue fitting"
        )
    return planned


def _ctf_key(record: dict):
    """What of a pair's CTF record defines the CTF-aware loss: the target (odd) half's CTF."""
    odd = record.get("odd") or {}
    return tuple(round(float(v), 4) for v in odd.get("defocus_u_um") or ()), \
        tuple(round(float(v), 4) for v in odd.get("defocus_v_um") or ())


def _ctf_text(record: dict) -> str:
    du = [float(v) for v in (record.get("odd") or {}).get("defocus_u_um") or []]
    return f"{len(du)} defoci, {min(du):.2f}…{max(du):.2f} µm" if du else "no defoci"


def _names(records) -> str:
    return ", ".join(str(r.get("name") or "?") for r in records)


def check_resume_inputs(payload: dict, records: list) -> None:
    """The checkpoint's ``inputs`` and this run's pairs (``HalfPair.record()`` each) must be the
    same tomograms: as many, in the same order, with the same names (where both have one),
    shapes and tilt ranges. Otherwise ``CheckpointError`` naming the first difference (the CLI
    and the Fit dock resume through the engine, which calls this)."""
    saved = payload.get("inputs")
    if not saved:  # a checkpoint from before the inputs were recorded
        return
    if len(saved) != len(records):
        raise CheckpointError(f"cannot resume: the checkpoint was fitted on {len(saved)} half pairs "
                              f"({_names(saved)}) but this run has {len(records)} ({_names(records)}); "
                              "resume with the same tomograms")
    for k, (old, new) in enumerate(zip(saved, records)):
        old_name, new_name = str(old.get("name") or ""), str(new.get("name") or "")
        if old_name and new_name and old_name != new_name:
            raise CheckpointError(f"cannot resume: pair {k + 1} is {new_name} but the checkpoint's pair {k + 1} "
                                  f"is {old_name}; resume with the same tomograms in the same order")
        old_ctf, new_ctf = old.get("ctf"), new.get("ctf")
        if old_ctf and new_ctf and _ctf_key(old_ctf) != _ctf_key(new_ctf):
            raise CheckpointError(f"cannot resume: pair {k + 1} ({new_name or old_name}) has other defoci "
                                  f"({_ctf_text(new_ctf)}) than the checkpoint's ({_ctf_text(old_ctf)}); resume "
                                  "with the halves (and <stem>_ctf.json) it was fitted on")
        for key in ("shape", "tilt_range"):
            if [float(v) for v in old[key]] != [float(v) for v in new[key]]:
                raise CheckpointError(f"cannot resume: pair {k + 1} ({new_name or old_name}) has {key} "
                                      f"{new[key]} but the checkpoint's has {old[key]}; resume with the same "
                                      "tomograms")
