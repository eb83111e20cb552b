"""The data of a fit over one or more half pairs (issue 9): pairs, pooled cubes, per-cube wedges.

A fit takes a list of :class:`HalfPair` (re-exported as ``pipeline.fitting.HalfPair``). Every
pair keeps its own

* tilt range: its cubes are masked with its own ``M`` (model input, wedge update, loss) and
  ``M_R`` (loss); :class:`WedgeMasks` hands out the mask of each cube from its pair index,
* standardization: each half of each pair by its own mean / std,
* ROI mask: cube selection per pair,
* validation cubes: ``val_fraction`` of *each* pair's cubes (so validation covers every pair).

The cubes of all pairs are pooled into one ``(N, 2, E, E, E)`` store (pair 0's cubes first)
with a per-cube pair index (``fit_index``/``val_index``); the loop shuffles the pool. Pair
``k`` is cut with seed ``cfg.seed + k``: with one pair everything is exactly the single-pair
fit of before (same cubes, same masks, same order).

Memory model (documented in docs/architecture.md, printed by the CLI before a fit): one cube
pair is ``2·E³·4`` bytes (float32, both halves, ``E = ceil_even(√2·s)``); a tomogram costs
``n_cubes · 2·E³·4`` bytes, ``n_cubes`` from its grid (:func:`estimate_cubes`, an upper bound
with an ROI mask). The stores stay on the fitting device when they take at most 40 % of its
free memory, otherwise on the host (pinned under CUDA, the next batch copied on a side stream
while the current one is computed: :class:`CubeFeeder`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DDWError
from .pairs import HalfPair, check_pairs, memory_estimate  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------------------------
# the pooled cubes
# --------------------------------------------------------------------------------------------
@dataclass
class PooledCubes:
    fit_pairs: torch.Tensor      # (N, 2, E, E, E) channels-last, standardized
    val_pairs: torch.Tensor
    val_rot: torch.Tensor        # (Nv, 3, 3)
    fit_index: torch.Tensor      # (N,) int64 pair of each fitting cube
    val_index: torch.Tensor      # (Nv,) int64
    stats: list = field(default_factory=list)   # per pair: [(mean0, std0), (mean1, std1)] or None


def _standardize_(store: torch.Tensor, stats) -> None:
    if stats is not None:
        for h in (0, 1):
            store[:, h].sub_(float(stats[h][0])).div_(float(stats[h][1]))


def pair_stats(pair: HalfPair, standardize: bool):
    from ..refine.tiles import standardization_stats

    if not standardize:
        return None
    return [standardization_stats(pair.even), standardization_stats(pair.odd)]


def pool_cubes(pairs: list[HalfPair], cfg, stats: list) -> PooledCubes:
    """Cut, standardize and pool the cubes of every pair (pair ``k`` with seed ``cfg.seed + k``)."""
    from .cubes import extract_subtomos

    fit, val, rot, fit_idx, val_idx = [], [], [], [], []
    for k, pair in enumerate(pairs):
        try:
            sub = extract_subtomos(pair.even, pair.odd, cfg.subtomo_size, strides=cfg.strides, mask=pair.mask,
                                   min_mask_fraction=cfg.min_mask_fraction, val_fraction=cfg.val_fraction,
                                   seed=cfg.seed + k, depth=cfg.depth)
        except DDWError as exc:
            if len(pairs) == 1:
                raise
            raise DDWError(f"pair {k + 1} ({pair.name or 'unnamed'}): {exc}") from None
        _standardize_(sub.fit_pairs, stats[k])
        _standardize_(sub.val_pairs, stats[k])
        fit.append(sub.fit_pairs)
        val.append(sub.val_pairs)
        rot.append(sub.val_rotations.float())
        fit_idx.append(torch.full((sub.n_fit,), k, dtype=torch.long))
        val_idx.append(torch.full((sub.n_val,), k, dtype=torch.long))
        del sub
    if len(pairs) == 1:
        fit_pairs, val_pairs = fit[0], val[0]
    else:  # one channels-last store (no third copy kept)
        fit_pairs = _concat_channels_last(fit)
        val_pairs = _concat_channels_last(val)
    return PooledCubes(fit_pairs, val_pairs, torch.cat(rot), torch.cat(fit_idx), torch.cat(val_idx), stats)


def _concat_channels_last(stores: list[torch.Tensor]) -> torch.Tensor:
    e = stores[0].shape[-1]
    n = sum(int(s.shape[0]) for s in stores)
    out = torch.empty((n, e, e, e, 2), dtype=torch.float32).permute(0, 4, 1, 2, 3)
    at = 0
    while stores:
        s = stores.pop(0)
        out[at:at + s.shape[0]].copy_(s)
        at += int(s.shape[0])
    return out


# --------------------------------------------------------------------------------------------
# per-cube wedges
# --------------------------------------------------------------------------------------------
class WedgeMasks:
    """The observed masks ``M`` (crop edge ``s`` and extraction edge ``E``, rfft layout) and
    rotated masks ``M_R`` of each cube, from its pair's tilt range. With one distinct tilt
    range the shared mask itself is returned (exactly the single-pair tensors)."""

    def __init__(self, tilt_ranges, s: int, E: int, device):
        from ..fourier import observed_mask

        self.ranges: list[tuple[float, float]] = []
        group = []
        for r in tilt_ranges:
            r = (float(r[0]), float(r[1]))
            if r not in self.ranges:
                self.ranges.append(r)
            group.append(self.ranges.index(r))
        self.group_of_pair = torch.tensor(group, dtype=torch.long)
        self.s, self.E, self.device = int(s), int(E), device
        self._s = torch.stack([observed_mask((s, s, s), lo, hi, device=device, rfft=True) for lo, hi in self.ranges])
        self._e = torch.stack([observed_mask((E, E, E), lo, hi, device=device, rfft=True) for lo, hi in self.ranges])

    @property
    def shared(self) -> bool:
        return len(self.ranges) == 1

    def _groups(self, pair_index: torch.Tensor) -> torch.Tensor:
        return self.group_of_pair[pair_index.cpu()]

    def crop(self, pair_index: torch.Tensor) -> torch.Tensor:
        """``M`` at edge ``s`` for the cubes of ``pair_index``: shared ``(s, s, s')`` or ``(B, 1, …)``."""
        if self.shared:
            return self._s[0]
        return self._s[self._groups(pair_index).to(self._s.device)].unsqueeze(1)

    def extraction(self, pair_index: torch.Tensor) -> torch.Tensor:
        """``M`` at the extraction edge ``E`` (wedge updates)."""
        if self.shared:
            return self._e[0]
        return self._e[self._groups(pair_index).to(self._e.device)].unsqueeze(1)

    def rotated(self, pair_index: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """``M_R`` ``(B, s, s, s')`` of the cubes of ``pair_index`` rotated by ``rotations``."""
        from ..fourier import rotated_observed_masks

        shape = (self.s,) * 3
        if self.shared:
            lo, hi = self.ranges[0]
            return rotated_observed_masks(shape, lo, hi, rotations, device=self.device, rfft=True)
        groups = self._groups(pair_index)
        out = torch.empty((len(groups), self.s, self.s, self.s // 2 + 1), device=self.device)
        for g in torch.unique(groups).tolist():
            sel = torch.nonzero(groups == g).flatten()
            lo, hi = self.ranges[g]
            out[sel.to(self.device)] = rotated_observed_masks(shape, lo, hi, rotations[sel.to(rotations.device)],
                                                              device=self.device, rfft=True)
        return out


# --------------------------------------------------------------------------------------------
# host-resident cubes
# --------------------------------------------------------------------------------------------
class CubeFeeder:
    """Batches of cube pairs from a host store for the fitting device.

    CPU (and MPS) fitting: ``store[index].to(device)``. CUDA with the store on the host: the
    store is pinned once, and :meth:`prefetch` gathers the *next* batch into pinned memory and
    starts its copy on a side stream, so the transfer overlaps the current step's compute;
    :meth:`take` waits for that copy (or copies at once when nothing was prefetched)."""

    def __init__(self, store: torch.Tensor, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.store = store.pin_memory() if self.cuda and not store.is_pinned() else store
        self.stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        self._pending = None  # (index, tensor on device, event)

    def prefetch(self, index: torch.Tensor) -> None:
        if not self.cuda:
            return
        host = self.store[index].pin_memory()
        with torch.cuda.stream(self.stream):
            moved = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self._pending = (index.clone(), moved, event, host)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        pending, self._pending = self._pending, None
        if pending is not None and torch.equal(pending[0], index):
            current = torch.cuda.current_stream(self.device)
            current.wait_event(pending[2])
            pending[1].record_stream(current)  # allocated on the side stream, used on this one
            return pending[1]
        return self.store[index].to(self.device, non_blocking=self.cuda)
