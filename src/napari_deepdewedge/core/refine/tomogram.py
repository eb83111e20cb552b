"""Refining whole tomograms with a fitted model (docs/method.md §2.8): each half masked and
standardized (:func:`.tiles.prepare_half`), predicted tile by tile (:func:`.tiles.predict_tiled`,
tiles shrunk when the device runs out of memory), both halves averaged
(:func:`refine_halves`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DDWError
from ..oom import is_out_of_memory, release_device_memory, smaller_tile, warn_user
from .tiles import DEFAULT_TILE, RowPreparer, _check_overlap, _lazy, predict_tiled, standardization_stats


def _resolve_stats(tomo, standardize):
    if standardize is True:
        return standardization_stats(tomo)
    if standardize is None or standardize is False:
        return None
    try:
        mean, std = (float(v) for v in standardize)
    except (TypeError, ValueError):
        raise DDWError(f"standardize must be True, False or (mean, std), got {standardize!r}") from None
    if not std > 0:
        raise DDWError(f"standardization std must be positive, got {std}")
    return mean, std


def refine_tomogram(model, tomo, tilt_min, tilt_max, *, subtomo_size, overlap=None, batch_size=4,
                    device=None, progress=None, standardize=True, amp=None,
                    match_resampling=True, tile_size=None, out=None, report=None,
                    resampling="trilinear") -> np.ndarray:
    """Refine one half-tomogram with a fitted model (docs/method.md §2.8); float32 ``(Z, Y, X)``.

    ``standardize``: ``True`` (default) standardizes with the tomogram's own mean/std and
    undoes it afterwards; ``(mean, std)`` uses those; ``False`` leaves values unchanged (for a
    model fitted with ``FitConfig(standardize=False)``). ``match_resampling`` (default on) gives
    the network the noise statistics of its rotated fitting cubes
    (:func:`core.model.rotation.match_resampling` of ``resampling``, the kind the model was fitted
    with). ``tile_size``: see :func:`predict_tiled`. ``progress(done, total)`` per batch.
    ``out``: optional float32 array (e.g. ``np.memmap``) receiving the result.

    Out of memory on the device (CUDA/MPS): the batch is halved down to one tile, then the tile
    edge is halved (down to ``2**depth``; the overlap scales with it) and the half restarts;
    each decision goes to ``report(message)`` (default: a ``DDWWarning``). Out of memory with
    the smallest tile is a ``DDWError`` naming the fix.
    """
    tomo = _lazy(tomo)
    if tomo.ndim != 3:
        raise DDWError(f"expected a 3D tomogram (Z, Y, X), got shape {tuple(tomo.shape)}")
    stats = _resolve_stats(tomo, standardize)
    prep = RowPreparer((tomo.shape[0], tomo.shape[2]), tilt_min, tilt_max, stats)
    report = report or warn_user
    s = int(subtomo_size)
    tile = max(s, int(tile_size) if tile_size else DEFAULT_TILE)
    while True:
        try:
            out = predict_tiled(model, tomo, s, overlap=overlap, batch_size=batch_size, device=device,
                                progress=progress, amp=amp, rows=prep, match_resampling=match_resampling,
                                tile_size=tile, out=out, report=report,
                                resampling=resampling)
            break
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            smaller = smaller_tile(model, tile)
            if smaller is None:
                raise DDWError(
                    f"out of memory on the device even with one tile of {tile}³ voxels per batch; free "
                    "device memory (close other programs using the GPU) or refine on the CPU (--device cpu)"
                ) from None
            from ..device import pick_device

            release_device_memory(pick_device(device))
            if overlap is not None:
                overlap = min(smaller - 1, int(overlap) * smaller // tile)
            report(f"out of memory with one {tile}³ tile per batch; restarting this half with {smaller}³ tiles")
            tile, s = smaller, min(s, smaller)
    if stats is not None:
        out *= np.float32(stats[1])
        out += np.float32(stats[0])
    return out


@dataclass
class RefineResult:
    """``refined`` = mean of the two refined halves; with ``keep_halves`` also each half and
    ``difference = half0 − half1`` (where the model is not consistent)."""

    refined: np.ndarray
    half0: np.ndarray | None = None
    half1: np.ndarray | None = None
    difference: np.ndarray | None = None


def _resolve_model(model_or_checkpoint, device):
    """(model, meta) from a checkpoint path/payload, a (model, meta) pair or a bare module."""
    from ..model.checkpoint import load_model

    if isinstance(model_or_checkpoint, (str, Path, dict)):
        return load_model(model_or_checkpoint, device=device)
    if isinstance(model_or_checkpoint, tuple) and len(model_or_checkpoint) == 2:
        return model_or_checkpoint[0], dict(model_or_checkpoint[1] or {})
    return model_or_checkpoint, {}


def _resolve_resampling(meta: dict, requested) -> str:
    """The matching filter's kind: the checkpoint's, unless ``requested`` says otherwise — which
    is refused when it differs from the checkpoint's (the network would see other statistics)."""
    from ..model.checkpoint import checkpoint_resampling
    from ..model.rotation import check_resampling

    fitted = checkpoint_resampling(meta)
    if requested is None:
        return fitted
    check_resampling(requested)
    if "resampling" in meta or "config" in meta or "arch" in meta:  # a checkpoint: compare
        if requested != fitted:
            raise DDWError(
                f"the checkpoint was fitted with '{fitted}' resampling but refinement was asked to use "
                f"'{requested}'; refine with resampling='{fitted}' (or None to follow the checkpoint)"
            )
    return requested


