"""The half pairs of ``deepdewedge fit``: from repeated --even/--odd, a --pairs list file or
the file lists of a config (``even``/``odd`` lists, or the original tool's
``tomo0_files``/``tomo1_files``), each with its own tilt range.

A pair's tilt range, first found wins: its own entry in the list file (an angle file or
``MIN,MAX``), then ``--angles``/``--tilt-range`` (for all pairs), then a ``.tlt``/``.rawtlt``
beside the pair (``E.tlt``, ``O.tlt`` or ``<stem>.tlt`` with the parity tag dropped).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DDWError


@dataclass(frozen=True)
class PairSpec:
    """One pair as given: paths, its own (min, max) tilt range if any, its ROI mask if any."""

    even: Path
    odd: Path
    tilt: tuple[float, float] | None = None
    mask: Path | None = None


def read_pair_list(path) -> list[PairSpec]:
    """Pairs from a list file, parsed by the one reader the batch refinement uses too
    (:func:`pipeline.batch.read_pair_list`: ``EVEN [ODD [ANGLES.tlt | MIN,MAX]]`` per line)."""
    from ..pipeline.batch import read_pair_list as read_list

    return [PairSpec(even, odd, tilt) for even, odd, tilt in read_list(path)]


def pair_specs(args) -> list[PairSpec]:
    """The pairs the command line (and config) asked for, each with its mask."""
    evens, odds = list(args.even or []), list(args.odd or [])
    if args.pairs is not None:
        if evens or odds:
            raise DDWError("give the pairs either with --pairs LIST or with --even/--odd, not both")
        specs = read_pair_list(args.pairs)
    else:
        if not evens or not odds:
            raise DDWError("both half tomograms are needed: give --even E.mrc and --odd O.mrc (repeat both for "
                           "several tomograms), --pairs LIST, or tomo0_files/tomo1_files in --config")
        if len(evens) != len(odds):
            raise DDWError(f"--even is given {len(evens)} times but --odd {len(odds)} times; give one --odd for "
                           "each --even (paired in order)")
        specs = [PairSpec(Path(e), Path(o)) for e, o in zip(evens, odds)]
    masks = list(args.mask or [])
    if masks and len(masks) != len(specs):
        raise DDWError(f"{len(masks)} masks for {len(specs)} pairs; give one --mask per pair (in order) or none")
    if masks:
        specs = [PairSpec(sp.even, sp.odd, sp.tilt, Path(m)) for sp, m in zip(specs, masks)]
    return specs


def _angle_file_beside(spec: PairSpec) -> Path | None:
    from ..core.io import find_angle_file
    from ..pipeline import stem_of

    for candidate in (spec.even, spec.odd, spec.even.with_name(stem_of(spec.even) + ".mrc")):
        found = find_angle_file(candidate)
        if found is not None:
            return found
    return None


def pair_tilt_range(spec: PairSpec, args) -> tuple[float, float]:
    """This pair's tilt range (see the module doc for the order)."""
    from ..core.io import check_angle_values, read_angles
    from .inputs import tilt_range_for_fit

    tilt = spec.tilt
    if tilt is None and (getattr(args, "angles", None) is not None or getattr(args, "tilt_range", None) is not None):
        return tilt_range_for_fit(args)
    if tilt is None:
        tilt = _angle_file_beside(spec)
        if tilt is None:
            raise DDWError(f"no tilt range for {spec.even.name}: give --angles FILE or --tilt-range MIN MAX (for all "
                           "pairs), an angle column in --pairs, or put a .tlt beside it")
    if isinstance(tilt, tuple):  # from the list file
        lo, hi = tilt
        check_angle_values([lo, hi], source=f"tilt range of {spec.even.name}")
    else:  # an angle file beside the pair
        angles = read_angles(tilt)
        lo, hi = float(angles.min()), float(angles.max())
    if hi <= lo:
        raise DDWError(f"tilt range of {spec.even.name}: minimum {lo:g}° must be below the maximum {hi:g}°")
    return float(lo), float(hi)


def load_pairs(args):
    """``pipeline.HalfPair``s of the fit: memory-mapped halves, own tilt range, mask, metadata."""
    from ..pipeline import stem_of
    from ..pipeline.fitting import HalfPair
    from .inputs import read_mask, read_pair

    pairs = []
    for spec in pair_specs(args):
        tilt_range = pair_tilt_range(spec, args)
        even, odd = read_pair(str(spec.even), str(spec.odd))
        mask = read_mask(None if spec.mask is None else str(spec.mask), even.data.shape)
        pairs.append(HalfPair(even=even.data, odd=odd.data, tilt_range=tilt_range, mask=mask,
                              name=stem_of(spec.even), even_path=str(spec.even), odd_path=str(spec.odd),
                              voxel_size=tuple(float(v) for v in even.voxel_size)))
    return pairs


def memory_line(pairs, config) -> str | None:
    """The memory model's estimate for this fit, for the info line printed before it starts
    (``None`` when a tomogram holds no cube: the fit's own check then names the problem)."""
    from ..core.pairs import memory_estimate

    est = memory_estimate([p.even.shape for p in pairs], config.subtomo_size, config.strides)
    if 0 in est["cubes"]:
        return None
    mb = 1024 ** 2
    per = ", ".join(f"{p.name or k + 1}: {n} cubes {b / mb:.0f} MB"
                    for k, (p, n, b) in enumerate(zip(pairs, est["cubes"], est["bytes"])))
    if len(pairs) > 6:
        per = f"{per.split(', ')[0]}, … (mean {est['total_bytes'] / len(pairs) / mb:.0f} MB per tomogram)"
    return (f"cube memory: ≤ {sum(est['cubes'])} cube pairs × {est['bytes_per_cube'] / mb:.2f} MB = "
            f"{est['total_bytes'] / mb:.0f} MB ({per}); on the fitting device when they fit, else in host memory")
