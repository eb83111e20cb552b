"""Fitting from the command line: settings → ``FitConfig``, Ctrl-C, torchrun, the event stream."""
from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

from ..core.errors import DDWError
from ..core.fit.settings import PRESETS, SETTINGS
from ..pipeline import FitRequest, OutputExists, fit_events, refuse_earlier_fit
from .options import PRESET_NAMES
from .output import info, is_rank_zero
from .progress import FitReport

#: the settings a flag or a config file sets (core/fit/settings.py), except the tilt range,
#: which the command reads from the data (``tilt_range_for_fit``)
FIT_OPTION_KEYS = tuple(s.name for s in SETTINGS if s.yaml and s.name != "tilt_range")


def _option(args, name):
    """A setting's value: its flag (config values already merged in), else a config-only key."""
    value = getattr(args, name, None)
    return getattr(args, "config_values", {}).get(name) if value is None else value


def pick_preset(args) -> str:
    if args.preset is not None:
        if args.preset not in PRESET_NAMES:
            raise DDWError(f"unknown preset '{args.preset}'; choose one of {', '.join(PRESET_NAMES)}")
        return args.preset
    from ..core.device import pick_device

    return "default" if pick_device(args.device).type == "cuda" else "fast"


def fit_config(args, *, tilt_range, out_dir, voxel_size):
    """The engine's FitConfig from flags (and config values already merged into ``args``)."""
    from .config import fit_config_from_options

    options = {k: _option(args, k) for k in FIT_OPTION_KEYS}
    options["tilt_range"] = list(tilt_range)
    return fit_config_from_options(options, preset=pick_preset(args),
                                   out_dir=None if out_dir is None else str(out_dir),
                                   voxel_size=tuple(float(v) for v in voxel_size))


def given_fields(args) -> frozenset:
    """FitConfig fields the user set (flag or config file): for a resume, every other fixed
    setting is the checkpoint's (pipeline.plan_fit). The tilt range and voxel size come from
    the data, so they always count as given."""
    given = {k for k in FIT_OPTION_KEYS if _option(args, k) is not None}
    if args.preset is not None:  # a preset's cube size is not given: a resume keeps the
        given |= set(PRESETS.get(args.preset, ())) - {"subtomo_size"}  # checkpoint's (it may have been lowered to fit)
    return frozenset(given | {"tilt_min", "tilt_max", "voxel_size", "out_dir"})


def fit_size_for_halves(args, request: FitRequest) -> FitRequest:
    """A new fit without ``--subtomo-size`` (flag or config file): the preset's cube size,
    lowered to the largest that fits the halves (``pipeline.fit_size``), with one line saying
    so. A typed size and a resume are left as they are."""
    from ..pipeline.fit_size import with_fitting_size

    request, note = with_fitting_size(request, typed=getattr(args, "subtomo_size", None) is not None)
    if note is not None:
        info(args, f"{note}; give --subtomo-size to choose")
    return request


def resume_command(args, checkpoint) -> str:
    """The command line that continues the earlier fit: this one (without --resume and
    --overwrite) plus ``--resume CKPT``."""
    kept, skip = [], False
    for token in args.argv:
        if skip:
            skip = False
        elif token == "--resume":
            skip = True
        elif token != "--overwrite" and not token.startswith("--resume="):
            kept.append(token)
    return shlex.join(["deepdewedge", *kept, "--resume", str(checkpoint)])


def claim_fit_folder(args, out_dir) -> None:
    """Refuse a new fit into a folder holding an earlier fit's checkpoints (one error line with
    the command that resumes it); with --overwrite, rank 0 removes those checkpoints first."""
    from ..pipeline import earlier_checkpoints

    try:
        refuse_earlier_fit(out_dir, resume=args.resume, overwrite=args.overwrite)
    except OutputExists as exc:
        raise DDWError(
            f"{out_dir} already holds checkpoints of an earlier fit; to continue it run: "
            f"{resume_command(args, exc.resume_from)} ; or add --overwrite to start afresh"
        ) from None
    if args.overwrite and args.resume is None and is_rank_zero():
        for path in [*earlier_checkpoints(out_dir), *sorted(Path(out_dir).glob("fit_state_*.pt"))]:
            path.unlink()  # the earlier fit's checkpoints and the fitting-state files they named


class StopOnCtrlC:
    """First Ctrl-C asks the engine to stop (checkpoint 'stopped'); a second one aborts."""

    def __init__(self):
        self.requested = False
        self._first = 0.0
        self._previous = None
        self._installed = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.requested:
            # under torchrun a worker gets the terminal's SIGINT and torchrun's forwarded copy
            # at once: only a second press (a moment later) aborts
            if now - self._first > 1.0:
                raise KeyboardInterrupt
            return
        self.requested = True
        self._first = now
        if is_rank_zero():
            print("\ninterrupt: stopping after the current step and saving a 'stopped' "
                  "checkpoint (Ctrl-C again to abort at once)", file=sys.stderr)

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        except ValueError:  # not the main thread (e.g. called from a test thread)
            self._installed = False
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
        return False


def run_fit(args, request: FitRequest):
    """Run ``pipeline.fit_events`` showing its events; returns ``(FitFinished, ctrl_c)``."""
    finished = None
    stopper = StopOnCtrlC()
    with stopper, FitReport(quiet=args.quiet) as report:
        for event in fit_events(request, should_stop=stopper):
            report(event)
            if type(event).__name__ == "FitFinished":
                finished = event
    return finished, stopper.requested


def report_fit(args, finished, seconds: float) -> None:
    if finished is None or not is_rank_zero():
        return
    state = "stopped" if finished.stopped else "finished"
    info(args, f"fitting {state} after {finished.epochs_done} epochs in {seconds:.0f} s")
    if getattr(finished, "reason", ""):
        info(args, f"ended early: {finished.reason}")
    if finished.best_path:
        print(f"best checkpoint:   {finished.best_path}")
    if finished.latest_path:
        print(f"latest checkpoint: {finished.latest_path}")
    if finished.stopped:
        info(args, f"continue with: {resume_command(args, finished.latest_path)}")


def maybe_init_distributed() -> bool:
    """Under torchrun (WORLD_SIZE > 1) join the process group before anything touches a GPU.

    Returns True when this call joined it (the caller then leaves it at the end)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    import torch.distributed as dist

    from ..core.fit.loop import init_distributed_from_env

    already = dist.is_available() and dist.is_initialized()
    init_distributed_from_env()
    return not already and dist.is_initialized()


def leave_distributed() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()


def fit_out_dir(args) -> Path:
    out = args.out or args.config_values.get("logdir") or args.config_values.get("project_dir")
    if not out:
        raise DDWError("no output folder: give --out DIR (checkpoints and losses.csv go there)")
    return Path(out)
