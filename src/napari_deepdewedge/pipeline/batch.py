"""Refining many tomograms with one model (issue 9): the pairs, the batch, its share per rank.

* :func:`find_pairs` turns what a user gives (paths, globs ``rec/*_even.mrc``, a list file of
  ``EVEN ODD`` lines) into :class:`RefinePair`\\ s; an odd partner not given is found beside
  its even file by the stem (``TS_01_even.mrc`` → ``TS_01_odd.mrc``, ``_EVN`` → ``_ODD``).
* :func:`refine_batch` loads the model once and refines every pair into
  ``<out_dir>/<stem>_refined.mrc`` (+ per-half files), reporting :class:`BatchEvent`\\ s.
  An output counts as finished when all its files exist: each file is written atomically
  (``core.io.write_mrc``) and the main file last (:func:`pipeline.refining.write_refined`),
  so a batch stopped at any moment continues where it stopped; finished outputs are skipped
  unless ``overwrite``. Left-over per-half files of an unfinished output (no main file) are
  replaced.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` of ``w`` refines the pairs ``i`` with
  ``i % w == r``: no communication at all, and each output is computed by exactly the code of
  a single process, so the files are identical. Rank 0 reports; its "overall" count reads the
  finished outputs of all ranks from disk. The unit is a whole tomogram (see docs/cli.md for
  why one tomogram is not split over ranks).
"""
from __future__ import annotations

import glob
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.errors import DDWError
from .names import stem_of
from .refining import refined_paths, write_refined

#: relative voxel-size difference above which a tomogram gets a warning
VOXEL_TOLERANCE = 0.10

_GLOB_CHARS = re.compile(r"[*?\[]")
#: even tag → odd tag, in the case the user wrote it
_PARTNER_TAGS = (("even", "odd"), ("EVEN", "ODD"), ("Even", "Odd"), ("evn", "odd"),
                 ("EVN", "ODD"), ("Evn", "Odd"))


@dataclass(kw_only=True)
class RefinePair:
    """One tomogram of a batch: its two half files and its output stem. ``tilt_range`` (min,
    max) overrides the model's wedge for this tomogram (``None``: the checkpoint's)."""

    even_path: Path
    odd_path: Path
    name: str
    tilt_range: tuple[float, float] | None = None


def expand(pattern) -> list[Path]:
    """A path, or a glob (sorted matches; none is an error naming the pattern)."""
    text = os.fspath(pattern)
    if not _GLOB_CHARS.search(text):
        return [Path(text)]
    found = sorted(Path(p) for p in glob.glob(text))
    if not found:
        raise DDWError(f"no file matches '{text}'; check the pattern (quote it so the shell "
                       "does not expand it)")
    return found


def odd_partner(even_path) -> Path:
    """The odd half beside an even file, found by its stem: the trailing parity tag swapped
    (``TS_01_even.mrc`` → ``TS_01_odd.mrc``, ``TS_01_EVN.mrc`` → ``TS_01_ODD.mrc``)."""
    even_path = Path(even_path)
    stem_part, suffix = even_path.stem, even_path.suffix
    for even_tag, odd_tag in _PARTNER_TAGS:
        match = re.search(rf"([._-]){even_tag}$", stem_part)
        if match:
            candidate = even_path.with_name(stem_part[:match.start()] + match.group(1) + odd_tag
                                            + suffix)
            if candidate.exists():
                return candidate
    raise DDWError(f"{even_path}: no odd partner found beside it (expected the same name with "
                   "_odd/_ODD instead of _even/_EVN); give --odd explicitly or use a list file")


def _tilt_column(text: str, where: str, folder: Path) -> tuple[float, float]:
    """A list file's third column: ``MIN,MAX`` or an angle file (its min and max)."""
    from ..core.io.series import read_angles

    if "," in text:
        try:
            lo, hi = (float(v) for v in text.split(","))
        except ValueError:
            raise DDWError(f"{where}: tilt range '{text}' is not MIN,MAX in degrees (e.g. "
                           "-60,60)") from None
    else:
        angles = read_angles(text if os.path.isabs(text) else folder / text)
        lo, hi = float(angles.min()), float(angles.max())
    if hi <= lo:
        raise DDWError(f"{where}: tilt range minimum {lo:g}° must be below its maximum {hi:g}°")
    return lo, hi


