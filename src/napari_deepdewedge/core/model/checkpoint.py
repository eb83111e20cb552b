"""Checkpoints: one self-describing torch file per saved state (docs/method.md §2.7).

A checkpoint is a plain ``dict`` saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, so loading never executes code from the file: anything
other than tensors, numbers, strings, lists, tuples and dicts is refused.

Payload keys (``FORMAT_TAG``/``FORMAT_VERSION`` identify the file):

===================== =====================================================================
``format``            ``"napari-deepdewedge-checkpoint"``
``version``           format version (int)
``arch``              ``UNet3D`` constructor kwargs (``UNet3D.arch_dict()``)
``state_dict``        model weights, including the ``loc``/``scale`` normalization buffers
``subtomo_size``      edge ``s`` of the cubes the model was fitted on
``tilt_min/max``      tilt range in degrees (defines the observed-mask M)
``voxel_size``        (Z, Y, X) in Å
``standardization``   ``[[mean0, std0], [mean1, std1]]`` per half, or ``None`` (not standardized)
``epoch``             completed epochs
``config``            the ``FitConfig`` as a dict
``resampling``        how fitting cubes were rotated (``"trilinear"``/``"bspline3"``); absent in
                      checkpoints written before it was recorded, read as ``"trilinear"``
``matching_filter``   the filter un-rotated inputs need (``"trilinear-3tap"``/``"bspline3-9tap"``)
written by fitting, needed only to resume:
``step``              optimizer steps done in the epoch after ``epoch`` (0 = epoch boundary)
``optimizer``         Adam state dict
``rng``               ``{"generator": uint8 tensor}`` (the loop's seeded CPU torch.Generator)
``fit_state``         name of the fitting-state file (same folder) holding the wedge-updated
                      fitting cubes ``fit0`` and validation cubes ``val0`` (n, 1, E, E, E),
                      or ``None`` before the first wedge update (core.fit.state)
``inputs``            the half pairs fitted on: ``[{name, even_path, odd_path, shape,
                      tilt_range, voxel_size, standardization[, mask]}, ...]``; ``mask``:
                      the sample mask's source (pipeline.masks), when the pair had one
``perm``              this epoch's cube order (int64), ``partial`` running sums of the epoch
``best_val_loss``     best validation loss so far (or ``None``)
``history``           ``[[epoch, fit_loss, val_loss or None, seconds], ...]``
===================== =====================================================================
"""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

from ..errors import CheckpointError, DDWWarning
from ..io.storage import TEMP_SUFFIX, atomic_write, remove_stale_temps, temp_prefix

FORMAT_TAG = "napari-deepdewedge-checkpoint"
FORMAT_VERSION = 1

#: keys every checkpoint must have to build the model and refine with it
MODEL_KEYS = ("format", "version", "arch", "state_dict", "subtomo_size", "tilt_min", "tilt_max")
#: keys a checkpoint needs in addition to resume fitting exactly
RESUME_KEYS = ("epoch", "step", "optimizer", "rng", "config", "history", "best_val_loss", "standardization")


def save_checkpoint(path, payload: dict, *, before_replace=None) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, fsync, then
    rename; :func:`core.io.storage.atomic_write`).

    A reader never sees a half-written checkpoint, and an interrupted save leaves the previous
    file intact; a full disk or another ``OSError`` raises one ``WriteError`` naming the path and
    the free space.
    """
    import torch

    path = Path(path)
    if not isinstance(payload, dict):
        raise CheckpointError(f"a checkpoint payload must be a dict, got {type(payload).__name__}")
    payload = dict(payload)
    payload.setdefault("format", FORMAT_TAG)
    payload.setdefault("version", FORMAT_VERSION)
    def write(tmp):
        with open(tmp, "wb") as fh:
            sink = _ErrorKeepingWriter(fh)
            try:
                torch.save(payload, sink)
            except RuntimeError:
                if sink.error is not None:  # torch reports a full disk as "unexpected pos ..."
                    raise sink.error from None
                raise

    return atomic_write(path, write, what="checkpoint", before_replace=before_replace)


class _ErrorKeepingWriter:
    """A file wrapper that remembers the first ``OSError`` of ``write`` (``torch.save`` turns
    it into a ``RuntimeError`` that no longer says "No space left on device")."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data):
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name):
        return getattr(self.fh, name)