def refine_halves(model_or_checkpoint, tomo0, tomo1, *, overlap=None, batch_size=4, device=None,
                  keep_halves=False, progress=None, subtomo_size=None, tilt_min=None, tilt_max=None,
                  standardize=None, match_resampling=True, tile_size=None, report=None,
                  resampling=None) -> RefineResult:
    """Refine both halves and average them.

    ``model_or_checkpoint``: a checkpoint path or payload (subtomo size, tilt range and whether
    to standardize come from it), a ``(model, meta)`` pair as returned by ``load_model``, or a
    bare module (then ``subtomo_size``, ``tilt_min`` and ``tilt_max`` are required).
    Keyword arguments override the checkpoint's values. ``progress(done, total)`` counts
    batches over both halves. ``report(message)``: out-of-memory retries (see
    :func:`refine_tomogram`; default a ``DDWWarning``). ``resampling``: the kind of matching
    filter to use; ``None`` adapts to the checkpoint's (``"trilinear"`` for a bare module or an
    old checkpoint), and a kind that differs from the checkpoint's raises :class:`DDWError`
    naming both.
    """
    from ..device import pick_device
    from ..reconstruct.halves import check_same_shape

    dev = pick_device(device)
    model, meta = _resolve_model(model_or_checkpoint, dev)
    s = subtomo_size if subtomo_size is not None else meta.get("subtomo_size")
    tmin = tilt_min if tilt_min is not None else meta.get("tilt_min")
    tmax = tilt_max if tilt_max is not None else meta.get("tilt_max")
    missing = [n for n, v in (("subtomo_size", s), ("tilt_min", tmin), ("tilt_max", tmax)) if v is None]
    if missing:
        raise DDWError(
            f"refinement needs {', '.join(missing)}; pass a checkpoint (which stores them) or give them "
            "explicitly together with the model"
        )
    kind = _resolve_resampling(meta, resampling)
    if standardize is None:
        standardize = meta.get("standardization", True) is not None  # checkpoint said: not standardized
    tomo0 = _lazy(tomo0)
    tomo1 = _lazy(tomo1)
    check_same_shape(tomo0, tomo1, what="half tomograms")
    ov = _check_overlap(int(s), overlap)

    def half_progress(h):  # both halves have one shape, so one total: report over both
        if progress is None:
            return None
        return lambda done, total: progress(h * total + done, 2 * total)

    kw = dict(subtomo_size=int(s), overlap=ov, batch_size=batch_size, device=dev, standardize=standardize,
              match_resampling=match_resampling, tile_size=tile_size, report=report, resampling=kind)
    r0 = refine_tomogram(model, tomo0, tmin, tmax, progress=half_progress(0), **kw)
    r1 = refine_tomogram(model, tomo1, tmin, tmax, progress=half_progress(1), **kw)
    if keep_halves:
        refined = (r0 + r1) * np.float32(0.5)
        return RefineResult(refined=refined, half0=r0, half1=r1, difference=r0 - r1)
    r0 += r1
    r0 *= np.float32(0.5)
    return RefineResult(refined=r0)
