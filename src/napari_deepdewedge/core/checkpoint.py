"""Checkpoints: one self-describing torch file per saved state (DESIGN §2.7).

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
``fit0``              the wedge-updated fitting cubes (n, 1, E, E, E), float32
``val0``              the wedge-updated validation cubes (n, 1, E, E, E), float32
``perm``              this epoch's cube order (int64), ``partial`` running sums of the epoch
``best_val_loss``     best validation loss so far (or ``None``)
``history``           ``[[epoch, fit_loss, val_loss or None, seconds], ...]``
===================== =====================================================================
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

from .errors import CheckpointError

FORMAT_TAG = "napari-deepdewedge-checkpoint"
FORMAT_VERSION = 1

#: keys every checkpoint must have to build the model and refine with it
MODEL_KEYS = ("format", "version", "arch", "state_dict", "subtomo_size", "tilt_min", "tilt_max")
#: keys a checkpoint needs in addition to resume fitting exactly
RESUME_KEYS = ("epoch", "step", "optimizer", "rng", "fit0", "config", "history", "best_val_loss", "standardization")


def save_checkpoint(path, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename).

    A reader never sees a half-written checkpoint, and an interrupted save leaves the previous
    file intact.
    """
    import torch

    path = Path(path)
    if not isinstance(payload, dict):
        raise CheckpointError(f"a checkpoint payload must be a dict, got {type(payload).__name__}")
    payload = dict(payload)
    payload.setdefault("format", FORMAT_TAG)
    payload.setdefault("version", FORMAT_VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def copy_checkpoint(src, dst) -> Path:
    """Copy a saved checkpoint file atomically (``best``/periodic files are byte copies of the
    ``latest`` one written in the same epoch — no second serialization)."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, length=16 * 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return dst


def load_checkpoint(path, map_location="cpu", *, require=MODEL_KEYS) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else.

    Raises :class:`CheckpointError` for a missing file, a file that is not a torch checkpoint
    (or is truncated), a file whose pickle holds arbitrary objects (refused by
    ``weights_only=True`` — possibly tampered with), a foreign format tag, a newer format
    version, or missing keys (``require``).
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; check the path (fitting writes latest.pt and best.pt "
                              "into its output folder)")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; pick e.g. {path / 'best.pt'}")
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
    from .device import pick_device
    from .unet import UNet3D

    if isinstance(path_or_payload, dict):
        payload = check_payload(path_or_payload)
    else:
        payload = load_checkpoint(path_or_payload)
    arch = payload["arch"]
    if not isinstance(arch, dict):
        raise CheckpointError("checkpoint 'arch' entry is not a dict of U-Net settings; the file is damaged")
    try:
        model = UNet3D(**arch)
        model.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint weights do not match the U-Net it describes ({_first_line(str(exc))}); "
            "the file is damaged or from an incompatible version"
        ) from None
    model.to(pick_device(device))
    model.eval()
    return model, model_meta(payload)
