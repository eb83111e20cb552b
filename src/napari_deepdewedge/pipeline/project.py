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
                          "refined": bool, "refined_with": ckpt | null, "output": ...,
                          "ctf": {"file": path | null, "summary": "CTF: …"},  # when reconstructed
                          "mask": {"file": "<stem>_mask.mrc", "fraction": f, "source": {…}}}},
     "settings": {"ctf": bool, "ctf_strip": px | null, "voltage": kV | null, "cs": mm | null,
                  "amplitude_contrast": f | null, "invert": bool,
                  "mask": "auto" | null, "mask_params": {…} | null}}

Rerunning never redoes finished work: reconstructed halves whose files exist are kept, a fit
marked done is kept, a fit that was running continues from its newest checkpoint in
``<out_dir>/model`` (``latest.pt`` or a newer ``stopped.pt``), and refinement skips finished
outputs (:mod:`.batch`). Paths in the job file are relative to ``out_dir``.

**The CTF and the masks of a project.** Each stack is phase flipped with the defocus file found
beside it, as a single ``run`` finds it (``core.io.ctf_formats.find_ctf_file``: ``<stem>.defocus``,
``<stem>_ctffind4.txt``, … or the fitted defoci of its RELION/Warp metadata); a stack without one
is reconstructed uncorrected, and its ``CTF:`` line says so. With ``mask="auto"`` every tomogram
of the fit gets its automatic sample mask from its own halves (``pipeline.masks``), written as
``<stem>_mask.mrc`` and reused when the fit continues. ``settings`` records both: a continued
project keeps them — changing the CTF/contrast settings once a tomogram is reconstructed, or the
mask once the fit has started, is refused (:func:`check_settings`). A job file written before
``settings`` existed was reconstructed without CTF correction, without ``--invert`` and fitted
without masks.
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
from .batch import BatchRefineRequest, RefinePair, batch_output, is_finished, refine_batch
from .names import stem_of
from .outputs import resume_point
from .project_inputs import (  # noqa: F401  (re-exported: the project's public names)
    FIT_SETTINGS, LEGACY_SETTINGS, RECONSTRUCTION_SETTINGS, STACK_SUFFIXES, check_settings,
    discover_series, is_project_input, project_settings, select_fit_subset)

JOB_FILE = "job.json"
JOB_VERSION = 1

# ---------------------------------------------------------------------------------------------
# the job file


class JobFile:
    """The job's state, written atomically at every change (see the module docstring)."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / JOB_FILE
        self.state: dict = {}

    def load_or_start(self, stems_to_series: dict, fit_on: list[str],
                      settings: dict | None = None) -> dict:
        """Read the job file (or start one); ``settings``: this run's (see
        :func:`project_settings`), checked against the recorded ones (:func:`check_settings`)."""
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
            if settings is not None:
                check_settings(self.state, settings, self.path)
        else:
            self.state = {"version": JOB_VERSION, "stage": "reconstruct",
                          "fit": {"on": fit_on, "state": "pending", "checkpoint": None,
                                  "epochs_done": 0},
                          "tomograms": {}}
        if settings is not None:
            self.state["settings"] = dict(settings)
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
    # the CTF: each stack's defocus file found beside it (core.io.ctf_formats.find_ctf_file)
    ctf: bool = True                # False: no phase flipping (--no-ctf)
    ctf_optics: dict | None = None  # voltage/cs/amplitude_contrast when a file does not say
    ctf_strip: int | None = None    # phase-flip strip width (output pixels); None: automatic
    invert: bool = False            # multiply every tomogram by −1 (dense bright)
    # the sample masks of the fit: None, or "auto" (each tomogram's from its own halves)
    mask: str | None = None
    mask_params: object = None      # core.fit.sample_mask.AutoMaskParams; None: the defaults


@dataclass
class ProjectNote:
    """A line about one tomogram (its ``CTF:`` line, its mask and cubes); ``warning``: show it
    as a warning."""

    name: str
    text: str
    warning: bool = False


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


def _ctf_request(request):
    """Each stack's CTF: the file beside it or its metadata's fitted defoci (``"auto"``), as a
    single ``run`` without ``--ctf`` finds it; ``None`` with the CTF off."""
    if not request.ctf:
        return None
    from ..core.io.ctf_formats import CTFRequest

    optics = request.ctf_optics or {}
    return CTFRequest(source="auto", voltage=optics.get("voltage"), cs=optics.get("cs"),
                      amplitude_contrast=optics.get("amplitude_contrast"))


def _report_new_ctf_file(request, entry: dict, stem: str, report) -> None:
    """A defocus file beside a stack whose kept halves were reconstructed without it (or with
    another one) does not change them: say so, rather than leave the user to wonder."""
    if not request.ctf:
        return
    from ..core.io.ctf_formats import find_ctf_file

    found = find_ctf_file(entry["tilt_series"])
    used = entry["ctf"].get("file")
    if found is not None and (used is None or Path(found).resolve() != Path(used)):
        report(ProjectNote(stem, f"{found.name} is beside the stack now, but its halves were "
                                 f"reconstructed {'with ' + Path(used).name if used else 'without a defocus file'} "
                                 "and are kept; to use it, run the project into another --out",
                           warning=True))


def _reconstruct_all(request, job: JobFile, report, progress) -> None:
    from ..core.io.series import load_tilt_series
    from .halves import HalvesRequest, reconstruct_halves, write_halves

    tomograms = job.state["tomograms"]
    total = len(tomograms)
    for index, (stem, entry) in enumerate(tomograms.items()):
        done = entry["reconstructed"] and all(
            job.absolute(entry[k]).exists() for k in ("even", "odd"))
        if done:
            if entry.get("ctf"):  # what the kept halves were reconstructed with
                report(ProjectNote(stem, f"{entry['ctf']['summary']} (halves kept)"))
                _report_new_ctf_file(request, entry, stem, report)
            report(ProjectStep("reconstruct", index, total, stem, "kept"))
            continue
        report(ProjectStep("reconstruct", index, total, stem, "started"))
        series = load_tilt_series(entry["tilt_series"], tilt_axis_x=request.tilt_axis_x,
                                  ctf=_ctf_request(request))
        ctf = series.meta.get("ctf")
        for warning in (ctf.warnings if ctf is not None else ()):
            report(ProjectNote(stem, warning, warning=True))
        halves = reconstruct_halves(HalvesRequest(
            series=series, stem=stem, thickness=request.thickness, binning=request.binning,
            bin_mode=request.bin_mode, device=request.device, ctf=request.ctf,
            ctf_strip=request.ctf_strip, invert=request.invert), progress=progress)
        # an unfinished earlier attempt may have left one half: ours to replace
        even_path, odd_path = write_halves(job.out_dir, stem, halves, overwrite=True)
        entry.update(reconstructed=True, even=job.relative(even_path), odd=job.relative(odd_path),
                     tilt_range=list(halves.tilt_range), voxel_size=list(halves.voxel_size),
                     ctf={"file": None if ctf is None or ctf.source is None
                          else str(Path(ctf.source).resolve()),
                          "summary": halves.ctf_summary})
        job.save()
        report(ProjectNote(stem, halves.ctf_summary))
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
        voxel_size=tuple(e["voxel_size"]), ctf=_pair_ctf(config, job.absolute(e["even"]), e))
        for stem, e, even, odd in volumes]
    if config.ctf_loss:
        missing = [pair.name for pair in pairs if not pair.ctf]
        if missing:
            raise DDWError(
                f"--ctf-loss needs the defocus of every view, but {', '.join(missing)} "
                f"{'was' if len(missing) == 1 else 'were'} reconstructed without one: put each "
                "stack's defocus file beside it (<stem>_ctffind4.txt, <stem>.defocus, …), leave "
                "those tomograms out of the fit (--fit-on), or drop --ctf-loss")
    return pipeline_fitting.FitRequest(pairs=pairs, config=config, resume=resume,
                                       given=request.given)


def _pair_ctf(config, even_path, entry) -> dict | None:
    """With ``ctf_loss``: the phase-flipped halves' defoci, from the ``<stem>_ctf.json`` the
    project's reconstruction wrote beside them (``pipeline.halves.write_halves``)."""
    if not config.ctf_loss:
        return None
    from .halves import read_ctf_sidecar

    return read_ctf_sidecar(even_path, tuple(entry["voxel_size"]))


