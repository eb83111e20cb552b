"""Setting up a fit, or restoring one to resume: the pairs and the config checked against
the checkpoint, the pooled cube stores on their device (the wedge-updated cube0s put back),
the network, its optimizer, scaler and generator (their states put back). :mod:`.loop` runs
what this builds.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, DDWError
from ..perf import limit_cpu_threads, maybe_compile, needs_grad_scaler, pick_autocast
from .config import FitConfig
from .data import CubeFeeder, HalfPair, WedgeMasks, check_pairs, pool_cubes
from .log import EpochTally
from .parallel import amp_enabled, configure_backends, data_device, distributed_info, fit_device
from .payload import parse_fit_payload
from .resume import check_resume_inputs, load_resume, resumed_config
from .steps import Cubes, Masks, input_normalization


def _pair_stats(cfg: FitConfig, payload, pairs) -> list:
    """Per pair, per half ``(mean, std)`` (the checkpoint's when resuming), or None each."""
    from .data import pair_stats

    if not cfg.standardize:
        return [None] * len(pairs)
    if payload is not None:
        saved = [rec.get("standardization") for rec in payload.get("inputs") or []]
        if len(saved) == len(pairs) and all(st is not None for st in saved):
            return [[tuple(float(v) for v in h) for h in st] for st in saved]
        if len(pairs) == 1 and payload.get("standardization") is not None:
            return [[tuple(float(v) for v in st) for st in payload["standardization"]]]
    return [pair_stats(pair, True) for pair in pairs]


def _restore_cubes(fit_pairs: torch.Tensor, val_pairs: torch.Tensor, payload, folder) -> None:
    """Put the checkpoint's wedge-updated cube0s (its fitting-state file) into the pair stores:
    the fitting cubes, and the validation cubes when the state holds them (states written
    before validation cubes were updated do not: those keep their extracted values)."""
    from .state import resume_state

    saved = resume_state(payload, folder)
    if saved is None:  # no wedge update yet: the extracted cubes are the state
        return
    fit0 = saved["fit0"]
    if not isinstance(fit0, torch.Tensor) or tuple(fit0.shape) != tuple(fit_pairs[:, 0:1].shape):
        raise CheckpointError(
            f"cannot resume: the checkpoint's fitting cubes have shape {tuple(getattr(fit0, 'shape', ()))} but "
            f"these tomograms give {tuple(fit_pairs[:, 0:1].shape)}; resume with the same tomograms, mask and "
            "settings"
        )
    fit_pairs[:, 0:1].copy_(fit0)
    val0 = saved.get("val0")
    if isinstance(val0, torch.Tensor) and tuple(val0.shape) == tuple(val_pairs[:, 0:1].shape):
        val_pairs[:, 0:1].copy_(val0)


def _init_source(init_from) -> dict:
    """Fine-tuning: the payload of the fit to start from (a path or payload)."""
    from ..model import checkpoint as ckpt

    if isinstance(init_from, dict):
        return ckpt.check_payload(init_from)
    return ckpt.load_checkpoint(init_from)


def _init_weights(source: dict, name: str, net) -> None:
    """Fine-tuning: load another fit's weights (``source``, from :func:`_init_source`) into
    ``net``; its architecture must be ``net``'s (DDWError naming every difference)."""
    from ..model.unet import UNet3D

    theirs, ours = UNet3D.arch_with_defaults(source["arch"] or {}), net.arch_dict()
    diffs = [f"{k}={theirs.get(k)!r} there, {ours.get(k)!r} here" for k in sorted(set(theirs) | set(ours))
             if theirs.get(k) != ours.get(k)]
    if diffs:
        raise DDWError(f"cannot start from {name}: its U-Net differs from this fit's ({'; '.join(diffs)}); "
                       "fit with the same channels/depth/residual (or preset) as that model, or drop --init-from")
    try:
        net.load_state_dict(source["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"cannot start from {name}: its weights do not fit its U-Net ({str(exc)[:200]})") from None


def _build_net(cfg: FitConfig, device, payload, init_from=None):
    """The U-Net with seeded initial weights (without touching the caller's RNG), the
    checkpoint's weights (resume) or another fit's weights (``init_from``: fine-tuning).
    Resuming or fine-tuning keeps the up-sampling layers of the model it starts from (an older
    checkpoint's are transposed convolutions, issue 17); a new fit gets the default."""
    from ..model.unet import UNet3D

    source = _init_source(init_from) if init_from is not None and payload is None else None
    upsample = None
    for start in (payload, source):
        if start is not None and isinstance(start.get("arch"), dict):
            upsample = UNet3D.arch_with_defaults(start["arch"])["upsample"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = UNet3D(channels=cfg.channels, depth=cfg.depth, residual=cfg.residual, upsample=upsample)
    if source is not None:
        _init_weights(source, "the initial model" if isinstance(init_from, dict) else Path(init_from).name, net)
    from .. import perf

    net = perf.to_channels_last(net.to(device), device)
    if payload is not None:
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"cannot resume: checkpoint weights do not fit this U-Net ({str(exc)[:200]})") from None
    return net


def checked_pairs(tomo0, tomo1, config: FitConfig, mask, pairs):
    """``(config, pairs)``: the config validated, one pair made of ``tomo0``/``tomo1``/``mask``
    when ``pairs`` is None, and the config's tilt range and voxel size pair 0's."""
    cfg = dataclasses.replace(config).validate()
    if pairs is None:
        pairs = [HalfPair(even=tomo0, odd=tomo1, tilt_range=cfg.tilt_range, mask=mask,
                          voxel_size=cfg.voxel_size)]
    elif tomo0 is not None or tomo1 is not None or mask is not None:
        raise DDWError("give either tomo0/tomo1 (and mask) or pairs, not both")
    pairs = check_pairs(pairs)
    return cfg.for_pair(pairs[0]), pairs


@dataclass
class Devices:
    rank: int
    world: int
    device: torch.device
    amp: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def devices(cfg: FitConfig) -> Devices:
    """This process's rank, the fitting device and AMP; the backends and CPU threads set."""
    rank, world = distributed_info()
    device = fit_device(cfg.device, world)
    found = Devices(rank, world, device, amp_enabled(device))
    configure_backends(device)
    limit_cpu_threads(device)
    return found


def emulated_ranks(emulate_ranks, world: int) -> int:
    """The ranks one process emulates (``fit_iter(emulate_ranks=...)``): at least 1, and only
    without real ranks."""
    emulate = int(emulate_ranks)
    if emulate < 1 or (emulate > 1 and world > 1):
        raise DDWError(f"emulate_ranks={emulate_ranks}: emulating ranks needs one process and a count of at least 1")
    return emulate


def resume_point(resume, resume_dir, cfg: FitConfig, pairs):
    """``(payload, config, folder)`` to resume from (``(None, cfg, None)`` without ``resume``).
    The pipeline planned the config (``pipeline.plan_fit``); here every fixed setting must
    equal the checkpoint's and the tomograms must be its (``core.fit.resume``)."""
    if resume is None:
        return None, cfg, resume_dir
    payload, name = load_resume(resume)
    cfg = resumed_config(cfg, payload, name=name)
    check_resume_inputs(payload, [pair.record() for pair in pairs])
    if resume_dir is None and not isinstance(resume, dict):
        resume_dir = Path(resume).parent
    return payload, cfg, resume_dir


@dataclass
class CubeData:
    """The pooled cubes of a fit and what was read to make them."""

    cubes: Cubes
    masks: Masks
    stats: list               # per pair, per half (mean, std), or None each
    inputs: list              # the pairs' records for the checkpoint
    n_fit: int
    n_val: int
    state_ref: str | None     # the fitting-state file the cubes are in (None: as extracted)


def cube_data(cfg: FitConfig, pairs, payload, resume_dir, device) -> CubeData:
    """Cut, standardize and pool the cubes (the checkpoint's wedge-updated cube0s put back when
    resuming) and place the stores: on the fitting device when they fit, else on the host
    (pinned under CUDA, the next batch copied while this one runs)."""
    stats = _pair_stats(cfg, payload, pairs)
    # cubes are cut from the raw halves and standardized afterwards: no full-size copies;
    # (N, 2, E, E, E) channels-last stores, channel 0 = half 0; cube0s are updated in place
    pooled = pool_cubes(pairs, cfg, stats)
    fit_pairs, val_pairs = pooled.fit_pairs, pooled.val_pairs
    n_fit, n_val = int(fit_pairs.shape[0]), int(val_pairs.shape[0])
    if n_fit == 0:
        raise DDWError("no fitting sub-tomograms could be extracted; use smaller strides, a smaller subtomo_size "
                       "or a larger ROI mask")
    state_ref = None
    if payload is not None:
        _restore_cubes(fit_pairs, val_pairs, payload, resume_dir)
        state_ref = payload.get("fit_state")
    E = int(fit_pairs.shape[-1])
    ddev = data_device(device, 4 * (fit_pairs.numel() + val_pairs.numel()))
    in_place = ddev == device
    fit_store, val_store = fit_pairs.to(ddev), val_pairs.to(ddev)
    feeders = None
    if not in_place:
        fit_feed, val_feed = CubeFeeder(fit_store, device), CubeFeeder(val_store, device)
        fit_store, val_store = fit_feed.store, val_feed.store
        feeders = {id(fit_store): fit_feed, id(val_store): val_feed}
    wedges = WedgeMasks([pair.tilt_range for pair in pairs], cfg.subtomo_size, E, device)
    cubes = Cubes(fit_store, val_store, pooled.val_rot, pooled.fit_index, pooled.val_index, wedges,
                  cfg.subtomo_size, device, in_place=in_place, feeders=feeders, resampling=cfg.resampling)
    if cfg.ctf_loss:  # the CTF-aware loss's envelopes, built once (core.fit.ctf_envelope)
        from .ctf_envelope import CTFEnvelopes, check_ctf_pairs

        check_ctf_pairs(pairs)
        cubes.envelopes = CTFEnvelopes(pairs, cfg.subtomo_size, E, device)
    cubes.refresh_coefficients()
    inputs = [dict(pair.record(), standardization=None if st is None else [list(h) for h in st])
              for pair, st in zip(pairs, stats)]
    return CubeData(cubes, Masks(), stats, inputs, n_fit, n_val, state_ref)


@dataclass
class Model:
    """The network (``net``; ``model`` is it compiled and/or DDP-wrapped), its optimizer, loss
    scaler and the loop's generator, and where the fit stands (restored when resuming)."""

    net: object
    model: object
    opt: object
    scaler: object
    gen: torch.Generator
    epoch_done: int = 0
    step0: int = 0
    perm: object = None
    tally: EpochTally = dataclasses.field(default_factory=EpochTally)
    best: float | None = None
    history: list = dataclasses.field(default_factory=list)


def model_and_optimizer(cfg: FitConfig, data: CubeData, dev: Devices, payload, init_from, crop_masks) -> Model:
    """The U-Net (its input normalization from the cubes, or the checkpoint's weights), Adam,
    the AMP scaler and the seeded generator; a checkpoint's optimizer, scaler, generator and
    place in the run put back."""
    device = dev.device
    net = _build_net(cfg, device, payload, init_from)
    if payload is None:
        fit0 = data.cubes.fit_pairs[:, 0:1]
        net.set_normalization(*input_normalization(fit0, None, cfg.subtomo_size, device, mask_of=crop_masks,
                                                   resampling=cfg.resampling))
    model = maybe_compile(net, device, cfg.epochs * int(math.ceil(data.n_fit / cfg.batch_size)), cfg.compile)
    if dev.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda") if dev.amp and needs_grad_scaler(pick_autocast(device)) else None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(cfg.seed)
    found = Model(net, model, opt, scaler, gen)
    if payload is not None:
        state = parse_fit_payload(payload, data.n_fit)
        opt.load_state_dict(state.optimizer)
        for group in opt.param_groups:
            group["lr"] = cfg.lr
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)
        gen.set_state(state.generator)
        found.epoch_done, found.step0, found.perm = state.epoch, state.step, state.perm
        found.tally, found.best, found.history = state.tally, state.best_val_loss, list(state.history)
    return found
