"""A whole project in one job: many tilt series → halves → one fit → every tomogram refined.

``run_project`` keeps a job file, ``<out_dir>/job.json``, rewritten atomically (temporary file
+ rename) at every state change, so a reader — or the same command after a crash, Ctrl-C or
``kill -9`` — always finds valid JSON describing what is finished::

    {"version": 1, "stage": "reconstruct" | "fit" | "refine" | "done",
     "fit": {"on": [stems], "state": "pending" | "running" | "stopped" | "done",
             "checkpoint": "model/best.pt" | null, "epochs_done": N},
     "tomograms": {stem: {"tilt_series": path, "reconstructed": bool, "even": ..., "odd": ...,
                          "tilt_range": [min, max], "voxel_size": [z, y, x],
                          "fitted_with": "model/best.pt" | null,   # in the fit subset
                          "refined": bool, "refined_with": ckpt | null, "output": ...}}}

Rerunning never redoes finished work: reconstructed halves whose files exist are kept, a fit
marked done is kept, a fit that was running continues from its newest checkpoint in
``<out_dir>/model`` (``latest.pt`` or a newer ``stopped.pt``), and refinement skips finished
outputs (:mod:`.batch`). Paths in the job file are relative to ``out_dir``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.errors import DDWError
from ..core.io.mrc import MRC_SUFFIXES
from .batch import BatchRefineRequest, RefinePair, batch_output, expand, is_finished, refine_batch
from .names import stem_of
from .outputs import resume_point

JOB_FILE = "job.json"
JOB_VERSION = 1
#: stack suffixes a folder of tilt series is searched for (not .rec/.map: tomograms)
STACK_SUFFIXES = (".st", ".mrc", ".ali", ".mrcs")
#: files a project writes into its folder, never taken for input stacks
_OUTPUT_TAGS = ("_even", "_odd", "_full", "_refined")


def is_project_input(spec) -> bool:
    """A folder, a glob or a list file (``.txt``/``.lst``) of tilt series, not one stack."""
    text = os.fspath(spec)
    return (Path(text).is_dir() or any(c in text for c in "*?[")
            or Path(text).suffix.lower() in (".txt", ".lst"))


def discover_series(spec, *, out_dir=None) -> list[Path]:
    """Tilt series from a folder (its stacks, sorted), a glob, or a list file (one path per
    line, ``#`` comments, relative to the file). Our own outputs are never picked up."""
    path = Path(os.fspath(spec))
    if path.is_dir():
        found = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in STACK_SUFFIXES and not p.name.startswith("."))
    elif path.suffix.lower() in (".txt", ".lst") and path.is_file():
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        found = [Path(t) if os.path.isabs(t) else path.parent / t for t in lines if t]
    else:
        found = expand(spec)
    out = Path(out_dir).resolve() if out_dir is not None else None
    found = [p for p in found if not (out is not None and p.resolve().parent == out
                                      and p.stem.endswith(_OUTPUT_TAGS))]
    if not found:
        raise DDWError(f"{spec}: no tilt series found (looked for {', '.join(STACK_SUFFIXES)}); "
                       "give a folder of stacks, a quoted glob or a list file")
    missing = [p for p in found if not p.exists()]
    if missing:
        raise DDWError(f"{missing[0]}: tilt series not found; check the list")
    stems = [stem_of(p) for p in found]
    duplicate = next((s for s in stems if stems.count(s) > 1), None)
    if duplicate:
        raise DDWError(f"two tilt series have the stem '{duplicate}'; outputs are named by it, "
                       "so rename one or list them in separate runs")
    return found


def select_fit_subset(stems: list[str], fit_on) -> list[str]:
    """``fit_on``: ``None`` (all), stems ``"TS_01,TS_02"`` or a glob over stems ``"TS_0*"``."""
    import fnmatch

    if not fit_on:
        return list(stems)
    chosen = []
    for word in [w.strip() for w in str(fit_on).split(",") if w.strip()]:
        matches = [s for s in stems if fnmatch.fnmatchcase(s, word)]
        if not matches:
            raise DDWError(f"--fit-on: '{word}' names no tilt series of this project (stems: "
                           f"{', '.join(stems[:6])}{', …' if len(stems) > 6 else ''})")
        chosen += [m for m in matches if m not in chosen]
    return [s for s in stems if s in chosen]


# ---------------------------------------------------------------------------------------------
# the job file


