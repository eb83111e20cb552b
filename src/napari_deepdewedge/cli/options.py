"""Every option of ``deepdewedge``, each group defined once, and the parser built from them.

An option is an :class:`Opt` (flags, destination, type, nargs, choices); a :class:`Group`
bundles options under one help heading; a command lists its groups (:data:`COMMANDS`). The
parser is built from these specs and config merging reads the same specs (``options_of``),
so nothing reaches into argparse's private attributes. No torch import here.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from .. import __version__
from ..core.fit.settings import ANY, BY_NAME, FRACTION, NON_NEGATIVE, POSITIVE, PRESETS, Setting, cli_settings

PRESET_NAMES = tuple(PRESETS)


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

    parse.numeric = True  # config merging refuses YAML booleans for these
    return parse


positive_int = _number(int, lambda v: v >= 1, "at least 1")
non_negative_int = _number(int, lambda v: v >= 0, "0 or more")
fraction = _number(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
positive_float = _number(float, lambda v: v > 0, "positive")
any_int = _number(int, lambda v: True, "a whole number")
any_float = _number(float, lambda v: True, "a number")


@dataclass(frozen=True)
class Opt:
    """One option. ``kind``: ``value`` (takes values), ``append`` (repeatable: a list of
    values), ``switch`` (``store_true``) or ``bool`` (``--x/--no-x``). A first flag without a leading ``-`` is a positional (``nargs='?'``)."""

    flags: tuple[str, ...]
    dest: str
    help: str = ""
    type: Callable | None = None
    nargs: int | str | None = None
    metavar: str | tuple | None = None
    choices: tuple | None = None
    kind: str = "value"
    required: bool = False

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    def add_to(self, target) -> None:
        if self.positional:
            target.add_argument(self.flags[0], nargs="?", metavar=self.metavar, help=self.help)
            return
        kw = dict(dest=self.dest, help=self.help)
        if self.kind == "switch":
            target.add_argument(*self.flags, action="store_true", **kw)
            return
        if self.kind == "bool":
            target.add_argument(*self.flags, action=argparse.BooleanOptionalAction, default=None, **kw)
            return
        if self.kind == "append":
            target.add_argument(*self.flags, action="append", type=self.type, metavar=self.metavar,
                                default=None, **kw)
            return
        target.add_argument(*self.flags, type=self.type, nargs=self.nargs, metavar=self.metavar,
                            choices=self.choices, default=None, required=self.required, **kw)


@dataclass(frozen=True)
class Group:
    """Options under one help heading; ``exclusive`` lists dests of which one at most is given."""

    title: str | None
    options: tuple[Opt, ...]
    exclusive: tuple[str, ...] = ()

    def add_to(self, parser) -> None:
        target = parser.add_argument_group(self.title) if self.title else parser
        either = target.add_mutually_exclusive_group() if self.exclusive else None
        for opt in self.options:
            opt.add_to(either if opt.dest in self.exclusive else target)


# ----------------------------------------------------------------------------------------------
# the option groups (each defined once)

QUIET = Group(None, (Opt(("-q", "--quiet"), "quiet", "no progress bars or info lines", kind="switch"),))
DEVICE = Group(None, (Opt(BY_NAME["device"].flag.flags, "device", BY_NAME["device"].help,
                          metavar=BY_NAME["device"].flag.metavar),))
CONFIG = Group(None, (Opt(("--config",), "config", "YAML config (our flat layout or the original "
                          "DeepDeWedge layout); explicit flags win", metavar="FILE.yaml"),))
OVERWRITE = Group(None, (Opt(("--overwrite",), "overwrite", "replace output files that exist (for "
                             "a fit: start afresh in a folder holding an earlier fit's "
                             "checkpoints)", kind="switch"),))


def out_option(metavar: str, help: str, *, required: bool = False) -> Group:
    return Group(None, (Opt(("--out",), "out", help, metavar=metavar, required=required),))


ANGLE_FILE = Opt(("--angles",), "angles", "tilt angles from IMOD .tlt/.rawtlt, SerialEM .mdoc, "
                 "AreTomo .aln, Warp .xml/.tomostar or RELION 5 .star; default: such a file beside "
                 "the stack with the same name (also without _EVN/_ODD)", metavar="FILE")

STACK_INPUT = Group("tilt-series input (one stack, or two frame-half stacks)", (
    Opt(("tiltseries",), "tiltseries", "aligned tilt series (.mrc .st .ali …); split into even/odd "
        "halves by the parity of the angle-sorted index", metavar="TILTSERIES"),
    Opt(("--even-odd",), "even_odd", "instead of TILTSERIES: two tilt series made from even and "
        "odd movie frames (Warp/AreTomo *_EVN/*_ODD); each is reconstructed in full", nargs=2,
        metavar=("EVN", "ODD")),
    ANGLE_FILE,
    Opt(("--tilt-range",), "tilt_range", "tilt angles MIN, MIN+STEP, …, MAX in degrees (default: "
        "a .tlt/.rawtlt beside the stack with the same name)", type=any_float, nargs=3,
        metavar=("MIN", "MAX", "STEP")),
    Opt(("--exclude",), "exclude", "views left out, 1-based as IMOD counts (e.g. 1,2,40 or "
        "1-3,40), or an IMOD .com whose EXCLUDELIST to use; added to the views the metadata marks "
        "excluded. A stack that still holds them has them dropped", metavar="VIEWS"),
    Opt(("--voxel-size",), "voxel_size", "pixel size of the stack in Å, overriding the MRC header "
        "(for headers that say 0 or 1 Å)", type=positive_float, metavar="Å"),
    Opt(("--tilt-axis-x",), "tilt_axis_x", "the tilt axis runs along X in the stack (it is "
        "transposed to Y)", kind="switch"),
), exclusive=("angles", "tilt_range"))


def reconstruction_options(*, thickness_required: bool) -> Group:
    return Group("reconstruction (weighted back-projection)", (
        Opt(("--thickness",), "thickness", "tomogram thickness in output (binned) voxels",
            type=positive_int, metavar="Z", required=thickness_required),
        Opt(("--bin",), "bin", "bin the projections by N before reconstructing (default 1)",
            type=positive_int, metavar="N"),
        Opt(("--bin-mode",), "bin_mode", "binning by Fourier cropping or by averaging N×N pixels "
            "(default fourier)", choices=("fourier", "average")),
        Opt(("--full",), "full", "also write the reconstruction from all projections "
            "(<stem>_full.mrc)", kind="switch"),
        Opt(("--ctf",), "ctf", "defocus per view for phase flipping: CTFFIND .txt, IMOD "
            ".defocus, RELION 5 .star, Warp .xml, SerialEM .mdoc (nominal: warned). Default: "
            "such a file beside the stack (<stem>.defocus, <stem>_ctffind4.txt, <stem>_CTF.txt "
            "…) or the fitted defoci in the angle metadata (RELION, Warp)", metavar="FILE"),
        Opt(("--no-ctf",), "no_ctf", "do not phase flip, even when a defocus file is found",
            kind="switch"),
        Opt(("--voltage",), "voltage", "microscope voltage in kV when the CTF file does not say "
            "(default 300)", type=positive_float, metavar="KV"),
        Opt(("--cs",), "cs", "spherical aberration in mm when the CTF file does not say "
            "(default 2.7)", type=_number(float, lambda v: 0 <= v <= 10, "in 0–10 mm"),
            metavar="MM"),
        Opt(("--amplitude-contrast",), "amplitude_contrast", "amplitude contrast fraction when "
            "the CTF file does not say (default 0.07)", type=fraction, metavar="A"),
        Opt(("--ctf-strip",), "ctf_strip", "phase-flip strip width in output pixels (default: "
            "per tilt, narrow enough that the defocus gradient costs < π/8 of phase at Nyquist)",
            type=positive_int, metavar="PX"),
        Opt(("--invert",), "invert", "invert the contrast of the tomograms (dense material "
            "bright; by default it is dark, as in the images)", kind="switch"),
    ), exclusive=("ctf", "no_ctf"))


HALVES_INPUT = Group("inputs (or from --config)", (
    Opt(("--even", "--tomo0"), "even", "tomogram of half 0", metavar="E.mrc"),
    Opt(("--odd", "--tomo1"), "odd", "tomogram of half 1", metavar="O.mrc"),
))

WEDGE_INPUT = Group("missing wedge (or from --config)", (
    Opt(ANGLE_FILE.flags, "angles", "the tilt series' angles (.tlt/.rawtlt, .mdoc, .aln, Warp "
        ".xml/.tomostar, RELION .star); the min and max of the views it keeps set the wedge",
        metavar="FILE"),
    Opt(BY_NAME["tilt_range"].flag.flags, "tilt_range", BY_NAME["tilt_range"].help,
        type=any_float, nargs=2, metavar=BY_NAME["tilt_range"].flag.metavar),
), exclusive=("angles", "tilt_range"))

FIT_HALVES_INPUT = Group("inputs: one or more half pairs (or from --config)", (
    Opt(("--even", "--tomo0"), "even", "tomogram of half 0; repeat for several tomograms (paired in "
        "order with --odd)", metavar="E.mrc", kind="append"),
    Opt(("--odd", "--tomo1"), "odd", "tomogram of half 1; repeat like --even", metavar="O.mrc",
        kind="append"),
    Opt(("--pairs",), "pairs", "instead of --even/--odd: a text file with one pair per line, "
        "'EVEN ODD [ANGLES.tlt | MIN,MAX]' (paths relative to the file; # comments)",
        metavar="LIST.txt"),
    Opt(("--mask",), "mask", "sample mask: 'auto' (computed from each pair's halves, as "
        "'deepdewedge mask' does) or a binary mask file of the tomogram's shape; one for each pair "
        "(repeat, in --even order), one 'auto' for all, or none", metavar="ROI.mrc|auto", kind="append"),
    Opt(("--init-from",), "init_from", "start from the weights of a fitted model (fine-tuning: "
        "fresh optimizer and schedule, same U-Net; unlike --resume, which continues a run)",
        metavar="MODEL.pt"),
))

MASK_OPTION = Opt(("--mask",), "mask", "sample mask: 'auto' (computed from the halves, as 'deepdewedge "
                  "mask' does) or a binary mask file, same shape as the tomograms", metavar="ROI.mrc|auto")

#: the settings of the automatic mask (core.fit.sample_mask.AutoMaskParams; also read from --config
#: by 'fit --mask auto' and 'run --mask auto')
MASK_SETTINGS = Group("automatic mask (core.fit.sample_mask; defaults chosen on phantoms, docs/masks.md)", (
    Opt(("--mask-bin",), "mask_bin", "bin the halves by this factor first (default 0 = automatic: "
        "at least 2, ≤ 1 M binned voxels)", type=non_negative_int, metavar="B"),
    Opt(("--mask-tiles",), "mask_tiles", "columns per Y and X whose agreement profiles are combined "
        "(default 4)", type=positive_int, metavar="N"),
    Opt(("--mask-max-tilt",), "mask_max_tilt", "largest slab tilt searched, degrees (default 30)",
        type=any_float, metavar="DEG"),
    Opt(("--mask-threshold",), "mask_threshold", "the slab's agreement must exceed this many noise "
        "spreads (default 3)", type=positive_float, metavar="K"),
    Opt(("--mask-level",), "mask_level", "the slab's surfaces lie where its agreement crosses this "
        "fraction of the peak (default 0.5)", type=fraction, metavar="F"),
    Opt(("--mask-margin",), "mask_margin", "voxels added beyond both surfaces (default 12: about a "
        "particle radius at 10 Å per voxel)", type=any_float, metavar="VOXELS"),
))

MASK_INPUT = Group("inputs (or from --config)", (
    Opt(("--even", "--tomo0"), "even", "tomogram of half 0", metavar="E.mrc"),
    Opt(("--odd", "--tomo1"), "odd", "tomogram of half 1", metavar="O.mrc"),
))


def fitting_options(*, with_mask: bool) -> "Group":
    """The fitting settings (``with_mask``: include the single-pair ``--mask``)."""
    return Group(FITTING.title, tuple(o for o in FITTING.options if with_mask or o.dest != "mask"))


#: the argparse type of a setting, from its type and limits (core/fit/settings.py)
_TYPES = {(int, POSITIVE): positive_int, (int, NON_NEGATIVE): non_negative_int, (int, ANY): any_int,
          (float, POSITIVE): positive_float, (float, FRACTION): fraction, (float, ANY): any_float,
          (tuple, POSITIVE): positive_int}


def setting_option(setting: Setting) -> Opt:
    """The option of one fit setting, from its declaration."""
    flag = setting.flag
    if setting.type is bool:
        return Opt(flag.flags, setting.name, setting.help, kind="bool")
    kind = None if setting.choices else _TYPES[(setting.type, setting.limits)]
    return Opt(flag.flags, setting.name, setting.help, type=kind, nargs=flag.nargs,
               metavar=flag.metavar, choices=setting.choices)


def _fitting_group() -> Group:
    """--preset, the declared settings (--mask after --min-mask-fraction, as it qualifies it),
    --resume."""
    options = [Opt(("--preset",), "preset", "fast (48³ cubes, 16 channels), balanced (96³, 32) or "
                   "default (96³, 64); default: 'default' on a CUDA GPU, 'fast' otherwise",
                   metavar="NAME")]
    for setting in cli_settings():
        options.append(setting_option(setting))
        if setting.name == "min_mask_fraction":
            options.append(MASK_OPTION)
    options.append(Opt(("--resume",), "resume", "continue fitting from a checkpoint (settings you "
                       "do not give again are the checkpoint's; see docs/cli.md for what may "
                       "change)", metavar="CKPT"))
    return Group("fitting (default: the --preset values, then core.fit.config.FitConfig)",
                 tuple(options))


FITTING = _fitting_group()


def refine_tiles(*batch_flags: str) -> Group:
    return Group("refinement tiles", (
        Opt(("--overlap",), "overlap", "overlap of the tiles in voxels (default ⌈S/3⌉)",
            type=non_negative_int, metavar="O"),
        Opt(batch_flags, "refine_batch_size", "tiles per batch (default 4)", type=positive_int,
            metavar="B"),
    ))


PROJECT = Group("a project: TILTSERIES a folder, a quoted glob or a list file (.txt)", (
    Opt(("--fit-on",), "fit_on", "fit on these tilt series only (stems 'TS_01,TS_04' or a glob "
        "over stems 'TS_0*'); every tomogram is refined. Default: all", metavar="STEMS"),
))

REFINE_INPUT = Group("inputs: one pair, or many refined with one model (or from --config)", (
    Opt(("--even", "--tomo0"), "even", "tomogram of half 0; repeat it, or give a quoted glob "
        "('rec/*_even.mrc'), for many", metavar="E.mrc", kind="append"),
    Opt(("--odd", "--tomo1"), "odd", "tomogram of half 1 (repeatable); left out: found beside "
        "each even file by its stem (_even → _odd, _EVN → _ODD)", metavar="O.mrc", kind="append"),
    Opt(("--pairs",), "pairs", "a text file with one pair per line, 'EVEN [ODD [ANGLES.tlt | "
        "MIN,MAX]]' (as for fit; the angles set that tomogram's wedge instead of the model's; # "
        "comments, paths relative to the file)", metavar="LIST.txt"),
))

REFINE_MODEL = Group(None, (
    Opt(("--model",), "model", "checkpoint written by 'fit'", metavar="CKPT"),
    Opt(("--halves",), "halves", "also write the two per-half results and their signed "
        "difference (OUT_half0/_half1/_consistency.mrc)", kind="switch"),
))
NO_HALVES = Group(None, (Opt(("--no-halves",), "no_halves", "do not write the per-half results "
                             "and their difference", kind="switch"),
                         Opt(("--refined-format",), "refined_format", "format of the refined "
                             "tomograms: mrc (default) or zarr (OME-Zarr 0.4 pyramids, "
                             "DIR/<stem>_refined.zarr); one tilt series only",
                             choices=("mrc", "zarr"))))
DEMO = Group("demo", (
    Opt(("--size",), "size", "phantom size: tiny (seconds, for tests), small (default; a few "
        "minutes on a laptop CPU), medium", choices=("tiny", "small", "medium")),
    Opt(("--phantom-seed",), "phantom_seed", "phantom seed (default: a held-out seed)", type=any_int),
))
NAPARI = Group(None, (
    Opt(("--no-sample",), "no_sample", "start without the sample data", kind="switch"),
    Opt(("--screenshot",), "screenshot", "save a screenshot of the window and close (for "
        "documentation)", metavar="PNG"),
))


@dataclass(frozen=True)
class Command:
    help: str
    description: str
    groups: tuple[Group, ...]


COMMANDS: dict[str, Command] = {
    "reconstruct": Command(
        "even/odd (and full) tomograms from a tilt series by weighted back-projection",
        "Reconstruct the two half tomograms (DIR/<stem>_even.mrc, <stem>_odd.mrc) from one tilt "
        "series (split by angle parity) or from two frame-half series (--even-odd EVN ODD, then "
        "TILTSERIES is omitted).",
        (STACK_INPUT, reconstruction_options(thickness_required=True), DEVICE,
         out_option("DIR", "output folder", required=True), OVERWRITE, QUIET)),
    "fit": Command(
        "fit the U-Net on one or more even/odd tomogram pairs (checkpoints + losses.csv)",
        "Fit one 3D U-Net on sub-tomograms of one or more half-tomogram pairs (repeat --even/--odd, "
        "or --pairs LIST, or file lists in --config); each pair keeps its own tilt range (--angles/"
        "--tilt-range for all, else a .tlt beside each pair), standardization and mask. Ctrl-C stops cleanly after "
        "the current step with a 'stopped' checkpoint (exit 130); --resume continues. A folder "
        "that holds an earlier fit's checkpoints is refused unless --resume or --overwrite. "
        "Several GPUs: torchrun --nproc-per-node N -m napari_deepdewedge.cli -- fit …",
        (FIT_HALVES_INPUT, WEDGE_INPUT, fitting_options(with_mask=False), CONFIG, DEVICE,
         out_option("DIR", "folder for checkpoints and losses.csv (required, or from --config)"),
         OVERWRITE, QUIET)),
    "refine": Command(
        "apply a fitted model to both halves and average (the refined tomogram)",
        "Refine both half tomograms with a fitted model and average them. With --halves also "
        "write OUT_half0.mrc, OUT_half1.mrc and OUT_consistency.mrc (the signed half0 − half1 "
        "difference: where the model is not consistent). Halves may be OME-Zarr folders "
        "(.zarr, NGFF 0.4 or 0.5). Many pairs (repeated --even/--odd, a "
        "glob, --pairs): one model for all, DIR/<stem>_refined.mrc each; finished outputs are "
        "skipped (a stopped batch continues), --overwrite redoes them. Several processes: "
        "torchrun --nproc-per-node N -m napari_deepdewedge.cli -- refine … (each takes its "
        "share of the tomograms).",
        (REFINE_INPUT, REFINE_MODEL, refine_tiles("--batch-size", "--refine-batch-size"), CONFIG,
         DEVICE, out_option("OUT.mrc|OUT.zarr|DIR", "refined tomogram (one pair; .zarr: an "
                    "OME-Zarr 0.4 pyramid), or the folder of <stem>_refined.mrc files (many)"),
         OVERWRITE, QUIET)),
    "run": Command(
        "reconstruct + fit + refine in one go: DIR/<stem>_refined.mrc",
        "The whole pipeline on one tilt series: DIR/<stem>_even.mrc, _odd.mrc, DIR/model/ "
        "(checkpoints, losses.csv), DIR/<stem>_refined.mrc and the per-half results "
        "(_refined_half0/_half1/_consistency.mrc). TILTSERIES a folder, quoted glob or list "
        "file: a project — every stack reconstructed (angle file beside it), one fit on all or "
        "--fit-on, every tomogram refined; DIR/job.json records each step, so the same command "
        "continues an interrupted project without redoing finished work.",
        (STACK_INPUT, PROJECT, reconstruction_options(thickness_required=False), FITTING, CONFIG,
         refine_tiles("--refine-batch-size"), NO_HALVES, DEVICE,
         out_option("DIR", "output folder (required)"), OVERWRITE, QUIET)),
    "mask": Command(
        "an automatic sample mask from the two halves (where the specimen is)",
        "Compute a sample mask from a half pair: where the two halves agree (their local "
        "covariance, which noise does not have), as a slab that may be tilted; written as an MRC "
        "of 0/1 with the halves' voxel size and origin. 'fit --mask auto' and the Fit dock's "
        "Auto compute the same mask with the default settings.",
        (MASK_INPUT, MASK_SETTINGS, CONFIG, DEVICE, out_option("MASK.mrc", "mask file to write "
         "(required)"), OVERWRITE, QUIET)),
    "demo": Command(
        "the whole pipeline on a built-in synthetic phantom, with figures and metrics",
        "Simulate a noisy tilt series of a synthetic phantom (a held-out seed), reconstruct, fit "
        "(fast preset, small cubes), refine, and compare with the ground truth: MRC files, a PNG "
        "figure and CC / FSC / wedge metrics.",
        (DEMO, FITTING, CONFIG, refine_tiles("--refine-batch-size"), DEVICE,
         out_option("DIR", "output folder", required=True),
         OVERWRITE, QUIET)),
    "napari": Command(
        "open napari with the sample tilt series and the DeepDeWedge dock",
        "Open napari with the DeepDeWedge dock, and the synthetic sample tilt series loaded "
        "(needs a display).",
        (NAPARI,)),
}


def options_of(command: str) -> dict[str, Opt]:
    """``dest → Opt`` of one command (what config merging converts values with)."""
    return {opt.dest: opt for group in COMMANDS[command].groups for opt in group.options}


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
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for group in command.groups:
            group.add_to(p)
    return parser
