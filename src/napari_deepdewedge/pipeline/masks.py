"""Sample masks for a fit, shared by ``deepdewedge mask``/``fit``/``run`` and the Fit dock.

A pair's mask is given as ``"auto"`` (computed from its halves: :func:`core.fit.sample_mask.auto_mask`
with the default settings, so the command line and the dock give the same mask for the same
halves), as a file path, or as an array (a painted napari layer). :func:`apply_mask` sets
``pair.mask`` (boolean, checked: same shape, thresholded at 0.5 if not binary, not empty) and
``pair.mask_source`` (what the checkpoint records: ``{"kind": "auto", settings…}``,
``{"kind": "file", "path": …}`` or ``{"kind": "layer", "name": …}``) and returns the lines to
show. :func:`cube_lines` says how many of each pair's cubes the masks remove.

No torch import at module level.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import DDWError

AUTO = "auto"


def is_auto(spec) -> bool:
    return isinstance(spec, str) and spec.strip().lower() == AUTO


def compute_auto_mask(even, odd, params=None, *, device=None):
    """The automatic mask of a half pair (:class:`core.fit.sample_mask.AutoMask`); ``device``
    ``None``: the CPU (reading the halves is most of the work), ``"auto"``: the best one."""
    from ..core.fit.sample_mask import auto_mask

    if device is not None and str(device) == "auto":
        from ..core.device import pick_device

        device = pick_device("auto")
    return auto_mask(even, odd, params, device=device)


def read_mask_file(path, shape):
    """A mask file (MRC) as ``(boolean mask, warnings)``, checked against ``shape``."""
    from ..core.io.mrc import read_mrc
    from ..core.fit.sample_mask import checked_mask

    path = Path(path)
    if not path.exists():
        raise DDWError(f"{path}: mask file not found; give an MRC mask of the tomogram's shape or 'auto'")
    return checked_mask(read_mrc(path).data, shape, name=path.name)


def apply_mask(pair, spec, *, params=None, device=None, name: str | None = None) -> list[str]:
    """Set ``pair.mask``/``pair.mask_source`` from ``spec`` (None, ``"auto"``, a path or an
    array; ``name`` labels an array, e.g. the layer's name). Returns the lines to show (a
    warning starts with ``"warning: "``)."""
    label = pair.name or "the tomogram"
    if spec is None:
        pair.mask, pair.mask_source = None, None
        return []
    shape = tuple(int(s) for s in np.shape(pair.even))
    if is_auto(spec):
        result = compute_auto_mask(pair.even, pair.odd, params, device=device)
        pair.mask, pair.mask_source = result.mask, result.source()
        lines = [f"{label}: {result.summary()}"]
        if result.fraction >= 1.0:
            lines.append(f"warning: {label}: the automatic mask found no region where the halves agree "
                         "more than noise; it keeps every voxel (check the halves, or paint a mask)")
        return lines
    if isinstance(spec, (str, Path)):
        mask, warnings = read_mask_file(spec, shape)
        pair.mask, pair.mask_source = mask, {"kind": "file", "path": str(spec)}
    else:
        from ..core.fit.sample_mask import checked_mask

        mask, warnings = checked_mask(spec, shape, name=name or "mask")
        pair.mask, pair.mask_source = mask, {"kind": "layer", "name": name or "mask"}
    return [f"warning: {label}: {w}" if not w.startswith(label) else f"warning: {w}" for w in warnings]


def cube_lines(pairs, config) -> list[str]:
    """One line per masked pair: how many of its grid's cubes (fitting and validation) the mask
    keeps and removes at ``config.min_mask_fraction``; a ``DDWError`` when no cube is left."""
    from ..core.fit.sample_mask import mask_cube_counts

    lines = []
    for k, pair in enumerate(pairs):
        if pair.mask is None:
            continue
        kept, total = mask_cube_counts(pair.mask, np.shape(pair.even), config.subtomo_size,
                                       config.strides, config.min_mask_fraction)
        label = pair.name or f"pair {k + 1}"
        if total and not kept:
            raise DDWError(f"{label}: no cube of edge {config.subtomo_size} is at least "
                           f"{config.min_mask_fraction:.0%} inside its mask; enlarge the mask, lower "
                           "--min-mask-fraction or use a smaller --subtomo-size")
        lines.append(f"{label}: the mask keeps {kept} of {total} cubes (removes {total - kept}; cubes at "
                     f"least {config.min_mask_fraction:.0%} inside, validation cubes included)")
    return lines
