"""The CTF files of each estimation program, read into :class:`ListedCTF` (one file's defoci per
listed view, in µm) with the unit checks; :mod:`.ctf_formats` finds the file beside a stack
and matches it to the views in use (the table of kinds is there)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ctf import MAX_DEFOCUS_UM
from ..errors import DDWError

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


def _warp_grid(root, tag: str, n: int):
    """A per-tilt ``CubicGrid`` of a Warp XML as Warp's ``CubicGrid.Save`` writes it —
    ``<tag Width= Height= Depth= MarginX= MarginY= MarginZ=>`` with one
    ``<Node X= Y= Z= Value= />`` per grid point — as ``n`` values (Z = the tilt), or ``None``
    when it is not a per-tilt grid (absent, or Warp's default 1×1×1 grid before a CTF fit)."""
    grid = root.find(tag)
    if grid is None or int(grid.get("Depth", "1")) != n or n < 2:
        return None
    if int(grid.get("Width", "1")) != 1 or int(grid.get("Height", "1")) != 1:
        return None  # a spatially resolved grid: not one value per tilt
    values = np.full(n, np.nan)
    for node in grid.findall("Node"):
        z, value = node.get("Z"), node.get("Value")
        if z is None or value is None:
            continue
        values[int(z)] = float(value)
    return values if np.all(np.isfinite(values)) else None


def _read_warp(path: Path) -> ListedCTF:
    """Warp/WarpTools tilt-series XML (the layout of Warp's ``TiltSeries.SaveMeta``): the
    ``<CTF>`` node's ``<Param Name= Value= />`` (Defocus, DefocusDelta in µm, DefocusAngle in °,
    PhaseShift in units of π, Voltage kV, Cs mm, Amplitude, PixelSize Å) and the per-tilt grids
    ``GridCTF`` (defocus), ``GridCTFDefocusDelta``, ``GridCTFDefocusAngle``, ``GridCTFPhase``
    that Warp's tilt-series CTF fit writes (Depth = number of tilts)."""
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
    mean = _warp_grid(root, "GridCTF", n)
    if mean is None:
        raise DDWError(
            f"{path.name}: no per-tilt CTF fit (its GridCTF does not hold one defocus for each "
            f"of the {n} tilts — Warp writes a 1×1×1 grid until its tilt-series CTF estimation "
            "has run); run Warp's tilt-series CTF estimation (WarpTools ts_ctf), or give a "
            "CTFFIND/IMOD file")

    def per_tilt(tag, fallback):
        values = _warp_grid(root, tag, n)
        return values if values is not None else np.full(n, float(fallback))

    # Warp's DefocusDelta is the difference U − V (U = Defocus + Delta/2, V = Defocus − Delta/2)
    delta = per_tilt("GridCTFDefocusDelta", params.get("DefocusDelta", 0))
    angle = per_tilt("GridCTFDefocusAngle", params.get("DefocusAngle", 0))
    phase = per_tilt("GridCTFPhase", params.get("PhaseShift", 0)) * 180.0  # Warp: units of π
    optics = {}
    for key, name in (("voltage", "Voltage"), ("cs", "Cs"), ("amplitude_contrast", "Amplitude")):
        if name in params:
            optics[key] = float(params[name])
    u = _in_um(mean + delta / 2, "warp-xml", path, "defocus")
    v = _in_um(mean - delta / 2, "warp-xml", path, "defocus")
    pixel = float(params["PixelSize"]) if "PixelSize" in params else None
    return ListedCTF(u, v, angle, phase, "warp-xml", path, optics=optics, pixel_size=pixel)


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
    """Whether a Warp XML holds a per-tilt CTF fit: a ``GridCTF`` with one positive defocus per
    tilt (Warp writes ``GridCTF`` in every XML, as a 1×1×1 grid of 0 before the fit)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return False
    angles = root.find("Angles")
    if angles is None or not (angles.text or "").strip():
        return False
    values = _warp_grid(root, "GridCTF", len((angles.text or "").split()))
    return values is not None and bool(np.all(values > 0))


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
