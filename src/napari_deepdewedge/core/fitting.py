"""The fitting loop (DESIGN §2.4–2.7): one engine for the CLI, the widgets and torchrun.

``fit_iter`` is a generator of plain event dataclasses. A front end iterates it (a napari
generator worker yields from it; the CLI prints from it); it yields at least once per optimizer
step, so a worker can quit within one step, and its last event is always :class:`FitFinished`.

One fitting step (DESIGN §2.5): a shuffled batch of fitting cubes (fresh order every epoch,
seeded ``torch.Generator`` on the CPU), a fresh uniformly random rotation per cube, cube0 and
cube1 rotated and centre-cropped in one batched ``grid_sample`` call, target = rotated cube1,
input = ``F⁻¹(M·F(rotated cube0))``, loss = Fourier-masked Noise2Noise loss with ``M`` and the
rotated mask ``M_R``; Adam.

Every ``update_every`` epochs the *wedges are updated*: the model runs on every un-rotated
fitting cube0 and its prediction replaces the cube's unobserved frequencies; the targets
(cube1) never change. The network's input normalization (``loc``/``scale``, DESIGN §2.6) is
computed from the model inputs (centre crops of the fitting cube0s, masked with ``M``) at the
start and after every wedge update.

Files (``out_dir``, written by rank 0 only): ``latest.pt`` (every epoch), ``best.pt`` (lowest
validation loss; lowest fitting loss without validation cubes), ``epoch_NNNN.pt`` (every
``checkpoint_every`` epochs), ``stopped.pt`` (when ``should_stop()`` fired) and ``losses.csv``
(``epoch,fit_loss,val_loss,seconds``). Resuming from any of them continues exactly
(mid-epoch for ``stopped.pt``).

Several GPUs: launch with ``torchrun --nproc-per-node N -m napari_deepdewedge.cli fit ...``.
The CLI calls :func:`init_distributed_from_env`; ``fit_iter`` then wraps the model in
``DistributedDataParallel`` and splits every batch across the ranks so that the *global* batch
is ``batch_size`` (the result matches a single-process run with the same batch size).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import CheckpointError, DDWError

CSV_HEADER = ("epoch", "fit_loss", "val_loss", "seconds")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class FitConfig:
    """Everything that defines a fitting run (DESIGN §2.4–2.7)."""

    subtomo_size: int = 48
    channels: int = 16
    depth: int = 3
    epochs: int = 50
    batch_size: int = 5
    lr: float = 4e-4
    val_fraction: float = 0.1
    update_every: int = 10          # epochs between wedge updates; 0 = never
    validate_every: int = 1
    checkpoint_every: int = 10      # epochs between periodic checkpoints; 0 = none
    wedge_weight: float = 2.0
    strides: tuple[int, int, int] | None = None
    min_mask_fraction: float = 0.3
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    standardize: bool = True
    seed: int = 0
    device: str = "auto"
    out_dir: str | None = None      # checkpoints + losses.csv; None = no files
    preview_every: int = 0          # epochs; 0 = no previews
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # U-Net adds its normalized input to its output (DESIGN §2.6). Off by default: with the
    # epoch budgets people run (tens, not hundreds), the plain network denoises much better —
    # tuning phantom, 64×160×160, s=32, 16 ch: CC vs truth at epoch 20 0.595 without vs 0.532
    # with the residual (oracle Gaussian 0.569); see bench/quality.py
    residual: bool = False
    # how fitting cubes are rotated: "trilinear" (grid_sample) or "bspline3" (cubic B-spline,
    # as the original); un-rotated inputs get the kind's matching filter (core.rotation).
    # Trilinear stays the default: bench/quality_peers.py small run (sym60, 32×64×64, s=16,
    # 8 ch, 6 epochs) CC in slab / in-wedge CC 0.811 / 0.553 trilinear vs 0.794 / 0.425 bspline3
    resampling: str = "trilinear"
    # validation cube0s get the same wedge updates as the fitting cube0s (as in the original),
    # so the validation loss and best.pt see the inputs fitting sees
    update_val_wedges: bool = True
    # torch.compile the U-Net: honoured on CUDA for long runs only (core.perf.decide_compile;
    # on the CPU it costs 100 s and gains 3 %, so it is never used there)
    compile: bool = False
    # time-to-quality levers (core/schedule.py); the defaults keep the original's behaviour
    lr_schedule: str = "constant"   # or "warmup_cosine"
    warmup_epochs: int = 0
    early_stop_patience: int = 0    # epochs without a lower validation loss; 0 = never stop early

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "FitConfig":
        """``FitConfig`` with a preset's subtomo size, channels and depth (``unet.PRESETS``)."""
        from .unet import PRESETS

        if name not in PRESETS:
            raise DDWError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
        values = dict(PRESETS[name])
        values.update(overrides)
        return cls.from_dict(values, strict=True)

    def to_dict(self) -> dict:
        """Plain dict (tuples as lists) — what checkpoints store."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, values: dict, strict: bool = False) -> "FitConfig":
        """Build from a dict; unknown keys raise with ``strict`` and are ignored otherwise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in names]
        if unknown and strict:
            raise DDWError(f"unknown fitting option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}")
        kw = {k: v for k, v in values.items() if k in names}
        for k in ("strides", "voxel_size"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def validate(self) -> "FitConfig":
        """Raise :class:`DDWError` (problem and fix) for values the loop cannot run with."""
        from .unet import required_multiple

        def positive_int(name, minimum=1):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
                raise DDWError(f"{name} must be an integer ≥ {minimum}, got {v!r}")

        for name in ("subtomo_size", "channels", "depth", "epochs", "batch_size", "validate_every"):
            positive_int(name)
        for name in ("update_every", "checkpoint_every", "preview_every", "warmup_epochs", "early_stop_patience"):
            positive_int(name, 0)
        m = required_multiple(self.depth)
        if self.subtomo_size % m:
            lo = max(m, self.subtomo_size // m * m)
            raise DDWError(
                f"subtomo_size {self.subtomo_size} must be a multiple of {m} (2**depth for depth {self.depth}); "
                f"use e.g. {lo} or {lo + m}"
            )
        from .schedule import SCHEDULES

        if self.lr_schedule not in SCHEDULES:
            raise DDWError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DDWError(f"learning rate must be a positive number, got {self.lr}; the default is 4e-4")
        if not 0 <= self.val_fraction < 1:
            raise DDWError(f"val_fraction must be in [0, 1), got {self.val_fraction}; the default is 0.1")
        if not self.wedge_weight >= 0:
            raise DDWError(f"wedge_weight must be ≥ 0, got {self.wedge_weight}; the default is 2")
        if not (-90 < self.tilt_min < self.tilt_max < 90):
            raise DDWError(
                f"tilt range [{self.tilt_min}, {self.tilt_max}] is invalid: need -90 < tilt_min < tilt_max < 90 degrees"
            )
        from .rotation import check_resampling

        check_resampling(self.resampling)
        if self.strides is not None and (len(self.strides) != 3 or any(int(s) < 1 for s in self.strides)):
            raise DDWError(f"strides must be three positive integers (Z, Y, X), got {self.strides}")
        return self


# --------------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------------
@dataclass
class FitStarted:
    n_fit_cubes: int
    n_val_cubes: int
    steps_per_epoch: int
    device: str
    config: FitConfig


@dataclass
class StepDone:
    epoch: int
    step: int
    steps_per_epoch: int
    loss: float


@dataclass
class EpochDone:
    epoch: int
    fit_loss: float
    val_loss: float | None
    seconds: float


@dataclass
class WedgesUpdated:
    epoch: int


@dataclass
class PreviewReady:
    epoch: int
    z_start: int
    z_stop: int
    volume: np.ndarray = field(repr=False)


@dataclass
class CheckpointSaved:
    epoch: int
    path: Path
    kind: str  # latest | best | periodic | stopped


@dataclass
class FitFinished:
    epochs_done: int
    stopped: bool
    latest_path: Path | None
    best_path: Path | None


# --------------------------------------------------------------------------------------------
# device, mixed precision, distributed
# --------------------------------------------------------------------------------------------
def amp_enabled(device) -> bool:
    """Mixed precision: fp16 autocast + GradScaler on CUDA, bf16 autocast on a CPU whose quick
    probe finds it faster (``core.perf.pick_autocast``), fp32 otherwise."""
    from .perf import pick_autocast

    return pick_autocast(device) is not None


def configure_backends(device) -> None:
    """cuDNN autotuning on CUDA (fixed cube sizes make it pay off); nothing elsewhere."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` unless ``torch.distributed`` is initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Returns ``(rank, world_size)``.

    Does nothing (returns ``(0, 1)``) when not launched by torchrun. Backend: NCCL with CUDA
    (each process takes GPU ``LOCAL_RANK``), gloo otherwise.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend=backend)
        except Exception as exc:  # bad rendezvous settings are a user problem
            raise DDWError(
                f"could not join the torch.distributed process group ({exc}); launch with "
                "`torchrun --nproc-per-node N -m napari_deepdewedge.cli fit ...`"
            ) from None
    return dist.get_rank(), dist.get_world_size()


def _fit_device(name, world: int):
    from .device import pick_device

    dev = pick_device(name)
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def _all_reduce_sum(values: list[float], device, world: int) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------------------------
# small pieces of the loop
# --------------------------------------------------------------------------------------------
def _standardize_pairs_(pairs: torch.Tensor, stats) -> torch.Tensor:
    """In place: channel h of the ``(N, 2, E, E, E)`` pair store ← (x − mean_h) / std_h."""
    if stats is not None:
        for h in (0, 1):
            pairs[:, h].sub_(float(stats[h][0])).div_(float(stats[h][1]))
    return pairs


def _center_crop(cubes: torch.Tensor, s: int) -> torch.Tensor:
    E = cubes.shape[-1]
    a = E // 2 - s // 2
    return cubes[..., a:a + s, a:a + s, a:a + s]


def input_normalization(fit0: torch.Tensor, mask_s: torch.Tensor, s: int, device, chunk: int = 8,
                        resampling: str = "trilinear"):
    """``(loc, scale)`` of the model inputs: mean of per-cube means and √(mean of per-cube
    variances) of ``F⁻¹(M·F(centre crop of cube0))`` over all fitting cubes (through the
    matching filter of ``resampling``)."""
    from .loss import model_input
    from .rotation import match_resampling

    means, variances = [], []
    with torch.no_grad():
        for i in range(0, fit0.shape[0], chunk):
            # un-rotated crops, filtered to the noise statistics of the rotated fitting inputs
            x = match_resampling(model_input(_center_crop(fit0[i:i + chunk], s).to(device), mask_s), resampling)
            flat = x.reshape(x.shape[0], -1).double()
            means.append(flat.mean(dim=1))
            variances.append(flat.var(dim=1, unbiased=False))
    loc = torch.cat(means).mean().item()
    scale = math.sqrt(torch.cat(variances).mean().item())
    return loc, scale


def update_wedges(model, fit0: torch.Tensor, mask_e: torch.Tensor, depth: int, device, batch_size: int,
                  *, rank: int = 0, world: int = 1, amp: bool = False, resampling: str = "trilinear") -> torch.Tensor:
    """Replace the unobserved frequencies of every (un-rotated) cube0 by the model's prediction:
    ``cube0 ← F⁻¹(M·F(cube0) + (1 − M)·F(f(M·cube0)))``. Cubes whose edge is not a multiple
    of ``2**depth`` are reflect-padded at the far side for the model and cropped back.
    ``fit0`` (``(N, 1, E, E, E)``, possibly a view of the pair store) is updated in place and
    returned. Each cube depends only on itself, so one process overwrites batch by batch; with
    several ranks each computes a share, the shares are summed across ranks (exact: the others
    are zero) and copied in. ``mask_e`` is the rfft-layout mask of the cube size. The model
    input goes through the matching filter of ``resampling`` (the kind the model was fitted
    with). Used for the fitting and (``FitConfig.update_val_wedges``) the validation cube0s."""
    from .loss import model_input
    from .rotation import match_resampling

    E = fit0.shape[-1]
    m = 2 ** int(depth)
    pad = (-E) % m
    new = torch.zeros(fit0.shape, dtype=fit0.dtype, device=fit0.device) if world > 1 else fit0
    mine = list(range(rank, fit0.shape[0], world))
    with torch.no_grad():
        for i in range(0, len(mine), batch_size):
            idx = torch.tensor(mine[i:i + batch_size], dtype=torch.long)
            cube = fit0[idx].to(device)
            spec0 = torch.fft.rfftn(cube, dim=(-3, -2, -1))
            x = match_resampling(model_input(cube, mask_e), resampling)  # the statistics fitting inputs have
            if pad:
                x = torch.nn.functional.pad(x, (0, pad, 0, pad, 0, pad), mode="reflect")
            with _autocast(device, amp):
                pred = model(x)
            pred = pred.float()[..., :E, :E, :E]
            specp = torch.fft.rfftn(pred, dim=(-3, -2, -1))
            spec = mask_e * spec0 + (1 - mask_e) * specp
            out = torch.fft.irfftn(spec, s=(E, E, E), dim=(-3, -2, -1))
            new[idx] = out.to(new.device, new.dtype)
    if world > 1:
        import torch.distributed as dist

        buf = new.to(device)
        dist.all_reduce(buf)
        fit0.copy_(buf)
    return fit0


def _autocast(device, enabled: bool):
    from .perf import autocast, pick_autocast

    return autocast(device, pick_autocast(device)) if enabled else contextlib.nullcontext()


def _data_device(device, nbytes: int):
    """Keep the cubes on the fitting device when they take at most 40 % of its free memory."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except Exception:
            return torch.device("cpu")
        return device if nbytes <= 0.4 * free else torch.device("cpu")
    return device


def _write_csv(path: Path, rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_HEADER)
        for row in rows:
            w.writerow(_csv_row(row))
    os.replace(tmp, path)


def _csv_row(row):
    epoch, fit_loss, val_loss, seconds = row
    return [int(epoch), repr(float(fit_loss)), "" if val_loss is None else repr(float(val_loss)), f"{seconds:.3f}"]


def _append_csv(path: Path, row) -> None:
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow(_csv_row(row))


#: config fields that must match for a resume (they define data, model or sampling)
_RESUME_FIXED = ("subtomo_size", "channels", "depth", "batch_size", "val_fraction", "strides",
                 "min_mask_fraction", "tilt_min", "tilt_max", "standardize", "seed", "residual", "resampling")


def _check_resume(payload: dict, cfg: FitConfig, name: str) -> None:
    old = FitConfig.from_dict(payload.get("config") or {})
    for key in _RESUME_FIXED:
        a, b = getattr(old, key), getattr(cfg, key)
        if (tuple(a) if isinstance(a, (list, tuple)) else a) != (tuple(b) if isinstance(b, (list, tuple)) else b):
            raise CheckpointError(
                f"cannot resume from {name}: it was fitted with {key}={a!r} but this run has {key}={b!r}; "
                f"use the same {key} (or start a new fit)"
            )
    if int(payload["epoch"]) >= cfg.epochs:
        raise CheckpointError(
            f"cannot resume from {name}: it has already done {payload['epoch']} epochs and this run asks for "
            f"{cfg.epochs}; raise epochs above {payload['epoch']} to continue fitting"
        )


def _default_slab(Z: int, s: int) -> tuple[int, int]:
    t = min(Z, s)
    z0 = max(0, Z // 2 - t // 2)
    return z0, z0 + t


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def fit_iter(tomo0, tomo1, config: FitConfig, *, mask=None, resume=None,
             should_stop: Callable[[], bool] | None = None,
             preview_slab: Callable[[], tuple[int, int]] | None = None) -> Iterator[object]:
    """Fit a U-Net to the half tomograms ``tomo0``/``tomo1`` (DESIGN §2.4–2.7), yielding events.

    ``mask``: optional binary ROI (same shape) for cube selection. ``resume``: a checkpoint
    path to continue from (exactly). ``should_stop``: polled before every step; when it returns
    True the loop saves ``stopped.pt`` (if ``out_dir``) and finishes. ``preview_slab()`` gives
    the ``(z_start, z_stop)`` rows previewed every ``preview_every`` epochs (default: a central
    slab of thickness ``subtomo_size``).
    """
    from . import checkpoint as ckpt
    from . import perf
    from .fourier import observed_mask, rotated_observed_masks
    from .halves import check_same_shape
    from .loss import masked_fourier_loss, model_input
    from .refine import predict_tiled, prepare_half, standardization_stats
    from .rotation import MATCHING_FILTERS, bspline_prefilter, random_rotations, rotate_center_crop_kind
    from .schedule import lr_at, should_stop_early
    from .subtomos import extract_subtomos
    from .unet import UNet3D

    cfg = dataclasses.replace(config).validate()
    rank, world = distributed_info()
    main = rank == 0
    device = _fit_device(cfg.device, world)
    amp = amp_enabled(device)
    configure_backends(device)
    perf.limit_cpu_threads(device)

    tomo0 = tomo0 if isinstance(tomo0, np.memmap) else np.asarray(tomo0)
    tomo1 = tomo1 if isinstance(tomo1, np.memmap) else np.asarray(tomo1)
    if tomo0.ndim != 3:
        raise DDWError(f"the half tomograms must be 3D (Z, Y, X), got shape {tuple(tomo0.shape)}")
    check_same_shape(tomo0, tomo1, what="half tomograms")
    if mask is not None:
        mask = np.asarray(mask)
        check_same_shape(tomo0, mask, what="tomogram and ROI mask")

    payload = None
    if resume is not None:
        payload = ckpt.load_checkpoint(resume, require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS)
        _check_resume(payload, cfg, Path(resume).name)

    # ---- data ------------------------------------------------------------------------------
    if cfg.standardize:
        if payload is not None and payload.get("standardization") is not None:
            stats = [tuple(float(v) for v in st) for st in payload["standardization"]]
        else:
            stats = [standardization_stats(tomo0), standardization_stats(tomo1)]
    else:
        stats = None
    s = cfg.subtomo_size
    # cubes are cut from the raw halves and standardized afterwards: no full-size copies
    sub = extract_subtomos(tomo0, tomo1, s, strides=cfg.strides, mask=mask, min_mask_fraction=cfg.min_mask_fraction,
                           val_fraction=cfg.val_fraction, seed=cfg.seed, depth=cfg.depth)
    # (N, 2, E, E, E) channels-last stores, channel 0 = half 0; cube0s are updated in place
    fit_pairs = _standardize_pairs_(sub.fit_pairs, stats)
    val_pairs = _standardize_pairs_(sub.val_pairs, stats)
    val_rot = sub.val_rotations.float()
    del sub
    n_fit, n_val = int(fit_pairs.shape[0]), int(val_pairs.shape[0])
    if n_fit == 0:
        raise DDWError("no fitting sub-tomograms could be extracted; use smaller strides, a smaller subtomo_size "
                       "or a larger ROI mask")
    if payload is not None:
        saved = payload["fit0"]
        if not isinstance(saved, torch.Tensor) or tuple(saved.shape) != tuple(fit_pairs[:, 0:1].shape):
            raise CheckpointError(
                f"cannot resume: the checkpoint's fitting cubes have shape {tuple(getattr(saved, 'shape', ()))} but "
                f"these tomograms give {tuple(fit_pairs[:, 0:1].shape)}; resume with the same tomograms, mask and "
                "settings"
            )
        fit_pairs[:, 0:1].copy_(saved)
        saved_val = payload.get("val0")  # absent in checkpoints from before validation updates
        if isinstance(saved_val, torch.Tensor) and tuple(saved_val.shape) == tuple(val_pairs[:, 0:1].shape):
            val_pairs[:, 0:1].copy_(saved_val)
    E = int(fit_pairs.shape[-1])
    ddev = _data_device(device, 4 * (fit_pairs.numel() + val_pairs.numel()))
    fit_pairs, val_pairs = fit_pairs.to(ddev), val_pairs.to(ddev)
    in_place = ddev == device  # rotate straight out of the stores (no batch copy)
    kind = cfg.resampling
    # what the rotations read: the pair stores (trilinear) or their cubic B-spline coefficients,
    # recomputed whenever the cube0s change (a wedge update)
    coef = {}

    def refresh_coefficients():
        if kind == "bspline3":
            coef["fit"], coef["val"] = bspline_prefilter(fit_pairs), bspline_prefilter(val_pairs)

    def rotated(pairs, rotations, index):
        store = coef["fit" if pairs is fit_pairs else "val"] if kind == "bspline3" else pairs
        if in_place:
            return rotate_center_crop_kind(store, rotations, s, kind, index=index)
        return rotate_center_crop_kind(store[index].to(device), rotations, s, kind)

    refresh_coefficients()

    mask_s = observed_mask((s, s, s), cfg.tilt_min, cfg.tilt_max, device=device, rfft=True)
    mask_e = observed_mask((E, E, E), cfg.tilt_min, cfg.tilt_max, device=device, rfft=True)
    val_masks = None

    # ---- model and optimizer ---------------------------------------------------------------
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        net = UNet3D(channels=cfg.channels, depth=cfg.depth, residual=cfg.residual)
    net = perf.to_channels_last(net.to(device), device)
    if payload is not None:
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"cannot resume: checkpoint weights do not fit this U-Net ({str(exc)[:200]})") from None
    else:
        net.set_normalization(*input_normalization(fit_pairs[:, 0:1], mask_s, s, device, resampling=kind))
    model = perf.maybe_compile(net, device, cfg.epochs * int(math.ceil(n_fit / cfg.batch_size)), cfg.compile)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda") if amp and perf.needs_grad_scaler(perf.pick_autocast(device)) else None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(cfg.seed)

    B = cfg.batch_size
    steps = int(math.ceil(n_fit / B))
    epoch_done, step0, perm = 0, 0, None
    partial = [0.0, 0.0, 0.0]  # loss·samples, samples, seconds of the unfinished epoch
    best = None
    history: list[list] = []
    if payload is not None:
        opt.load_state_dict(payload["optimizer"])
        for group in opt.param_groups:
            group["lr"] = cfg.lr
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        gen.set_state(payload["rng"]["generator"])
        epoch_done, step0 = int(payload["epoch"]), int(payload["step"])
        perm = payload.get("perm")  # set only for a mid-epoch (stopped) checkpoint
        if perm is not None and len(perm) != n_fit or (step0 > 0 and perm is None):
            raise CheckpointError("cannot resume: the checkpoint's mid-epoch state is incomplete; resume from latest.pt")
        partial = [float(v) for v in payload.get("partial") or (0.0, 0.0, 0.0)]
        best = payload.get("best_val_loss")
        history = [list(r) for r in payload["history"]]

    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    csv_path = None
    if out_dir is not None and main:
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = out_dir / "losses.csv"
        _write_csv(csv_path, history)
    latest_path = best_path = None
    if out_dir is not None and payload is not None:
        latest_path = out_dir / "latest.pt" if (out_dir / "latest.pt").exists() else None
        best_path = out_dir / "best.pt" if (out_dir / "best.pt").exists() else None

    def make_payload(epoch_completed: int, step: int, cur_perm, cur_partial) -> dict:
        return {
            "format": ckpt.FORMAT_TAG,
            "version": ckpt.FORMAT_VERSION,
            "arch": net.arch_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "subtomo_size": s,
            "tilt_min": float(cfg.tilt_min),
            "tilt_max": float(cfg.tilt_max),
            "voxel_size": [float(v) for v in cfg.voxel_size],
            "standardization": None if stats is None else [list(st) for st in stats],
            "epoch": int(epoch_completed),
            "step": int(step),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"generator": gen.get_state()},  # the loop draws only from this generator
            "fit0": fit_pairs[:, 0:1].detach().cpu().contiguous(),
            "val0": val_pairs[:, 0:1].detach().cpu().contiguous(),
            "resampling": kind,
            "matching_filter": MATCHING_FILTERS[kind],
            "perm": None if cur_perm is None else cur_perm.clone(),
            "partial": [float(v) for v in cur_partial],
            "best_val_loss": best,
            "history": [list(r) for r in history],
            "config": cfg.to_dict(),
            "n_fit_cubes": n_fit,
            "n_val_cubes": n_val,
        }

    def save(kind: str, name: str, epoch_completed: int, step: int = 0, cur_perm=None, cur_partial=(0.0, 0.0, 0.0)):
        path = ckpt.save_checkpoint(out_dir / name, make_payload(epoch_completed, step, cur_perm, cur_partial))
        return CheckpointSaved(epoch=epoch_completed, path=path, kind=kind)

    def stop_requested() -> bool:
        flag = bool(should_stop()) if should_stop is not None else False
        if world > 1:
            flag = _all_reduce_sum([1.0 if flag else 0.0], device, world)[0] > 0
        return flag

    def validate() -> float | None:
        nonlocal val_masks
        if n_val == 0:
            return None
        if val_masks is None:
            val_masks = rotated_observed_masks((s, s, s), cfg.tilt_min, cfg.tilt_max, val_rot, device=device,
                                               rfft=True)
        mine = list(range(rank, n_val, world))
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(mine), B):
                idx = torch.tensor(mine[i:i + B], dtype=torch.long)
                rot = rotated(val_pairs, val_rot[idx].to(device), idx)
                x = perf.as_input(model_input(rot[:, 0:1], mask_s), device)
                with _autocast(device, amp):
                    pred = net(x)
                loss = masked_fourier_loss(pred.float(), rot[:, 1:2], mask_s, val_masks[idx.to(device)],
                                           wedge_weight=cfg.wedge_weight)
                total += float(loss) * len(idx)
        return _all_reduce_sum([total], device, world)[0] / n_val

    yield FitStarted(n_fit_cubes=n_fit, n_val_cubes=n_val, steps_per_epoch=steps, device=str(device), config=cfg)

    preview_cache: dict = {}
    model.train()
    for epoch in range(epoch_done + 1, cfg.epochs + 1):
        if perm is None:  # a new epoch (not one a stopped checkpoint was in the middle of)
            perm = torch.randperm(n_fit, generator=gen)
            partial = [0.0, 0.0, 0.0]
        t_start = time.perf_counter() - partial[2]
        for step in range(step0, steps):
            if stop_requested():
                partial[2] = time.perf_counter() - t_start
                stopped_path = None
                if out_dir is not None and main:
                    ev = save("stopped", "stopped.pt", epoch - 1, step, perm, partial)
                    stopped_path = ev.path
                    yield ev
                yield FitFinished(epochs_done=epoch - 1, stopped=True,
                                  latest_path=stopped_path or latest_path, best_path=best_path)
                return
            idx = perm[step * B:(step + 1) * B]
            nb = len(idx)
            rots = random_rotations(nb, generator=gen)
            share = torch.tensor_split(torch.arange(nb), world)[rank] if world > 1 else torch.arange(nb)
            n_local = len(share)
            use = share if n_local > 0 else torch.arange(1)  # an empty share still joins the all-reduce
            sel = idx[use]
            r_local = rots[use].to(device)
            rot = rotated(fit_pairs, r_local, sel)
            x = perf.as_input(model_input(rot[:, 0:1], mask_s), device)
            m_r = rotated_observed_masks((s, s, s), cfg.tilt_min, cfg.tilt_max, r_local, device=device, rfft=True)
            with _autocast(device, amp):
                pred = model(x)
            loss = masked_fourier_loss(pred.float(), rot[:, 1:2], mask_s, m_r, wedge_weight=cfg.wedge_weight)
            # DDP averages gradients over ranks: weight each rank by its share of the global batch
            weight = n_local * world / nb
            if cfg.lr_schedule != "constant":
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg.lr, cfg.lr_schedule, cfg.epochs, cfg.warmup_epochs, epoch, step, steps)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss * weight).backward()
                scaler.step(opt)
                scaler.update()
            else:
                (loss * weight).backward()
                opt.step()
            batch_loss = _all_reduce_sum([float(loss.detach()) * n_local], device, world)[0] / nb
            partial[0] += batch_loss * nb
            partial[1] += nb
            yield StepDone(epoch=epoch, step=step + 1, steps_per_epoch=steps, loss=batch_loss)
        step0, perm = 0, None
        fit_loss = partial[0] / max(partial[1], 1)

        val_loss = validate() if (epoch % cfg.validate_every == 0 or epoch == cfg.epochs) else None
        updated = cfg.update_every > 0 and epoch % cfg.update_every == 0
        if updated:
            update_wedges(net, fit_pairs[:, 0:1], mask_e, cfg.depth, device, B, rank=rank, world=world, amp=amp,
                          resampling=kind)
            if cfg.update_val_wedges and n_val:
                update_wedges(net, val_pairs[:, 0:1], mask_e, cfg.depth, device, B, rank=rank, world=world,
                              amp=amp, resampling=kind)
            refresh_coefficients()
            net.set_normalization(*input_normalization(fit_pairs[:, 0:1], mask_s, s, device, resampling=kind))
        seconds = time.perf_counter() - t_start
        history.append([epoch, fit_loss, val_loss, seconds])
        partial = [0.0, 0.0, 0.0]
        if csv_path is not None:
            _append_csv(csv_path, history[-1])
        yield EpochDone(epoch=epoch, fit_loss=fit_loss, val_loss=val_loss, seconds=seconds)
        if updated:
            yield WedgesUpdated(epoch=epoch)

        score = val_loss if n_val > 0 else fit_loss
        improved = score is not None and (best is None or score < best)
        if improved:
            best = float(score)
        if out_dir is not None and main:
            ev = save("latest", "latest.pt", epoch)
            latest_path = ev.path
            yield ev
            if improved:  # same state as latest.pt: a byte copy
                best_path = ckpt.copy_checkpoint(latest_path, out_dir / "best.pt")
                yield CheckpointSaved(epoch=epoch, path=best_path, kind="best")
            if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                path = ckpt.copy_checkpoint(latest_path, out_dir / f"epoch_{epoch:04d}.pt")
                yield CheckpointSaved(epoch=epoch, path=path, kind="periodic")

        if cfg.preview_every and epoch % cfg.preview_every == 0 and main:
            Z = int(tomo0.shape[0])
            z0, z1 = preview_slab() if preview_slab is not None else _default_slab(Z, s)
            z0, z1 = int(z0), int(z1)
            if not 0 <= z0 < z1 <= Z:
                raise DDWError(f"preview slab ({z0}, {z1}) is outside the tomogram's 0..{Z} rows; pick rows inside it")
            ov = int(math.ceil(s / 3))
            za, zb = max(0, z0 - ov), min(Z, z1 + ov)
            if preview_cache.get("rows") != (za, zb):  # masked slabs, reused while the slab stays
                preview_cache = {"rows": (za, zb)}
            vols = []
            for h, t in enumerate((tomo0, tomo1)):
                if h not in preview_cache:
                    preview_cache[h] = prepare_half(t, cfg.tilt_min, cfg.tilt_max, None if stats is None else stats[h],
                                                    z_range=(za, zb))
                out = predict_tiled(net, preview_cache[h], s, overlap=ov, batch_size=B, device=device,
                                    match_resampling=True, resampling=kind)
                out = out[z0 - za:z1 - za]
                if stats is not None:
                    out = out * np.float32(stats[h][1]) + np.float32(stats[h][0])
                vols.append(out)
            model.train()
            yield PreviewReady(epoch=epoch, z_start=z0, z_stop=z1, volume=(vols[0] + vols[1]) * np.float32(0.5))

        if should_stop_early(history, cfg.early_stop_patience) and epoch < cfg.epochs:
            yield FitFinished(epochs_done=epoch, stopped=False, latest_path=latest_path, best_path=best_path)
            return

    yield FitFinished(epochs_done=cfg.epochs, stopped=False, latest_path=latest_path, best_path=best_path)


def fit(tomo0, tomo1, config: FitConfig, *, on_event: Callable[[object], None] | None = None, **kw) -> FitFinished:
    """Run :func:`fit_iter` to the end, passing every event to ``on_event``; return FitFinished."""
    last = None
    for event in fit_iter(tomo0, tomo1, config, **kw):
        if on_event is not None:
            on_event(event)
        last = event
    return last
