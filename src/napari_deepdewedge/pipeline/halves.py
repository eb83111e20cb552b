"""Tilt series → the two half tomograms (docs/method.md §2.1–2.2), one job for every front end.

``thickness`` has one meaning everywhere: the tomogram's Z size in OUTPUT (binned) voxels —
the CLI's ``--thickness`` and the dock's *Thickness* field. ``HalvesRequest(thickness=64,
binning=2)`` gives tomograms of 64 slices.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import DDWError
from ..core.io.mrc import TiltSeries
from .names import common_stem, stem_of
from .outputs import refuse_existing

#: progress units per reconstruction (progress covers all reconstructions of a request)
PROGRESS_UNITS = 1000


@dataclass(kw_only=True)
class HalvesRequest:
    """What to reconstruct: ``series`` (one stack, split by the parity of the angle-sorted
    index) or ``frame_halves`` (EVN, ODD stacks, each reconstructed from all its projections)."""

    series: TiltSeries | None = None
    frame_halves: tuple[TiltSeries, TiltSeries] | None = None
    thickness: int                  # tomogram Z size in output (binned) voxels
    binning: int = 1
    bin_mode: str = "fourier"
    apodization: str | None = "cosine"
    device: object = None
    want_full: bool = False         # also the tomogram from all projections
    stem: str | None = None         # output stem; default: from the series' names (stem_of)
    ctf: bool = True                # phase flip with the series' CTF (meta["ctf"]) when it has one
    ctf_strip: int | None = None    # strip width in output pixels; None: automatic (core.ctf)
    invert: bool = False            # multiply the tomograms by −1 (dense bright)


@dataclass
class Halves:
    """The half tomograms ``(Z, Y, X)`` float32 and what a writer or a layer needs with them."""

    even: np.ndarray
    odd: np.ndarray
    full: np.ndarray | None         # None unless want_full; frame halves: mean of the halves
    voxel_size: tuple[float, float, float]   # (Z, Y, X) Å
    origin: tuple[float, float, float]
    tilt_range: tuple[float, float]  # (min, max) degrees over both halves
    stem: str
    angles_even: np.ndarray | None = None
    angles_odd: np.ndarray | None = None
    ctf_summary: str = ""           # what was done about the CTF and the contrast (one line)
    # the halves' CTF when they were phase flipped (the CTF-aware fit's input, HalfPair.ctf;
    # written beside the halves as <stem>_ctf.json): {"even", "odd"} core.ctf.ctf_record()s,
    # "pixel_size" (Å, the halves' voxels), "phase_flipped": True, "inverted"
    ctf: dict | None = None


def _split(request: HalvesRequest):
    """(even series, odd series, full series or None, stem)."""
    from ..core.reconstruct.halves import frame_half_series, split_even_odd

    if (request.series is None) == (request.frame_halves is None):
        raise DDWError("give either one tilt series (split into even/odd) or two frame-half "
                       "tilt series (EVN and ODD), not both or neither")
    if request.series is not None:
        even, odd = split_even_odd(request.series)
        full = request.series if request.want_full else None
        stem = request.stem or stem_of(request.series.name)
        return even, odd, full, stem
    evn, odd = frame_half_series(*request.frame_halves)
    return evn, odd, None, request.stem or common_stem(evn.name, odd.name)


def _part(progress, index: int, count: int):
    """A ``progress(done, total)`` for reconstruction ``index`` of ``count`` that reports the
    whole request's progress as ``(index·U + done·U/total, count·U)``."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        share = (int(done) * PROGRESS_UNITS) // max(int(total), 1)
        progress(index * PROGRESS_UNITS + min(share, PROGRESS_UNITS), count * PROGRESS_UNITS)

    return report


def reconstruct_halves(request: HalvesRequest,
                       progress: Callable[[int, int], None] | None = None) -> Halves:
    """Weighted back-projection of both halves (and the full tomogram when asked).

    ``progress(done, total)`` covers all reconstructions of the request together; a front end
    that cancels raises from it (the exception propagates, nothing is returned).
    """
    from ..core.device import pick_device
    from ..core.reconstruct.fbp import fbp

    if isinstance(request.thickness, bool) or not isinstance(request.thickness, (int, np.integer)) \
            or request.thickness < 1:
        raise DDWError(f"thickness must be a whole number of output (binned) voxels ≥ 1, got "
                       f"{request.thickness!r}")
    even, odd, full_series, stem = _split(request)
    device = pick_device(request.device)
    kw = dict(binning=int(request.binning), bin_mode=request.bin_mode,
              apodization=request.apodization, device=device)
    jobs = [even, odd] + ([full_series] if full_series is not None else [])
    flips = [_phase_flip(series, request) for series in jobs]
    volumes = [fbp(series.data, series.angles, int(request.thickness),
                   progress=_part(progress, i, len(jobs)), phase_flip=flip, **kw)
               for i, (series, flip) in enumerate(zip(jobs, flips))]
    if request.invert:
        for volume in volumes:
            np.negative(volume, out=volume)
    full = volumes[2] if full_series is not None else None
    if request.want_full and full is None:  # frame halves: FBP is linear, so the mean
        full = (volumes[0] + volumes[1]) * np.float32(0.5)
    voxel = float(even.pixel_size) * int(request.binning)
    angles = np.concatenate([np.asarray(even.angles), np.asarray(odd.angles)])
    return Halves(even=volumes[0], odd=volumes[1], full=full, voxel_size=(voxel, voxel, voxel),
                  origin=tuple(float(v) for v in even.origin),
                  tilt_range=(float(angles.min()), float(angles.max())), stem=stem,
                  angles_even=np.asarray(even.angles, dtype=float),
                  angles_odd=np.asarray(odd.angles, dtype=float),
                  ctf_summary=_ctf_summary(request, full_series or even, flips[0], stem),
                  ctf=_ctf_of_halves(flips, voxel, request.invert))


