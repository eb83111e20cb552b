"""Per-view defocus from the files CTF estimation writes, matched to a stack like its angles.

=================  ===============================  =====================================
kind               file                             what we take (unit in the file)
=================  ===============================  =====================================
``ctffind``        CTFFIND4/5 diagnostic ``.txt``   defocus 1/2 (Å), azimuth (°), phase
                   (AreTomo3's ``_CTF.txt``)        shift (rad); header: pixel size,
                                                    voltage, Cs, amplitude contrast
``imod-defocus``   ctfplotter ``.defocus`` v2/v3    view ranges, tilt angles, defocus (nm),
                                                    astigmatism (flags 1/2), phase (4/8)
``relion-star``    RELION 5 tilt-series star        rlnDefocusU/V (Å), rlnDefocusAngle,
                                                    rlnPhaseShift; optics from the
                                                    tomograms.star row (rlnVoltage, …)
``warp-xml``       Warp/M tilt-series XML           ``<CTF>`` params (µm, kV, mm) and the
                                                    per-tilt ``GridCTF`` (+ DefocusDelta,
                                                    DefocusAngle, Phase grids)
``mdoc``           SerialEM ``.mdoc``               Defocus (else TargetDefocus), µm,
                                                    negative = underfocus; NOMINAL
=================  ===============================  =====================================

Matching to the stack is the angles' rule (``core.tilt_metadata``): a file listing every view
the angle metadata lists has the excluded ones dropped; a file listing only the views in use is
taken as it is; any other count is one DDWError. Values are checked in the unit the producing
program writes; a value outside (0, 20] µm is refused with the unit that was assumed and why.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ctf import (
    DEFAULT_AMPLITUDE_CONTRAST,
    DEFAULT_CS_MM,
    DEFAULT_VOLTAGE_KV,
    MAX_DEFOCUS_UM,
    ViewCTF,
)
from ..errors import DDWError

#: files looked for beside a stack (its stem, also without _EVN/_ODD), in this order
BESIDE_SUFFIXES = (".defocus", "_ctffind4.txt", "_ctffind.txt", "_CTF.txt", "_ctf.txt")
CTF_KINDS_BY_SUFFIX = {".txt": "ctffind", ".defocus": "imod-defocus", ".star": "relion-star",
                       ".xml": "warp-xml", ".mdoc": "mdoc"}
#: what each kind writes, and why we read it so (for the unit messages)
UNITS = {
    "ctffind": ("Å", 1e-4, "CTFFIND writes defocus 1/2 in Å ('defocus 1 [Angstroms]')"),
    "imod-defocus": ("nm", 1e-3, "IMOD's ctfplotter writes defocus in nm"),
    "relion-star": ("Å", 1e-4, "RELION writes rlnDefocusU/V in Å"),
    "warp-xml": ("µm", 1.0, "Warp writes its CTF defocus in µm"),
    "mdoc": ("µm", 1.0, "SerialEM writes Defocus in µm"),
}


@dataclass
class CTFRequest:
    """Where the CTF comes from: ``source`` = ``"auto"`` (a file beside the stack, else fitted
    defoci in the angle metadata) or a path; optics used when the file does not give them."""

    source: object = "auto"
    voltage: float | None = None
    cs: float | None = None
    amplitude_contrast: float | None = None


@dataclass
class ListedCTF:
    """One file's defoci per listed view (µm), before matching to a stack."""

    defocus_u: np.ndarray
    defocus_v: np.ndarray
    astigmatism_angle: np.ndarray
    phase_shift: np.ndarray  # degrees
    kind: str
    source: Path
    angles: np.ndarray | None = None  # the file's tilt angle per view (IMOD), to spot another stack
    optics: dict = field(default_factory=dict)  # voltage/cs/amplitude_contrast the file gives
    pixel_size: float | None = None  # Å, as the file says
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return int(self.defocus_u.size)


def _in_um(values, kind: str, source: Path, what: str) -> np.ndarray:
    """File values → µm, refusing what cannot be a defocus in the unit the program writes."""
    unit, scale, why = UNITS[kind]
    values = np.asarray(values, dtype=np.float64)
    um = values * scale
    if not np.all(np.isfinite(um)):
        raise DDWError(f"{source.name}: {what} holds a value that is not a number; check the file")
    lo, hi = float(um.min()), float(um.max())
    shown = f"{float(values.min()):g}…{float(values.max()):g} {unit}"
    if lo <= 0:
        raise DDWError(
            f"{source.name}: {what} {shown} includes zero or negative defoci ({why}; underfocus "
            "is positive there); a failed fit or overfocus cannot be phase flipped: re-fit those "
            "views or exclude them (--exclude)")
    if hi > MAX_DEFOCUS_UM or lo < 0.05:
        guess = ""
        for other, factor in (("µm", 1.0), ("nm", 1e-3), ("Å", 1e-4)):
            if other != unit and 0.05 <= values.min() * factor and values.max() * factor <= MAX_DEFOCUS_UM:
                guess = (f"; the values look like {other} — was the file written by another "
                         f"program or by hand? write them in {unit}")
                break
        raise DDWError(
            f"{source.name}: {what} {shown} read as {unit} ({why}) is {lo:.3g}…{hi:.3g} µm, "
            f"outside 0.05–{MAX_DEFOCUS_UM:g} µm{guess}")
    return um