def read_pair_list(path) -> list[tuple[Path, Path, tuple[float, float] | None]]:
    """A list file (the format of ``fit --pairs``): ``EVEN [ODD [ANGLES.tlt | MIN,MAX]]`` per
    line (whitespace-separated; ``#`` comments; paths relative to the list file; without ODD
    the partner is found by the stem; the angles set that tomogram's wedge)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DDWError(f"{path}: cannot read the pair list ({exc.strerror or exc})") from None
    entries = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path.name} line {number}"
        if len(words) > 3:
            raise DDWError(f"{where}: expected 'EVEN ODD [ANGLES or MIN,MAX]', got {len(words)} "
                           "fields")
        even = Path(words[0] if os.path.isabs(words[0]) else path.parent / words[0])
        odd = odd_partner(even) if len(words) == 1 else Path(
            words[1] if os.path.isabs(words[1]) else path.parent / words[1])
        tilt = _tilt_column(words[2], where, path.parent) if len(words) == 3 else None
        entries.append((even, odd, tilt))
    if not entries:
        raise DDWError(f"{path}: the pair list names no pairs")
    return entries


def find_pairs(evens=(), odds=(), list_file=None) -> list[RefinePair]:
    """The pairs of a batch from paths/globs (``evens``; ``odds`` optional, matched by stem)
    and/or a list file. Stems must be unique (they name the outputs); files must exist."""
    raw: list[tuple[Path, Path, tuple[float, float] | None]] = []
    even_paths = [p for pattern in evens for p in expand(pattern)]
    odd_paths = [p for pattern in odds for p in expand(pattern)]
    if odd_paths:
        if len(odd_paths) != len(even_paths):
            raise DDWError(f"{len(even_paths)} even but {len(odd_paths)} odd files; give one odd "
                           "per even (or leave --odd out: the partner is found by the stem)")
        by_stem = {stem_of(p): p for p in odd_paths}
        if len(by_stem) == len(odd_paths) and set(by_stem) == {stem_of(p) for p in even_paths}:
            raw += [(e, by_stem[stem_of(e)], None) for e in even_paths]
        else:  # stems do not pair up (e.g. e.mrc / o.mrc): pair in the given order
            raw += [(e, o, None) for e, o in zip(even_paths, odd_paths)]
    else:
        raw += [(e, odd_partner(e), None) for e in even_paths]
    if list_file is not None:
        raw += read_pair_list(list_file)
    if not raw:
        raise DDWError("no tomograms to refine: give --even/--odd (paths or quoted globs) or "
                       "--pairs LIST")
    pairs, seen = [], {}
    for even, odd, tilt in raw:
        for p in (even, odd):
            if not p.exists():
                raise DDWError(f"{p}: file not found; check the path")
        name = stem_of(even)
        if name in seen:
            raise DDWError(f"two inputs have the stem '{name}' ({seen[name]} and {even}); the "
                           "outputs are named by it, so rename one")
        seen[name] = even
        pairs.append(RefinePair(even_path=even, odd_path=odd, name=name, tilt_range=tilt))
    return pairs


def find_pairs_in(spec) -> list[RefinePair]:
    """The pairs a dock's one input field names: a pair list (``.txt``/``.lst``) or a path or
    glob of even halves (partners by the stem); :func:`find_pairs`' rules and errors."""
    text = os.fspath(spec).strip()
    if text.lower().endswith((".txt", ".lst")):
        return find_pairs(list_file=text)
    return find_pairs([text])


def batch_output(out_dir, name: str) -> Path:
    """``<out_dir>/<stem>_refined.mrc``: the one output name of a batch (datasets_api.md)."""
    return Path(out_dir) / f"{name}_refined.mrc"


def is_finished(out_path, *, with_halves: bool) -> bool:
    """All files of an output exist (each is written atomically, the main file last)."""
    return all(p.exists() for p in refined_paths(out_path, with_halves=with_halves))


def rank_share(count: int, rank: int, world: int) -> list[int]:
    """Indices ``i`` of ``range(count)`` that rank ``rank`` of ``world`` refines (round robin:
    tomograms of similar size early and late in a list spread evenly)."""
    if world < 1 or not 0 <= rank < world:
        raise DDWError(f"rank {rank} is outside a world of {world} processes")
    return list(range(rank, count, world))


def distributed_rank() -> tuple[int, int]:
    """``(rank, world)`` from torchrun's environment (``(0, 1)`` outside torchrun)."""
    return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)


def voxel_mismatch(model_voxel, tomo_voxel, tolerance: float = VOXEL_TOLERANCE) -> bool:
    """True when any axis differs by more than ``tolerance`` (relative to the model's)."""
    if model_voxel is None or tomo_voxel is None:
        return False
    return any(abs(float(t) - float(m)) > tolerance * abs(float(m))
               for m, t in zip(model_voxel, tomo_voxel) if float(m) > 0)


# ---------------------------------------------------------------------------------------------
# events
@dataclass
class BatchEvent:
    """Base of the batch events. ``index``: position in the whole list; ``total``: its length."""

    index: int
    total: int
    name: str


@dataclass
class TomogramStarted(BatchEvent):
    pass


@dataclass
class TomogramProgress(BatchEvent):
    done: int           # batches of tiles over both halves
    of: int


@dataclass
class TomogramFinished(BatchEvent):
    paths: list = field(default_factory=list)
    skipped: bool = False      # a finished output was found and kept
    seconds: float = 0.0
    finished_overall: int = 0  # outputs of the whole list finished on disk (all ranks)


