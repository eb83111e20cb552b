"""Parsers for the tilt-metadata files of IMOD, SerialEM, AreTomo, Warp and RELION 5.

Each parser returns a :class:`Listed`: every view the file lists, in the file's order, with the
views it marks excluded (1-based) and what else it carries (tilt axis, dose, defocus, the image
size). Matching to a stack is :mod:`core.io.tilt_metadata`'s job. A maintained parser is used
wherever one exists (``mdocfile``, ``alnfile``, ``starfile``); Warp's XML is plain XML for the
standard library, and IMOD's one-number-per-line ``.tlt`` is read by ``core.io.angles.read_tlt``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DDWError
from .angles import check_angle_values, read_tlt

#: suffix → kind, in the order a file beside the stack is preferred (aligned angles first).
KINDS_BY_SUFFIX = {
    ".tlt": "tlt", ".rawtlt": "rawtlt", ".aln": "aln", ".xml": "warp-xml",
    ".tomostar": "tomostar", ".mdoc": "mdoc", ".star": "relion-star", ".com": "imod-com",
}
METADATA_SUFFIXES = tuple(s for s in KINDS_BY_SUFFIX if s != ".com")

#: a half's suffix (``TS_EVN``, ``TS.odd``): its metadata files may be named without it
HALF_SUFFIX = re.compile(r"[._-](evn|even|odd)$", re.IGNORECASE)


def _stems(stack_path: Path) -> list[str]:
    stems = [stack_path.stem]
    stripped = HALF_SUFFIX.sub("", stack_path.stem)
    if stripped and stripped != stack_path.stem:
        stems.append(stripped)
    return stems


@dataclass
class Listed:
    """What one metadata file lists, before matching to a stack."""

    angles: np.ndarray
    kind: str
    source: Path | None
    excluded: set[int] = field(default_factory=set)  # 1-based
    tilt_axis: float | None = None
    dose: np.ndarray | None = None
    defocus: np.ndarray | None = None
    frame_shape: tuple[int, int] | None = None  # (Y, X) the file says, to spot another stack
    notes: tuple[str, ...] = ()


def _kind_of(path: Path) -> str:
    kind = KINDS_BY_SUFFIX.get(path.suffix.lower())
    if kind is None or kind == "imod-com":
        known = ", ".join(METADATA_SUFFIXES)
        raise DDWError(f"{path.name}: not a tilt-angle file this plugin reads ({known}); give "
                       "the angle or metadata file of the stack")
    return kind


# ------------------------------------------------------------------------------ parsers


def _read_tlt(path: Path) -> Listed:
    return Listed(read_tlt(path), "rawtlt" if path.suffix.lower() == ".rawtlt" else "tlt",
                  path)


def _column(frame, *names):
    for name in names:
        if name in frame.columns:
            values = np.asarray(frame[name], dtype=np.float64)
            if np.all(np.isfinite(values)):
                return values
    return None


def _read_mdoc(path: Path) -> Listed:
    import logging

    import mdocfile

    logger = logging.getLogger("mdocfile")  # it logs every aliased/unknown key as a warning
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        frame = mdocfile.read(path)
    except Exception as exc:
        raise DDWError(f"{path.name}: cannot be read as a SerialEM .mdoc ({exc}); check the "
                       "file") from None
    finally:
        logger.setLevel(level)
    if "TiltAngle" not in frame.columns or len(frame) == 0:
        raise DDWError(f"{path.name}: holds no TiltAngle entries; a tilt-series .mdoc lists "
                       "one [ZValue = …] section per view")
    if "ZValue" in frame.columns:
        frame = frame.sort_values("ZValue", kind="stable")
    axis = None
    for title in (frame["titles"].iloc[0] if "titles" in frame.columns else []):
        match = re.search(r"Tilt\s*axis\s*angle\s*=\s*([-+0-9.eE]+)", str(title))
        if match:
            axis = float(match.group(1))
            break
    shape = None
    if "ImageSize" in frame.columns and frame["ImageSize"].iloc[0] is not None:
        x, y = (int(v) for v in frame["ImageSize"].iloc[0])
        shape = (y, x)
    return Listed(np.asarray(frame["TiltAngle"], dtype=np.float64), "mdoc", path,
                  tilt_axis=axis, dose=_column(frame, "ExposureDose"),
                  defocus=_column(frame, "TargetDefocus", "Defocus"), frame_shape=shape,
                  notes=("defocus in µm (SerialEM)",))


def _read_aln(path: Path) -> Listed:
    from alnfile.data_model import AlnData

    try:
        aln = AlnData.from_file(path)
    except Exception as exc:
        raise DDWError(f"{path.name}: cannot be read as an AreTomo .aln ({exc}); check the "
                       "file") from None
    kept = np.asarray([row.tilt for row in aln.GlobalAlignments], dtype=np.float64)
    if kept.size == 0:
        raise DDWError(f"{path.name}: holds no alignment rows (# SEC … TILT); is it the .aln "
                       "AreTomo wrote for this stack?")
    dark = sorted(int(frame.section_idx) for frame in aln.DarkFrames)
    raw = tuple(aln.RawSize or (0, 0, 0))
    total = raw[2] if raw[2] > 0 else kept.size + len(dark)
    if len(dark) != len(set(dark)) or kept.size + len(dark) != total or \
            any(not 0 <= d < total for d in dark):
        raise DDWError(
            f"{path.name}: lists {kept.size} kept views and {len(dark)} dark (excluded) views "
            f"{[d + 1 for d in dark]}, which does not add up to the {total} views of its "
            "RawSize; the .aln is damaged or edited by hand: re-run AreTomo or give a .tlt")
    # the listed order is AreTomo's: kept rows in order with each dark frame at its index
    listed = np.empty(total, dtype=np.float64)
    dark_angles = {int(f.section_idx): float(f.angle) for f in aln.DarkFrames}
    is_dark = np.zeros(total, dtype=bool)
    is_dark[dark] = True
    listed[~is_dark] = kept
    listed[is_dark] = [dark_angles[d] for d in dark]
    axis = float(np.mean([row.rot for row in aln.GlobalAlignments]))
    shape = (raw[1], raw[0]) if raw[0] > 0 and raw[1] > 0 else None
    return Listed(listed, "aln", path, excluded={d + 1 for d in dark}, tilt_axis=axis,
                  frame_shape=shape)


def is_warp_xml(path: Path) -> bool:
    import xml.etree.ElementTree as ET

    try:
        for _, element in ET.iterparse(path, events=("start",)):
            return element.tag == "TiltSeries"
    except ET.ParseError:
        return False
    return False


def _warp_values(root, tag: str, convert=float):
    node = root.find(tag)
    if node is None or not (node.text or "").strip():
        return None
    return [convert(v.strip()) for v in node.text.strip().split("\n") if v.strip()]


def _read_warp_xml(path: Path) -> Listed:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DDWError(f"{path.name}: not valid XML ({exc})") from None
    angles = _warp_values(root, "Angles") if root.tag == "TiltSeries" else None
    if not angles:
        raise DDWError(f"{path.name}: not a Warp tilt-series XML (no <TiltSeries> with "
                       "<Angles>); give the XML Warp/WarpTools wrote for this tilt series")
    angles = np.asarray(angles, dtype=np.float64)
    notes = []
    if root.get("AreAnglesInverted", "False").strip().lower() == "true":
        angles = -angles  # Warp stores the sign-flipped angles with this flag set
        notes.append("AreAnglesInverted=True: angles negated")
    use = _warp_values(root, "UseTilt", lambda v: v.lower() == "true")
    excluded = {i + 1 for i, ok in enumerate(use or []) if not ok}
    axis = _warp_values(root, "AxisAngle")
    dose = _warp_values(root, "Dose")
    return Listed(angles, "warp-xml", path, excluded=excluded,
                  tilt_axis=float(np.mean(axis)) if axis else None,
                  dose=None if dose is None else np.asarray(dose, dtype=np.float64),
                  notes=tuple(notes))


def _read_star_table(path: Path) -> dict:
    import starfile

    try:
        tables = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise DDWError(f"{path.name}: cannot be read as a STAR file ({exc})") from None
    return {name: table for name, table in tables.items() if hasattr(table, "columns")}


def _read_tomostar(path: Path) -> Listed:
    tables = _read_star_table(path)
    for table in tables.values():
        if "wrpAngleTilt" in table.columns:
            axis = _column(table, "wrpAxisAngle")
            return Listed(np.asarray(table["wrpAngleTilt"], dtype=np.float64), "tomostar",
                          path, tilt_axis=None if axis is None else float(np.mean(axis)),
                          dose=_column(table, "wrpDose"))
    raise DDWError(f"{path.name}: no _wrpAngleTilt column; give the .tomostar Warp wrote")


def _relion_series_star(path: Path, table, stack_stem: str | None) -> Path:
    """The per-tilt-series star file a tomograms.star row points to."""
    names = [str(n) for n in table["rlnTomoName"]]
    wanted = [i for i, n in enumerate(names) if stack_stem and n in (stack_stem,)]
    if not wanted and len(names) == 1:
        wanted = [0]
    if len(wanted) != 1:
        raise DDWError(f"{path.name} lists the tilt series {', '.join(names[:8])}; none is "
                       f"named like the stack ({stack_stem}): give that tilt series' own star "
                       "file, or name the stack after its rlnTomoName")
    relative = Path(str(table["rlnTomoTiltSeriesStarFile"].iloc[wanted[0]]))
    # paths are relative to the RELION project folder: the job folder's grandparent
    for base in (Path.cwd(), path.parent, *path.resolve().parents[:3]):
        if (base / relative).is_file():
            return base / relative
    raise DDWError(f"{path.name}: the tilt-series star file {relative} was not found (looked "
                   "relative to the RELION project folder above it); give it directly")


def _read_relion_star(path: Path, stack_stem: str | None = None) -> Listed:
    tables = _read_star_table(path)
    source = path
    for table in tables.values():
        if "rlnTomoTiltSeriesStarFile" in table.columns:
            source = _relion_series_star(path, table, stack_stem)
            tables = _read_star_table(source)
            break
    for table in tables.values():
        angles = _column(table, "rlnTomoYTilt", "rlnTomoNominalStageTiltAngle")
        if angles is not None:
            axis = _column(table, "rlnTomoZRot", "rlnTomoNominalTiltAxisAngle")
            return Listed(angles, "relion-star", source,
                          tilt_axis=None if axis is None else float(np.mean(axis)),
                          dose=_column(table, "rlnMicrographPreExposure"),
                          defocus=_column(table, "rlnDefocusU"),
                          notes=("defocus in Å (RELION), dose = pre-exposure",))
    raise DDWError(f"{path.name}: no rlnTomoYTilt or rlnTomoNominalStageTiltAngle column; give "
                   "a RELION 5 tomograms.star or tilt-series star file")


def read_metadata_file(path, stack_stem: str | None = None) -> Listed:
    """Every view one metadata file lists (any supported kind), unmatched to a stack."""
    path = Path(path)
    if not path.is_file():
        raise DDWError(f"{path}: angle file not found; check the path")
    kind = _kind_of(path)
    readers = {"tlt": _read_tlt, "rawtlt": _read_tlt, "mdoc": _read_mdoc, "aln": _read_aln,
               "warp-xml": _read_warp_xml, "tomostar": _read_tomostar}
    listed = (_read_relion_star(path, stack_stem) if kind == "relion-star"
              else readers[kind](path))
    check_angle_values(listed.angles, source=path.name)
    return listed