def previous_path(path) -> Path:
    """Where :func:`save_rotating` keeps the checkpoint it replaced: ``latest.pt`` →
    ``latest.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_rotating(path, payload: dict) -> Path:
    """Save like :func:`save_checkpoint`, keeping the file it replaces as
    :func:`previous_path` — the last two good checkpoints are always on disk.

    Order: the new payload is written and fsynced under a temporary name; then the current
    ``path`` becomes ``path.prev`` (a hard link renamed into place, so ``path`` itself never
    disappears; where hard links are not supported, a rename); then the temporary is renamed
    onto ``path``. A kill between any two steps leaves at least one complete checkpoint under
    ``path`` or ``path.prev``, and :func:`load_checkpoint` falls back to ``path.prev`` when
    ``path`` is missing or unreadable.
    """
    return save_checkpoint(path, payload, before_replace=_keep_previous(Path(path)))


def _keep_previous(path: Path):
    """The ``before_replace`` step of a rotating write of ``path`` (see :func:`save_rotating`).
    Also removes temporaries of killed checkpoint writes in the folder (best.pt, epoch_NNNN.pt,
    ...): only one fitting process writes a folder, and this runs between its writes."""
    prev = previous_path(path)
    for stale in path.parent.glob(f".*.pt.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)

    def keep_current_as_prev():
        if not path.exists():
            return
        remove_stale_temps(prev)
        link = prev.with_name(f"{temp_prefix(prev)}link{TEMP_SUFFIX}")
        try:
            os.link(path, link)
        except OSError:  # no hard links here (e.g. FAT, some network shares): move it
            os.replace(path, prev)
            return
        os.replace(link, prev)

    return keep_current_as_prev


def copy_checkpoint(src, dst, *, keep_previous: bool = False) -> Path:
    """Copy a saved checkpoint file atomically (``best``/periodic files are byte copies of the
    one written in the same epoch — no second serialization). ``keep_previous``: rotate like
    :func:`save_rotating`."""
    import shutil

    dst = Path(dst)

    def copy(tmp):
        with open(tmp, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, length=16 * 1024 * 1024)

    return atomic_write(dst, copy, what="checkpoint", before_replace=_keep_previous(dst) if keep_previous else None)


def load_checkpoint(path, map_location="cpu", *, require=MODEL_KEYS, fallback: bool = True) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else.

    Raises :class:`CheckpointError` for a missing file, a file that is not a torch checkpoint
    (or is truncated, or whose bytes no longer match the CRC-32 checksums the zip container
    stores — a flipped bit on disk), a file whose pickle holds arbitrary objects (refused by
    ``weights_only=True`` — possibly tampered with), a foreign format tag, a newer format
    version, or missing keys (``require``).

    With ``fallback`` (default), when ``path`` is missing or fails any of these checks and the
    checkpoint it replaced (:func:`previous_path`, kept by :func:`save_rotating`) exists and
    loads, that one is returned instead, with a :class:`DDWWarning` naming both files and the
    problem. The returned payload then holds ``"loaded_from"``: the file actually read.
    """
    path = Path(path)
    try:
        return _load_one(path, map_location, require)
    except CheckpointError as exc:
        prev = previous_path(path)
        if not fallback or not prev.is_file():
            raise
        try:
            payload = _load_one(prev, map_location, require)
        except CheckpointError:
            raise exc from None
        warnings.warn(
            f"{path.name} cannot be used ({exc}); loaded the previous checkpoint {prev.name} instead "
            f"(epoch {payload.get('epoch', '?')})", DDWWarning, stacklevel=2)
        payload["loaded_from"] = str(prev)
        return payload


def verify_zip(path: Path) -> str | None:
    """Name of the first member of a torch zip checkpoint whose CRC-32 does not match (torch
    itself does not check them: a flipped byte in the weights would load silently), else None."""
    with zipfile.ZipFile(path) as zf:
        return zf.testzip()


