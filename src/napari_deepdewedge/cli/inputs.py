"""Reading the command line's inputs into the pipeline's requests (files → arrays, angles)."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import DDWError
from ..pipeline import HalvesRequest, common_stem, stem_of
from .output import info


def angle_spec(args):
    """``--angles FILE`` as a path string, ``--tilt-range`` as a tuple, or None."""
    if getattr(args, "angles", None) is not None:
        return str(args.angles)
    if getattr(args, "tilt_range", None) is not None:
        return tuple(float(v) for v in args.tilt_range)
    return None


def halves_request(args, *, want_full: bool) -> HalvesRequest:
    """A ``HalvesRequest`` from the stack options (TILTSERIES or --even-odd EVN ODD)."""
    from ..core.io.series import find_angle_file, load_tilt_series

    angles = angle_spec(args)
    if args.tiltseries is not None and args.even_odd is not None:
        raise DDWError("give either TILTSERIES or --even-odd EVN ODD, not both")
    if args.tiltseries is None and args.even_odd is None:
        raise DDWError("no input: give a tilt series (TILTSERIES) or two frame-half series "
                       "(--even-odd EVN ODD)")
    no_ctf = bool(getattr(args, "no_ctf", False))
    common = dict(thickness=args.thickness, binning=args.bin or 1,
                  bin_mode=args.bin_mode or "fourier", device=args.device, want_full=want_full,
                  ctf=not no_ctf, ctf_strip=getattr(args, "ctf_strip", None),
                  invert=bool(getattr(args, "invert", False)))
    kw = dict(tilt_axis_x=args.tilt_axis_x, exclude=getattr(args, "exclude", None),
              voxel_size=getattr(args, "voxel_size", None), ctf=_ctf_request(args))
    if args.tiltseries is not None:
        series = load_tilt_series(args.tiltseries, angles=angles, **kw)
        _info_angles(args, series)
        return HalvesRequest(series=series, stem=stem_of(args.tiltseries), **common)
    evn_path, odd_path = (Path(p) for p in args.even_odd)
    stem = common_stem(evn_path, odd_path)
    if angles is None:
        # a .tlt beside EVN, beside ODD, or beside the stack name without _EVN
        for candidate in (evn_path, odd_path, evn_path.with_name(stem + evn_path.suffix)):
            found = find_angle_file(candidate)
            if found is not None:
                angles = str(found)
                break
    even = load_tilt_series(evn_path, angles=angles, **kw)
    _info_angles(args, even)
    odd = load_tilt_series(odd_path, angles=angles, **kw)  # the same views dropped from both
    return HalvesRequest(frame_halves=(even, odd), stem=stem, **common)


def _ctf_request(args):
    """``--ctf FILE`` / a file found beside the stack (``auto``) / none with ``--no-ctf``."""
    if getattr(args, "no_ctf", False):
        return None
    from ..core.io.ctf_formats import CTFRequest

    return CTFRequest(source=str(args.ctf) if getattr(args, "ctf", None) else "auto",
                      voltage=getattr(args, "voltage", None), cs=getattr(args, "cs", None),
                      amplitude_contrast=getattr(args, "amplitude_contrast", None))


def _info_angles(args, series) -> None:
    """The info line: where the angles came from, how many, their range, the excluded views."""
    found = series.meta.get("tilt_metadata")
    if found is not None:
        info(args, f"angles: {found.summary()}")
    ctf = series.meta.get("ctf")
    for warning in (ctf.warnings if ctf is not None else ()):
        info(args, f"warning: {warning}")


def read_pair(even_path, odd_path):
    """The two half tomograms as memory-mapped ``Volume``s of one shape."""
    from ..core.reconstruct.halves import check_same_shape
    from ..core.io.mrc import read_mrc

    if not even_path or not odd_path:
        raise DDWError("both half tomograms are needed: give --even E.mrc and --odd O.mrc "
                       "(or tomo0_files/tomo1_files in --config)")
    from ..core.io.omezarr import check_same_voxel

    even, odd = read_mrc(even_path), read_mrc(odd_path)  # MRC or OME-Zarr (.zarr)
    check_same_shape(even.data, odd.data, what="half tomograms")
    check_same_voxel(even, odd)
    return even, odd


def tilt_range_for_fit(args) -> tuple[float, float]:
    """The missing wedge's tilt range from --angles FILE or --tilt-range MIN MAX."""
    from ..core.io.angles import check_angle_values
    from ..core.io.series import read_angles

    if getattr(args, "angles", None) is not None:
        angles = read_angles(args.angles)
        return float(angles.min()), float(angles.max())
    if getattr(args, "tilt_range", None) is not None:
        lo, hi = (float(v) for v in args.tilt_range[:2])
        check_angle_values([lo, hi], source="tilt range")
        if hi <= lo:
            raise DDWError(f"tilt range minimum {lo:g}° must be below its maximum {hi:g}°; "
                           "give --tilt-range MIN MAX")
        return lo, hi
    raise DDWError("the tilt range is needed to know the missing wedge: give --angles FILE or "
                   "--tilt-range MIN MAX (or mw_angle / tilt_range in --config)")
