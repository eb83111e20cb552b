"""The sub-tomogram size a new fit runs with when the user did not type one (issue 17).

A preset's cube (``fast``: 48, cut at ``E = ceil_even(√2·48) = 68``) need not fit the halves the
user picked: the built-in sample is 64 slices thick. When the size comes from a preset — the
Fit dock's preset, ``deepdewedge fit``/``run`` without ``--subtomo-size`` — the fit takes the
largest valid size (a multiple of ``2**depth``, at most the preset's) whose extraction cube fits
every pair it fits on, and says so in one line. A size the user typed is kept: the engine's
error names the largest that fits. A resumed fit keeps its checkpoint's size (callers do not
call this when resuming). The Fit dock and the command line both use :func:`fitting_size`.
torch is imported only when a size is computed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..core.fit.events import FitEvent


@dataclass(frozen=True)
class SizeChoice:
    """``requested``: the preset's size; ``size``: the size the fit runs with; ``note``: one
    line saying why they differ (``None`` when they do not); ``short``: the note as the Fit
    dock shows it under the field ("48 → 40: the halves are 64 voxels thick")."""

    requested: int
    size: int
    note: str | None = None
    short: str | None = None


@dataclass
class FitSizeChosen(FitEvent):
    """A fit runs with a smaller cube (``size``) than its preset's: ``note`` says why (a
    project's fit reports it; the Fit dock's job yields it when the extra pairs are thinner
    than the picked one)."""

    size: int
    note: str


def largest_fitting_size(size: int, depth: int, shapes) -> int | None:
    """The largest multiple of ``2**depth`` (at least ``2·2**depth``, at most ``size``) whose
    extraction cube fits inside every ``(Z, Y, X)`` shape; ``None`` when none does."""
    from ..core.fit.cubes import extraction_size

    m = 2 ** int(depth)
    smallest = min(min(int(n) for n in shape) for shape in shapes)
    for k in range(int(size) // m * m, 2 * m - 1, -m):
        if extraction_size(k) <= smallest:
            return k
    return None


def fitting_size(size: int, depth: int, shapes) -> SizeChoice:
    """The size a fit whose size came from a preset runs with on halves of ``shapes``.

    Unchanged when the preset's cube fits every shape, or when no valid size fits (the engine
    then says the volume is too small). Otherwise the largest size that fits, with a note such
    as ``"cube size 48 → 40: the halves are 64 voxels thick (a 48 cube is cut at 68)"``.
    """
    from ..core.fit.cubes import extraction_size

    shapes = [tuple(int(n) for n in shape) for shape in shapes]
    size = int(size)
    if not shapes:
        return SizeChoice(size, size)
    fitted = largest_fitting_size(size, depth, shapes)
    if fitted is None or fitted == size:
        return SizeChoice(size, size)
    thinnest = min(shapes, key=min)
    extent = min(thinnest)
    axis = "ZYX"[thinnest.index(extent)]
    how = f"{extent} voxels thick" if axis == "Z" else f"{extent} voxels along {axis}"
    which = "the halves are" if len(shapes) == 1 else "the thinnest halves are"
    short = f"{size} → {fitted}: {which} {how}"
    return SizeChoice(size, fitted, f"cube size {short} (a {size} cube is cut at "
                                    f"{extraction_size(size)})", short)


def with_fitting_size(request, *, typed: bool):
    """``(request, note)``: a new fit's ``FitRequest`` with the cube size of
    :func:`fitting_size` over its pairs when the size was not ``typed`` by the user; a resumed
    fit and a typed size unchanged (``note`` ``None``)."""
    if typed or request.resume is not None:
        return request, None
    config = request.config
    import numpy as np

    choice = fitting_size(config.subtomo_size, config.depth,
                          [np.shape(pair.even) for pair in request.half_pairs()])
    if choice.note is None:
        return request, None
    config = dataclasses.replace(config, subtomo_size=choice.size)
    return dataclasses.replace(request, config=config), choice.note