def _ctf_of_halves(flips, voxel: float, inverted: bool) -> dict | None:
    """The halves' CTF record (``Halves.ctf``) when both were phase flipped, else None."""
    if flips[0] is None or flips[1] is None:
        return None
    from ..core.ctf import ctf_record

    return {"even": ctf_record(flips[0].ctf), "odd": ctf_record(flips[1].ctf),
            "pixel_size": float(voxel), "phase_flipped": True, "inverted": bool(inverted)}


def _phase_flip(series: TiltSeries, request: HalvesRequest):
    """The phase flip of one series (its own views' CTF), or None."""
    ctf = series.meta.get("ctf") if request.ctf else None
    if ctf is None:
        return None
    from ..core.ctf import PhaseFlip

    return PhaseFlip(ctf, series.angles, float(series.pixel_size), strip_width=request.ctf_strip)


def _ctf_summary(request: HalvesRequest, series: TiltSeries, flip, stem: str) -> str:
    """``CTF: 61 defoci from TS_ctffind4.txt, 4.70…5.30 µm (…), phase flipped in 16-px strips;
    contrast: …`` — what was applied, and the contrast of the output."""
    # phase flipping keeps the sign of the lowest frequencies: the output has the images' contrast
    contrast = ("contrast inverted (--invert): dense material bright for raw micrographs"
                if request.invert else "contrast as in the images: dense material dark for raw "
                "micrographs (--invert for bright)")
    if flip is None:
        if not request.ctf:
            return f"CTF: not corrected (--no-ctf); {contrast}"
        if "ctf" not in series.meta:
            return f"CTF: not corrected; {contrast}"
        return (f"CTF: not corrected (no defocus file found beside the stack, such as "
                f"{stem}_ctffind4.txt or {stem}.defocus; give --ctf FILE to phase flip); "
                f"{contrast}")
    # the full series (or the even half of frame halves) stands for all: same file, same flips
    full_ctf = (request.series.meta.get("ctf") if request.series is not None else flip.ctf)
    text = full_ctf.summary() if full_ctf is not None else flip.ctf.summary()
    n_x = int(series.data.shape[-1]) // int(request.binning)
    return f"CTF: {text}, {flip.describe(n_x, int(request.binning))}; {contrast}"


def halves_paths(out_dir, stem: str, *, with_full: bool) -> list[Path]:
    """``<stem>_even.mrc``, ``<stem>_odd.mrc`` (and ``<stem>_full.mrc``) in ``out_dir``."""
    labels = ("even", "odd", "full") if with_full else ("even", "odd")
    return [Path(out_dir) / f"{stem}_{label}.mrc" for label in labels]


def ctf_sidecar_path(out_dir, stem: str) -> Path:
    """``<stem>_ctf.json`` beside the halves: their defoci (``Halves.ctf``), for the CTF-aware fit."""
    return Path(out_dir) / f"{stem}_ctf.json"


def write_halves(out_dir, stem: str, halves: Halves, *, overwrite: bool = False) -> list[Path]:
    """Write the halves (and the full tomogram when present) with voxel size and origin, and —
    when they were phase flipped — their defoci as ``<stem>_ctf.json`` (``fit --ctf-loss``
    reads it; a stale one from an earlier reconstruction with the CTF is removed otherwise).

    Refuses (``OutputExists``, a ``DDWError``) before writing anything if one of the files
    exists, unless ``overwrite``. Returns the tomograms' paths.
    """
    import json

    from ..core.io.mrc import write_mrc

    paths = refuse_existing(halves_paths(out_dir, stem, with_full=halves.full is not None),
                            overwrite=overwrite)
    volumes = (halves.even, halves.odd, halves.full)
    written = [write_mrc(path, volume, halves.voxel_size, halves.origin)
               for path, volume in zip(paths, volumes)]
    sidecar = ctf_sidecar_path(out_dir, stem)
    if halves.ctf is not None:
        sidecar.write_text(json.dumps(halves.ctf, indent=1) + "\n")
    elif sidecar.exists():
        sidecar.unlink()
    return written


def read_ctf_sidecar(even_path, voxel_size=None) -> dict | None:
    """The ``<stem>_ctf.json`` beside an even half (``stem`` its name without the parity tag),
    or None when there is none. DDWError when it cannot be read, is not phase-flipped halves'
    or is for another voxel size (more than 1 % off)."""
    import json

    from ..core.fit.ctf_envelope import target_ctf

    path = ctf_sidecar_path(Path(even_path).parent, stem_of(even_path))
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DDWError(f"cannot read the halves' CTF file {path} ({exc}); write it again with "
                       "'deepdewedge reconstruct --ctf FILE' or remove it") from None
    if not isinstance(record, dict) or not record.get("phase_flipped"):
        raise DDWError(f"{path}: not the record of phase-flipped halves (no 'phase_flipped': true); "
                       "write it again with 'deepdewedge reconstruct --ctf FILE' or remove it")
    target_ctf(record, name=path.name)  # the defoci are readable and in range
    pixel = record.get("pixel_size")
    if voxel_size is not None and pixel is not None:
        ours = float(voxel_size[-1])
        if abs(float(pixel) - ours) > 0.01 * ours:
            raise DDWError(f"{path} is for halves of {float(pixel):g} Å voxels but "
                           f"{Path(even_path).name} has {ours:g} Å: it belongs to other halves; "
                           "reconstruct these with --ctf FILE or remove it")
    return record
