"""Tilt angles from the metadata the acquisition and alignment tools write, matched to a stack.

One result type (:class:`TiltMetadata`) and ONE resolving function
(:func:`resolve_tilt_metadata`) that every front end uses (``core.io.resolve_angles``,
``load_tilt_series`` and ``find_angle_file`` route through here).

Formats and their parsers (a maintained parser wherever one exists):

===================  =====================  ==========================================
kind                 parser                 what we take
===================  =====================  ==========================================
``tlt``/``rawtlt``   ours (one number/line)  angles (IMOD)
``mdoc``             ``mdocfile``           TiltAngle by ZValue, tilt axis (title line),
                                             ExposureDose, TargetDefocus/Defocus, ImageSize
``aln``              ``alnfile``            kept views (TILT), DarkFrame = excluded, ROT
``warp-xml``         ``xml.etree`` (stdlib)  Angles, UseTilt (False = excluded), Dose,
                                             AxisAngle, AreAnglesInverted
``tomostar``         ``starfile``           wrpAngleTilt, wrpAxisAngle, wrpDose
``relion-star``      ``starfile``           tomograms.star → the tilt series' star:
                                             rlnTomoYTilt (else nominal stage tilt),
                                             rlnTomoZRot / nominal axis, pre-exposure,
                                             rlnDefocusU
``imod-com``         ours (key/value text)   EXCLUDELIST(2) / ExcludeList / -exclude
===================  =====================  ==========================================

No maintained Python parser exists for IMOD's one-number-per-line ``.tlt`` and the ``.com``
exclude lines (a few lines each), and Warp's XML is plain XML the standard library reads.

Exclusions are 1-based view numbers in the order the metadata lists the views (as IMOD counts).
Matching a stack of ``n`` projections to ``L`` listed views with ``E`` excluded:
``L == n`` → the stack holds every view, the excluded ones are dropped from it (``keep``);
``L - |E| == n`` → the stack already lacks them; anything else is one DDWError naming both
counts and the fix.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DDWError

#: suffix → kind, in the order a file beside the stack is preferred (aligned angles first).
KINDS_BY_SUFFIX = {
    ".tlt": "tlt", ".rawtlt": "rawtlt", ".aln": "aln", ".xml": "warp-xml",
    ".tomostar": "tomostar", ".mdoc": "mdoc", ".star": "relion-star", ".com": "imod-com",
}
METADATA_SUFFIXES = tuple(s for s in KINDS_BY_SUFFIX if s != ".com")
_HALF_SUFFIX = re.compile(r"[._-](evn|even|odd)$", re.IGNORECASE)


@dataclass
class TiltMetadata:
    """Tilt angles for the views a stack holds (stack order), and where they came from.

    ``listed_angles`` are all views the metadata lists; ``excluded`` their 1-based numbers
    left out; ``keep`` the stack indices to use when the stack still holds excluded views
    (``None``: use every projection). ``dose`` (e/Å², as the file gives it) and ``defocus``
    (the file's unit, noted in ``notes``) are per used view when the file has them.
    """

    angles: np.ndarray
    kind: str
    source: Path | None = None
    listed_angles: np.ndarray | None = None
    excluded: tuple[int, ...] = ()
    keep: np.ndarray | None = None
    tilt_axis: float | None = None
    dose: np.ndarray | None = None
    defocus: np.ndarray | None = None
    notes: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return int(self.angles.size)

    @property
    def tilt_range(self) -> tuple[float, float]:
        """(min, max) in degrees: what the missing-wedge masks use."""
        return float(self.angles.min()), float(self.angles.max())

    @property
    def excluded_angles(self) -> np.ndarray:
        listed = self.listed_angles if self.listed_angles is not None else self.angles
        return np.asarray([listed[i - 1] for i in self.excluded], dtype=np.float64)

    def summary(self) -> str:
        """One line for the CLI's info line, the dock and the layer metadata."""
        where = self.source.name if self.source is not None else self.kind
        lo, hi = self.tilt_range
        text = f"{self.count} angles from {where} ({self.kind}), {lo:+.1f}° … {hi:+.1f}°"
        if self.excluded:
            views = ",".join(str(v) for v in self.excluded)
            how = "dropped from the stack" if self.keep is not None else "not in the stack"
            text += f"; views {views} excluded ({how})"
        if self.tilt_axis is not None:
            text += f"; tilt axis {self.tilt_axis:.1f}°"
        return text

    def to_layer_metadata(self) -> dict:
        """Plain values for a napari layer's metadata (the dock reads them back)."""
        stack_angles = self.listed_angles if self.keep is not None else self.angles
        excluded_in_stack = list(self.excluded) if self.keep is not None else []
        return {
            "tilt_angles": [float(a) for a in stack_angles],
            "excluded_views": excluded_in_stack,
            "angle_file": str(self.source) if self.source is not None else None,
            "tilt_metadata": {
                "kind": self.kind, "source": str(self.source) if self.source else None,
                "count": self.count, "range": list(self.tilt_range),
                "excluded": list(self.excluded),
                "excluded_angles": [float(a) for a in self.excluded_angles],
                "tilt_axis": self.tilt_axis, "summary": self.summary(),
            },
        }


@dataclass
class _Listed:
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


# ------------------------------------------------------------------------------ finding files


def _stems(stack_path: Path) -> list[str]:
    stems = [stack_path.stem]
    stripped = _HALF_SUFFIX.sub("", stack_path.stem)
    if stripped and stripped != stack_path.stem:
        stems.append(stripped)
    return stems


def find_metadata_file(stack_path) -> Path | None:
    """A metadata file beside the stack with the same stem (also without ``_EVN``/``_ODD``).

    Preference: ``.tlt``, ``.rawtlt``, ``.aln``, Warp ``.xml``, ``.tomostar``, ``.mdoc``
    (also SerialEM's ``TS.mrc.mdoc``), RELION ``.star``.
    """
    stack_path = Path(stack_path)
    for stem in _stems(stack_path):
        for suffix in METADATA_SUFFIXES:
            candidates = [stack_path.with_name(stem + suffix)]
            if suffix == ".mdoc":
                candidates += [stack_path.with_name(stem + s + ".mdoc")
                               for s in (stack_path.suffix, ".mrc", ".st", ".tif")]
            for candidate in candidates:
                if candidate.is_file() and (suffix != ".xml" or _is_warp_xml(candidate)):
                    return candidate
    return None


def _kind_of(path: Path) -> str:
    kind = KINDS_BY_SUFFIX.get(path.suffix.lower())
    if kind is None or kind == "imod-com":
        known = ", ".join(METADATA_SUFFIXES)
        raise DDWError(f"{path.name}: not a tilt-angle file this plugin reads ({known}); give "
                       "the angle or metadata file of the stack")
    return kind


# ------------------------------------------------------------------------------ parsers


def _read_tlt(path: Path) -> _Listed:
    from .io import read_angles

    return _Listed(read_angles(path), "rawtlt" if path.suffix.lower() == ".rawtlt" else "tlt",
                   path)


def _column(frame, *names):
    for name in names:
        if name in frame.columns:
            values = np.asarray(frame[name], dtype=np.float64)
            if np.all(np.isfinite(values)):
                return values
    return None


def _read_mdoc(path: Path) -> _Listed:
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
    return _Listed(np.asarray(frame["TiltAngle"], dtype=np.float64), "mdoc", path,
                   tilt_axis=axis, dose=_column(frame, "ExposureDose"),
                   defocus=_column(frame, "TargetDefocus", "Defocus"), frame_shape=shape,
                   notes=("defocus in µm (SerialEM)",))


def _read_aln(path: Path) -> _Listed:
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
    return _Listed(listed, "aln", path, excluded={d + 1 for d in dark}, tilt_axis=axis,
                   frame_shape=shape)


def _is_warp_xml(path: Path) -> bool:
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


def _read_warp_xml(path: Path) -> _Listed:
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
    return _Listed(angles, "warp-xml", path, excluded=excluded,
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


def _read_tomostar(path: Path) -> _Listed:
    tables = _read_star_table(path)
    for table in tables.values():
        if "wrpAngleTilt" in table.columns:
            axis = _column(table, "wrpAxisAngle")
            return _Listed(np.asarray(table["wrpAngleTilt"], dtype=np.float64), "tomostar",
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


def _read_relion_star(path: Path, stack_stem: str | None = None) -> _Listed:
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
            return _Listed(angles, "relion-star", source,
                           tilt_axis=None if axis is None else float(np.mean(axis)),
                           dose=_column(table, "rlnMicrographPreExposure"),
                           defocus=_column(table, "rlnDefocusU"),
                           notes=("defocus in Å (RELION), dose = pre-exposure",))
    raise DDWError(f"{path.name}: no rlnTomoYTilt or rlnTomoNominalStageTiltAngle column; give "
                   "a RELION 5 tomograms.star or tilt-series star file")


def read_metadata_file(path, stack_stem: str | None = None) -> _Listed:
    """Every view one metadata file lists (any supported kind), unmatched to a stack."""
    from .io import check_angle_values

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


# ------------------------------------------------------------------------------ exclusions


def parse_view_list(text: str, source: str = "exclude list") -> set[int]:
    """IMOD's list syntax ``1,4-6,40`` (1-based view numbers) → a set."""
    views: set[int] = set()
    for part in str(text).replace(" ", ",").split(","):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise DDWError(f"{source}: '{part}' is not a view number or range; write views "
                           "1-based as IMOD does, e.g. 1,2,40 or 1-3,40")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if lo < 1 or hi < lo:
            raise DDWError(f"{source}: '{part}': views count from 1, ranges go up (e.g. 3-5)")
        views.update(range(lo, hi + 1))
    return views


_COM_EXCLUDE = re.compile(r"^\s*(EXCLUDELIST2?|ExcludeList2?|ExcludeSections|-exclude|"
                          r"-ExcludeSections|EXCLUDE)\s+(\S+)", re.IGNORECASE)


def read_imod_exclusions(com_path) -> set[int]:
    """The views an IMOD command file (tilt.com, newst.com, align.com) excludes."""
    com_path = Path(com_path)
    if not com_path.is_file():
        raise DDWError(f"{com_path}: command file not found; check the path")
    views: set[int] = set()
    for line in com_path.read_text(errors="replace").splitlines():
        match = _COM_EXCLUDE.match(line)
        if match:
            views |= parse_view_list(match.group(2), source=com_path.name)
    return views


def _tilt_com_exclusions(angle_file: Path) -> tuple[set[int], Path | None]:
    """EXCLUDELIST of a tilt*.com beside a .tlt that names it in TILTFILE (IMOD's etomo)."""
    for com in sorted(angle_file.parent.glob("tilt*.com")):
        text = com.read_text(errors="replace")
        if re.search(rf"^\s*TILTFILE\s+{re.escape(angle_file.name)}\s*$", text, re.MULTILINE):
            return read_imod_exclusions(com), com
    return set(), None


def _user_exclusions(exclude) -> set[int]:
    if exclude is None:
        return set()
    if isinstance(exclude, (str, os.PathLike)) and str(exclude).lower().endswith(".com"):
        return read_imod_exclusions(exclude)
    if isinstance(exclude, str):
        return parse_view_list(exclude, source="--exclude")
    views = {int(v) for v in np.asarray(exclude).ravel()}
    if any(v < 1 for v in views):
        raise DDWError(f"excluded views {sorted(views)}: views count from 1 (as IMOD counts)")
    return views


# ------------------------------------------------------------------------------ resolving


def _listed_from_spec(angles, n_tilts: int, stack_path) -> _Listed:
    from .io import angles_from_range, check_angle_values

    stack_path = None if stack_path is None else Path(stack_path)
    stem = None if stack_path is None else _HALF_SUFFIX.sub("", stack_path.stem)
    if angles is None:
        found = find_metadata_file(stack_path) if stack_path is not None else None
        if found is None:
            raise DDWError(
                "no tilt angles given and no angle or metadata file beside the stack "
                f"({', '.join(METADATA_SUFFIXES)} with the stack's name); give one "
                "(--angles FILE) or a range (--tilt-range MIN MAX STEP)")
        return read_metadata_file(found, stem)
    if isinstance(angles, (str, os.PathLike)):
        return read_metadata_file(angles, stem)
    if isinstance(angles, tuple) and len(angles) == 3 and n_tilts != 3:
        return _Listed(angles_from_range(*angles), "range", None)
    values = np.asarray(angles, dtype=np.float64).ravel()
    check_angle_values(values, source="angles")
    return _Listed(values, "list", None)


def _check_frame_shape(listed: _Listed, frame_shape) -> None:
    """A metadata file whose image size fits the stack at no binning is from another stack."""
    if frame_shape is None or listed.frame_shape is None:
        return
    my, mx = listed.frame_shape
    sy, sx = (int(v) for v in frame_shape)
    fits = any(my == sy * b and mx == sx * b for b in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16))
    fits = fits or (my == sx and mx == sy)  # a stack rotated by 90° (tilt axis along X)
    if not fits:
        raise DDWError(
            f"{listed.source.name} describes {mx}×{my} images but the stack's are {sx}×{sy} "
            "(X×Y, at no whole-number binning): it belongs to another stack; give this "
            "stack's metadata (--angles FILE)")


def _match(listed: _Listed, n_tilts: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(indices of listed views the stack uses, stack indices to keep or None)."""
    total = listed.angles.size
    where = listed.source.name if listed.source is not None else listed.kind
    beyond = sorted(v for v in listed.excluded if v > total)
    if beyond:
        raise DDWError(f"view {beyond[0]} is excluded but {where} lists only {total} views; "
                       "exclusions count views 1-based in the order the metadata lists them")
    excluded = np.asarray(sorted(listed.excluded), dtype=int) - 1
    used = np.setdiff1d(np.arange(total), excluded)
    if total == n_tilts:
        return used, (used if excluded.size else None)
    if excluded.size and used.size == n_tilts:
        return used, None
    marked = f" ({excluded.size} marked excluded)" if excluded.size else ""
    if total > n_tilts:
        fix = (f"if {total - n_tilts} views were left out of the stack, name them "
               "(--exclude 1,2,40, 1-based as IMOD counts) or give the aligner's file that "
               "records them (AreTomo .aln, Warp .xml); else use the metadata of this stack")
    else:
        fix = "use the angle/metadata file that belongs to this stack (or fix the range/step)"
    raise DDWError(f"{where} gives {total} tilt angles{marked} but the stack has {n_tilts} "
                   f"projections; {fix}")


def resolve_tilt_metadata(angles, n_tilts: int, stack_path=None, *, exclude=None,
                          frame_shape=None) -> TiltMetadata:
    """THE angle resolution every front end uses.

    ``angles``: ``None`` (a metadata file beside ``stack_path``, :func:`find_metadata_file`),
    a path of any supported kind, a ``(min, max, step)`` tuple, or an array/list.
    ``exclude``: 1-based views left out, as a list, an IMOD list string (``"1,2,40"``) or an
    IMOD ``.com`` path; added to what the metadata itself marks excluded (and to a
    ``tilt*.com`` EXCLUDELIST beside a ``.tlt`` that names it). ``frame_shape`` (Y, X) lets a
    metadata file from another stack be refused.
    """
    listed = _listed_from_spec(angles, n_tilts, stack_path)
    notes = list(listed.notes)
    if listed.kind in ("tlt", "rawtlt") and exclude is None:
        com_views, com = _tilt_com_exclusions(listed.source)
        if com is not None and com_views:
            listed.excluded |= com_views
            notes.append(f"EXCLUDELIST from {com.name}")
    listed.excluded |= _user_exclusions(exclude)
    _check_frame_shape(listed, frame_shape)
    used, keep = _match(listed, n_tilts)

    def per_view(values):
        return None if values is None or values.size != listed.angles.size else values[used]

    return TiltMetadata(
        angles=listed.angles[used], kind=listed.kind, source=listed.source,
        listed_angles=listed.angles, excluded=tuple(sorted(listed.excluded)), keep=keep,
        tilt_axis=listed.tilt_axis, dose=per_view(listed.dose),
        defocus=per_view(listed.defocus), notes=tuple(notes))
