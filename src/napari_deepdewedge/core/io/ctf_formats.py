"""Per-view defocus from the files CTF estimation writes, matched to a stack like its angles.

=================  ===============================  =====================================
kind               file                             what we take (unit in the file)
=================  ===============================  =====================================
``ctffind``        CTFFIND4/5 diagnostic ``.txt``   defocus 1/2 (Å), azimuth (°), phase
                   (AreTomo3's ``_CTF.txt``)        shift (rad); header: pixel size,
                                                    voltage, Cs, amplitude contrast (5.0
                                                    adds 3 columns after the 7: ignored)
``imod-defocus``   ctfplotter ``.defocus`` v2/v3    view ranges, tilt angles, defocus (nm),
                                                    astigmatism (flags 1/2), phase (4/8)
``relion-star``    RELION 5 tilt-series star        rlnDefocusU/V (Å), rlnDefocusAngle,
                                                    rlnPhaseShift; optics from the
                                                    tomograms.star row (rlnVoltage, …)
``warp-xml``       Warp/M tilt-series XML           ``<CTF>`` params (µm, kV, mm) and the
                                                    per-tilt ``GridCTF`` (+ DefocusDelta,
                                                    DefocusAngle, Phase grids; nodes
                                                    ``<Node X Y Z Value/>``); a 1×1×1 grid
                                                    (Warp's before a fit) is no defocus
``mdoc``           SerialEM ``.mdoc``               Defocus (else TargetDefocus), µm,
                                                    negative = underfocus; NOMINAL
=================  ===============================  =====================================

Matching to the stack is the angles' rule (``core.tilt_metadata``): a file listing every view
the angle metadata lists has the excluded ones dropped; a file listing only the views in use is
taken as it is; any other count is one DDWError. Values are checked in the unit the producing
program writes; a value outside (0, 20] µm is refused with the unit that was assumed and why.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ctf import (
    DEFAULT_AMPLITUDE_CONTRAST,
    DEFAULT_CS_MM,
    DEFAULT_VOLTAGE_KV,
    ViewCTF,
)
from ..errors import DDWError
from .ctf_readers import (  # noqa: F401  (re-exported: the readers and what they return)
    CTF_KINDS_BY_SUFFIX, UNITS, ListedCTF, _has_grid_ctf, read_ctf_file,
)

#: files looked for beside a stack (its stem, also without _EVN/_ODD), in this order
BESIDE_SUFFIXES = (".defocus", "_ctffind4.txt", "_ctffind.txt", "_CTF.txt", "_ctf.txt")


@dataclass
class CTFRequest:
    """Where the CTF comes from: ``source`` = ``"auto"`` (a file beside the stack, else fitted
    defoci in the angle metadata) or a path; optics used when the file does not give them."""

    source: object = "auto"
    voltage: float | None = None
    cs: float | None = None
    amplitude_contrast: float | None = None


def find_ctf_file(stack_path) -> Path | None:
    """A CTF file beside the stack named after it (also without ``_EVN``/``_ODD``)."""
    from .tilt_formats import _stems

    stack_path = Path(stack_path)
    for stem in _stems(stack_path):
        for suffix in BESIDE_SUFFIXES:
            candidate = stack_path.with_name(stem + suffix)
            if candidate.is_file():
                return candidate
    return None

# ------------------------------------------------------------------------------------ matching


def _check_angles(listed: ListedCTF, file_angles, angles: np.ndarray) -> None:
    """A file whose tilt angles do not follow the stack's (after a constant offset, e.g. the
    aligned angles' tilt-angle offset) belongs to another stack."""
    if file_angles is None or file_angles.size != angles.size or angles.size < 3:
        return
    for sign in (1.0, -1.0):
        diff = sign * file_angles - angles
        if np.max(np.abs(diff - np.median(diff))) <= 3.0:
            return
    raise DDWError(
        f"{listed.source.name} lists tilt angles {file_angles.min():+.1f}°…"
        f"{file_angles.max():+.1f}° that do not follow the stack's "
        f"({angles.min():+.1f}°…{angles.max():+.1f}°, more than 3° apart beyond a constant "
        "offset): it belongs to another stack; give this stack's CTF file")


