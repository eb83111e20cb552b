"""``deepdewedge``: the DeepDeWedge engine from a terminal (workstations, cluster nodes).

A thin front end: argument parsing, YAML configs, progress bars, files in and out. Every step
of the method is a call into :mod:`napari_deepdewedge.core`. No Qt or napari imports here, and
torch is only imported by the commands that need it (``deepdewedge --help`` stays fast).

Errors a user can fix (:class:`~napari_deepdewedge.core.errors.DDWError`, and OS errors such as
a folder that cannot be written) print exactly one line ``error: <message>`` on stderr and exit
with status 2, as argparse does for usage errors. Ctrl-C during fitting saves a ``stopped``
checkpoint and exits with status 130.

Run ``deepdewedge COMMAND --help`` or see ``docs/cli.md``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .core.errors import DDWError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
PRESET_NAMES = ("fast", "balanced", "default")  # core.unet.PRESETS (checked in the tests)

# demo sizes: phantom (shape (Z, Y, X), tilt range (min, max, step), SNR) and the fitting
# settings the demo uses on top of the 'fast' preset (any flag overrides them). "small" is the
# README's demo: ≈ 3 CPU-minutes of fitting (CC vs ground truth 0.35 → 0.55); "tiny" is for tests.
DEMO_SIZES = {
    "tiny": dict(shape=(32, 48, 48), tilt_range=(-60.0, 60.0, 4.0), snr=2.0,
                 fit=dict(epochs=1, subtomo_size=16, channels=4, depth=2, strides=(8, 16, 16))),
    "small": dict(shape=(64, 96, 96), tilt_range=(-60.0, 60.0, 3.0), snr=0.5,
                  fit=dict(epochs=20, subtomo_size=24, channels=8, strides=(12, 16, 16),
                           update_every=5, lr=1e-3)),
    "medium": dict(shape=(96, 160, 160), tilt_range=(-60.0, 60.0, 2.0), snr=0.5,
                   fit=dict(epochs=40, subtomo_size=32, channels=16, strides=(16, 24, 24),
                            update_every=5, lr=1e-3)),
}
DEMO_SEED = 20240817  # a phantom seed that no test or benchmark fits on (held out)
DEMO_PIXEL_SIZE = 10.0


# ----------------------------------------------------------------------------------------------
# output helpers


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _warn(message: str) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr)


def _info(args, message: str) -> None:
    if not getattr(args, "quiet", False) and _is_rank_zero():
        print(message, file=sys.stderr)


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


class _ProgressBar:
    """A tqdm bar on stderr fed by the engine's ``progress(done, total)`` callbacks."""

    def __init__(self, desc: str, quiet: bool = False, unit: str = "it"):
        self.desc, self.unit = desc, unit
        self.disable = quiet or not _is_rank_zero()
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.disable:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr,
                            dynamic_ncols=True, leave=True)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ----------------------------------------------------------------------------------------------
