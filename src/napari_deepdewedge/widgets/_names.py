"""Names and layer kinds every dock agrees on, so that no dock imports another.

- output layer names: ``"<stem> even"``, ``"<stem> refined"``, … with ``stem`` from
  :func:`layer_stem` (the pipeline's one stem rule, plus the layer-name suffixes the docks add);
- :func:`partner_name`: the other half of an even/odd pair (``X even`` ↔ ``X odd``,
  ``X_EVN`` ↔ ``X_ODD``, ``X_even`` ↔ ``X_odd``);
- :func:`is_tilt_series`: whether a layer holds projections (never offered as a tomogram).
"""
from __future__ import annotations

import re

PREVIEW_NAME = "DDW preview"
SPECTRUM_SUFFIX = " x–z power"

# the words the docks append to layer names ("phantom tilt series", "phantom even", …)
_LAYER_SUFFIX = re.compile(r"[ _.-]+(tilt[ _-]?series|ts|fbp|full)$", re.IGNORECASE)
# an even/odd tag at the end of a name, with its separator: group 1 = separator, 2 = tag
_PARITY_TAG = re.compile(r"([ _.-])(evn|odd|even)$", re.IGNORECASE)
TILT_SERIES_ROLE = "tilt_series"


def layer_stem(name: str) -> str:
    """The stem for output names and files: ``"phantom tilt series"`` → ``"phantom"``,
    ``"TS_01_EVN"`` → ``"TS_01"``, ``"TS_01 even"`` → ``"TS_01"``, ``"a.mrc"`` → ``"a"``.

    The pipeline's :func:`stem_of` (THE stem rule of file names, shared with the CLI) does the
    file-name part: folder, extension, parity tag. Only the layer-name words the docks add
    (" tilt series", " even", " FBP") are removed here first.
    """
    from ..pipeline import stem_of

    text = stem_of(name.strip())
    for _ in range(3):  # "X tilt series even" and the like
        stripped = _PARITY_TAG.sub("", text)
        stripped = _LAYER_SUFFIX.sub("", stripped).strip(" _.-")
        if stripped == text or not stripped:
            break
        text = stripped
    return stem_of(text) or text or name


def partner_name(name: str, candidates) -> str | None:
    """The other half's name among ``candidates``: the same name with the parity tag swapped
    (``even``↔``odd``, ``EVN``↔``ODD``, the case kept), or ``None``."""
    match = _PARITY_TAG.search(name)
    if match is None:
        return None
    head, sep, tag = name[: match.start()], match.group(1), match.group(2)
    options = []
    if tag.lower() == "odd":
        options = [_same_case(tag, "evn"), _same_case(tag, "even")]
    else:
        options = [_same_case(tag, "odd")]
    names = list(candidates)
    for option in options:
        if head + sep + option in names:
            return head + sep + option
    return None


def _same_case(template: str, word: str) -> str:
    if template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word.capitalize()
    return word


def is_tilt_series(layer) -> bool:
    """True for a layer of projections: the docks' and reader's role tag, angles in the
    metadata, or a first axis labelled "tilt". Tomograms made by the docks carry their own role
    (even, odd, fbp, refined, …) and are never tilt series even though they keep the angles."""
    meta = getattr(layer, "metadata", None) or {}
    role = meta.get("ddw_role")
    if role:
        return role == TILT_SERIES_ROLE
    if "tilt_angles" in meta or meta.get("angle_file"):
        return True
    labels = tuple(getattr(layer, "axis_labels", ()) or ())
    return len(labels) >= 3 and str(labels[-3]).lower() == "tilt"
