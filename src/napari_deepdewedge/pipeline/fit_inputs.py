"""The half pairs of a fit given as files, shared by ``deepdewedge fit`` and the Fit dock.

* :func:`listed_or_beside_tilt_range`: a pair's own tilt range — its list-file column
  (``MIN,MAX`` or an angle file, already read by :func:`pipeline.batch.read_pair_list`), else
  an angle file beside it (``E.tlt``, ``O.tlt`` or ``<stem>.tlt`` with the parity tag dropped),
  else ``None``: each front end then applies its own fallback (the CLI: ``--angles`` /
  ``--tilt-range`` or an error; the dock: the tilt range of its form).
* :func:`open_half_pair`: one pair as a :class:`HalfPair` of memory-mapped halves with its name
  (the even file's stem), paths, voxel size and — when ``<stem>_ctf.json`` (written by
  ``reconstruct --ctf``) is beside them — their defoci for the CTF-aware fit; opened by the
  job, never by a GUI thread.
* :func:`voxel_size_warnings`: pairs whose voxel size differs > 10 % from the first pair's.
* :func:`memory_line`: the memory model's one-line estimate of a fit's cubes.

No torch import here.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import DDWError
from ..core.fit.pairs import HalfPair
from .batch import VOXEL_TOLERANCE, voxel_mismatch
from .names import stem_of


def angle_file_beside(even, odd=None) -> Path | None:
    """The angle file beside a pair: beside the even file, the odd file, or the stem's ``.mrc``."""
    from ..core.io.series import find_angle_file

    even = Path(even)
    candidates = [even] + ([Path(odd)] if odd is not None else [])
    candidates.append(even.with_name(stem_of(even) + ".mrc"))
    for candidate in candidates:
        found = find_angle_file(candidate)
        if found is not None:
            return found
    return None


def listed_or_beside_tilt_range(even, odd=None, listed=None) -> tuple[float, float] | None:
    """This pair's own tilt range ``(min, max)``: ``listed`` (its list-file column) first, else
    the angle file beside it (its min and max), else ``None`` (the caller's fallback)."""
    from ..core.io.angles import check_angle_values
    from ..core.io.series import read_angles

    name = Path(even).name
    if listed is not None:
        lo, hi = (float(v) for v in listed)
        check_angle_values([lo, hi], source=f"tilt range of {name}")
    else:
        found = angle_file_beside(even, odd)
        if found is None:
            return None
        angles = read_angles(found)
        lo, hi = float(angles.min()), float(angles.max())
    if hi <= lo:
        raise DDWError(f"tilt range of {name}: minimum {lo:g}° must be below the maximum {hi:g}°")
    return lo, hi


def open_half_pair(even_path, odd_path, tilt_range, *, mask=None) -> HalfPair:
    """The pair's halves memory-mapped (one shape), named by the even file's stem."""
    from ..core.reconstruct.halves import check_same_shape
    from ..core.io.mrc import read_mrc

    from ..core.io.omezarr import check_same_voxel

    even, odd = read_mrc(even_path), read_mrc(odd_path)  # MRC or OME-Zarr (.zarr), lazily
    name = stem_of(even_path)
    check_same_shape(even.data, odd.data, what=f"half tomograms of {name}")
    check_same_voxel(even, odd, what=f"half tomograms of {name}")
    from .halves import read_ctf_sidecar

    voxel = tuple(float(v) for v in even.voxel_size)
    return HalfPair(even=even.data, odd=odd.data, tilt_range=tuple(float(v) for v in tilt_range),
                    mask=mask, name=name, even_path=str(even_path), odd_path=str(odd_path),
                    voxel_size=voxel, ctf=read_ctf_sidecar(even_path, voxel))


def voxel_size_warnings(pairs) -> list[str]:
    """One message per pair whose voxel size differs by more than 10 % from the first pair's
    (the fit still runs: each pair is standardized on its own, but its features are at another
    scale)."""
    if not pairs:
        return []
    first = pairs[0]

    def fmt(voxel):
        return "×".join(f"{float(v):g}" for v in voxel)

    return [f"{pair.name or f'pair {k + 1}'}: voxel size {fmt(pair.voxel_size)} Å differs by "
            f"more than {VOXEL_TOLERANCE:.0%} from {first.name or 'the first pair'}'s "
            f"{fmt(first.voxel_size)} Å; the network then learns features at two scales — bin "
            "the tomograms to one voxel size"
            for k, pair in enumerate(pairs[1:], 1) if voxel_mismatch(first.voxel_size, pair.voxel_size)]


def memory_line(pairs, config) -> str | None:
    """The memory model's estimate for this fit, for the info line shown before it starts
    (``None`` when a tomogram holds no cube: the fit's own check then names the problem)."""
    from ..core.fit.pairs import memory_estimate

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