# ------------------------------------------------------------------------------------ parsers


_CTFFIND_HEADER = {
    "pixel_size": r"Pixel size:\s*([-+0-9.eE]+)",
    "voltage": r"acceleration voltage:\s*([-+0-9.eE]+)",
    "cs": r"spherical aberration:\s*([-+0-9.eE]+)",
    "amplitude_contrast": r"amplitude contrast:\s*([-+0-9.eE]+)",
}


def _read_ctffind(path: Path) -> ListedCTF:
    lines = path.read_text(errors="replace").splitlines()
    header = " ".join(line for line in lines if line.startswith("#"))
    if "CTFFind" not in header and "CTFFIND" not in header.upper() and "defocus 1" not in header:
        raise DDWError(f"{path.name}: not a CTFFIND diagnostic output (no '# Output from "
                       "CTFFind' header); give the .txt CTFFIND wrote beside its diagnostic "
                       "image, or an IMOD .defocus")
    rows = []
    for number, line in enumerate(lines, 1):
        if line.startswith("#") or not line.strip():
            continue
        fields = line.split()
        if len(fields) < 7:
            raise DDWError(f"{path.name} line {number}: {len(fields)} columns, CTFFIND writes 7 "
                           "(micrograph, defocus 1, defocus 2, azimuth, phase shift, cross "
                           "correlation, fit resolution); the file is cut or not CTFFIND's")
        try:
            rows.append([float(v) for v in fields[:5]])
        except ValueError:
            raise DDWError(f"{path.name} line {number}: '{line.strip()}' is not numbers") from None
    if not rows:
        raise DDWError(f"{path.name}: holds no result lines; did CTFFIND finish?")
    table = np.asarray(rows)
    order = np.argsort(table[:, 0], kind="stable")  # by micrograph (view) number
    table = table[order]
    optics = {}
    for key, pattern in _CTFFIND_HEADER.items():
        match = re.search(pattern, header)
        if match:
            optics[key] = float(match.group(1))
    pixel = optics.pop("pixel_size", None)
    return ListedCTF(
        _in_um(table[:, 1], "ctffind", path, "defocus 1"),
        _in_um(table[:, 2], "ctffind", path, "defocus 2"), table[:, 3],
        np.degrees(table[:, 4]), "ctffind", path, optics=optics, pixel_size=pixel)


