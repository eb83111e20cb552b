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
    """One pair as given: paths, its own (min, max) tilt range if any, its mask if any (a path
    or ``"auto"``)."""

    even: Path
    odd: Path
    tilt: tuple[float, float] | None = None
    mask: Path | str | None = None


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
    from ..pipeline.masks import AUTO, is_auto

    masks = list(args.mask or [])
    if len(masks) == 1 and is_auto(masks[0]):
        masks = masks * len(specs)  # one 'auto' for all pairs
    if masks and len(masks) != len(specs):
        raise DDWError(f"{len(masks)} masks for {len(specs)} pairs; give one --mask per pair (in order), "
                       "one --mask auto for all, or none")
    if masks:
        specs = [PairSpec(sp.even, sp.odd, sp.tilt, AUTO if is_auto(m) else Path(m)) for sp, m in zip(specs, masks)]
    return specs


def pair_tilt_range(spec: PairSpec, args) -> tuple[float, float]:
    """This pair's tilt range (see the module doc for the order; the pair's own part is
    :func:`pipeline.fit_inputs.listed_or_beside_tilt_range`, shared with the Fit dock)."""
    from ..pipeline.fit_inputs import listed_or_beside_tilt_range
    from .inputs import tilt_range_for_fit

    if spec.tilt is None and (getattr(args, "angles", None) is not None or getattr(args, "tilt_range", None) is not None):
        return tilt_range_for_fit(args)
    tilt = listed_or_beside_tilt_range(spec.even, spec.odd, spec.tilt)
    if tilt is None:
        raise DDWError(f"no tilt range for {spec.even.name}: give --angles FILE or --tilt-range MIN MAX (for all "
                       "pairs), an angle column in --pairs, or put a .tlt beside it")
    return tilt


def load_pairs(args):
    """``pipeline.HalfPair``s of the fit: memory-mapped halves, own tilt range, mask, metadata
    (:func:`pipeline.fit_inputs.open_half_pair`, as the Fit dock opens its extra pairs)."""
    from ..pipeline.fit_inputs import open_half_pair
    from .mask import mask_pair

    pairs = []
    for spec in pair_specs(args):
        pair = open_half_pair(spec.even, spec.odd, pair_tilt_range(spec, args))
        mask_pair(args, pair, spec.mask)  # 'auto': computed here, for every pair
        pairs.append(pair)
    return pairs