# argument layout


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _number(kind, ok, requirement: str):
    """An argparse ``type`` that parses ``kind`` (int or float) and checks ``ok(value)``."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "at least 1")
_non_negative_int = _number(int, lambda v: v >= 0, "0 or more")
_fraction = _number(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
_positive_float = _number(float, lambda v: v > 0, "positive")


def _add_common(p) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info lines")


def _add_device(p) -> None:
    p.add_argument("--device", default=None, metavar="D",
                   help="auto, cpu, cuda, cuda:N or mps (default: auto = cuda → mps → cpu)")


def _add_stack_inputs(p, *, thickness_required: bool) -> None:
    g = p.add_argument_group("tilt-series input (one stack, or two frame-half stacks)")
    g.add_argument("tiltseries", nargs="?", metavar="TILTSERIES",
                   help="aligned tilt series (.mrc .st .ali …); split into even/odd halves by "
                        "the parity of the angle-sorted index")
    g.add_argument("--even-odd", nargs=2, metavar=("EVN", "ODD"), default=None,
                   help="instead of TILTSERIES: two tilt series made from even and odd movie "
                        "frames (Warp/AreTomo *_EVN/*_ODD); each is reconstructed in full")
    a = g.add_mutually_exclusive_group()
    a.add_argument("--angles", metavar="FILE", default=None,
                   help="IMOD .tlt/.rawtlt file (one angle per line, stack order); default: a "
                        ".tlt/.rawtlt beside the stack with the same name")
    a.add_argument("--tilt-range", nargs=3, type=float, metavar=("MIN", "MAX", "STEP"),
                   default=None, help="tilt angles MIN, MIN+STEP, …, MAX in degrees")
    g.add_argument("--tilt-axis-x", action="store_true",
                   help="the tilt axis runs along X in the stack (it is transposed to Y)")
    r = p.add_argument_group("reconstruction (weighted back-projection)")
    r.add_argument("--thickness", type=_positive_int, required=thickness_required, default=None,
                   metavar="Z", help="tomogram thickness in output (binned) voxels")
    r.add_argument("--bin", type=_positive_int, default=None, metavar="N",
                   help="bin the projections by N before reconstructing (default 1)")
    r.add_argument("--bin-mode", choices=("fourier", "average"), default=None,
                   help="binning by Fourier cropping or by averaging N×N pixels (default fourier)")
    r.add_argument("--full", action="store_true",
                   help="also write the reconstruction from all projections (<stem>_full.mrc)")


def _add_fit_options(p, *, with_inputs: bool) -> None:
    if with_inputs:
        g = p.add_argument_group("inputs (or from --config)")
        g.add_argument("--even", "--tomo0", metavar="E.mrc", default=None,
                       help="tomogram of half 0")
        g.add_argument("--odd", "--tomo1", metavar="O.mrc", default=None,
                       help="tomogram of half 1")
        a = g.add_mutually_exclusive_group()
        a.add_argument("--angles", metavar="FILE", default=None,
                       help="the .tlt/.rawtlt of the tilt series; its min and max set the wedge")
        a.add_argument("--tilt-range", nargs=2, type=float, metavar=("MIN", "MAX"), default=None,
                       help="tilt range in degrees (asymmetric allowed, e.g. -54 62)")
    f = p.add_argument_group("fitting (default: the --preset values, then core.fitting.FitConfig)")
    f.add_argument("--preset", default=None, metavar="NAME",
                   help="fast (48³ cubes, 16 channels), balanced (96³, 32) or default (96³, 64); "
                        "default: 'default' on a CUDA GPU, 'fast' otherwise")
    f.add_argument("--subtomo-size", type=_positive_int, default=None, metavar="S",
                   help="edge of the fitting cubes; a multiple of 2^depth")
    f.add_argument("--channels", type=_positive_int, default=None, metavar="C",
                   help="U-Net channels at the first level")
    f.add_argument("--depth", type=_positive_int, default=None, metavar="D",
                   help="U-Net levels (down-samplings)")
    f.add_argument("--epochs", type=_positive_int, default=None, metavar="N")
    f.add_argument("--batch-size", type=_positive_int, default=None, metavar="B")
    f.add_argument("--lr", type=_positive_float, default=None, metavar="LR",
                   help="Adam learning rate (default 4e-4)")
    f.add_argument("--val-fraction", type=_fraction, default=None, metavar="F",
                   help="fraction of cubes held out for validation (default 0.1)")
    f.add_argument("--update-every", type=_non_negative_int, default=None, metavar="N",
                   help="update the input cubes' missing wedges every N epochs (0 = never)")
    f.add_argument("--validate-every", type=_positive_int, default=None, metavar="N",
                   help="validation loss every N epochs")
    f.add_argument("--checkpoint-every", type=_non_negative_int, default=None, metavar="N",
                   help="keep a periodic checkpoint every N epochs (0 = none)")
    f.add_argument("--strides", nargs=3, type=_positive_int, default=None,
                   metavar=("SZ", "SY", "SX"), help="cube grid strides (default: automatic)")
    f.add_argument("--min-mask-fraction", type=_fraction, default=None, metavar="F",
                   help="with --mask: keep cubes with at least this fraction inside (default 0.3)")
    f.add_argument("--mask", metavar="ROI.mrc", default=None,
                   help="binary region-of-interest mask, same shape as the tomograms")
    f.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardize each half to zero mean / unit variance (default on)")
    f.add_argument("--seed", type=int, default=None, help="random seed")
    f.add_argument("--resume", metavar="CKPT", default=None,
                   help="continue fitting from a checkpoint")
    f.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="YAML config (our flat layout or the original DeepDeWedge layout); "
                        "explicit flags win")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepdewedge",
        description="DeepDeWedge for cryo-ET: reconstruct even/odd tomograms, fit a 3D U-Net "
                    "with a Fourier-masked Noise2Noise loss, refine (denoise + fill the missing "
                    "wedge).",
        epilog="Typical job:  deepdewedge run TS.mrc --thickness 300 --bin 4 --out job/\n"
               "Try it:       deepdewedge demo --out demo/\n"
               "Details:      deepdewedge COMMAND --help, docs/cli.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "reconstruct", formatter_class=_Formatter,
        help="even/odd (and full) tomograms from a tilt series by weighted back-projection",
        description="Reconstruct the two half tomograms (DIR/<stem>_even.mrc, <stem>_odd.mrc) "
                    "from one tilt series (split by angle parity) or from two frame-half "
                    "series (--even-odd EVN ODD, then TILTSERIES is omitted).",
    )
    _add_stack_inputs(p, thickness_required=True)
    _add_device(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_common(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser(
        "fit", formatter_class=_Formatter,
        help="fit the U-Net on an even/odd tomogram pair (checkpoints + losses.csv)",
        description="Fit a 3D U-Net on sub-tomograms of the two half tomograms. Ctrl-C stops "
                    "cleanly after the current step with a 'stopped' checkpoint (exit 130); "
                    "--resume continues. Several GPUs: torchrun --nproc-per-node N -m "
                    "napari_deepdewedge.cli -- fit …",
    )
    _add_fit_options(p, with_inputs=True)
    _add_device(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for checkpoints and losses.csv (required, or from --config)")
    _add_common(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "refine", formatter_class=_Formatter,
        help="apply a fitted model to both halves and average (the refined tomogram)",
        description="Refine both half tomograms with a fitted model and average them. With "
                    "--halves also write OUT_half0.mrc, OUT_half1.mrc and OUT_consistency.mrc "
                    "(the half0 − half1 difference: where the model is not consistent).",
    )
    p.add_argument("--even", "--tomo0", metavar="E.mrc", default=None, help="tomogram of half 0")
    p.add_argument("--odd", "--tomo1", metavar="O.mrc", default=None, help="tomogram of half 1")
    p.add_argument("--model", metavar="CKPT", default=None, help="checkpoint written by 'fit'")
    p.add_argument("--out", metavar="OUT.mrc", default=None, help="refined tomogram")
    p.add_argument("--overlap", type=_non_negative_int, default=None, metavar="O",
                   help="overlap of the tiles in voxels (default ⌈S/3⌉)")
    p.add_argument("--batch-size", "--refine-batch-size", dest="refine_batch_size",
                   type=_positive_int, default=None, metavar="B", help="tiles per batch (default 4)")
    p.add_argument("--halves", action="store_true",
                   help="also write the two per-half results and their difference")
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="YAML config (flat or DeepDeWedge layout); explicit flags win")
    _add_device(p)
    _add_common(p)
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser(
        "run", formatter_class=_Formatter,
        help="reconstruct + fit + refine in one go: DIR/<stem>_refined.mrc",
        description="The whole pipeline on one tilt series: DIR/<stem>_even.mrc, _odd.mrc, "
                    "DIR/model/ (checkpoints, losses.csv), DIR/<stem>_refined.mrc and the "
                    "per-half results (_refined_half0/_half1/_consistency.mrc).",
    )
    _add_stack_inputs(p, thickness_required=False)
    _add_fit_options(p, with_inputs=False)
    p.add_argument("--overlap", type=_non_negative_int, default=None, metavar="O",
                   help="refinement tile overlap in voxels (default ⌈S/3⌉)")
    p.add_argument("--refine-batch-size", type=_positive_int, default=None, metavar="B",
                   help="refinement tiles per batch (default 4)")
    p.add_argument("--no-halves", action="store_true",
                   help="do not write the per-half results and their difference")
    _add_device(p)
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (required)")
    _add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="the whole pipeline on a built-in synthetic phantom, with figures and metrics",
        description="Simulate a noisy tilt series of a synthetic phantom (a held-out seed), "
                    "reconstruct, fit (fast preset, small cubes), refine, and compare with the "
                    "ground truth: MRC files, a PNG figure and CC / FSC / wedge metrics.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--size", choices=tuple(DEMO_SIZES), default="small",
                   help="phantom size: tiny (seconds, for tests), small (a few minutes on a "
                        "laptop CPU), medium")
    p.add_argument("--phantom-seed", type=int, default=DEMO_SEED, help="phantom seed")
    _add_fit_options(p, with_inputs=False)
    _add_device(p)
    _add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "napari", formatter_class=_Formatter,
        help="open napari with the sample tilt series and the DeepDeWedge dock",
        description="Open napari with the DeepDeWedge dock, and the synthetic sample tilt "
                    "series loaded (needs a display).",
    )
    p.add_argument("--no-sample", action="store_true", help="start without the sample data")
    p.add_argument("--screenshot", metavar="PNG",
                   help="save a screenshot of the window and close (for documentation)")
    p.set_defaults(func=cmd_napari)
    return parser


def cmd_napari(args) -> int:
    from ._launch import open_viewer

    return open_viewer(sample=not args.no_sample, screenshot=args.screenshot)


def _all_option_keys(parser: argparse.ArgumentParser) -> set[str]:
    """Every dest of every subcommand: the flat config vocabulary."""
    keys = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                keys |= {a.dest for a in sub._actions if a.dest not in ("help", "config")}
    # deepdewedge-layout keys that have no flag of their own
    return keys | {"project_dir", "logdir", "output_dir", "model", "refine_batch_size"}


# ----------------------------------------------------------------------------------------------
# config merging: flag > config > preset > engine default


def _coerce(action: argparse.Action, key: str, value, source: str):
    """Convert a YAML value with the flag's own type (and nargs)."""
    def one(v):
        if action.type is None or v is None:
            return v
        if isinstance(v, bool) and action.type in (int, float, _positive_int, _non_negative_int):
            raise DDWError(f"{source}: {key} must be a number, got {v!r}")
        try:
            return action.type(str(v) if not isinstance(v, str) else v)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise DDWError(f"{source}: {key} = {v!r} is not valid ({exc})") from None

    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        if not isinstance(value, bool):
            raise DDWError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(action.nargs, int) or action.nargs in ("+", "*"):
        if not isinstance(value, (list, tuple)):
            raise DDWError(f"{source}: {key} needs a list, e.g. [{', '.join(action.metavar or ())}]")
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise DDWError(
                f"{source}: {key} needs {action.nargs} values "
                f"({' '.join(action.metavar) if isinstance(action.metavar, tuple) else ''}), "
                f"got {len(value)}"
            )
        return [one(v) for v in value]
    if isinstance(value, (list, tuple, dict)):
        raise DDWError(f"{source}: {key} needs a single value, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise DDWError(f"{source}: {key} = {value!r}; choose one of {', '.join(action.choices)}")
    return one(value)


def _apply_config(args, parser: argparse.ArgumentParser) -> None:
    """Fill options the user did not give on the command line from ``--config``."""
    path = getattr(args, "config", None)
    args.config_values = {}
    if not path:
        return
    from .core.config import load_config

    loaded = load_config(path, known_keys=_all_option_keys(parser))
    for line in loaded.warnings:
        _warn(line)
    sub = _subparser(parser, args.command)
    actions = {a.dest: a for a in sub._actions}
    values = dict(loaded.values)
    if args.command == "fit" and "tilt_range" in values and isinstance(values["tilt_range"], list):
        values["tilt_range"] = values["tilt_range"][:2]  # a run config's MIN MAX STEP is fine
    if args.command == "refine" and "refine_batch_size" not in values and "batch_size" in values:
        if loaded.layout == "flat":
            values["refine_batch_size"] = values.pop("batch_size")
    source = Path(path).name
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            args.config_values[key] = value  # e.g. project_dir; used by the command if it can
            continue
        current = getattr(args, key, None)
        if current not in (None, False):
            continue  # an explicit flag wins
        if key in ("angles", "tilt_range") and _angle_spec(args) is not None:
            continue  # the user chose the angles on the command line
        setattr(args, key, _coerce(action, key, value, source))


def _subparser(parser, command):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


# ----------------------------------------------------------------------------------------------
# reconstruct


def _load_inputs(args):
    """(even_series, odd_series, full_series_or_None, stem) from the stack arguments."""
    from .core.halves import frame_half_series, split_even_odd
    from .core.io import find_angle_file, load_tilt_series

    angles = _angle_spec(args)
    if args.tiltseries is not None and args.even_odd is not None:
        raise DDWError("give either TILTSERIES or --even-odd EVN ODD, not both")
    if args.tiltseries is None and args.even_odd is None:
        raise DDWError("no input: give a tilt series (TILTSERIES) or two frame-half series "
                       "(--even-odd EVN ODD)")
    if args.tiltseries is not None:
        series = load_tilt_series(args.tiltseries, angles=angles, tilt_axis_x=args.tilt_axis_x)
        even, odd = split_even_odd(series)
        return even, odd, series, Path(args.tiltseries).stem
    evn_path, odd_path = (Path(p) for p in args.even_odd)
    stem = _common_stem(evn_path, odd_path)
    if angles is None:
        # a .tlt beside EVN, beside ODD, or beside the stack name without _EVN
        for candidate in (evn_path, odd_path, evn_path.with_name(stem + evn_path.suffix)):
            found = find_angle_file(candidate)
            if found is not None:
                angles = str(found)
                break
    even = load_tilt_series(evn_path, angles=angles, tilt_axis_x=args.tilt_axis_x)
    odd = load_tilt_series(odd_path, angles=even.angles if angles is None else angles,
                           tilt_axis_x=args.tilt_axis_x)
    even, odd = frame_half_series(even, odd)
    return even, odd, None, stem


def _angle_spec(args):
    if getattr(args, "angles", None) is not None:
        return str(args.angles)
    if getattr(args, "tilt_range", None) is not None:
        return tuple(float(v) for v in args.tilt_range)
    return None


def _common_stem(a: Path, b: Path) -> str:
    """``TS_01_EVN.mrc`` + ``TS_01_ODD.mrc`` → ``TS_01``."""
    import re

    pattern = re.compile(r"[._-]?(evn|even|odd)$", re.IGNORECASE)
    sa, sb = pattern.sub("", a.stem), pattern.sub("", b.stem)
    if sa and sa == sb:
        return sa
    prefix = os.path.commonprefix([a.stem, b.stem]).rstrip("._-")
    return prefix or a.stem


def _reconstruct(args, even, odd, full_series, *, want_full: bool):
    """fbp of each half (and of the full series, or the halves' mean for frame halves)."""
    from .core.device import pick_device
    from .core.reconstruction import fbp

    device = pick_device(args.device)
    binning = args.bin or 1
    kw = dict(binning=binning, bin_mode=args.bin_mode or "fourier", device=device)
    results = {}
    jobs = [("even", even), ("odd", odd)]
    if want_full and full_series is not None:
        jobs.append(("full", full_series))
    for label, series in jobs:
        with _ProgressBar(f"reconstruct {label}", args.quiet, unit="chunk") as bar:
            results[label] = fbp(series.data, series.angles, args.thickness, progress=bar, **kw)
    if want_full and full_series is None:
        results["full"] = 0.5 * (results["even"] + results["odd"])
    voxel = float(even.pixel_size) * binning
    return results, (voxel, voxel, voxel)


def cmd_reconstruct(args) -> int:
    even, odd, full_series, stem = _load_inputs(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    results, voxel = _reconstruct(args, even, odd, full_series, want_full=args.full)
    written = _write_reconstructions(out, stem, results, voxel, even.origin)
    shape = results["even"].shape
    _info(args, f"reconstructed {len(results)} tomograms of {shape[0]}×{shape[1]}×{shape[2]} "
                f"(Z×Y×X) at {voxel[0]:g} Å/voxel in {time.perf_counter() - t0:.1f} s")
    for path in written:
        print(path)
    return 0


def _write_reconstructions(out: Path, stem: str, results: dict, voxel, origin) -> list[Path]:
    from .core.io import write_mrc

    written = []
    for label in ("even", "odd", "full"):
        if label in results:
            written.append(write_mrc(out / f"{stem}_{label}.mrc", results[label], voxel, origin))
    return written


# ----------------------------------------------------------------------------------------------
# fit


class _StopOnCtrlC:
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
        if _is_rank_zero():
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


def _tilt_range_for_fit(args) -> tuple[float, float]:
    from .core.io import check_angle_values, read_angles

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


def _pick_preset(args) -> str:
    if args.preset is not None:
        if args.preset not in PRESET_NAMES:
            raise DDWError(f"unknown preset '{args.preset}'; choose one of {', '.join(PRESET_NAMES)}")
        return args.preset
    from .core.device import pick_device

    return "default" if pick_device(args.device).type == "cuda" else "fast"


def _fit_config(args, *, tilt_range, out_dir, voxel_size):
    """The engine's FitConfig from flags (and config values already merged into ``args``)."""
    from .core.config import fit_config_from_options

    options = {k: getattr(args, k, None) for k in (
        "subtomo_size", "channels", "depth", "epochs", "batch_size", "lr", "val_fraction",
        "update_every", "validate_every", "checkpoint_every", "min_mask_fraction", "standardize",
        "seed", "device", "strides")}
    options["tilt_range"] = list(tilt_range)
    options["residual"] = getattr(args, "config_values", {}).get("residual")  # config only (no flag)
    return fit_config_from_options(options, preset=_pick_preset(args),
                                   out_dir=None if out_dir is None else str(out_dir),
                                   voxel_size=tuple(float(v) for v in voxel_size))


def _read_pair(even_path, odd_path):
    from .core.halves import check_same_shape
    from .core.io import read_mrc

    if not even_path or not odd_path:
        raise DDWError("both half tomograms are needed: give --even E.mrc and --odd O.mrc "
                       "(or tomo0_files/tomo1_files in --config)")
    even, odd = read_mrc(even_path), read_mrc(odd_path)
    check_same_shape(even.data, odd.data, what="half tomograms")
    return even, odd


def _read_mask(path, shape):
    if path is None:
        return None
    import numpy as np

    from .core.io import read_mrc

    mask = read_mrc(path)
    if tuple(mask.data.shape) != tuple(shape):
        raise DDWError(f"{Path(path).name}: mask shape {tuple(mask.data.shape)} differs from the "
                       f"tomogram shape {tuple(shape)}; make the mask on the same (binned) grid")
    return np.asarray(mask.data) != 0


def _run_fit(args, tomo0, tomo1, config, *, mask=None, resume=None):
    """Drive core.fitting.fit_iter with a tqdm bar over epochs; returns (FitFinished, ctrl_c)."""
    from .core import fitting

    quiet = args.quiet or not _is_rank_zero()
    bar = None
    finished = None
    stopper = _StopOnCtrlC()
    with stopper:
        try:
            for event in fitting.fit_iter(tomo0, tomo1, config, mask=mask, resume=resume,
                                          should_stop=stopper):
                kind = type(event).__name__
                if kind == "FitStarted":
                    if not quiet:
                        from tqdm import tqdm

                        cfg = event.config
                        print(f"fitting on {event.device}: {event.n_fit_cubes} fitting + "
                              f"{event.n_val_cubes} validation cubes of {cfg.subtomo_size}³, "
                              f"U-Net {cfg.channels} channels × depth {cfg.depth}, "
                              f"{event.steps_per_epoch} steps/epoch", file=sys.stderr)
                        bar = tqdm(total=cfg.epochs, desc="fit", unit="epoch", file=sys.stderr,
                                   dynamic_ncols=True)
                elif kind == "StepDone" and bar is not None:
                    bar.set_postfix_str(f"step {event.step}/{event.steps_per_epoch} "
                                        f"loss {event.loss:.4g}", refresh=True)
                elif kind == "EpochDone" and bar is not None:
                    post = f"loss {event.fit_loss:.4g}"
                    if event.val_loss is not None:
                        post += f" val {event.val_loss:.4g}"
                    bar.n = event.epoch
                    bar.set_postfix_str(post, refresh=False)
                    bar.refresh()
                elif kind == "CheckpointSaved" and bar is not None and event.kind == "stopped":
                    bar.write(f"saved {event.path}", file=sys.stderr)
                elif kind == "FitFinished":
                    finished = event
        finally:
            if bar is not None:
                bar.close()
    return finished, stopper.requested


def _maybe_init_distributed() -> bool:
    """Under torchrun (WORLD_SIZE > 1) join the process group before anything touches a GPU.

    Returns True when this call joined it (the caller then leaves it at the end)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    import torch.distributed as dist

    from .core.fitting import init_distributed_from_env

    already = dist.is_available() and dist.is_initialized()
    init_distributed_from_env()
    return not already and dist.is_initialized()


def cmd_fit(args) -> int:
    joined = _maybe_init_distributed()
    try:
        return _fit_command(args)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def _fit_command(args) -> int:
    out = args.out or args.config_values.get("logdir") or args.config_values.get("project_dir")
    if not out:
        raise DDWError("no output folder: give --out DIR (checkpoints and losses.csv go there)")
    tilt_range = _tilt_range_for_fit(args)
    even, odd = _read_pair(args.even, args.odd)
    mask = _read_mask(args.mask, even.data.shape)
    config = _fit_config(args, tilt_range=tilt_range, out_dir=out, voxel_size=even.voxel_size)
    t0 = time.perf_counter()  # the engine reads the (memory-mapped) halves itself
    finished, interrupted = _run_fit(args, even.data, odd.data, config, mask=mask,
                                     resume=args.resume)
    if _is_rank_zero():
        _report_fit(args, finished, time.perf_counter() - t0)
    if finished is not None and finished.stopped and interrupted:
        return EXIT_INTERRUPTED
    return 0


def _report_fit(args, finished, seconds: float) -> None:
    if finished is None:
        return
    state = "stopped" if finished.stopped else "finished"
    _info(args, f"fitting {state} after {finished.epochs_done} epochs in {seconds:.0f} s")
    if finished.best_path:
        print(f"best checkpoint:   {finished.best_path}")
    if finished.latest_path:
        print(f"latest checkpoint: {finished.latest_path}")
    if finished.stopped:
        _info(args, f"continue with: deepdewedge fit … --resume {finished.latest_path}")


# ----------------------------------------------------------------------------------------------
# refine


def _refine(args, model_path, tomo0, tomo1, *, keep_halves, overlap, batch_size):
    from .core.refine import refine_halves

    with _ProgressBar("refine", args.quiet, unit="batch") as bar:
        return refine_halves(str(model_path), tomo0, tomo1, overlap=overlap,
                             batch_size=batch_size or 4, device=args.device,
                             keep_halves=keep_halves, progress=bar)


def _write_refined(out: Path, result, voxel, origin) -> list[Path]:
    from .core.io import write_mrc

    written = [write_mrc(out, result.refined, voxel, origin)]
    base = out.with_suffix("")
    for label, data in (("half0", result.half0), ("half1", result.half1),
                        ("consistency", result.difference)):
        if data is not None:
            written.append(write_mrc(base.with_name(f"{base.name}_{label}.mrc"), data, voxel, origin))
    return written


def cmd_refine(args) -> int:
    if not args.model:
        raise DDWError("no model: give --model CKPT (a checkpoint written by 'deepdewedge fit')")
    if not Path(args.model).exists():
        raise DDWError(f"{args.model}: checkpoint not found; check the path")
    even, odd = _read_pair(args.even, args.odd)
    out = args.out
    if out is None and args.config_values.get("output_dir"):
        out = Path(args.config_values["output_dir"]) / f"{Path(args.even).stem}_refined.mrc"
    if out is None:
        raise DDWError("no output: give --out OUT.mrc")
    out = Path(out)
    if out.suffix.lower() != ".mrc":
        out = out.with_name(out.name + ".mrc")
    result = _refine(args, args.model, even.data, odd.data, keep_halves=args.halves,
                     overlap=args.overlap, batch_size=args.refine_batch_size)
    for path in _write_refined(out, result, even.voxel_size, even.origin):
        print(path)
    return 0


# ----------------------------------------------------------------------------------------------
# run = reconstruct + fit + refine


def cmd_run(args) -> int:
    if args.out is None:
        raise DDWError("no output folder: give --out DIR")
    if args.thickness is None:
        raise DDWError("give the tomogram thickness: --thickness Z (in output voxels)")
    even_ts, odd_ts, full_series, stem = _load_inputs(args)
    out = Path(args.out)
    t_start = time.perf_counter()
    results, voxel = _reconstruct(args, even_ts, odd_ts, full_series, want_full=args.full)
    for path in _write_reconstructions(out, stem, results, voxel, even_ts.origin):
        _info(args, f"wrote {path}")
    angles = even_ts.angles
    tilt_range = (float(min(angles.min(), odd_ts.angles.min())),
                  float(max(angles.max(), odd_ts.angles.max())))
    mask = _read_mask(args.mask, results["even"].shape)
    config = _fit_config(args, tilt_range=tilt_range, out_dir=out / "model", voxel_size=voxel)
    finished, interrupted = _run_fit(args, results["even"], results["odd"], config, mask=mask,
                                     resume=args.resume)
    _report_fit(args, finished, time.perf_counter() - t_start)
    if finished is None or (finished.stopped and interrupted):
        _info(args, "not refining after the interrupt; refine later with: deepdewedge refine "
                    f"--even {out / (stem + '_even.mrc')} --odd {out / (stem + '_odd.mrc')} "
                    f"--model CKPT --out {out / (stem + '_refined.mrc')}")
        return EXIT_INTERRUPTED
    model_path = finished.best_path or finished.latest_path
    result = _refine(args, model_path, results["even"], results["odd"],
                     keep_halves=not args.no_halves, overlap=args.overlap,
                     batch_size=args.refine_batch_size)
    for path in _write_refined(out / f"{stem}_refined.mrc", result, voxel, even_ts.origin):
        print(path)
    _info(args, f"done in {time.perf_counter() - t_start:.0f} s (model: {model_path})")
    return 0


# ----------------------------------------------------------------------------------------------
# demo


def cmd_demo(args) -> int:
    import numpy as np

    from .core import metrics
    from .core.halves import split_even_odd
    from .core.io import TiltSeries, write_mrc
    from .core.phantom import make_sample

    spec = DEMO_SIZES[args.size]
    out = Path(args.out)
    t_start = time.perf_counter()
    sample = make_sample(shape=spec["shape"], tilt_range=spec["tilt_range"], snr=spec["snr"],
                         seed=args.phantom_seed, pixel_size=DEMO_PIXEL_SIZE)
    series = TiltSeries(data=np.asarray(sample.tilt_series, dtype=np.float32),
                        angles=np.asarray(sample.angles, dtype=np.float64),
                        pixel_size=float(sample.pixel_size), name="demo")
    gt = np.asarray(sample.ground_truth, dtype=np.float32)
    even_ts, odd_ts = split_even_odd(series)
    # the reconstruction options the demo needs (same code path as 'reconstruct')
    args.thickness, args.bin, args.bin_mode = gt.shape[0], 1, "fourier"
    t0 = time.perf_counter()
    recs, voxel = _reconstruct(args, even_ts, odd_ts, series, want_full=True)
    t_fbp = time.perf_counter() - t0

    # the demo's fitting settings under any flag the user gave: fast preset, small cubes
    if args.preset is None:
        args.preset = "fast"
    own_size = args.subtomo_size is not None  # then the automatic strides suit it better
    for key, value in spec["fit"].items():
        if key == "strides" and own_size:
            continue
        if getattr(args, key) is None:
            setattr(args, key, value)
    tilt_range = (float(series.angles.min()), float(series.angles.max()))
    config = _fit_config(args, tilt_range=tilt_range, out_dir=out / "model", voxel_size=voxel)
    t0 = time.perf_counter()
    finished, interrupted = _run_fit(args, recs["even"], recs["odd"], config)
    t_fit = time.perf_counter() - t0
    if finished is None or (finished.stopped and interrupted):
        return EXIT_INTERRUPTED
    model_path = finished.best_path or finished.latest_path
    t0 = time.perf_counter()
    result = _refine(args, model_path, recs["even"], recs["odd"], keep_halves=False,
                     overlap=None, batch_size=args.refine_batch_size if hasattr(args, "refine_batch_size") else None)
    t_refine = time.perf_counter() - t0
    refined = np.asarray(result.refined, dtype=np.float32)

    paths = {
        "refined": write_mrc(out / "demo_refined.mrc", refined, voxel),
        "fbp": write_mrc(out / "demo_fbp.mrc", recs["full"], voxel),
        "ground_truth": write_mrc(out / "demo_ground_truth.mrc", gt, voxel),
    }
    half_mean = 0.5 * (recs["even"] + recs["odd"])
    figures = _demo_metrics(metrics, gt, recs["full"], half_mean, refined, tilt_range,
                            float(voxel[0]))
    figures["seconds"] = dict(reconstruct=round(t_fbp, 2), fit=round(t_fit, 2),
                              refine=round(t_refine, 2),
                              total=round(time.perf_counter() - t_start, 2))
    figures["size"] = args.size
    figures["shape"] = list(gt.shape)
    figures["epochs"] = int(finished.epochs_done)
    paths["figure"] = _demo_figure(out / "demo_comparison.png", recs["full"], refined, gt)
    import json

    with open(out / "demo_metrics.json", "w", encoding="utf-8") as fh:
        json.dump(figures, fh, indent=2)
    _print_demo(figures, paths, out)
    return 0


def _demo_metrics(metrics, gt, fbp_full, fbp_halves, refined, tilt_range, voxel: float) -> dict:
    """CC, FSC 0.143 resolution (Å) and wedge correlation of each volume against the truth."""
    import math

    def finite(x):
        x = float(x)
        return x if math.isfinite(x) else None  # JSON has no inf/NaN; printed as '—'

    tmin, tmax = tilt_range
    figures = {"cc": {}, "fsc_0143_angstrom": {}, "wedge_correlation": {}}
    for name, vol in (("fbp_full", fbp_full), ("fbp_even_odd_mean", fbp_halves),
                      ("refined", refined)):
        figures["cc"][name] = finite(metrics.cc(vol, gt))
        freqs, curve = metrics.fsc(vol, gt, voxel_size=voxel)
        figures["fsc_0143_angstrom"][name] = finite(metrics.fsc_crossing(freqs, curve, 0.143))
        figures["wedge_correlation"][name] = finite(metrics.wedge_correlation(vol, gt, tmin, tmax))
    return figures


def _print_demo(figures: dict, paths: dict, out: Path) -> None:
    names = (("fbp_full", "FBP (all tilts)"), ("fbp_even_odd_mean", "FBP even/odd mean"),
             ("refined", "DeepDeWedge refined"))
    print(f"demo ({figures['size']}, {figures['shape'][0]}×{figures['shape'][1]}×"
          f"{figures['shape'][2]}, {figures['epochs']} epochs, "
          f"{figures['seconds']['total']:.0f} s) — against the ground truth:")
    print(f"  {'':22s} {'CC':>7s} {'FSC0.143 [Å]':>13s} {'wedge CC':>9s}")
    def fmt(value, width, digits):
        return f"{value:{width}.{digits}f}" if value is not None else f"{'—':>{width}s}"

    for key, label in names:
        print(f"  {label:22s} {fmt(figures['cc'][key], 7, 3)} "
              f"{fmt(figures['fsc_0143_angstrom'][key], 13, 1)} "
              f"{fmt(figures['wedge_correlation'][key], 9, 3)}")
    for label, path in paths.items():
        print(f"  {label}: {path}")
    print(f"  metrics: {out / 'demo_metrics.json'}")


def _demo_figure(path: Path, fbp_vol, refined, gt) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import numpy as np
    from matplotlib.figure import Figure

    from .core.fourier import xz_log_power

    vols = (("FBP (all tilts)", fbp_vol), ("DeepDeWedge", refined), ("ground truth", gt))
    fig = Figure(figsize=(11, 10.5), dpi=100)
    axes = fig.subplots(3, 3)
    zc, yc = gt.shape[0] // 2, gt.shape[1] // 2
    for col, (title, vol) in enumerate(vols):
        vol = np.asarray(vol, dtype=np.float32)
        xy = vol[zc]
        lo, hi = np.percentile(xy, (1, 99))
        axes[0, col].imshow(xy, cmap="gray", vmin=lo, vmax=hi)
        axes[0, col].set_title(f"{title}\ncentral x–y slice")
        xz = vol[:, yc, :]
        lo, hi = np.percentile(xz, (1, 99))
        axes[1, col].imshow(xz, cmap="gray", vmin=lo, vmax=hi)
        axes[1, col].set_title("central x–z slice")
        power = xz_log_power(vol)
        axes[2, col].imshow(power, cmap="magma", vmin=np.percentile(power, 5),
                            vmax=np.percentile(power, 99.9))
        axes[2, col].set_title("Fourier x–z (log power)")
        for row in range(3):
            axes[row, col].set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------------------------
# entry point


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0, 2 for user errors, 130 on Ctrl-C)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        # torchrun … -m napari_deepdewedge.cli -- fit …: the '--' keeps torchrun's own parser
        # from reading our options (it mistakes --even for its --event-log-handler)
        argv = argv[1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a usage error (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USER_ERROR
    try:
        _apply_config(args, parser)
        return int(args.func(args) or 0)
    except DDWError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a folder that cannot be written, a full disk, …
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{_one_line(exc.strerror or exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
