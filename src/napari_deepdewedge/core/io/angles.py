"""Tilt angles as numbers: IMOD's one-angle-per-line files, a manual range, and the checks
every angle list passes (degrees, in stack order). No other metadata kind is read here
(:mod:`.tilt_formats`), so every reader can import this module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DDWError

ANGLE_SUFFIXES = (".tlt", ".rawtlt")


def read_tlt(path) -> np.ndarray:
    """The angles of an IMOD ``.tlt``/``.rawtlt`` file (one angle in degrees per line)."""
    path = Path(path)
    values = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                values.append(float(text.split()[0]))
            except ValueError:
                raise DDWError(
                    f"{path.name} line {number}: '{text[:40]}' is not a number; a .tlt/.rawtlt "
                    "file holds one tilt angle in degrees per line"
                ) from None
    angles = np.asarray(values, dtype=np.float64)
    if angles.size == 0:
        raise DDWError(f"{path.name}: holds no angles; expected one tilt angle per line")
    check_angle_values(angles, source=path.name)
    return angles


def angles_from_range(tilt_min: float, tilt_max: float, step: float) -> np.ndarray:
    """Angles ``tilt_min, tilt_min + step, …, tilt_max`` (inclusive), as IMOD's manual range."""
    if step <= 0:
        raise DDWError(f"tilt step must be positive, got {step}; e.g. --tilt-range -60 60 3")
    if tilt_max < tilt_min:
        raise DDWError(
            f"tilt range minimum {tilt_min} is above its maximum {tilt_max}; give MIN MAX STEP"
        )
    n = int(np.floor((tilt_max - tilt_min) / step + 1e-6)) + 1
    angles = tilt_min + step * np.arange(n, dtype=np.float64)
    check_angle_values(angles, source="tilt range")
    return angles


def check_angle_values(angles, source: str = "angles") -> None:
    """Refuse NaN/inf and angles outside the open interval (-90°, 90°)."""
    angles = np.asarray(angles, dtype=np.float64)
    if not np.all(np.isfinite(angles)):
        raise DDWError(f"{source}: contains NaN or infinite angles; fix the angle list")
    bad = angles[(angles <= -90) | (angles >= 90)]
    if bad.size:
        raise DDWError(
            f"{source}: angle {bad[0]:g}° is outside (-90°, 90°); tilt angles are in degrees "
            "(radians, or a file of another kind, would explain this)"
        )


def check_angle_count(angles, n_tilts: int, source: str = "angles") -> None:
    n = int(np.size(angles))
    if n != n_tilts:
        raise DDWError(
            f"{source} gives {n} tilt angles but the stack has {n_tilts} projections; "
            "use the angle file that belongs to this stack (or fix the range/step)"
        )
