"""The pieces of one fitting epoch (docs/method.md §2.5–2.6): the pooled cube stores and how a batch
is rotated out of them (:class:`Cubes`), one optimizer step (:func:`fit_step`), the
validation loss, the input normalization and the wedge update. :mod:`.loop` runs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..perf import as_input
from .config import FitConfig
from .parallel import all_reduce_sum, autocast


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
    from ..model.rotation import match_resampling

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
                  resampling: str = "trilinear", emulate: int = 1, envelope_of=None) -> torch.Tensor:
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
    those ranks would use (see ``fit_iter(emulate_ranks=...)``). ``envelope_of(index)`` (the
    CTF-aware fit, core.fit.ctf_envelope): the prediction fills the wedge multiplied by the
    cubes' CTF envelope ``g``, so the cube0s keep the CTF of the data they come from."""
    from .loss import model_input
    from ..model.rotation import match_resampling

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
            if envelope_of is not None:
                specp = specp * envelope_of(idx)
            spec = me * spec0 + (1 - me) * specp
            out = torch.fft.irfftn(spec, s=(E, E, E), dim=(-3, -2, -1))
            new[idx] = out.to(new.device, new.dtype)
    if world > 1:
        import torch.distributed as dist

        buf = new.to(device)
        dist.all_reduce(buf)
        fit0.copy_(buf)
    return fit0


def stop_requested(should_stop, device, world: int) -> bool:
    """``should_stop()`` (OR-ed across ranks)."""
    flag = bool(should_stop()) if should_stop is not None else False
    if world > 1:
        flag = all_reduce_sum([1.0 if flag else 0.0], device, world)[0] > 0
    return flag


@dataclass
class Cubes:
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
    envelopes: object = None  # FitConfig.ctf_loss: ctf_envelope.CTFEnvelopes (else None)

    def envelope(self, pair_index: torch.Tensor):
        """The CTF-aware loss's envelope of the cubes of ``pair_index`` at edge ``s`` (or None)."""
        return None if self.envelopes is None else self.envelopes.crop(pair_index)

    def refresh_coefficients(self) -> None:
        """Cubic B-spline resampling reads coefficients, recomputed whenever the cube0s change
        (at the start and after each wedge update); trilinear reads the stores themselves."""
        if self.resampling == "bspline3":
            from ..model.rotation import bspline_prefilter

            self.coefficients = {id(store): bspline_prefilter(store) for store in (self.fit_pairs, self.val_pairs)}

    def rotated(self, pairs: torch.Tensor, rotations: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        from ..model.rotation import rotate_center_crop_kind

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
class Masks:
    """The validation cubes' rotated observed-masks (rfft layout, each cube with its own pair's
    wedge), made on first use; the fitting cubes' masks come from ``Cubes.wedges`` per batch."""

    val: torch.Tensor | None = None


def validation_loss(net, cubes: Cubes, masks: Masks, cfg: FitConfig, *, rank: int, world: int,
                    amp: bool, emulate: int = 1, terms: dict | None = None) -> float | None:
    """Mean masked Fourier loss over the validation cubes (fixed rotations), or None. Each rank
    sums its share (round robin) in batches of ``batch_size``; ``emulate`` (one process): the
    shares of that many ranks one after the other, summed as the all-reduce sums them. With a
    ``terms`` dict, also its mean missing-wedge term (core.fit.signals ``val_wedge``), from the
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


def _validation_share(net, cubes: Cubes, masks: Masks, cfg: FitConfig, mine: list, amp: bool,
                      with_wedge: bool) -> tuple[float, float]:
    """Summed loss (and summed wedge term when ``with_wedge``) of the validation cubes
    ``mine`` (batches of ``batch_size``)."""
    from .signals import wedge_term
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
            g = cubes.envelope(cubes.val_index[idx])
            loss = masked_fourier_loss(pred.float(), rot[:, 1:2], m, masks.val[idx.to(device)],
                                       wedge_weight=cfg.wedge_weight, envelope=g)
            total += float(loss) * len(idx)
            if with_wedge:
                wedge += float(wedge_term(pred.float(), rot[:, 1:2], m, masks.val[idx.to(device)],
                                          envelope=g).sum())
    return total, wedge


def fit_step(model, opt, scaler, cubes: Cubes, masks: Masks, idx: torch.Tensor, gen: torch.Generator,
             cfg: FitConfig, *, rank: int, world: int, amp: bool, emulate: int = 1) -> float:
    """One optimizer step on the cubes ``idx`` (this rank's share of them); the batch's loss.
    ``emulate`` (one process): the shares of that many ranks one after the other, each its own
    forward and backward, the gradients summed and divided by the ranks as DDP averages them."""
    from ..model.rotation import random_rotations

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


def _share_backward(model, scaler, cubes: Cubes, idx: torch.Tensor, rots: torch.Tensor, cfg: FitConfig,
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
    loss = masked_fourier_loss(pred.float(), rot[:, 1:2], m, m_r, wedge_weight=cfg.wedge_weight,
                               envelope=cubes.envelope(pair_of))
    # DDP averages gradients over ranks: weight each rank by its share of the global batch
    weight = n_local * world / nb
    if scaler is not None:
        scaler.scale(loss * weight).backward()
    else:
        (loss * weight).backward()
    return float(loss.detach()) * n_local
