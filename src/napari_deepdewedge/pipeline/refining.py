"""Refinement as a job, and the one set of refined output names.

Files for an output ``OUT`` (``OUT.mrc`` or ``OUT``): ``OUT.mrc`` (the refined tomogram, mean
of both refined halves) and, with the per-half results, ``OUT_half0.mrc``, ``OUT_half1.mrc``
and ``OUT_consistency.mrc`` = refined half0 − refined half1 (SIGNED; a display may show its
absolute value).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import DDWError
from .outputs import refuse_existing


@dataclass(kw_only=True)
class RefineRequest:
    """``model``: a checkpoint path or payload, or a ``(model, meta)`` pair; ``even``/``odd``:
    the half tomograms ``(Z, Y, X)`` (memory-mapped arrays stay lazy)."""

    model: object
    even: object
    odd: object
    overlap: int | None = None
    batch_size: int = 4
    device: object = None
    keep_halves: bool = False


def refine(request: RefineRequest, progress: Callable[[int, int], None] | None = None):
    """Refine both halves and average them; returns ``core.refine.RefineResult`` (``refined``,
    and with ``keep_halves`` ``half0``, ``half1`` and the signed ``difference``).
    ``progress(done, total)`` counts batches over both halves; a front end cancels by raising
    from it."""
    from ..core.refine.tomogram import refine_halves

    if isinstance(request.model, (str, Path)) and not Path(request.model).exists():
        raise DDWError(f"{request.model}: checkpoint not found; check the path (fitting writes "
                       "latest.pt and best.pt into its output folder)")
    return refine_halves(request.model, request.even, request.odd, overlap=request.overlap,
                         batch_size=request.batch_size or 4, device=request.device,
                         keep_halves=request.keep_halves, progress=progress)


REFINED_SUFFIXES = ("", "_half0", "_half1", "_consistency")


def refined_paths(out_path, *, with_halves: bool) -> list[Path]:
    """``OUT.mrc`` (+ ``OUT_half0.mrc``, ``OUT_half1.mrc``, ``OUT_consistency.mrc``); for
    ``OUT.zarr`` the same names as OME-Zarr folders (``OUT_half0.zarr``, …)."""
    out = Path(out_path)
    ext = ".zarr" if out.suffix.lower() == ".zarr" else ".mrc"
    base = out.name[:-len(ext)] if out.suffix.lower() == ext else out.name
    suffixes = REFINED_SUFFIXES if with_halves else REFINED_SUFFIXES[:1]
    return [out.with_name(f"{base}{suffix}{ext}") for suffix in suffixes]


def write_refined(out_path, result, voxel_size, origin=(0.0, 0.0, 0.0), *,
                  overwrite: bool = False, provenance: dict | None = None) -> list[Path]:
    """Write a ``RefineResult`` under the one set of names (see the module docstring).

    The per-half files are written when the result holds them, before the main file. Refuses (``OutputExists``)
    before writing anything if one of the files exists, unless ``overwrite``. ``OUT.zarr``:
    OME-Zarr images (:func:`core.io.omezarr_write.write_omezarr`) with ``provenance`` as an attribute.
    """
    from ..core.io.mrc import write_volume

    with_halves = result.half0 is not None and result.half1 is not None
    paths = refuse_existing(refined_paths(out_path, with_halves=with_halves), overwrite=overwrite)
    volumes = [result.refined]
    if with_halves:
        difference = result.difference if result.difference is not None \
            else result.half0 - result.half1
        volumes += [result.half0, result.half1, difference]
    # the main file last: a set whose main file exists is complete (each file is written
    # atomically), which is how a stopped batch knows what it finished (pipeline.batch)
    for path, volume in list(zip(paths, volumes))[::-1]:
        write_volume(path, volume, voxel_size, origin, provenance=provenance)
    return paths