def _read_imod_defocus(path: Path) -> ListedCTF:
    """ctfplotter's defocus file, versions 2 and 3 (views 1-based, defocus in nm).

    v2: the first line is a data line with the version 2 after the defocus; v3: a first line
    ``flags 0 0. 0. 0 3`` (flags: 1 astigmatism, 2 its angle in radians, 4 phase shift, 8 in
    radians, 16 tilt angles inverted, 32 cut-on frequency), then
    ``start end angle1 angle2 defocus1 [defocus2 astig_angle] [phase] [cut-on]``.
    """
    lines = [line.split() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        raise DDWError(f"{path.name}: empty; give the .defocus ctfplotter wrote")
    try:
        first = [float(v) for v in lines[0]]
    except ValueError:
        raise DDWError(f"{path.name}: first line '{' '.join(lines[0])}' is not numbers; not an "
                       "IMOD defocus file") from None
    flags, version = 0, None
    if len(first) == 6 and first[5] == 3 and first[1:5] == [0, 0, 0, 0]:
        flags, version, data = int(first[0]), 3, lines[1:]
    elif len(first) == 6 and first[5] == 2:
        version, data = 2, [lines[0][:5]] + lines[1:]
    else:
        raise DDWError(f"{path.name}: first line '{' '.join(lines[0])}' is neither a version 2 "
                       "line (start end angle angle defocus 2) nor a version 3 header "
                       "(flags 0 0. 0. 0 3); write it with a current ctfplotter")
    need = 5 + (2 if flags & 1 else 0) + (1 if flags & 4 else 0) + (1 if flags & 32 else 0)
    rows = []
    for number, fields in enumerate(data, 2 if version == 3 else 1):
        if len(fields) < need:
            raise DDWError(f"{path.name} line {number}: {len(fields)} columns, but a version "
                           f"{version} file with flags {flags} has {need}; the file is cut")
        try:
            rows.append([float(v) for v in fields[:need]])
        except ValueError:
            raise DDWError(f"{path.name} line {number}: not numbers") from None
    if not rows:
        raise DDWError(f"{path.name}: holds no defocus lines")
    table = np.asarray(rows)
    starts, ends = table[:, 0].astype(int), table[:, 1].astype(int)
    if np.any(starts < 1) or np.any(ends < starts):
        raise DDWError(f"{path.name}: view ranges must count from 1 and go up (found "
                       f"{starts.min()}–{ends.max()})")
    d1 = _in_um(table[:, 4], "imod-defocus", path, "defocus")
    d2 = _in_um(table[:, 5], "imod-defocus", path, "defocus 2") if flags & 1 else d1
    astig = table[:, 6] if flags & 1 else np.zeros(len(table))
    if flags & 2:
        astig = np.degrees(astig)
    phase = table[:, 5 + (2 if flags & 1 else 0)] if flags & 4 else np.zeros(len(table))
    if flags & 8:
        phase = np.degrees(phase)
    angle = 0.5 * (table[:, 2] + table[:, 3])
    if flags & 16:
        angle = -angle
    # every view 1 … max(end): the mean of the lines covering it; uncovered views interpolated
    total = int(ends.max())
    sums, hits = np.zeros((5, total)), np.zeros(total)
    for k in range(len(table)):
        sl = slice(starts[k] - 1, ends[k])
        sums[:, sl] += np.array([d1[k], d2[k], astig[k], phase[k], angle[k]])[:, None]
        hits[sl] += 1
    covered = hits > 0
    per_view = sums[:, covered] / hits[covered]
    views = np.arange(1, total + 1)
    values = np.stack([np.interp(views, views[covered], row) for row in per_view])
    notes = (f"views {', '.join(map(str, views[~covered]))} not in the file: interpolated",) \
        if not covered.all() else ()
    return ListedCTF(values[0], values[1], values[2], values[3], "imod-defocus", path,
                     angles=values[4], notes=notes)


def _relion_optics(path: Path, stack_stem: str | None) -> tuple[dict, float | None]:
    """rlnVoltage/rlnSphericalAberration/rlnAmplitudeContrast of the tomograms.star row."""
    from .tilt_formats import _read_star_table

    for table in _read_star_table(path).values():
        if "rlnTomoTiltSeriesStarFile" not in table.columns:
            continue
        names = [str(n) for n in table["rlnTomoName"]]
        row = names.index(stack_stem) if stack_stem in names else (0 if len(names) == 1 else None)
        if row is None:
            return {}, None
        optics = {}
        for key, column in (("voltage", "rlnVoltage"), ("cs", "rlnSphericalAberration"),
                            ("amplitude_contrast", "rlnAmplitudeContrast")):
            if column in table.columns:
                optics[key] = float(table[column].iloc[row])
        pixel = (float(table["rlnTomoTiltSeriesPixelSize"].iloc[row])
                 if "rlnTomoTiltSeriesPixelSize" in table.columns else None)
        return optics, pixel
    return {}, None


def _read_relion(path: Path, stack_stem: str | None) -> ListedCTF:
    from .tilt_formats import _read_relion_star, _read_star_table

    listed = _read_relion_star(path, stack_stem)  # follows tomograms.star to the series' star
    optics, pixel = _relion_optics(path, stack_stem)
    for table in _read_star_table(listed.source).values():
        if "rlnDefocusU" not in table.columns:
            continue
        u = _in_um(table["rlnDefocusU"], "relion-star", listed.source, "rlnDefocusU")
        v = (_in_um(table["rlnDefocusV"], "relion-star", listed.source, "rlnDefocusV")
             if "rlnDefocusV" in table.columns else u)
        n = u.size
        angle = (np.asarray(table["rlnDefocusAngle"], dtype=float) if "rlnDefocusAngle" in
                 table.columns else np.zeros(n))
        phase = (np.asarray(table["rlnPhaseShift"], dtype=float) if "rlnPhaseShift" in
                 table.columns else np.zeros(n))
        notes = () if optics else ("no optics (give the tomograms.star for rlnVoltage, "
                                   "rlnSphericalAberration, rlnAmplitudeContrast)",)
        return ListedCTF(u, v, angle, phase, "relion-star", listed.source, optics=optics,
                         pixel_size=pixel, notes=notes)
    raise DDWError(f"{listed.source.name}: no rlnDefocusU column (the tilt series' CTF was not "
                   "estimated in RELION); run its CTF estimation or give a CTFFIND/IMOD file")


def _read_warp(path: Path) -> ListedCTF:
    import xml.etree.ElementTree as ET

    from .tilt_formats import _read_warp_xml

    listed = _read_warp_xml(path)
    root = ET.parse(path).getroot()
    node = root.find("CTF")
    if node is None:
        raise DDWError(f"{path.name}: no <CTF> node (Warp has not estimated this tilt series' "
                       "CTF); run its CTF estimation or give a CTFFIND/IMOD file")
    params = {p.get("Name"): p.get("Value") for p in node.findall("Param")}
    if "Defocus" not in params:
        raise DDWError(f"{path.name}: the <CTF> node has no Defocus param; check the file")
    n = listed.angles.size

    def grid(tag, fallback):
        g = root.find(tag)
        if g is None or int(g.get("Depth", "0")) != n:
            return np.full(n, float(fallback))
        values = np.full(n, np.nan)
        for item in g.findall("Node"):
            values[int(item.get("Z"))] = float(item.get("W"))
        return np.where(np.isfinite(values), values, float(fallback))

    mean = grid("GridCTF", params["Defocus"])
    # Warp's DefocusDelta is the difference U − V (U = Defocus + Delta/2, V = Defocus − Delta/2)
    delta = grid("GridCTFDefocusDelta", params.get("DefocusDelta", 0))
    angle = grid("GridCTFDefocusAngle", params.get("DefocusAngle", 0))
    phase = grid("GridCTFPhase", params.get("PhaseShift", 0)) * 180.0  # Warp: units of π
    optics = {}
    for key, name in (("voltage", "Voltage"), ("cs", "Cs"), ("amplitude_contrast", "Amplitude")):
        if name in params:
            optics[key] = float(params[name])
    u = _in_um(mean + delta / 2, "warp-xml", path, "defocus")
    v = _in_um(mean - delta / 2, "warp-xml", path, "defocus")
    notes = () if root.find("GridCTF") is not None else ("no per-tilt GridCTF: one defocus "
                                                         "for every view",)
    pixel = float(params["PixelSize"]) if "PixelSize" in params else None
    return ListedCTF(u, v, angle, phase, "warp-xml", path, optics=optics, pixel_size=pixel,
                     notes=notes)


def _read_mdoc(path: Path) -> ListedCTF:
    import logging

    import mdocfile

    logger = logging.getLogger("mdocfile")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        frame = mdocfile.read(path)
    except Exception as exc:
        raise DDWError(f"{path.name}: cannot be read as a SerialEM .mdoc ({exc})") from None
    finally:
        logger.setLevel(level)
    if "ZValue" in frame.columns:
        frame = frame.sort_values("ZValue", kind="stable")
    for column in ("Defocus", "TargetDefocus"):
        if column in frame.columns:
            values = np.asarray(frame[column], dtype=np.float64)
            if np.all(np.isfinite(values)):
                break
    else:
        raise DDWError(f"{path.name}: no Defocus or TargetDefocus entries; give the CTF "
                       "estimation's file (--ctf TS_ctffind4.txt or TS.defocus)")
    u = _in_um(-values, "mdoc", path, f"{column} (negated: SerialEM writes underfocus negative)")
    n = u.size
    pixel = (float(frame["PixelSpacing"].iloc[0]) if "PixelSpacing" in frame.columns
             and frame["PixelSpacing"].iloc[0] is not None else None)
    return ListedCTF(u, u.copy(), np.zeros(n), np.zeros(n), "mdoc", path, pixel_size=pixel,
                     angles=np.asarray(frame["TiltAngle"], dtype=np.float64)
                     if "TiltAngle" in frame.columns else None,
                     warnings=(f"{path.name}: the .mdoc's {column} is the NOMINAL defocus the "
                               "microscope was set to, not a fit; phase flipping with it can "
                               "flip the wrong way past the first zeros — estimate the CTF "
                               "(CTFFIND, ctfplotter) and give that file",))


def _has_grid_ctf(path: Path) -> bool:
    import xml.etree.ElementTree as ET

    try:
        return ET.parse(path).getroot().find("GridCTF") is not None
    except ET.ParseError:
        return False


def read_ctf_file(path, stack_stem: str | None = None) -> ListedCTF:
    """Every view's defocus one CTF file lists (any supported kind), unmatched to a stack."""
    path = Path(path)
    if not path.is_file():
        raise DDWError(f"{path}: CTF file not found; check the path")
    kind = CTF_KINDS_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise DDWError(f"{path.name}: not a CTF file this plugin reads (CTFFIND .txt, IMOD "
                       ".defocus, RELION 5 .star, Warp .xml, SerialEM .mdoc)")
    if kind == "ctffind":
        return _read_ctffind(path)
    if kind == "imod-defocus":
        return _read_imod_defocus(path)
    if kind == "relion-star":
        return _read_relion(path, stack_stem)
    if kind == "warp-xml":
        return _read_warp(path)
    return _read_mdoc(path)


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