def match_ctf(listed: ListedCTF, listed_angles: np.ndarray, used: np.ndarray,
              request: CTFRequest) -> ViewCTF:
    """The CTF of the views the stack uses (``used``: indices into the angle metadata's views)."""
    total, n_used = int(listed_angles.size), int(used.size)
    if listed.count == total:
        pick, angles = used, listed_angles[used]
    elif listed.count == n_used:
        pick, angles = np.arange(n_used), listed_angles[used]
    else:
        excluded = total - n_used
        also = f" ({n_used} after the {excluded} excluded)" if excluded else ""
        raise DDWError(
            f"{listed.source.name} gives {listed.count} defoci but the stack's metadata lists "
            f"{total} views{also}; use the CTF file estimated on this tilt series (one line per "
            "view), or name the views it lacks (--exclude)")
    _check_angles(listed, None if listed.angles is None else listed.angles[pick], angles)
    given = tuple(k for k in ("voltage", "cs", "amplitude_contrast") if k in listed.optics)
    flags = {"voltage": request.voltage, "cs": request.cs,
             "amplitude_contrast": request.amplitude_contrast}
    defaults = {"voltage": DEFAULT_VOLTAGE_KV, "cs": DEFAULT_CS_MM,
                "amplitude_contrast": DEFAULT_AMPLITUDE_CONTRAST}
    optics = {k: float(listed.optics.get(k, flags[k] if flags[k] is not None else defaults[k]))
              for k in defaults}
    _check_optics(optics, listed.source)
    return ViewCTF(listed.defocus_u[pick], listed.defocus_v[pick],
                   listed.astigmatism_angle[pick], listed.phase_shift[pick], kind=listed.kind,
                   source=listed.source, notes=listed.notes, given=given,
                   warnings=listed.warnings, file_pixel_size=listed.pixel_size, **optics)


def _check_optics(optics: dict, source: Path) -> None:
    if not 30 <= optics["voltage"] <= 1000:
        raise DDWError(f"{source.name}: voltage {optics['voltage']:g} kV is not an electron "
                       "microscope's (kV, e.g. 300); give --voltage")
    if not 0 <= optics["cs"] <= 10:
        raise DDWError(f"{source.name}: spherical aberration {optics['cs']:g} mm is outside "
                       "0–10 mm; give --cs in mm (e.g. 2.7)")
    if not 0 <= optics["amplitude_contrast"] < 1:
        raise DDWError(f"{source.name}: amplitude contrast {optics['amplitude_contrast']:g} must "
                       "be a fraction in [0, 1) (e.g. 0.07); give --amplitude-contrast")


def resolve_ctf(spec, listed_angles, used: np.ndarray, stack_path=None, *,
                stack_stem: str | None = None) -> ViewCTF | None:
    """THE CTF resolution (called by ``resolve_tilt_metadata`` with the angles' listing).

    ``spec``: ``None`` (no CTF), a path, ``"auto"`` or a :class:`CTFRequest`. ``"auto"``: a
    CTF file beside the stack (:func:`find_ctf_file`), else the fitted defoci of the angle
    metadata itself (a RELION 5 star or Warp XML that carries them), else ``None``. A SerialEM
    .mdoc's nominal defocus is used only when named.
    """
    if spec is None:
        return None
    request = spec if isinstance(spec, CTFRequest) else CTFRequest(source=spec)
    source = request.source
    if source is None:
        return None
    if isinstance(source, str) and source == "auto":
        source = find_ctf_file(stack_path) if stack_path is not None else None
        if source is None:
            kind, path = listed_angles.kind, listed_angles.source
            if kind not in ("relion-star", "warp-xml") or path is None:
                return None
            if kind == "warp-xml" and not _has_grid_ctf(path):
                return None  # Warp writes a <CTF> node before any fit: only a per-tilt fit counts
            try:
                listed = read_ctf_file(path, stack_stem)
            except DDWError as exc:
                if "no rlnDefocusU" in str(exc) or "no <CTF>" in str(exc):
                    return None  # the metadata carries no fit: no CTF, as without a file
                raise
            return match_ctf(listed, listed_angles.angles, used, request)
    listed = read_ctf_file(source, stack_stem)
    return match_ctf(listed, listed_angles.angles, used, request)


def check_pixel_size(ctf: ViewCTF | None, stack_pixel: float) -> None:
    """A file estimated at a pixel size that no whole-number binning relates to the stack's
    belongs to another stack (CTF estimation often runs on the unbinned images)."""
    listed_pixel = None if ctf is None else ctf.file_pixel_size
    if ctf is None or listed_pixel is None or listed_pixel <= 0 or stack_pixel <= 0:
        return
    ratio = stack_pixel / listed_pixel
    if any(abs(ratio - b) <= 0.02 * b for b in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)):
        return
    raise DDWError(
        f"{ctf.source.name} was estimated at {listed_pixel:g} Å/pixel but the stack has "
        f"{stack_pixel:g} Å/pixel (×{ratio:.3g}, not a whole-number binning): it belongs to "
        "another stack, or the stack's header is wrong (--voxel-size)")