class JobFile:
    """The job's state, written atomically at every change (see the module docstring)."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / JOB_FILE
        self.state: dict = {}

    def load_or_start(self, stems_to_series: dict, fit_on: list[str]) -> dict:
        if self.path.exists():
            try:
                self.state = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise DDWError(f"{self.path}: not a readable job file ({exc}); move it away to "
                               "start the project afresh") from None
            if self.state.get("version") != JOB_VERSION:
                raise DDWError(f"{self.path}: job file version {self.state.get('version')!r}, "
                               f"expected {JOB_VERSION}; use another output folder")
            recorded = self.state["fit"]["on"]
            if self.state["fit"]["state"] != "pending" and recorded != fit_on:
                raise DDWError(f"{self.path}: this project's fit is on {', '.join(recorded)}, "
                               f"not {', '.join(fit_on)}; rerun with the same --fit-on, or use "
                               "another output folder")
        else:
            self.state = {"version": JOB_VERSION, "stage": "reconstruct",
                          "fit": {"on": fit_on, "state": "pending", "checkpoint": None,
                                  "epochs_done": 0},
                          "tomograms": {}}
        self.state["fit"]["on"] = fit_on
        tomograms = self.state["tomograms"]
        for stem, series in stems_to_series.items():
            tomograms.setdefault(stem, {
                "tilt_series": str(Path(series).resolve()), "reconstructed": False, "even": None, "odd": None,
                "tilt_range": None, "voxel_size": None, "fitted_with": None, "refined": False,
                "refined_with": None, "output": None})
        self.save()
        return self.state

    def relative(self, path) -> str:
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.out_dir.resolve()))
        except ValueError:
            return str(path)

    def absolute(self, recorded) -> Path:
        return self.out_dir / recorded if not os.path.isabs(recorded) else Path(recorded)

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{JOB_FILE}.", suffix=".tmp", dir=self.out_dir)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.state, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


# ---------------------------------------------------------------------------------------------
# the request and its events


@dataclass(kw_only=True)
class ProjectRequest:
    """``fit_config``: the requested FitConfig (its tilt range and voxel size are set from the
    data; ``out_dir`` becomes ``<out_dir>/model``). ``given``: see ``pipeline.plan_fit``."""

    series: list
    out_dir: Path
    thickness: int
    fit_config: object
    fit_on: str | None = None
    binning: int = 1
    bin_mode: str = "fourier"
    tilt_axis_x: bool = False
    device: object = None
    given: frozenset | None = None
    overlap: int | None = None
    refine_batch_size: int = 4
    keep_halves: bool = True


@dataclass
class ProjectStep:
    """One tomogram's step: ``stage`` reconstruct/refine, ``state`` started/done/kept."""

    stage: str
    index: int
    total: int
    name: str
    state: str


@dataclass
class ProjectResult:
    finished: bool                  # everything refined
    fit_stopped: bool = False       # the fit was stopped (should_stop); nothing refined after
    checkpoint: Path | None = None
    outputs: dict = field(default_factory=dict)


def _reconstruct_all(request, job: JobFile, report, progress) -> None:
    from ..core.io.series import load_tilt_series
    from .halves import HalvesRequest, reconstruct_halves, write_halves

    tomograms = job.state["tomograms"]
    total = len(tomograms)
    for index, (stem, entry) in enumerate(tomograms.items()):
        done = entry["reconstructed"] and all(
            job.absolute(entry[k]).exists() for k in ("even", "odd"))
        if done:
            report(ProjectStep("reconstruct", index, total, stem, "kept"))
            continue
        report(ProjectStep("reconstruct", index, total, stem, "started"))
        series = load_tilt_series(entry["tilt_series"], tilt_axis_x=request.tilt_axis_x)
        halves = reconstruct_halves(HalvesRequest(
            series=series, stem=stem, thickness=request.thickness, binning=request.binning,
            bin_mode=request.bin_mode, device=request.device), progress=progress)
        # an unfinished earlier attempt may have left one half: ours to replace
        even_path, odd_path = write_halves(job.out_dir, stem, halves, overwrite=True)
        entry.update(reconstructed=True, even=job.relative(even_path), odd=job.relative(odd_path),
                     tilt_range=list(halves.tilt_range), voxel_size=list(halves.voxel_size))
        job.save()
        report(ProjectStep("reconstruct", index, total, stem, "done"))


def _fit_request(request, job: JobFile, resume):
    """The FitRequest over the fit subset (one HalfPair per tomogram, each with its wedge)."""
    from ..core.io.mrc import read_mrc
    from . import fitting as pipeline_fitting

    entries = [(stem, job.state["tomograms"][stem]) for stem in job.state["fit"]["on"]]
    first = entries[0][1]
    config = dataclasses.replace(
        request.fit_config, tilt_min=float(first["tilt_range"][0]),
        tilt_max=float(first["tilt_range"][1]), voxel_size=tuple(first["voxel_size"]),
        out_dir=str(job.out_dir / "model"))
    volumes = [(stem, e, read_mrc(job.absolute(e["even"])), read_mrc(job.absolute(e["odd"])))
               for stem, e in entries]
    pairs = [pipeline_fitting.HalfPair(
        even=even.data, odd=odd.data, tilt_range=tuple(e["tilt_range"]), name=stem,
        even_path=str(job.absolute(e["even"])), odd_path=str(job.absolute(e["odd"])),
        voxel_size=tuple(e["voxel_size"])) for stem, e, even, odd in volumes]
    return pipeline_fitting.FitRequest(pairs=pairs, config=config, resume=resume,
                                       given=request.given)


