"""``deepdewedge mask``, and the masks of ``fit``/``run`` (``--mask auto`` or a file)."""
from __future__ import annotations

import time
from pathlib import Path

from ..core.errors import DDWError
from .output import info, warn

#: MASK_SETTINGS dests → core.fit.sample_mask.AutoMaskParams fields
PARAM_KEYS = {"mask_bin": "bin", "mask_tiles": "tiles", "mask_max_tilt": "max_tilt",
              "mask_threshold": "threshold", "mask_level": "level", "mask_margin": "margin"}


def auto_params(args):
    """The automatic mask's settings: the mask command's flags, else ``mask_*`` keys of the
    config file (``fit``/``run`` have no such flags), else the defaults."""
    from ..core.fit.sample_mask import AutoMaskParams

    given = {}
    for key, field in PARAM_KEYS.items():
        value = getattr(args, key, None)
        if value is None:
            value = getattr(args, "config_values", {}).get(key)
        if value is not None:
            given[field] = value
    return AutoMaskParams(**given).checked()


def show(args, lines) -> None:
    """Lines from pipeline.masks: warnings always, the others as info lines."""
    for line in lines:
        if line.startswith("warning: "):
            warn(line[len("warning: "):])
        else:
            info(args, line)


def mask_pair(args, pair, spec) -> None:
    """Give ``pair`` the mask ``spec`` asks for (``"auto"``, a file or None), showing what it did."""
    from ..pipeline.masks import apply_mask, is_auto

    show(args, apply_mask(pair, spec, params=auto_params(args) if is_auto(spec) else None,
                          device=getattr(args, "device", None)))


def cmd_mask(args) -> int:
    from ..core.io.mrc import write_mrc
    from ..pipeline import refuse_existing
    from ..pipeline.masks import compute_auto_mask
    from .inputs import read_pair

    if not args.out:
        raise DDWError("no output: give --out MASK.mrc")
    out = Path(args.out)
    if out.suffix.lower() not in (".mrc", ".rec", ".map", ".st", ".ali"):
        raise DDWError(f"{out.name}: the mask is written as MRC; give --out MASK.mrc")
    refuse_existing([out], overwrite=args.overwrite)  # before computing
    even, odd = read_pair(args.even, args.odd)
    params = auto_params(args)
    t0 = time.perf_counter()
    result = compute_auto_mask(even.data, odd.data, params, device=args.device)
    info(args, result.summary())
    if result.fraction >= 1.0:
        warn("no region where the halves agree more than noise was found; the mask keeps every voxel "
             "(check that the two files are the halves of one tomogram)")
    write_mrc(out, result.mask.astype("int8"), voxel_size=even.voxel_size, origin=even.origin)
    info(args, f"wrote {out} ({time.perf_counter() - t0:.1f} s)")
    print(out)
    return 0
