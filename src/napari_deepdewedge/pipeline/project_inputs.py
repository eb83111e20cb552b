"""What a project takes and what it keeps (used by :mod:`.project`): the tilt series a folder,
glob or list file names (never the project's own outputs), the subset the fit is on
(``--fit-on``), and the settings a continued project must keep — the CTF and contrast once a
tomogram is reconstructed, the masks once the fit has started — with the message that names
what changed. No torch import here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import DDWError
from .batch import expand
from .names import stem_of

#: stack suffixes a folder of tilt series is searched for (not .rec/.map: tomograms)
STACK_SUFFIXES = (".st", ".mrc", ".ali", ".mrcs")
#: files a project writes into its folder, never taken for input stacks
_OUTPUT_TAGS = ("_even", "_odd", "_full", "_refined", "_mask")
#: what a job file written before ``settings`` existed did: no CTF, no inversion, no masks
LEGACY_SETTINGS = {"ctf": False, "ctf_strip": None, "voltage": None, "cs": None,
                   "amplitude_contrast": None, "invert": False, "mask": None, "mask_params": None}
#: the settings fixed once a tomogram is reconstructed / once the fit has started, and the flag
#: that sets each (for the message)
RECONSTRUCTION_SETTINGS = {"ctf": "--no-ctf", "ctf_strip": "--ctf-strip", "voltage": "--voltage",
                           "cs": "--cs", "amplitude_contrast": "--amplitude-contrast",
                           "invert": "--invert"}
FIT_SETTINGS = {"mask": "--mask auto", "mask_params": "the mask_* settings of --config"}


def is_project_input(spec) -> bool:
    """A folder, a glob or a list file (``.txt``/``.lst``) of tilt series, not one stack."""
    text = os.fspath(spec)
    return (Path(text).is_dir() or any(c in text for c in "*?[")
            or Path(text).suffix.lower() in (".txt", ".lst"))


def discover_series(spec, *, out_dir=None) -> list[Path]:
    """Tilt series from a folder (its stacks, sorted), a glob, or a list file (one path per
    line, ``#`` comments, relative to the file). Our own outputs are never picked up."""
    path = Path(os.fspath(spec))
    if path.is_dir():
        found = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in STACK_SUFFIXES and not p.name.startswith("."))
    elif path.suffix.lower() in (".txt", ".lst") and path.is_file():
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        found = [Path(t) if os.path.isabs(t) else path.parent / t for t in lines if t]
    else:
        found = expand(spec)
    out = Path(out_dir).resolve() if out_dir is not None else None
    found = [p for p in found if not (out is not None and p.resolve().parent == out
                                      and p.stem.endswith(_OUTPUT_TAGS))]
    if not found:
        raise DDWError(f"{spec}: no tilt series found (looked for {', '.join(STACK_SUFFIXES)}); "
                       "give a folder of stacks, a quoted glob or a list file")
    missing = [p for p in found if not p.exists()]
    if missing:
        raise DDWError(f"{missing[0]}: tilt series not found; check the list")
    stems = [stem_of(p) for p in found]
    duplicate = next((s for s in stems if stems.count(s) > 1), None)
    if duplicate:
        raise DDWError(f"two tilt series have the stem '{duplicate}'; outputs are named by it, "
                       "so rename one or list them in separate runs")
    return found


def select_fit_subset(stems: list[str], fit_on) -> list[str]:
    """``fit_on``: ``None`` (all), stems ``"TS_01,TS_02"`` or a glob over stems ``"TS_0*"``."""
    import fnmatch

    if not fit_on:
        return list(stems)
    chosen = []
    for word in [w.strip() for w in str(fit_on).split(",") if w.strip()]:
        matches = [s for s in stems if fnmatch.fnmatchcase(s, word)]
        if not matches:
            raise DDWError(f"--fit-on: '{word}' names no tilt series of this project (stems: "
                           f"{', '.join(stems[:6])}{', …' if len(stems) > 6 else ''})")
        chosen += [m for m in matches if m not in chosen]
    return [s for s in stems if s in chosen]


# ---------------------------------------------------------------------------------------------
# the settings a continued project keeps


def project_settings(request) -> dict:
    """What ``settings`` records of a request: the CTF and contrast of the reconstruction, the
    masks of the fit (the optics and the strip width only matter, so only count, with the CTF on)."""
    from .masks import is_auto

    ctf = bool(request.ctf)
    optics = dict(request.ctf_optics or {}) if ctf else {}
    auto = is_auto(request.mask)
    params = None
    if auto:
        from ..core.fit.sample_mask import AutoMaskParams

        params = (request.mask_params or AutoMaskParams()).record()
    return {"ctf": ctf, "ctf_strip": request.ctf_strip if ctf else None,
            "voltage": optics.get("voltage"), "cs": optics.get("cs"),
            "amplitude_contrast": optics.get("amplitude_contrast"),
            "invert": bool(request.invert), "mask": "auto" if auto else None,
            "mask_params": params}


def _shown(key: str, value) -> str:
    if key == "ctf":
        return "phase flipped with each stack's defocus file" if value else "not CTF corrected (--no-ctf)"
    if key == "invert":
        return "inverted (--invert)" if value else "not inverted"
    if key == "mask":
        return "automatic masks (--mask auto)" if value else "no masks"
    return "default" if value is None else json.dumps(value)


def check_settings(state: dict, settings: dict, path) -> None:
    """A continued project keeps its settings: the CTF and contrast ones once any tomogram is
    reconstructed (its halves would no longer match the others'), the mask ones once the fit
    has started (its cubes would change under it). A ``DDWError`` names what changed."""
    recorded = {**LEGACY_SETTINGS, **state.get("settings", {})}
    reconstructed = any(e.get("reconstructed") for e in state.get("tomograms", {}).values())
    fit_started = state.get("fit", {}).get("state", "pending") != "pending"
    fixed = ({**(RECONSTRUCTION_SETTINGS if reconstructed else {}),
              **(FIT_SETTINGS if fit_started else {})})
    for key, flag in fixed.items():
        if recorded.get(key) != settings.get(key):
            when = ("its halves were reconstructed" if key in RECONSTRUCTION_SETTINGS
                    else "its fit was started")
            raise DDWError(
                f"{path}: this project's {key.replace('_', ' ')} was {_shown(key, recorded.get(key))} "
                f"when {when}, now {_shown(key, settings.get(key))}; a continued project keeps "
                f"its settings — rerun with the same {flag} as before, or use another output "
                "folder")
