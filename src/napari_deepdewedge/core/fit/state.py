"""The fitting state file: the wedge-updated input cubes, apart from the model checkpoints.

A model checkpoint (``latest.pt``, ``best.pt``, ``epoch_NNNN.pt``, ``stopped.pt``) holds what
refinement and the resume bookkeeping need; the wedge-updated fitting cube0s — by far the
largest part (67 of 90 MB for one 64×160×160 pair before this split) — live in
``fit_state_NNNN.pt`` in the same folder, written only when they change (at the wedge update
of epoch NNNN) and referenced by name from the checkpoint's ``fit_state`` entry (``None``:
no wedge update yet, the cubes are the freshly extracted ones). A state file is a
``save_checkpoint`` payload (same format tag) with ``kind = "fitting-state"``, ``fit0``
``(N, 1, E, E, E)`` float32 and ``val0`` (the validation cube0s, which get the same wedge
updates; absent in states written before they did), read with ``weights_only=True``.

Checkpoints of the earlier format carry ``fit0`` inline; :func:`resume_cubes` still reads them.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

STATE_KIND = "fitting-state"


def state_name(epoch: int) -> str:
    return f"fit_state_{int(epoch):04d}.pt"


def save_fit_state(folder, epoch: int, fit0, val0=None) -> str:
    """Write the cubes after the wedge update of ``epoch`` (atomically); returns the file name."""
    from ..model.checkpoint import save_checkpoint

    state = {"kind": STATE_KIND, "epoch": int(epoch), "fit0": fit0.detach().cpu().contiguous()}
    if val0 is not None:
        state["val0"] = val0.detach().cpu().contiguous()
    name = state_name(epoch)
    save_checkpoint(Path(folder) / name, state)
    return name


def resume_cubes(payload: dict, folder):
    """The wedge-updated fitting cube0s a checkpoint refers to (``None``: the extracted cubes)."""
    state = resume_state(payload, folder)
    return None if state is None else state["fit0"]


def resume_state(payload: dict, folder) -> dict | None:
    """``{"fit0", "val0" (may be absent)}``: the wedge-updated cube0s a checkpoint refers to
    (``None``: the extracted cubes), loaded from ``folder`` (the checkpoint's own folder)."""
    from ..model.checkpoint import load_checkpoint

    if payload.get("fit0") is not None:  # earlier format: inline
        return {"fit0": payload["fit0"], "val0": payload.get("val0")}
    name = payload.get("fit_state")
    if name is None:
        return None
    if folder is None:
        raise CheckpointError(f"cannot resume: the checkpoint refers to its fitting state {name} but its folder is "
                              "unknown; resume from the checkpoint file's path")
    path = Path(folder) / str(name)
    if not path.exists():
        raise CheckpointError(f"cannot resume: the fitting state {path} that the checkpoint refers to is missing; "
                              "copy it next to the checkpoint (the model itself still refines)")
    state = load_checkpoint(path, require=("fit0",))
    if state.get("kind") != STATE_KIND:
        raise CheckpointError(f"{path.name} is not a fitting-state file")
    return {"fit0": state["fit0"], "val0": state.get("val0")}


def carry_state(name: str | None, src_folder, dst_folder) -> None:
    """Copy a resumed run's state file into its new output folder (when they differ)."""
    if name is None or src_folder is None or dst_folder is None:
        return
    src, dst = Path(src_folder) / name, Path(dst_folder) / name
    if src.exists() and not dst.exists():
        from ..model.checkpoint import copy_checkpoint

        copy_checkpoint(src, dst)


def prune_states(folder, written: set[str], referenced: set[str]) -> None:
    """Delete the state files this run wrote that no checkpoint refers to any more."""
    for name in sorted(written - referenced):
        try:
            (Path(folder) / name).unlink()
        except FileNotFoundError:
            pass
        written.discard(name)


__all__ = ["state_name", "save_fit_state", "resume_cubes", "carry_state", "prune_states"]
