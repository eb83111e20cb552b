"""The fitting loop (docs/method.md §2.4–2.7): one engine for the CLI, the widgets and torchrun.

``fit_iter`` is a generator of plain event dataclasses. A front end iterates it (a napari
generator worker yields from it; the CLI prints from it); it yields at least once per optimizer
step, so a worker can quit within one step, and its last event is always :class:`FitFinished`.

One fitting step (docs/method.md §2.5): a shuffled batch of fitting cubes (fresh order every epoch,
seeded ``torch.Generator`` on the CPU), a fresh uniformly random rotation per cube, cube0 and
cube1 rotated and centre-cropped in one batched ``grid_sample`` call, target = rotated cube1,
input = ``F⁻¹(M·F(rotated cube0))``, loss = Fourier-masked Noise2Noise loss with ``M`` and the
rotated mask ``M_R``; Adam.

Every ``update_every`` epochs the *wedges are updated*: the model runs on every un-rotated
fitting cube0 and its prediction replaces the cube's unobserved frequencies; the targets
(cube1) never change. The network's input normalization (``loc``/``scale``, docs/method.md §2.6) is
computed from the model inputs (centre crops of the fitting cube0s, masked with ``M``) at the
start and after every wedge update.

Files (``out_dir``, written by rank 0 only): ``latest.pt`` (every epoch), ``best.pt`` (lowest
validation loss; lowest fitting loss without validation cubes; the best ``best_by`` signal when
one is chosen), ``epoch_NNNN.pt`` (every ``checkpoint_every`` epochs), ``stopped.pt`` (when
``should_stop()`` fired) and ``losses.csv`` (``epoch,fit_loss,val_loss,seconds`` and the
progress signals of core.fit_signals, measured every ``signal_every`` epochs). Resuming from any of them continues exactly
(mid-epoch for ``stopped.pt``). The checkpoints hold no cubes: the wedge-updated cube0s go to
``fit_state_NNNN.pt`` at each wedge update, named by the checkpoints (core.fit_state).

Several tomograms: ``pairs=[HalfPair, ...]`` — pooled cubes, each masked with its own pair's
wedge (core.fit_data); one pair is exactly the single-pair fit.

Several GPUs: launch with ``torchrun --nproc-per-node N -m napari_deepdewedge.cli fit ...``.
The CLI calls :func:`init_distributed_from_env`; ``fit_iter`` then wraps the model in
``DistributedDataParallel`` and splits every batch across the ranks so that the *global* batch
is ``batch_size`` (the result matches a single-process run with the same batch size up to
float rounding, and ``fit_iter(..., emulate_ranks=N)`` in one process bit for bit: it runs
each rank's share as its own forward and backward, on the same kernels as the ranks).

Where the pieces live: this module holds the data pieces (standardized cube stores, input
normalization, wedge updates), one fitting step, the validation loss and the loop (≈620
lines: they share the cube stores, masks and settings, and the loop reads as the method's
recipe); ``FitConfig`` in ``fit_config.py``, events in ``fit_events.py``, the loss log in ``fit_log.py``, previews in
``fit_preview.py``, checkpoint payloads in ``checkpoint.py``, devices/AMP/DDP in
``fit_parallel.py``, the resume rule in ``resume.py``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from .errors import CheckpointError, DDWError
from .fit_events import (  # noqa: F401  (re-exported: the engine's event names)
    CheckpointSaved, EpochDone, FitEvent, FitFinished, FitStarted, PreviewReady, StepDone, WedgesUpdated,
)

from .fit_config import FitConfig  # noqa: F401  (re-exported: where FitConfig was defined)
from .fit_log import CSV_HEADER  # noqa: F401  (re-exported)
from .perf import as_input, limit_cpu_threads, maybe_compile, needs_grad_scaler, pick_autocast
from .schedule import lr_at
from .fit_parallel import (  # noqa: F401  (amp_enabled … init_distributed_from_env: re-exported)
    all_reduce_sum, amp_enabled, autocast, configure_backends, data_device, distributed_info, fit_device,
    init_distributed_from_env,
)


def _center_crop(cubes: torch.Tensor, s: int) -> torch.Tensor:
    E = cubes.shape[-1]
    a = E // 2 - s // 2
    return cubes[..., a:a + s, a:a + s, a:a + s]


def input_normalization(fit0: torch.Tensor, mask_s, s: int, device, chunk: int = 8, *, mask_of=None,
                        resampling: str = "trilinear"):
    """``(loc, scale)`` of the model inputs: mean of per-cube means and √(mean of per-cube
    variances) of ``F⁻¹(M·F(centre crop of cube0))`` over all fitting cubes (through the
    matching filter of ``resampling``). ``mask_of(index)`` (optional) gives the masks of the
    cubes ``index`` (several pairs) instead of ``mask_s``."""
    from .loss import model_input
    from .rotation import match_resampling

    means, variances = [], []
    with torch.no_grad():
        for i in range(0, fit0.shape[0], chunk):
            # un-rotated crops, filtered to the noise statistics of the rotated fitting inputs
            m = mask_s if mask_of is None else mask_of(torch.arange(i, min(i + chunk, fit0.shape[0])))
            x = match_resampling(model_input(_center_crop(fit0[i:i + chunk], s).to(device), m), resampling)
            flat = x.reshape(x.shape[0], -1).double()
            means.append(flat.mean(dim=1))
            variances.append(flat.var(dim=1, unbiased=False))
    loc = torch.cat(means).mean().item()
    scale = math.sqrt(torch.cat(variances).mean().item())
    return loc, scale


def update_wedges(model, fit0: torch.Tensor, mask_e, depth: int, device, batch_size: int,
                  *, rank: int = 0, world: int = 1, amp: bool = False, mask_of=None,
                  resampling: str = "trilinear", emulate: int = 1) -> torch.Tensor:
    """Replace the unobserved frequencies of every (un-rotated) cube0 by the model's prediction:
    ``cube0 ← F⁻¹(M·F(cube0) + (1 − M)·F(f(M·cube0)))``. Cubes whose edge is not a multiple
    of ``2**depth`` are reflect-padded at the far side for the model and cropped back.
    ``fit0`` (``(N, 1, E, E, E)``, possibly a view of the pair store) is updated in place and
    returned. Each cube depends only on itself, so one process overwrites batch by batch; with
    several ranks each computes a share, the shares are summed across ranks (exact: the others
    are zero) and copied in. ``mask_e`` is the rfft-layout mask of the cube size; ``mask_of(index)``
    (optional, several pairs) gives each cube's own mask instead. The model input goes through
    the matching filter of ``resampling`` (the kind the model was fitted with). Used for the
    fitting and (``FitConfig.update_val_wedges``) the validation cube0s. ``emulate`` (one
    process only): compute the shares of that many ranks one after the other, in the batches
    those ranks would use (see ``fit_iter(emulate_ranks=...)``)."""
    from .loss import model_input
    from .rotation import match_resampling

    E = fit0.shape[-1]
    m = 2 ** int(depth)
    pad = (-E) % m
    new = torch.zeros(fit0.shape, dtype=fit0.dtype, device=fit0.device) if world > 1 else fit0
    n = fit0.shape[0]
    shares = [list(range(rank, n, world))] if world > 1 else [list(range(r, n, emulate)) for r in range(emulate)]
    with torch.no_grad():
        for mine, i in ((mine, i) for mine in shares for i in range(0, len(mine), batch_size)):
            idx = torch.tensor(mine[i:i + batch_size], dtype=torch.long)
            cube = fit0[idx].to(device)
            me = mask_e if mask_of is None else mask_of(idx)
            spec0 = torch.fft.rfftn(cube, dim=(-3, -2, -1))
            x = match_resampling(model_input(cube, me), resampling)  # the statistics fitting inputs have
            if pad:
                x = torch.nn.functional.pad(x, (0, pad, 0, pad, 0, pad), mode="reflect")
            with autocast(device, amp):
                pred = model(x)
            pred = pred.float()[..., :E, :E, :E]
            specp = torch.fft.rfftn(pred, dim=(-3, -2, -1))
            spec = me * spec0 + (1 - me) * specp
            out = torch.fft.irfftn(spec, s=(E, E, E), dim=(-3, -2, -1))
            new[idx] = out.to(new.device, new.dtype)
    if world > 1:
        import torch.distributed as dist

        buf = new.to(device)
        dist.all_reduce(buf)
        fit0.copy_(buf)
    return fit0


# --------------------------------------------------------------------------------------------
# the pieces of the loop
# --------------------------------------------------------------------------------------------
def _load_resume(resume, cfg: FitConfig):
    """``(payload, config)`` to resume from (``(None, cfg)`` without ``resume``): a path or an
    already loaded payload; every fixed setting must match (core.resume)."""
    from . import checkpoint as ckpt
    from .resume import resumed_config

    if resume is None:
        return None, cfg
    if isinstance(resume, dict):  # loaded by pipeline.fit_events
        payload, name = ckpt.check_payload(resume, require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS), "checkpoint"
    else:
        payload, name = ckpt.load_checkpoint(resume, require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS), Path(resume).name
    return payload, resumed_config(cfg, payload, name=name)


def _pair_stats(cfg: FitConfig, payload, pairs) -> list:
    """Per pair, per half ``(mean, std)`` (the checkpoint's when resuming), or None each."""
    from .fit_data import pair_stats

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
    from .fit_state import resume_state

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
    from . import checkpoint as ckpt

    if isinstance(init_from, dict):
        return ckpt.check_payload(init_from)
    return ckpt.load_checkpoint(init_from)


def _init_weights(source: dict, name: str, net) -> None:
    """Fine-tuning: load another fit's weights (``source``, from :func:`_init_source`) into
    ``net``; its architecture must be ``net``'s (DDWError naming every difference)."""
    from .unet import UNet3D

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
    from .unet import UNet3D

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
    from . import perf

    net = perf.to_channels_last(net.to(device), device)
    if payload is not None:
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"cannot resume: checkpoint weights do not fit this U-Net ({str(exc)[:200]})") from None
    return net