@dataclass
class VoxelSizeWarning(BatchEvent):
    model_voxel: tuple = ()
    tomo_voxel: tuple = ()

    @property
    def message(self) -> str:
        fmt = lambda v: "×".join(f"{float(x):g}" for x in v)  # noqa: E731
        return (f"{self.name}: voxel size {fmt(self.tomo_voxel)} Å differs by more than "
                f"{VOXEL_TOLERANCE:.0%} from the model's {fmt(self.model_voxel)} Å (it was "
                "fitted at another sampling; results may be poor — bin the tomogram to match)")


@dataclass(kw_only=True)
class BatchRefineRequest:
    """``model``: a checkpoint path or a ``(model, meta)`` pair (loaded once for the batch)."""

    model: object
    pairs: list
    out_dir: Path
    overlap: int | None = None
    batch_size: int = 4
    device: object = None
    keep_halves: bool = False
    overwrite: bool = False
    rank: int = 0
    world: int = 1


@dataclass
class BatchResult:
    refined: list = field(default_factory=list)   # names refined by this rank
    skipped: list = field(default_factory=list)   # names whose finished output was kept
    outputs: dict = field(default_factory=dict)   # name → main output path (whole list)


def _check_outputs(request: BatchRefineRequest) -> None:
    """Before computing anything: an output holding the main file but not the per-half files
    now asked for is neither finished nor ours to replace silently."""
    if request.overwrite or not request.keep_halves:
        return
    for pair in request.pairs:
        out = batch_output(request.out_dir, pair.name)
        if out.exists() and not is_finished(out, with_halves=True):
            raise DDWError(f"{out} exists without its per-half files (an earlier batch without "
                           "them); add --overwrite to redo it with them, or drop --halves")


def _load_model(model, device):
    from ..core.model.checkpoint import load_model

    if isinstance(model, (str, Path)):
        if not Path(model).exists():
            raise DDWError(f"{model}: checkpoint not found; check the path")
        return load_model(model, device=device)
    if isinstance(model, tuple) and len(model) == 2:
        return model
    return load_model(model, device=device)


def refine_batch(request: BatchRefineRequest,
                 report: Callable[[BatchEvent], None] | None = None) -> BatchResult:
    """Refine this rank's share of the pairs with one model loaded once (module docstring).

    ``report(event)`` receives ``TomogramStarted``/``TomogramProgress``/``TomogramFinished``/
    ``VoxelSizeWarning``; a front end stops the batch by raising from it (finished outputs stay).
    """
    from ..core.fit.parallel import fit_device
    from ..core.io.mrc import read_mrc
    from ..core.refine.tomogram import refine_halves

    emit = report or (lambda event: None)
    _check_outputs(request)
    device = fit_device(request.device, request.world)  # several CUDA ranks: GPU LOCAL_RANK
    total = len(request.pairs)
    outputs = {p.name: batch_output(request.out_dir, p.name) for p in request.pairs}
    result = BatchResult(outputs=outputs)
    model = None
    model_voxel = None
    for index in rank_share(total, request.rank, request.world):
        pair = request.pairs[index]
        out = outputs[pair.name]
        if not request.overwrite and is_finished(out, with_halves=request.keep_halves):
            result.skipped.append(pair.name)
            emit(TomogramFinished(index, total, pair.name, paths=[out], skipped=True,
                                  finished_overall=_finished_count(request, outputs)))
            continue
        if model is None:  # once for the batch (not at all when everything is finished)
            model = _load_model(request.model, device)
            model_voxel = model[1].get("voxel_size")
        t0 = time.perf_counter()
        even, odd = read_mrc(pair.even_path), read_mrc(pair.odd_path)
        emit(TomogramStarted(index, total, pair.name))
        if voxel_mismatch(model_voxel, even.voxel_size):
            emit(VoxelSizeWarning(index, total, pair.name, model_voxel=tuple(model_voxel),
                                  tomo_voxel=tuple(even.voxel_size)))
        wedge = {} if pair.tilt_range is None else dict(tilt_min=float(pair.tilt_range[0]),
                                                        tilt_max=float(pair.tilt_range[1]))
        refined = refine_halves(
            model, even.data, odd.data, overlap=request.overlap,
            batch_size=request.batch_size or 4, device=device, keep_halves=request.keep_halves,
            progress=lambda done, of, i=index, n=pair.name: emit(
                TomogramProgress(i, total, n, done=done, of=of)), **wedge)
        # the output is unfinished (else skipped above): its left-over files are replaced
        paths = write_refined(out, refined, even.voxel_size, even.origin, overwrite=True)
        del refined
        result.refined.append(pair.name)
        emit(TomogramFinished(index, total, pair.name, paths=paths,
                              seconds=time.perf_counter() - t0,
                              finished_overall=_finished_count(request, outputs)))
    return result


def _finished_count(request: BatchRefineRequest, outputs: dict) -> int:
    return sum(is_finished(out, with_halves=request.keep_halves) for out in outputs.values())
