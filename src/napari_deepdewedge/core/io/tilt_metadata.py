"""Tilt angles from the metadata the acquisition and alignment tools write, matched to a stack.

One result type (:class:`TiltMetadata`) and ONE resolving function
(:func:`resolve_tilt_metadata`) that every front end uses (``core.io.series.resolve_angles``,
``load_tilt_series`` and ``find_angle_file`` route through here).

Formats and their parsers (in :mod:`core.io.tilt_formats`; a maintained parser wherever one
exists):

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DDWError
from .angles import angles_from_range, check_angle_values

from .tilt_formats import HALF_SUFFIX, _stems  # noqa: F401  (the stems a stack's files are named by)
from .tilt_formats import (  # noqa: F401  (re-exported: the kinds and the file reader)
    KINDS_BY_SUFFIX,
    METADATA_SUFFIXES,
    Listed,
    is_warp_xml,
    read_metadata_file,
)



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
    ctf: object = None  # core.ctf.ViewCTF of the used views when a CTF was asked for (ctf=)

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


# ------------------------------------------------------------------------------ finding files


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
                if candidate.is_file() and (suffix != ".xml" or is_warp_xml(candidate)):
                    return candidate
    return None


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


def _listed_from_spec(angles, n_tilts: int, stack_path) -> Listed:
    stack_path = None if stack_path is None else Path(stack_path)
    stem = None if stack_path is None else HALF_SUFFIX.sub("", stack_path.stem)
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
        return Listed(angles_from_range(*angles), "range", None)
    values = np.asarray(angles, dtype=np.float64).ravel()
    check_angle_values(values, source="angles")
    return Listed(values, "list", None)


def _binning_between(full: tuple[int, int], binned: tuple[int, int]) -> int | None:
    """The whole-number binning ``b`` that turns ``full`` (Y, X) images into ``binned`` ones
    (each axis ``full // b``: IMOD's ``newstack -bin`` drops a remainder), or None."""
    (fy, fx), (by, bx) = full, binned
    if by < 1 or bx < 1 or fy < by or fx < bx:
        return None
    for b in range(1, fy // by + 1):
        if fy // b == by and fx // b == bx:
            return b
    return None


def _check_frame_shape(listed: Listed, frame_shape) -> None:
    """A metadata file whose image size fits the stack at no whole-number binning (the same
    binning along both axes, any factor: 4096×4096 → 64×64 is binning 64) is from another
    stack."""
    if frame_shape is None or listed.frame_shape is None:
        return
    my, mx = listed.frame_shape
    sy, sx = (int(v) for v in frame_shape)
    fits = _binning_between((my, mx), (sy, sx)) is not None
    fits = fits or _binning_between((my, mx), (sx, sy)) is not None  # rotated by 90° (tilt axis along X)
    if not fits:
        raise DDWError(
            f"{listed.source.name} describes {mx}×{my} images but the stack's are {sx}×{sy} "
            "(X×Y): no whole-number binning, the same along X and Y, turns the one into the other, "
            "so it belongs to another stack; give this stack's metadata (--angles FILE)")


def _match(listed: Listed, n_tilts: int) -> tuple[np.ndarray, np.ndarray | None]:
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
                          frame_shape=None, ctf=None) -> TiltMetadata:
    """THE angle resolution every front end uses.

    ``angles``: ``None`` (a metadata file beside ``stack_path``, :func:`find_metadata_file`),
    a path of any supported kind, a ``(min, max, step)`` tuple, or an array/list.
    ``exclude``: 1-based views left out, as a list, an IMOD list string (``"1,2,40"``) or an
    IMOD ``.com`` path; added to what the metadata itself marks excluded (and to a
    ``tilt*.com`` EXCLUDELIST beside a ``.tlt`` that names it). ``frame_shape`` (Y, X) lets a
    metadata file from another stack be refused. ``ctf``: ``None`` (none), ``"auto"``, a CTF
    file or a ``core.io.ctf_formats.CTFRequest`` — the per-view CTF, matched to the views exactly
    as the angles are (``core.io.ctf_formats.resolve_ctf``), in ``.ctf``.
    """
    listed = _listed_from_spec(angles, n_tilts, stack_path)
    notes = list(listed.notes)
    if listed.kind in ("tlt", "rawtlt"):
        com_views, com = _tilt_com_exclusions(listed.source)
        if com is not None and com_views:
            listed.excluded |= com_views
            notes.append(f"EXCLUDELIST from {com.name}")
    listed.excluded |= _user_exclusions(exclude)
    _check_frame_shape(listed, frame_shape)
    used, keep = _match(listed, n_tilts)
    view_ctf = None
    if ctf is not None:
        from .ctf_formats import resolve_ctf

        stem = None if stack_path is None else HALF_SUFFIX.sub("", Path(stack_path).stem)
        view_ctf = resolve_ctf(ctf, listed, used, stack_path, stack_stem=stem)

    def per_view(values):
        return None if values is None or values.size != listed.angles.size else values[used]

    return TiltMetadata(
        angles=listed.angles[used], kind=listed.kind, source=listed.source,
        listed_angles=listed.angles, excluded=tuple(sorted(listed.excluded)), keep=keep,
        tilt_axis=listed.tilt_axis, dose=per_view(listed.dose),
        defocus=per_view(listed.defocus), notes=tuple(notes), ctf=view_ctf)