def _stop_requested(should_stop, device, world: int) -> bool:
    """``should_stop()`` (OR-ed across ranks)."""
    flag = bool(should_stop()) if should_stop is not None else False
    if world > 1:
        flag = all_reduce_sum([1.0 if flag else 0.0], device, world)[0] > 0
    return flag


@dataclass
class _Cubes:
    """The pooled fitting and validation cube pairs of all half pairs, the pair of each cube,
    each cube's wedge masks, where the cubes live and how to rotate them."""

    fit_pairs: torch.Tensor   # (N, 2, E, E, E) channels-last, channel 0 = half 0
    val_pairs: torch.Tensor
    val_rot: torch.Tensor
    fit_index: torch.Tensor   # (N,) pair of each fitting cube
    val_index: torch.Tensor   # (Nv,)
    wedges: object            # fit_data.WedgeMasks
    s: int
    device: torch.device      # the fitting device
    in_place: bool            # stores on the fitting device: rotate straight out of them
    feeders: dict | None = None  # host stores: fit_data.CubeFeeder per store
    resampling: str = "trilinear"  # FitConfig.resampling
    coefficients: dict | None = None  # "bspline3": id(store) → its B-spline coefficients

    def refresh_coefficients(self) -> None:
        """Cubic B-spline resampling reads coefficients, recomputed whenever the cube0s change
        (at the start and after each wedge update); trilinear reads the stores themselves."""
        if self.resampling == "bspline3":
            from .rotation import bspline_prefilter

            self.coefficients = {id(store): bspline_prefilter(store) for store in (self.fit_pairs, self.val_pairs)}

    def rotated(self, pairs: torch.Tensor, rotations: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        from .rotation import rotate_center_crop_kind

        kind = self.resampling
        if self.coefficients is not None:  # B-spline coefficients (same layout as the store)
            pairs = self.coefficients[id(pairs)]
        elif not self.in_place:
            feeder = self.feeders.get(id(pairs)) if self.feeders else None
            if feeder is not None:
                return rotate_center_crop_kind(feeder.take(index), rotations, self.s, kind)
        if self.in_place:
            return rotate_center_crop_kind(pairs, rotations, self.s, kind, index=index)
        return rotate_center_crop_kind(pairs[index].to(self.device), rotations, self.s, kind)

    def prefetch(self, index: torch.Tensor) -> None:
        """Start moving the fitting cubes ``index`` to the device (host stores under CUDA)."""
        if not self.in_place and self.feeders:
            self.feeders[id(self.fit_pairs)].prefetch(index)


@dataclass
class _Masks:
    """The validation cubes' rotated observed-masks (rfft layout, each cube with its own pair's
    wedge), made on first use; the fitting cubes' masks come from ``_Cubes.wedges`` per batch."""

    val: torch.Tensor | None = None


def _validation_loss(net, cubes: _Cubes, masks: _Masks, cfg: FitConfig, *, rank: int, world: int,
                     amp: bool, emulate: int = 1, terms: dict | None = None) -> float | None:
    """Mean masked Fourier loss over the validation cubes (fixed rotations), or None. Each rank
    sums its share (round robin) in batches of ``batch_size``; ``emulate`` (one process): the
    shares of that many ranks one after the other, summed as the all-reduce sums them. With a
    ``terms`` dict, also its mean missing-wedge term (core.fit_signals ``val_wedge``), from the
    same forward passes."""
    n_val = int(cubes.val_pairs.shape[0])
    if n_val == 0:
        return None
    if masks.val is None:
        masks.val = cubes.wedges.rotated(cubes.val_index, cubes.val_rot)
    shares = [list(range(rank, n_val, world))] if world > 1 else [list(range(r, n_val, emulate))
                                                                   for r in range(emulate)]
    sums = [_validation_share(net, cubes, masks, cfg, mine, amp, terms is not None) for mine in shares]
    total, wedge = all_reduce_sum([sum(t for t, _ in sums), sum(w for _, w in sums)],
                                  cubes.device, world)
    if terms is not None:
        terms["val_wedge"] = wedge / n_val
    return total / n_val


def _validation_share(net, cubes: _Cubes, masks: _Masks, cfg: FitConfig, mine: list, amp: bool,
                      with_wedge: bool) -> tuple[float, float]:
    """Summed loss (and summed wedge term when ``with_wedge``) of the validation cubes
    ``mine`` (batches of ``batch_size``)."""
    from .fit_signals import wedge_term
    from .loss import masked_fourier_loss, model_input

    device, B = cubes.device, cfg.batch_size
    total = wedge = 0.0
    with torch.no_grad():
        for i in range(0, len(mine), B):
            idx = torch.tensor(mine[i:i + B], dtype=torch.long)
            rot = cubes.rotated(cubes.val_pairs, cubes.val_rot[idx].to(device), idx)
            m = cubes.wedges.crop(cubes.val_index[idx])
            x = as_input(model_input(rot[:, 0:1], m), device)
            with autocast(device, amp):
                pred = net(x)
            loss = masked_fourier_loss(pred.float(), rot[:, 1:2], m, masks.val[idx.to(device)],
                                       wedge_weight=cfg.wedge_weight)
            total += float(loss) * len(idx)
            if with_wedge:
                wedge += float(wedge_term(pred.float(), rot[:, 1:2], m, masks.val[idx.to(device)]).sum())
    return total, wedge


def _fit_step(model, opt, scaler, cubes: _Cubes, masks: _Masks, idx: torch.Tensor, gen: torch.Generator,
              cfg: FitConfig, *, rank: int, world: int, amp: bool, emulate: int = 1) -> float:
    """One optimizer step on the cubes ``idx`` (this rank's share of them); the batch's loss.
    ``emulate`` (one process): the shares of that many ranks one after the other, each its own
    forward and backward, the gradients summed and divided by the ranks as DDP averages them."""
    from .rotation import random_rotations

    nb = len(idx)
    rots = random_rotations(nb, generator=gen)
    opt.zero_grad(set_to_none=True)
    if world > 1:
        total = all_reduce_sum([_share_backward(model, scaler, cubes, idx, rots, cfg, rank, world, amp)],
                               cubes.device, world)[0]
    elif emulate > 1:
        total = sum(_share_backward(model, scaler, cubes, idx, rots, cfg, r, emulate, amp, skip_empty=True)
                    for r in range(emulate))
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(emulate)
    else:
        total = _share_backward(model, scaler, cubes, idx, rots, cfg, 0, 1, amp)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return total / nb


def _share_backward(model, scaler, cubes: _Cubes, idx: torch.Tensor, rots: torch.Tensor, cfg: FitConfig,
                    rank: int, world: int, amp: bool, *, skip_empty: bool = False) -> float:
    """Forward and backward of rank ``rank``'s share (of ``world``) of the batch ``idx``
    (gradients accumulate into ``.grad``); the share's summed loss."""
    from .loss import masked_fourier_loss, model_input

    device = cubes.device
    nb = len(idx)
    share = torch.tensor_split(torch.arange(nb), world)[rank] if world > 1 else torch.arange(nb)
    n_local = len(share)
    if n_local == 0 and skip_empty:  # its zero gradients change no sum
        return 0.0
    use = share if n_local > 0 else torch.arange(1)  # an empty share still joins the all-reduce
    sel = idx[use]
    r_local = rots[use].to(device)
    rot = cubes.rotated(cubes.fit_pairs, r_local, sel)
    pair_of = cubes.fit_index[sel]          # each cube's own wedge: M and M_R of its pair
    m = cubes.wedges.crop(pair_of)
    x = as_input(model_input(rot[:, 0:1], m), device)
    m_r = cubes.wedges.rotated(pair_of, r_local)
    with autocast(device, amp):
        pred = model(x)
    loss = masked_fourier_loss(pred.float(), rot[:, 1:2], m, m_r, wedge_weight=cfg.wedge_weight)
    # DDP averages gradients over ranks: weight each rank by its share of the global batch
    weight = n_local * world / nb
    if scaler is not None:
        scaler.scale(loss * weight).backward()
    else:
        (loss * weight).backward()
    return float(loss.detach()) * n_local


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def fit_iter(tomo0, tomo1, config: FitConfig, *, mask=None, pairs=None, resume=None, resume_dir=None,
             init_from=None, should_stop: Callable[[], bool] | None = None,
             preview_slab: Callable[[], tuple[int, int]] | None = None,
             emulate_ranks: int = 1) -> Iterator[FitEvent]:
    """Fit a U-Net to one or more half pairs (docs/method.md §2.4–2.7), yielding events.

    One pair: ``tomo0``/``tomo1`` with ``config.tilt_min/tilt_max`` and the optional ROI
    ``mask``. Several: ``pairs`` (a list of :class:`core.fit_data.HalfPair`, ``tomo0``/``tomo1``
    None); each pair keeps its own tilt range, standardization, ROI and validation share
    (core.fit_data); ``config``'s tilt range and voxel size become pair 0's. ``resume``: a
    checkpoint path (or its loaded payload, then ``resume_dir`` is its folder) to continue from
    (exactly); every setting that ``core.resume.RESUME_FIXED`` lists must match the
    checkpoint's. ``init_from``: a checkpoint (path or payload) whose weights start a new fit
    (fine-tuning: fresh optimizer, schedule and normalization; same architecture).
    ``should_stop``: polled before every step; when it returns True the loop saves
    ``stopped.pt`` (if ``out_dir``) and finishes. ``preview_slab()`` gives the
    ``(z_start, z_stop)`` rows of pair 0 previewed every ``preview_every`` epochs (default: a
    central slab of thickness ``subtomo_size``).
    ``emulate_ranks`` (one process only): do the work of that many DDP ranks one after the
    other — each optimizer step runs every rank's share of the batch as its own forward and
    backward, validation and wedge updates run each rank's share in its batches — so that the
    same kernels run on the same tensors as under torchrun. With 2 the result is bit-identical
    to a 2-rank run (a sum of two is order-free; more ranks: up to the all-reduce's order); the
    plain single-process run differs from it by float rounding only (other batch shapes pick
    other kernels, and Adam's first steps amplify such differences).
    """
    from . import checkpoint as ckpt
    from .fit_data import CubeFeeder, HalfPair, WedgeMasks, check_pairs, pool_cubes
    from .fit_signals import SIGNALS, SignalProbe, check_best_by, improved_at, stop_reason
    from .fit_log import EpochRecord, EpochTally, LossLog
    from .fit_preview import Previewer
    from .fit_state import carry_state, prune_states, save_fit_state

    cfg = dataclasses.replace(config).validate()
    if pairs is None:
        pairs = [HalfPair(even=tomo0, odd=tomo1, tilt_range=(cfg.tilt_min, cfg.tilt_max), mask=mask,
                          voxel_size=cfg.voxel_size)]
    elif tomo0 is not None or tomo1 is not None or mask is not None:
        raise DDWError("give either tomo0/tomo1 (and mask) or pairs, not both")
    pairs = check_pairs(pairs)
    cfg = dataclasses.replace(cfg, tilt_min=pairs[0].tilt_range[0], tilt_max=pairs[0].tilt_range[1],
                              voxel_size=tuple(pairs[0].voxel_size))
    rank, world = distributed_info()
    main = rank == 0
    emulate = int(emulate_ranks)
    if emulate < 1 or (emulate > 1 and world > 1):
        raise DDWError(f"emulate_ranks={emulate_ranks}: emulating ranks needs one process and a count of at least 1")
    device = fit_device(cfg.device, world)
    amp = amp_enabled(device)
    configure_backends(device)
    limit_cpu_threads(device)
    payload, cfg = _load_resume(resume, cfg)
    if payload is not None:
        from .resume import check_resume_inputs

        check_resume_inputs(payload, [pair.record() for pair in pairs])
        if resume_dir is None and not isinstance(resume, dict):
            resume_dir = Path(resume).parent

    # ---- data ------------------------------------------------------------------------------
    stats = _pair_stats(cfg, payload, pairs)
    s = cfg.subtomo_size
    # cubes are cut from the raw halves and standardized afterwards: no full-size copies;
    # (N, 2, E, E, E) channels-last stores, channel 0 = half 0; cube0s are updated in place
    pooled = pool_cubes(pairs, cfg, stats)
    fit_pairs, val_pairs = pooled.fit_pairs, pooled.val_pairs
    n_fit, n_val = int(fit_pairs.shape[0]), int(val_pairs.shape[0])
    if n_fit == 0:
        raise DDWError("no fitting sub-tomograms could be extracted; use smaller strides, a smaller subtomo_size "
                       "or a larger ROI mask")
    state_ref = None  # the fitting-state file the cubes are in (None: as extracted)
    if payload is not None:
        _restore_cubes(fit_pairs, val_pairs, payload, resume_dir)
        state_ref = payload.get("fit_state")
    E = int(fit_pairs.shape[-1])
    ddev = data_device(device, 4 * (fit_pairs.numel() + val_pairs.numel()))
    in_place = ddev == device
    fit_store, val_store = fit_pairs.to(ddev), val_pairs.to(ddev)
    feeders = None
    if not in_place:  # host stores (pinned under CUDA, next batch copied while this one runs)
        fit_feed, val_feed = CubeFeeder(fit_store, device), CubeFeeder(val_store, device)
        fit_store, val_store = fit_feed.store, val_feed.store
        feeders = {id(fit_store): fit_feed, id(val_store): val_feed}
    wedges = WedgeMasks([pair.tilt_range for pair in pairs], s, E, device)
    kind = cfg.resampling
    cubes = _Cubes(fit_store, val_store, pooled.val_rot, pooled.fit_index, pooled.val_index, wedges, s, device,
                   in_place=in_place, feeders=feeders, resampling=kind)
    cubes.refresh_coefficients()
    del pooled, fit_pairs, val_pairs
    fit0, val0 = cubes.fit_pairs[:, 0:1], cubes.val_pairs[:, 0:1]
    masks = _Masks()  # the validation cubes' rotated masks, built once

    def crop_masks(index):
        return wedges.crop(cubes.fit_index[index])

    def extraction_masks(index):
        return wedges.extraction(cubes.fit_index[index])

    def val_extraction_masks(index):
        return wedges.extraction(cubes.val_index[index])

    inputs = [dict(pair.record(), standardization=None if st is None else [list(h) for h in st])
              for pair, st in zip(pairs, stats)]

    # ---- model and optimizer ---------------------------------------------------------------
    net = _build_net(cfg, device, payload, init_from)
    if payload is None:
        net.set_normalization(*input_normalization(fit0, None, s, device, mask_of=crop_masks, resampling=kind))
    model = maybe_compile(net, device, cfg.epochs * int(math.ceil(n_fit / cfg.batch_size)), cfg.compile)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda") if amp and needs_grad_scaler(pick_autocast(device)) else None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(cfg.seed)

    B = cfg.batch_size
    steps = int(math.ceil(n_fit / B))
    epoch_done, step0, perm = 0, 0, None
    tally = EpochTally()
    best = None
    history: list[EpochRecord] = []
    if payload is not None:
        state = ckpt.parse_fit_payload(payload, n_fit)
        opt.load_state_dict(state.optimizer)
        for group in opt.param_groups:
            group["lr"] = cfg.lr
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)
        gen.set_state(state.generator)
        epoch_done, step0, perm = state.epoch, state.step, state.perm
        tally, best, history = state.tally, state.best_val_loss, state.history

    # ---- files -----------------------------------------------------------------------------
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    loss_log = None
    if out_dir is not None and main:
        out_dir.mkdir(parents=True, exist_ok=True)
        loss_log = LossLog(out_dir / "losses.csv", history, SIGNALS if cfg.signal_every else ())
        carry_state(state_ref, resume_dir, out_dir)  # resumed into another folder
    states_written: set[str] = set()
    state_refs: dict[str, str | None] = {}  # checkpoint file → the state file it refers to
    latest_path = best_path = None
    if out_dir is not None and payload is not None:
        latest_path = out_dir / "latest.pt" if (out_dir / "latest.pt").exists() else None
        best_path = out_dir / "best.pt" if (out_dir / "best.pt").exists() else None
    previewer = None
    if cfg.preview_every and main:
        previewer = Previewer(pairs[0].even, pairs[0].odd, subtomo_size=s, tilt_min=cfg.tilt_min,
                              tilt_max=cfg.tilt_max, stats=stats[0], batch_size=B, device=device, slab=preview_slab,
                              resampling=kind)
    check_best_by(cfg, n_val)
    probe = None  # the no-ground-truth signals (core.fit_signals), on a crop of pair 0
    if cfg.signal_every and main:
        probe = SignalProbe(pairs[0].even, pairs[0].odd, subtomo_size=s, tilt_min=cfg.tilt_min, tilt_max=cfg.tilt_max,
                            stats=stats[0], batch_size=B, device=device, resampling=kind, voxel_size=cfg.voxel_size)

    def save(kind: str, name: str, epoch_completed: int, step: int = 0, cur_perm=None, cur_tally=None):
        payload_now = ckpt.build_fit_payload(
            net=net, config=cfg, subtomo_size=s, stats=stats[0], epoch=epoch_completed, step=step,
            optimizer=opt, scaler=scaler, generator=gen, fit_state=state_ref, perm=cur_perm,
            tally=cur_tally or EpochTally(), best_val_loss=best, history=history, n_fit=n_fit, n_val=n_val,
            inputs=inputs)
        # latest.pt keeps its predecessor as latest.prev.pt: one corrupt file is survivable (and the
        # fitting state the predecessor refers to is kept with it)
        if kind == "latest":
            state_refs["latest.prev.pt"] = state_refs.get("latest.pt")
        write = ckpt.save_rotating if kind == "latest" else ckpt.save_checkpoint
        state_refs[name] = state_ref
        return CheckpointSaved(epoch=epoch_completed, path=write(out_dir / name, payload_now), kind=kind)

    yield FitStarted(n_fit_cubes=n_fit, n_val_cubes=n_val, steps_per_epoch=steps, device=str(device), config=cfg)

    model.train()
    for epoch in range(epoch_done + 1, cfg.epochs + 1):
        if perm is None:  # a new epoch (not one a stopped checkpoint was in the middle of)
            perm = torch.randperm(n_fit, generator=gen)
            tally = EpochTally()
        t_start = time.perf_counter() - tally.seconds
        for step in range(step0, steps):
            if _stop_requested(should_stop, device, world):
                tally.seconds = time.perf_counter() - t_start
                stopped_path = None
                if out_dir is not None and main:
                    ev = save("stopped", "stopped.pt", epoch - 1, step, perm, tally)
                    stopped_path = ev.path
                    yield ev
                yield FitFinished(epochs_done=epoch - 1, stopped=True,
                                  latest_path=stopped_path or latest_path, best_path=best_path)
                return
            idx = perm[step * B:(step + 1) * B]
            if cfg.lr_schedule != "constant":
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg.lr, cfg.lr_schedule, cfg.epochs, cfg.warmup_epochs, epoch, step, steps)
            if step + 1 < steps:
                cubes.prefetch(perm[(step + 1) * B:(step + 2) * B])
            batch_loss = _fit_step(model, opt, scaler, cubes, masks, idx, gen, cfg, rank=rank, world=world, amp=amp,
                                   emulate=emulate)
            tally.add(batch_loss, len(idx))
            yield StepDone(epoch=epoch, step=step + 1, steps_per_epoch=steps, loss=batch_loss)
        step0, perm = 0, None
        fit_loss = tally.mean_loss()

        validated = epoch % cfg.validate_every == 0 or epoch == cfg.epochs
        measured = bool(cfg.signal_every) and (epoch % cfg.signal_every == 0 or epoch == cfg.epochs)
        terms = {} if measured else None
        val_loss = (_validation_loss(net, cubes, masks, cfg, rank=rank, world=world, amp=amp,
                                     emulate=emulate, terms=terms)
                    if validated or measured else None)
        if not validated:
            val_loss = None
        signals = dict(terms or {})
        updated = cfg.update_every > 0 and epoch % cfg.update_every == 0
        if updated:
            update_wedges(net, fit0, None, cfg.depth, device, B, rank=rank, world=world, amp=amp,
                          mask_of=extraction_masks, resampling=kind, emulate=emulate)
            if cfg.update_val_wedges and n_val:  # as the original: validation sees what fitting sees
                update_wedges(net, val0, None, cfg.depth, device, B, rank=rank, world=world, amp=amp,
                              mask_of=val_extraction_masks, resampling=kind, emulate=emulate)
            cubes.refresh_coefficients()
            net.set_normalization(*input_normalization(fit0, None, s, device, mask_of=crop_masks, resampling=kind))
            if out_dir is not None and main:  # the cubes changed: the one time they are written
                state_ref = save_fit_state(out_dir, epoch, fit0, val0)
                states_written.add(state_ref)
        if probe is not None and measured:  # after the update: the model (normalization) this epoch saves
            signals.update(probe(net))
            model.train()
        record = EpochRecord(epoch, fit_loss, val_loss, time.perf_counter() - t_start, signals)
        history.append(record)
        tally = EpochTally()
        if loss_log is not None:
            loss_log.append(record)
        yield EpochDone(epoch=epoch, fit_loss=fit_loss, val_loss=val_loss, seconds=record.seconds, signals=signals)
        if updated:
            yield WedgesUpdated(epoch=epoch)

        score = val_loss if n_val > 0 else fit_loss
        if score is not None and (best is None or score < best):
            best = float(score)
            improved = cfg.best_by == "val_loss"
        else:
            improved = False
        if cfg.best_by != "val_loss":  # best.pt follows the chosen signal (core.fit_signals)
            improved = improved_at(history, cfg.best_by, epoch)
        if out_dir is not None and main:
            # best.pt before latest.pt (its byte copy): a kill between the two leaves best.pt one
            # epoch ahead, and the resumed run redoes that epoch to the same state — the other
            # order could leave a stale best.pt for good
            if improved:
                best_path = save("best", "best.pt", epoch).path
                state_refs["latest.prev.pt"] = state_refs.get("latest.pt")
                state_refs["latest.pt"] = state_ref
                latest_path = ckpt.copy_checkpoint(best_path, out_dir / "latest.pt", keep_previous=True)
            else:
                latest_path = save("latest", "latest.pt", epoch).path
            yield CheckpointSaved(epoch=epoch, path=latest_path, kind="latest")
            if improved:
                yield CheckpointSaved(epoch=epoch, path=best_path, kind="best")
            if improved:
                state_refs["best.pt"] = state_ref
            if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                path = ckpt.copy_checkpoint(latest_path, out_dir / f"epoch_{epoch:04d}.pt")
                state_refs[path.name] = state_ref
                yield CheckpointSaved(epoch=epoch, path=path, kind="periodic")
            prune_states(out_dir, states_written, set(state_refs.values()))

        if previewer is not None and epoch % cfg.preview_every == 0:
            preview = previewer(net, epoch)
            model.train()
            yield preview

        reason = stop_reason(history, cfg.best_by, cfg.early_stop_patience)
        if reason and epoch < cfg.epochs:
            yield FitFinished(epochs_done=epoch, stopped=False, latest_path=latest_path, best_path=best_path,
                              reason=reason)
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