def _load_one(path: Path, map_location, require) -> dict:
    import torch

    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; check the path (fitting writes latest.pt and best.pt "
                              "into its output folder)")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; pick e.g. {path / 'best.pt'}")
    try:
        bad = verify_zip(path) if zipfile.is_zipfile(path) else None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        bad = f"unreadable zip container: {_first_line(str(exc))}"
    if bad is not None:
        raise CheckpointError(
            f"{path.name}: damaged on disk (checksum mismatch in {bad}); use the previous checkpoint "
            f"({previous_path(path).name}, best.pt or a periodic one)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "GLOBAL" in msg or "Unsupported global" in msg:
            raise CheckpointError(
                f"{path.name}: refused to load — the file contains Python objects other than weights, numbers "
                "and strings, so it was not written by napari-deepdewedge or has been tampered with; "
                "use a checkpoint this plugin wrote, from a source you trust"
            ) from None
        raise CheckpointError(
            f"{path.name}: not a readable torch checkpoint ({_first_line(msg)}); the file may be truncated "
            "or of another kind — pick a .pt file written by napari-deepdewedge fitting"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, AttributeError,
            IndexError, TypeError) as exc:
        raise CheckpointError(
            f"{path.name}: not a readable torch checkpoint ({_first_line(str(exc)) or type(exc).__name__}); "
            "the file may be truncated (interrupted copy?) or of another kind — pick a .pt file written by "
            "napari-deepdewedge fitting"
        ) from None
    check_payload(payload, require=require, name=path.name)
    return payload


def check_payload(payload, *, require=MODEL_KEYS, name="checkpoint") -> dict:
    """Validate format tag, version and required keys of an in-memory payload."""
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{name}: holds a {type(payload).__name__}, not a napari-deepdewedge checkpoint; "
            "pick a .pt file written by napari-deepdewedge fitting"
        )
    tag = payload.get("format")
    if tag != FORMAT_TAG:
        raise CheckpointError(
            f"{name}: not a napari-deepdewedge checkpoint (format tag {tag!r}); checkpoints of other tools "
            "(e.g. the DeepDeWedge command line or Lightning) cannot be used — fit with this plugin first"
        )
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{name}: checkpoint format version {version!r} is not supported by this version of "
            f"napari-deepdewedge (reads up to {FORMAT_VERSION}); update the plugin"
        )
    missing = [k for k in require if k not in payload]
    if missing:
        raise CheckpointError(
            f"{name}: checkpoint is incomplete, missing {', '.join(missing)}; it cannot be used for this — "
            "pick latest.pt, best.pt or a periodic checkpoint from a fitting run"
        )
    return payload


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""


def model_meta(payload: dict) -> dict:
    """Everything in a payload except the big tensors (weights, optimizer, cubes, RNG)."""
    skip = {"state_dict", "optimizer", "fit0", "val0", "rng", "perm"}
    meta = {k: v for k, v in payload.items() if k not in skip}
    if "voxel_size" in meta and meta["voxel_size"] is not None:
        meta["voxel_size"] = tuple(float(v) for v in meta["voxel_size"])
    return meta


def checkpoint_resampling(meta: dict) -> str:
    """The resampling a checkpoint was fitted with; ``"trilinear"`` for checkpoints written
    before it was recorded (all of them were fitted that way)."""
    from .rotation import RESAMPLING_KINDS

    kind = meta.get("resampling") or "trilinear"
    if kind not in RESAMPLING_KINDS:
        raise CheckpointError(
            f"checkpoint was fitted with resampling '{kind}', which this version does not know "
            f"({', '.join(RESAMPLING_KINDS)}); refine it with the version that fitted it"
        )
    return kind


def load_model(path_or_payload, device=None):
    """Build the fitted :class:`UNet3D` from a checkpoint path or payload.

    Returns ``(model, meta)``: the model on ``device`` (``None``/``"auto"`` → best available) in
    eval mode, and the metadata (``subtomo_size``, ``tilt_min``, ``tilt_max``, ``voxel_size``,
    ``standardization``, ``epoch``, ``config``, ...).
    """
    from ..device import pick_device
    from .unet import UNet3D

    if isinstance(path_or_payload, dict):
        payload = check_payload(path_or_payload)
    else:
        payload = load_checkpoint(path_or_payload)
    arch = payload["arch"]
    if not isinstance(arch, dict):
        raise CheckpointError("checkpoint 'arch' entry is not a dict of U-Net settings; the file is damaged")
    try:
        model = UNet3D.from_arch(arch)
        model.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint weights do not match the U-Net it describes ({_first_line(str(exc))}); "
            "the file is damaged or from an incompatible version"
        ) from None
    model.to(pick_device(device))
    model.eval()
    return model, model_meta(payload)


def matching_filter_of(kind: str) -> str:
    """The name of the filter un-rotated inputs of a model fitted with ``kind`` need."""
    from .rotation import MATCHING_FILTERS

    return MATCHING_FILTERS[kind]
