"""The two statistically independent halves DeepDeWedge needs (docs/method.md §2.1).

Three entry points: split one tilt series by parity of the angle-sorted index; two frame-half
tilt series (``*_EVN``/``*_ODD``); or two ready tomograms.
"""
from __future__ import annotations

import numpy as np

from ..errors import DDWError
from ..io.mrc import TiltSeries


def split_even_odd(series: TiltSeries) -> tuple[TiltSeries, TiltSeries]:
    """Sort projections by angle and split by index parity: even → half 0, odd → half 1.

    Each half keeps the full tilt range at twice the angular step; the projections are not
    copied more than once.
    """
    if series.n_tilts < 4:
        raise DDWError(
            f"{series.name}: {series.n_tilts} projections are too few to split into even/odd "
            "halves; a tilt series needs at least 4 (typically 40–60)"
        )
    order = np.argsort(series.angles, kind="stable")
    halves = []
    for parity, label in ((0, "even"), (1, "odd")):
        index = order[parity::2]
        halves.append(
            TiltSeries(
                data=np.asarray(series.data[index]),
                angles=np.asarray(series.angles)[index],
                pixel_size=series.pixel_size,
                origin=series.origin,
                name=f"{series.name} {label}",
                meta=_meta_of_views(series.meta, index),
            )
        )
    return halves[0], halves[1]


def _meta_of_views(meta: dict, index) -> dict:
    """The series' metadata for a subset of its views: per-view entries (the CTF) follow."""
    out = dict(meta)
    if out.get("ctf") is not None:
        out["ctf"] = out["ctf"].take(index)
    return out


def check_same_shape(a: np.ndarray, b: np.ndarray, what: str = "halves") -> None:
    """Both halves must have one shape; say which shapes and what to do otherwise."""
    if tuple(a.shape) != tuple(b.shape):
        raise DDWError(
            f"the two {what} have different shapes {tuple(a.shape)} and {tuple(b.shape)}; "
            "they must come from the same tilt series with the same size and binning"
        )


def frame_half_series(even: TiltSeries, odd: TiltSeries) -> tuple[TiltSeries, TiltSeries]:
    """Two tilt series made from even and odd movie frames (Warp/AreTomo ``_EVN``/``_ODD``)."""
    check_same_shape(even.data, odd.data, what="frame-half tilt series")
    if not np.allclose(np.sort(even.angles), np.sort(odd.angles), atol=0.05):
        raise DDWError(
            "the EVN and ODD tilt series have different tilt angles; they must be the two "
            "frame halves of one acquisition, with one shared angle file"
        )
    return even, odd