def _fit_size_for_halves(request, fit_request, report):
    """A new fit whose cube size is not among the ``given`` fields (the preset's): the largest
    that fits the fit subset's halves (``pipeline.fit_size``), reported as ``FitSizeChosen``."""
    from .fit_size import FitSizeChosen, with_fitting_size

    typed = request.given is None or "subtomo_size" in request.given
    fit_request, note = with_fitting_size(fit_request, typed=typed)
    if note is not None:
        report(FitSizeChosen(fit_request.config.subtomo_size, note))
    return fit_request


def _fit(request, job: JobFile, report, should_stop) -> bool:
    """Fit (or continue the fit); returns False when it was stopped."""
    from .fitting import finished_fit, fit_events

    fit_state = job.state["fit"]
    if fit_state["state"] == "done" and fit_state["checkpoint"] \
            and job.absolute(fit_state["checkpoint"]).exists():
        return True
    fit_request = _fit_request(request, job, resume_point(job.out_dir / "model"))
    fit_request = _fit_size_for_halves(request, fit_request, report)
    already = finished_fit(fit_request)
    if already is not None:  # killed after the last epoch's checkpoint but before the job file said so
        _fit_done(job, already.model, already.epochs_done)
        return True
    fit_state["state"] = "running"
    job.state["stage"] = "fit"
    job.save()
    finished = None
    for event in fit_events(fit_request, should_stop=should_stop):
        report(event)
        if type(event).__name__ == "FitFinished":
            finished = event
        elif type(event).__name__ == "EpochDone":
            fit_state["epochs_done"] = int(event.epoch)
            job.save()
    if finished is None or finished.stopped:
        fit_state["state"] = "stopped"
        job.save()
        return False
    _fit_done(job, finished.best_path or finished.latest_path, finished.epochs_done)
    return True


def _fit_done(job: JobFile, checkpoint, epochs: int) -> None:
    fit_state = job.state["fit"]
    fit_state.update(state="done", checkpoint=job.relative(checkpoint), epochs_done=int(epochs))
    for stem in fit_state["on"]:
        job.state["tomograms"][stem]["fitted_with"] = fit_state["checkpoint"]
    job.save()


def _refine_all(request, job: JobFile, report) -> dict:
    checkpoint = job.absolute(job.state["fit"]["checkpoint"])
    tomograms = job.state["tomograms"]
    pairs = [RefinePair(even_path=job.absolute(e["even"]), odd_path=job.absolute(e["odd"]),
                        name=stem, tilt_range=tuple(e["tilt_range"]))
             for stem, e in tomograms.items()]
    job.state["stage"] = "refine"
    job.save()

    def on_event(event):
        report(event)
        if type(event).__name__ == "TomogramFinished":
            entry = tomograms[event.name]
            if not (event.skipped and entry["refined"]):
                entry.update(refined=True, refined_with=job.relative(checkpoint),
                             output=job.relative(batch_output(job.out_dir, event.name)))
                job.save()

    refine_batch(BatchRefineRequest(
        model=str(checkpoint), pairs=pairs, out_dir=job.out_dir, overlap=request.overlap,
        batch_size=request.refine_batch_size, device=request.device,
        keep_halves=request.keep_halves), report=on_event)
    return {p.name: batch_output(job.out_dir, p.name) for p in pairs}


def run_project(request: ProjectRequest, report: Callable | None = None,
                should_stop: Callable[[], bool] | None = None,
                progress: Callable[[int, int], None] | None = None) -> ProjectResult:
    """Reconstruct every tilt series, fit on the chosen subset, refine every tomogram,
    continuing whatever an earlier run of the same job left unfinished (module docstring).

    ``report(event)``: ``ProjectStep``, the fit's events, the batch's events; ``should_stop``
    stops the fit (a ``stopped.pt`` is saved; the result says ``fit_stopped``);
    ``progress(done, total)``: within one reconstruction. A front end cancels the other
    stages by raising from a callback; the job file stays valid.
    """
    emit = report or (lambda event: None)
    stems = [stem_of(p) for p in request.series]
    job = JobFile(request.out_dir)
    job.load_or_start(dict(zip(stems, request.series)),
                      select_fit_subset(stems, request.fit_on))
    _reconstruct_all(request, job, emit, progress)
    if not _fit(request, job, emit, should_stop):
        return ProjectResult(finished=False, fit_stopped=True)
    outputs = _refine_all(request, job, emit)
    complete = all(is_finished(out, with_halves=request.keep_halves) for out in outputs.values())
    if complete:
        job.state["stage"] = "done"
        job.save()
    return ProjectResult(finished=complete, checkpoint=job.absolute(job.state["fit"]["checkpoint"]),
                         outputs=outputs)