def mask_path(out_dir, stem: str) -> Path:
    """Where a project writes a tomogram's automatic mask: ``<out_dir>/<stem>_mask.mrc``."""
    return Path(out_dir) / f"{stem}_mask.mrc"


def _mask_pairs(request, job: JobFile, pairs, report) -> None:
    """``mask="auto"``: each pair of the fit gets its automatic mask (``pipeline.masks``),
    computed from its own halves and written as ``<stem>_mask.mrc`` — or, when the fit
    continues, read back from that file, so a resumed fit draws its cubes from the same mask."""
    from .masks import AUTO, apply_mask, is_auto

    tomograms = job.state["tomograms"]
    if not is_auto(request.mask):
        for pair in pairs:  # a pending fit that no longer asks for masks: none recorded
            tomograms[pair.name].pop("mask", None)
        return
    import numpy as np

    from ..core.io.mrc import read_mrc, write_mrc

    params = project_settings(request)["mask_params"]
    for pair in pairs:
        entry = tomograms[pair.name]
        recorded = entry.get("mask")
        if recorded and recorded.get("params") == params \
                and job.absolute(recorded["file"]).exists():
            path = job.absolute(recorded["file"])
            mask = np.asarray(read_mrc(path, mmap=False).data) != 0
            if mask.shape == tuple(np.shape(pair.even)):
                pair.mask, pair.mask_source = mask, recorded["source"]
                report(ProjectNote(pair.name, f"automatic mask kept from {path.name} (keeps "
                                              f"{float(recorded['fraction']):.0%} of the volume)"))
                continue
        lines = apply_mask(pair, AUTO, params=request.mask_params, device=request.device)
        for line in lines:
            warning = line.startswith("warning: ")
            text = line[len("warning: "):] if warning else line
            report(ProjectNote(pair.name, text, warning=warning))
        voxel = tuple(float(v) for v in pair.voxel_size)
        path = write_mrc(mask_path(job.out_dir, pair.name), pair.mask.astype(np.int8),
                         voxel_size=voxel)
        entry["mask"] = {"file": job.relative(path), "fraction": round(float(pair.mask.mean()), 4),
                         "params": params, "source": pair.mask_source}
        job.save()


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
    _mask_pairs(request, job, fit_request.pairs, report)
    fit_request = _fit_size_for_halves(request, fit_request, report)
    from .masks import cube_lines

    for pair, line in zip([p for p in fit_request.pairs if p.mask is not None],
                          cube_lines(fit_request.pairs, fit_request.config)):
        report(ProjectNote(pair.name, line))  # at the cube size the fit will use
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
                      select_fit_subset(stems, request.fit_on), project_settings(request))
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
