"""Every fit setting declared once: its presets, limits, help, command-line flag, YAML keys and
Fit-dock row. ``FitConfig`` (:mod:`.config`) holds the values and their engine defaults; the
command line (``cli/options.py``), the YAML layouts (``cli/config.py``) and the Fit dock
(``widgets/_fit.py``) are built from :data:`SETTINGS`, and ``tests/test_settings.py`` fails when
a ``FitConfig`` field has no row here, or a row lacks its flag, key or dock field (or a reason
why it has none).

Adding a setting: a ``FitConfig`` field (with its default), one :class:`Setting` row below
(its ``resume=`` says whether a resumed fit may change it), and the engine code that uses it.
No torch import here (the CLI and the pipeline read this).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .schedule import SCHEDULES
from .signals import BEST_BY

#: how a value is checked, on the command line and by ``FitConfig.validate``
POSITIVE, NON_NEGATIVE, FRACTION, ANY = "positive", "non_negative", "fraction", "any"


@dataclass(frozen=True)
class Flag:
    """The command-line option of a setting. ``shared``: declared by an option group every
    command has (``--device``, ``--out``, ``--tilt-range`` of the wedge input), not by the
    fitting group."""

    flags: tuple[str, ...]
    metavar: str | tuple | None = None
    nargs: int | None = None
    shared: bool = False


@dataclass(frozen=True)
class DockRow:
    """A setting's row in the Fit dock. ``join``: on the same form line as the row before it
    (``tip`` is then the widget's own tooltip). The widget follows the setting: a check box for a
    bool, a list for choices, else a spin box (``lo``/``hi``/``step``/``decimals``/``suffix``).
    ``special``: the dock builds the widget itself (device list, folder, the tilt range filled
    in from the halves)."""

    label: str
    tip: str
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    decimals: int | None = None
    suffix: str = ""
    join: bool = False
    special: bool = False


@dataclass(frozen=True)
class Resume:
    """What a resumed fit may do with a setting (``core.fit.resume``). ``fixed``: it defines the
    data, the model, the sampling or the loss, so a resume keeps the checkpoint's value and
    refuses a run that asks for another; else the resuming run's value is used. ``why``: the
    reason (fixed) or what the change means (changeable), named in messages and docs."""

    fixed: bool
    why: str


def FIXED(why: str) -> Resume:
    return Resume(True, why)


def CHANGEABLE(why: str) -> Resume:
    return Resume(False, why)


@dataclass(frozen=True)
class Setting:
    """One fit setting. ``name`` is the ``FitConfig`` field, the command line's destination and
    our YAML key; ``fields`` the ``FitConfig`` fields it sets when not just ``name``.
    ``cli``/``dock``: a :class:`Flag`/:class:`DockRow`, or a string saying why there is none.
    ``yaml``: our flat layout reads it (every setting with a flag, and config-only ones);
    ``ddw``: its key in the original DeepDeWedge layout (``section.key`` for nested mappings).
    ``resume``: a :class:`Resume` (``FIXED(why)`` or ``CHANGEABLE(why)``), for every field it sets."""

    name: str
    type: type
    help: str
    cli: Flag | str
    dock: DockRow | str
    limits: str = ANY
    presets: dict = field(default_factory=dict)
    choices: tuple | None = None
    yaml: bool = True
    ddw: str | None = None
    fields: tuple[str, ...] = ()
    resume: Resume = field(kw_only=True)

    @property
    def config_fields(self) -> tuple[str, ...]:
        return self.fields or (self.name,)

    @property
    def flag(self) -> Flag | None:
        return self.cli if isinstance(self.cli, Flag) else None

    @property
    def row(self) -> DockRow | None:
        return self.dock if isinstance(self.dock, DockRow) else None


SETTINGS: tuple[Setting, ...] = (
    Setting("subtomo_size", int, "edge of the fitting cubes; a multiple of 2^depth",
            Flag(("--subtomo-size",), "S"),
            DockRow("Sub-tomogram size", "Edge of the training sub-tomograms in voxels (a "
                    "multiple of 2^depth). Larger cubes see more context but need more "
                    "memory; 96 is the published value. The preset's size is lowered to the largest "
                    "that fits the halves (a cube is cut at √2 × its edge, room for rotations); "
                    "a size you type is kept.", lo=8, hi=256, step=8, suffix=" px"),
            limits=POSITIVE, presets=dict(fast=48, balanced=96, default=96), ddw="subtomo_size",
            resume=FIXED("defines the cubes and the network input")),
    Setting("channels", int, "U-Net channels at the first level", Flag(("--channels",), "C"),
            DockRow("Channels, depth", "Width of the network (channels of the first level; 64 "
                    "as published, 32 nearly as good and much faster) and its number of "
                    "levels.", lo=2, hi=256),
            limits=POSITIVE, presets=dict(fast=16, balanced=32, default=64),
            ddw="unet_params_dict.chans",
            resume=FIXED("defines the U-Net")),
    Setting("depth", int, "U-Net levels (down-samplings)", Flag(("--depth",), "D"),
            DockRow("Depth", "Number of down-sampling levels of the U-Net (3 is standard).",
                    lo=1, hi=5, join=True),
            limits=POSITIVE, presets=dict(fast=3, balanced=3, default=3),
            ddw="unet_params_dict.num_downsample_layers",
            resume=FIXED("defines the U-Net")),
    Setting("epochs", int, "fitting epochs (default 50; with --resume the new total)",
            Flag(("--epochs",), "N"),
            DockRow("Epochs", "How many passes over all training cubes. Good results often "
                    "appear after a few dozen; the paper fits hundreds. Raise it to continue a "
                    "finished fit with Resume.", lo=1, hi=100000),
            limits=POSITIVE, ddw="num_epochs",
            resume=CHANGEABLE("the new total; must be above the checkpoint's completed epochs")),
    Setting("batch_size", int, "cubes per optimizer step (default 5)",
            Flag(("--batch-size",), "B"),
            DockRow("Batch size", "Cubes per optimizer step. Lower it if the GPU runs out of "
                    "memory.", lo=1, hi=256),
            limits=POSITIVE, ddw="batch_size",
            resume=FIXED("defines the sampling order (exact resume)")),
    Setting("lr", float, "Adam learning rate (default 4e-4)", Flag(("--lr",), "LR"),
            DockRow("Learning rate", "Step size of the Adam optimizer; 0.0004 is the published "
                    "value. Lower it if the loss jumps around.", lo=1e-6, hi=1e-1, step=1e-4,
                    decimals=6),
            limits=POSITIVE, ddw="adam_params_dict.lr",
            resume=CHANGEABLE("the optimizer continues with the new learning rate")),
    Setting("lr_schedule", str, "constant (default, the original's) or warmup_cosine (linear "
            "warm-up over --warmup-epochs, then a cosine down to 0.1·LR at the last epoch; "
            "docs/benchmarks.md, 'Time to quality')", Flag(("--lr-schedule",)),
            DockRow("LR schedule", "constant (the published way) or warmup_cosine: a linear "
                    "warm-up over the given epochs, then a cosine down to 0.1 × the rate at the "
                    "last epoch. With a rate of 0.001 and 1 warm-up epoch a fit reaches a given "
                    "quality sooner, but is no better after many epochs (README, 'Time to "
                    "quality')."),
            choices=SCHEDULES,
            resume=CHANGEABLE("the learning-rate schedule from now on")),
    Setting("warmup_epochs", int, "with --lr-schedule warmup_cosine: warm-up epochs (default 0)",
            Flag(("--warmup-epochs",), "N"),
            DockRow("Warm-up", "warmup_cosine: epochs of linear warm-up to the learning rate.",
                    lo=0, hi=10000, suffix=" ep", join=True),
            limits=NON_NEGATIVE,
            resume=CHANGEABLE("the learning-rate schedule from now on")),
    Setting("early_stop_patience", int, "stop when the --best-by measure has not improved for N "
            "epochs (default 0 = never); --epochs is then the maximum", Flag(("--early-stop",), "N"),
            DockRow("Early stop", "Stop when the validation loss has not improved for this many "
                    "epochs (0 = never).", lo=0, hi=10000, suffix=" ep"),
            limits=NON_NEGATIVE,
            resume=CHANGEABLE("when to stop early from now on")),
    Setting("best_by", str, "what picks best.pt and --early-stop watches: val_loss (default), "
            "or a signal measured without ground truth: fsc_area, fsc_143, wedge_fsc, consistency, "
            "val_wedge (docs/stopping.md)", Flag(("--best-by",)),
            "the dock keeps best.pt by validation loss (the default; docs/stopping.md) and plots "
            "the signals on the loss plot's second axis",
            choices=BEST_BY,
            resume=CHANGEABLE("what picks best.pt and ends the fit early from now on")),
    Setting("signal_every", int, "measure the signals (losses.csv columns) every N epochs and at "
            "the last epoch (default 5; 0 = never; 1 with a --best-by signal)",
            Flag(("--signal-every",), "N"),
            "the dock measures the signals at the default interval (FitConfig.signal_every)",
            limits=NON_NEGATIVE,
            resume=CHANGEABLE("when the progress signals are measured from now on")),
    Setting("val_fraction", float, "fraction of cubes held out for validation (default 0.1)",
            Flag(("--val-fraction",), "F"),
            DockRow("Validation", "Fraction of the cubes held out to check the fit on data it "
                    "does not learn from (the orange curve). 0 disables validation.", lo=0.0,
                    hi=0.5, step=0.05),
            limits=FRACTION, ddw="val_fraction",
            resume=FIXED("defines which cubes are fitting and validation cubes")),
    Setting("update_every", int, "update the input cubes' missing wedges every N epochs "
            "(0 = never)", Flag(("--update-every",), "N"),
            DockRow("Wedge update", "Every this many epochs the network's own prediction fills "
                    "the missing wedge of the inputs (0 = never). The published value is 10.",
                    lo=0, hi=10000, suffix=" ep"),
            limits=NON_NEGATIVE, ddw="update_subtomo_missing_wedges_every_n_epochs",
            resume=CHANGEABLE("wedge-update schedule from now on")),
    Setting("preview_every", int, "epochs between previews of the refined slab (0 = off)",
            "a terminal shows no preview",
            DockRow("Preview every", "Every this many epochs the current model refines the "
                    "slab around the slice you are looking at and shows it as the layer "
                    "'{preview}' (0 = off).", lo=0, hi=10000, suffix=" ep"),
            limits=NON_NEGATIVE, yaml=False,
            resume=CHANGEABLE("previews from now on")),
    Setting("validate_every", int, "validation loss every N epochs",
            Flag(("--validate-every",), "N"),
            "every epoch in the dock: the loss plot shows each one",
            limits=POSITIVE, ddw="check_val_every_n_epochs",
            resume=CHANGEABLE("validation schedule from now on")),
    Setting("checkpoint_every", int, "keep a periodic checkpoint every N epochs (0 = none)",
            Flag(("--checkpoint-every",), "N"),
            "the dock keeps latest/best/stopped checkpoints; periodic ones are for long CLI runs",
            limits=NON_NEGATIVE, ddw="save_model_every_n_epochs",
            resume=CHANGEABLE("periodic checkpoints from now on")),
    Setting("strides", tuple, "cube grid strides (default: automatic)",
            Flag(("--strides",), ("SZ", "SY", "SX"), nargs=3),
            "automatic in the dock (a grid of at least 150 cubes)",
            limits=POSITIVE, ddw="subtomo_extraction_strides",
            resume=FIXED("defines the cube grid")),
    Setting("min_mask_fraction", float, "with --mask: keep cubes with at least this fraction "
            "inside (default 0.3)", Flag(("--min-mask-fraction",), "F"),
            "the dock's ROI mask row uses the default (30 %, said in its tip)",
            limits=FRACTION, ddw="min_nonzero_mask_fraction_in_subtomo",
            resume=FIXED("defines which cubes are kept")),
    Setting("tilt_range", tuple, "tilt range in degrees (asymmetric allowed, e.g. -54 62)",
            Flag(("--tilt-range",), ("MIN", "MAX"), nargs=2, shared=True),
            DockRow("Tilt range", "Tilt range of the data (filled in from the halves); it "
                    "defines the missing wedge.", lo=-89.9, hi=89.9, decimals=1, suffix="°",
                    special=True),
            ddw="mw_angle", fields=("tilt_min", "tilt_max"),
            resume=FIXED("defines the missing wedge")),
    Setting("standardize", bool, "standardize each half to zero mean / unit variance "
            "(default on)", Flag(("--standardize",)),
            "always on in the dock, as published", ddw="standardize_full_tomos",
            resume=FIXED("defines the data the network sees")),
    Setting("seed", int, "random seed (default 0)", Flag(("--seed",)),
            "the dock's fits use seed 0 (reproducible); the CLI varies it", ddw="seed",
            resume=FIXED("defines the cube split, the weights and the sampling")),
    Setting("device", str, "auto, cpu, cuda, cuda:N or mps (default: auto = cuda → mps → cpu)",
            Flag(("--device",), "D", shared=True),
            DockRow("Device", "", special=True), ddw="gpu",
            resume=CHANGEABLE("where to run")),
    Setting("out_dir", str, "folder for checkpoints and losses.csv",
            Flag(("--out",), "DIR", shared=True),
            DockRow("Output folder", "Folder for checkpoints (latest.pt, best.pt, stopped.pt) "
                    "and losses.csv. Resume and Refine read from it.", special=True),
            yaml=False,
            resume=CHANGEABLE("where files go")),
    Setting("voxel_size", tuple, "voxel size (Z, Y, X) in Å, recorded in the checkpoint",
            "read from the halves' MRC headers", "read from the layers' scale",
            yaml=False,
            resume=FIXED("belongs to the tomograms: another value means other data")),
    Setting("residual", bool, "the U-Net adds its normalized input to its output (off: "
            "measured better, see FitConfig)",
            "config files only (the original's unet_params_dict.residual)",
            "off in the dock (measured better)", ddw="unet_params_dict.residual",
            resume=FIXED("defines the U-Net")),
    Setting("wedge_weight", float, "weight of the missing-wedge part of the loss (the paper's 2)",
            "fixed at the paper's value (ablations: bench/)", "fixed at the paper's value",
            yaml=False,
            resume=FIXED("defines the loss being minimized")),
    Setting("resampling", str, "how cubes are rotated: trilinear or bspline3 (the original's)",
            "an ablation setting (bench/quality_peers.py)", "an ablation setting", yaml=False,
            resume=FIXED("defines how fitting cubes are rotated and the matching filter of its inputs")),
    Setting("update_val_wedges", bool, "validation cubes get the wedge updates too",
            "an ablation setting (bench/quality_peers.py)", "an ablation setting", yaml=False,
            resume=FIXED("defines the validation cubes (and so best.pt)")),
    Setting("ctf_loss", bool, "CTF-aware loss: the prediction is multiplied by the target half's "
            "tilt-averaged |CTF| before the masked loss, so the network gives the CTF-free volume "
            "(default off; needs phase-flipped halves and their defoci: the <stem>_ctf.json that "
            "'reconstruct --ctf FILE' writes, or 'run --ctf FILE'; docs/benchmarks-ctf.md)",
            Flag(("--ctf-loss",)),
            "not in the dock yet: the Fit dock's layers carry no defoci (command line: fit/run "
            "--ctf-loss)",
            resume=FIXED("defines the loss being minimized (and what the network outputs: CTF-free or not)")),
    Setting("compile", bool, "torch.compile the U-Net (CUDA, long runs only)",
            "decided by core.perf.decide_compile", "decided by core.perf.decide_compile",
            yaml=False,
            resume=CHANGEABLE("a speed setting (core.perf.decide_compile)")),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

#: the presets: each setting's value per preset, gathered from the rows. fast: a laptop CPU;
#: balanced: a small GPU, nearly as good; default: a GPU (the published settings)
PRESETS: dict[str, dict] = {}
for _s in SETTINGS:
    for _preset, _value in _s.presets.items():
        PRESETS.setdefault(_preset, {})[_s.name] = _value
del _s, _preset, _value


def resume_table(fixed: bool) -> dict[str, str]:
    """``FitConfig`` field → why, for the fields a resume keeps fixed (``fixed=True``) or lets
    change (``fixed=False``); from the rows' ``resume=`` (``core.fit.resume`` reads these)."""
    return {f: s.resume.why for s in SETTINGS if s.resume.fixed == fixed for f in s.config_fields}


def cli_settings() -> tuple[Setting, ...]:
    """The settings the fitting option group declares (flag, not shared)."""
    return tuple(s for s in SETTINGS if s.flag is not None and not s.flag.shared)


def yaml_keys() -> frozenset[str]:
    """Our flat YAML keys that set a fit setting."""
    return frozenset(s.name for s in SETTINGS if s.yaml)


def ddw_keys() -> dict[str, str]:
    """Original-layout key (``section.key`` when nested) → our key."""
    return {s.ddw: s.name for s in SETTINGS if s.ddw}


def config_overrides(options: dict) -> dict:
    """``FitConfig`` keyword values from flat options (names as in :data:`SETTINGS`; ``None``
    values skipped): ``tilt_range`` ``[min, max(, step)]`` → ``tilt_min``/``tilt_max``,
    ``strides`` → a 3-tuple of ints. The one place options become config values."""
    from ..errors import DDWError

    out = {}
    for s in SETTINGS:
        value = options.get(s.name)
        if value is None or not s.yaml:
            continue
        if s.name == "tilt_range":
            if len(value) not in (2, 3):
                raise DDWError(f"tilt_range needs MIN MAX, got {list(value)}")
            out["tilt_min"], out["tilt_max"] = float(value[0]), float(value[1])
        elif s.name == "strides":
            if len(value) != 3:
                raise DDWError(f"strides needs three numbers (Z Y X), got {list(value)}")
            out["strides"] = tuple(int(v) for v in value)
        else:
            out[s.name] = value
    return out
