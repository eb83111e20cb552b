"""``FitConfig``: everything that defines a fitting run (docs/method.md §2.4–2.7), its engine defaults,
its checks and its dict form (what checkpoints record). Each field is declared once more, as a
row of :mod:`.settings` (presets, limits, flag, YAML keys, dock row). Kept apart from the loop
so that front ends can build and check a configuration without importing torch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..errors import DDWError
from .settings import NON_NEGATIVE, POSITIVE, PRESETS, SETTINGS


@dataclass
class FitConfig:
    """Everything that defines a fitting run (docs/method.md §2.4–2.7)."""

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
    # U-Net adds its normalized input to its output (docs/method.md §2.6). Off by default: with the
    # epoch budgets people run (tens, not hundreds), the plain network denoises much better —
    # tuning phantom, 64×160×160, s=32, 16 ch: CC vs truth at epoch 20 0.595 without vs 0.532
    # with the residual (oracle Gaussian 0.569); see bench/quality.py. bench/quality_peers.py
    # (sym60, 32×64×64, s=16, 8 ch; CC in slab / in-wedge CC) off vs on: 6 epochs 0.812/0.525
    # vs 0.743/0.337, 40 epochs 0.859/0.712 vs 0.851/0.668, 200 epochs 0.838/0.667 vs 0.842/0.590
    residual: bool = False
    # how fitting cubes are rotated: "trilinear" (grid_sample) or "bspline3" (cubic B-spline,
    # as the original); un-rotated inputs get the kind's matching filter (core.model.rotation).
    # Trilinear stays the default: bench/quality_peers.py small run (sym60, 32×64×64, s=16,
    # 8 ch, 6 epochs) CC in slab / in-wedge CC 0.811 / 0.553 trilinear vs 0.794 / 0.425 bspline3
    # (the merged run on main: 0.812 / 0.525 vs 0.793 / 0.427)
    resampling: str = "trilinear"
    # validation cube0s get the same wedge updates as the fitting cube0s (as in the original),
    # so the validation loss and best.pt see the inputs fitting sees. bench/quality_peers.py
    # (sym60, 32×64×64): on vs off 0.812/0.525 vs 0.812/0.525 at 6 epochs, 0.859/0.712 vs
    # 0.869/0.690 at 40: no clear winner, so the original's behaviour is kept
    update_val_wedges: bool = True
    # torch.compile the U-Net: honoured on CUDA for long runs only (core.perf.decide_compile;
    # on the CPU it costs 100 s and gains 3 %, so it is never used there)
    compile: bool = False
    # time-to-quality levers (core/fit/schedule.py); the defaults keep the original's behaviour
    lr_schedule: str = "constant"   # or "warmup_cosine"
    warmup_epochs: int = 0
    early_stop_patience: int = 0    # epochs without a better best_by measure; 0 = never stop early
    # epochs between measurements of the no-ground-truth signals (core.fit.signals: the refined
    # halves' FSC on a fixed crop, the validation loss's wedge term), and at the last epoch;
    # 0 = never. Logged in losses.csv and EpochDone.signals. Every 5: one measurement (both halves
    # of a crop of 3 fitting cubes per axis through the network) cost 19 % of a fitting epoch on
    # 48×96×96 (s = 32, 16 ch; 3.2 vs 17 CPU s) and 40–80 % on 32×64×64 (s = 16, 8 ch; 1.6 vs
    # 2–3.8 CPU s), so every epoch would slow the default fit noticeably while no signal picks
    # best.pt by default (docs/stopping.md); best_by a signal wants signal_every 1
    signal_every: int = 5
    # what picks best.pt and what early_stop_patience watches: "val_loss" (lowest validation
    # loss, the original's choice) or a signal of core.fit.signals. The default stays: in
    # bench/stopping_study.py (docs/stopping.md, 4 phantoms) no signal beat it clearly — fsc_area
    # with patience 10 kept a checkpoint 0.023 CC / 0.063 in-wedge below each run's best, best.pt
    # by validation loss 0.029 / 0.068, the last epoch 0.024 / 0.079: differences inside the
    # truth CC's own scatter from epoch to epoch (s.d. 0.02–0.04 over each run's second half)
    best_by: str = "val_loss"
    # the CTF-aware loss (core.fit.ctf_envelope, docs/method.md §2.5): the prediction times the
    # target half's tilt-averaged |CTF| is compared with the target, so the network gives the
    # CTF-free volume; needs the halves' defoci (<stem>_ctf.json from `reconstruct --ctf`, or
    # `run --ctf`). Off by default: it did not help in bench/ctf_ablation.py (CTF phantom
    # 32×96×96, 41 views, SNR 0.5; s = 16, 8 ch, depth 2, 20 epochs; CC vs truth / FSC-0.143 px /
    # in-wedge CC, phase flip vs flip + CTF loss): 5 Å 2.5 µm 0.681/2.53/0.624 vs 0.644/2.53/0.573,
    # 5 Å 5 µm 0.743/2.62/0.666 vs 0.688/3.24/0.546, 10 Å 2.5 µm 0.725/2.00/0.629 vs
    # 0.668/2.14/0.528, 10 Å 5 µm 0.703/2.31/0.579 vs 0.651/2.44/0.489; with another fit seed
    # (5 Å 5 µm) 0.650 vs 0.539 CC — lower CC in every pair (docs/benchmarks-ctf.md)
    ctf_loss: bool = False

    @property
    def tilt_range(self) -> tuple[float, float]:
        """``(tilt_min, tilt_max)``: the pair the data, the CLI and the dock speak of."""
        return (self.tilt_min, self.tilt_max)

    def for_pair(self, pair) -> "FitConfig":
        """This config with a half pair's tilt range and voxel size — what a fit on pairs runs
        with (pair 0's); the one pair → config conversion (config → pair: ``tilt_range``)."""
        lo, hi = pair.tilt_range
        return dataclasses.replace(self, tilt_min=float(lo), tilt_max=float(hi),
                                   voxel_size=tuple(float(v) for v in pair.voxel_size))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "FitConfig":
        """``FitConfig`` with a preset's values (``settings.PRESETS``: subtomo size, channels,
        depth)."""
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
        from ..model.unet import required_multiple

        def positive_int(name, minimum=1):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
                raise DDWError(f"{name} must be an integer ≥ {minimum}, got {v!r}")

        for setting in SETTINGS:  # the integers' limits, as declared
            if setting.type is int and setting.limits in (POSITIVE, NON_NEGATIVE):
                positive_int(setting.name, 1 if setting.limits == POSITIVE else 0)
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
        from .signals import BEST_BY

        if self.best_by not in BEST_BY:
            raise DDWError(f"best_by must be one of {', '.join(BEST_BY)}, got {self.best_by!r}")
        if self.best_by != "val_loss" and not self.signal_every:
            raise DDWError(f"best_by={self.best_by} needs the signals: set signal_every to 1 (or more), or "
                           "use best_by=val_loss")
        from ..model.rotation import check_resampling

        check_resampling(self.resampling)
        if self.strides is not None and (len(self.strides) != 3 or any(int(s) < 1 for s in self.strides)):
            raise DDWError(f"strides must be three positive integers (Z, Y, X), got {self.strides}")
        return self


# --------------------------------------------------------------------------------------------
# small pieces of the loop
# --------------------------------------------------------------------------------------------
