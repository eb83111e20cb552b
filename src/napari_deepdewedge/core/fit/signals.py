"""Signals of a fit's progress that use no ground truth (issue 22), and the stopping rule on them.

Every ``FitConfig.signal_every`` epochs the loop (core.fit.loop) runs the current model on a
fixed crop of the two un-rotated half tomograms, each half on its own (as refinement does:
standardized, wedge-masked, tiled, the matching filter of the fit's resampling kind), and
compares the two refined crops:

``fsc_area``      mean of the FSC between the refined halves over the shells up to
                  ``BAND`` × Nyquist (higher: the halves agree more)
``fsc_143``       the FSC's 0.143 crossing in Å (lower is better; the Nyquist bound when it
                  never crosses)
``wedge_fsc``     the same mean FSC computed only over the frequencies in the missing wedge
                  (the halves' agreement on what the network filled in)
``consistency``   ``mean |h0 − h1| / mean(std h0, std h1)``: the consistency map's mean,
                  scale-free (lower: the halves agree more)

and, from the validation pass the loop already makes (the same forward passes, no extra cost):

``val_wedge``     the validation loss restricted to its missing-wedge term
                  ``mean_k |M_R·(1 − M)·F(y − f(x))|²`` (the held-out cube1's frequencies that
                  the model input lacks; lower is better)

The crop is chosen once at the start: the central box of :data:`CROP_CUBES` fitting cubes per
axis (the whole axis when shorter), prepared once with a margin of the refinement overlap, so
only the network runs again at each measurement.

The stopping rule (:func:`should_stop`, :func:`stop_epoch`, :func:`best_epoch`) reads a
measure's history: stop when its best value is ``patience`` epochs old; ``best.pt`` is the epoch
of that value. ``FitConfig.best_by`` chooses the measure (``val_loss``, or one of these signals)
and ``FitConfig.early_stop_patience`` the patience. bench/stopping_study.py (docs/stopping.md:
4 phantoms, 2026-12-05) found no signal that beats the validation loss clearly — ``fsc_area``
with patience 10 kept checkpoints 0.023 CC / 0.063 in-wedge correlation below each run's best,
``best.pt`` by validation loss 0.029 / 0.068 — so ``val_loss`` stays the default and the
signals are logged only.
"""
from __future__ import annotations

import math

import numpy as np

#: edge of the signal crop, in fitting cubes per axis
CROP_CUBES = 3
#: highest frequency of the FSC means, as a fraction of Nyquist
BAND = 0.5
#: the signals computed on the crop, then the one from the validation pass
CROP_SIGNALS = ("fsc_area", "fsc_143", "wedge_fsc", "consistency")
LOOP_SIGNALS = ("val_wedge",)
SIGNALS = CROP_SIGNALS + LOOP_SIGNALS
#: +1: higher is better; -1: lower is better
DIRECTION = {"fsc_area": 1, "fsc_143": -1, "wedge_fsc": 1, "consistency": -1, "val_wedge": -1, "val_loss": -1}


# --------------------------------------------------------------------------------------------
# the measures on two refined crops
# --------------------------------------------------------------------------------------------
def crop_box(shape, subtomo_size: int, cubes: int = CROP_CUBES) -> tuple[tuple[int, int], ...]:
    """The central box ``((z0, z1), (y0, y1), (x0, x1))`` of ``cubes`` fitting cubes per axis
    (the whole axis when it is shorter)."""
    box = []
    for n in shape:
        t = min(int(n), int(cubes) * int(subtomo_size))
        a = max(0, int(n) // 2 - t // 2)
        box.append((a, a + t))
    return tuple(box)


def shell_correlations(a, b, voxel_size=1.0, *, select=None, n_shells=None) -> tuple[np.ndarray, np.ndarray]:
    """FSC of ``a`` and ``b`` per shell, as :func:`core.evaluate.metrics.fsc` (same shells), over only
    the rfft half-grid frequencies where ``select`` (bool, half-grid shape) is True when given.
    Returns ``(freqs, curve)``; NaN for a shell without power or without selected frequency."""
    from ..evaluate.metrics import fsc

    return fsc(a, b, voxel_size, n_shells, select=select)


def _band_mean(freqs, curve, band: float) -> float:
    keep = (freqs <= band * freqs[-1] + 1e-12) & np.isfinite(curve)
    return float(np.mean(curve[keep])) if keep.any() else float("nan")


def halves_signals(h0, h1, tilt_min: float, tilt_max: float, voxel_size=1.0, band: float = BAND) -> dict:
    """The crop signals (:data:`CROP_SIGNALS`) of two refined half crops: plain floats."""
    import torch

    from ..fourier import observed_mask
    from ..evaluate.metrics import fsc_crossing

    h0 = np.asarray(h0, dtype=np.float32)
    h1 = np.asarray(h1, dtype=np.float32)
    freqs, curve = shell_correlations(h0, h1, voxel_size)
    missing = ~observed_mask(h0.shape, tilt_min, tilt_max, device="cpu", rfft=True).to(torch.bool)
    _, wedge_curve = shell_correlations(h0, h1, voxel_size, select=missing.numpy())
    spread = 0.5 * (float(h0.std()) + float(h1.std()))
    diff = float(np.abs(h0.astype(np.float64) - h1).mean())
    try:
        res = fsc_crossing(freqs, curve, 0.143)
    except Exception:  # no valid shell (constant crops): no resolution
        res = float("nan")
    return {
        "fsc_area": _band_mean(freqs, curve, band),
        "fsc_143": res,
        "wedge_fsc": _band_mean(freqs, wedge_curve, band),
        "consistency": diff / spread if spread > 0 else float("nan"),
    }


def wedge_term(pred, target, mask, rotated_masks, envelope=None):
    """The missing-wedge term of the masked Fourier loss per sample, ``(B,)``:
    ``mean_k |M_R·(1 − M)·F(y − f(x))|²`` (core.loss.masked_fourier_loss with only that term;
    ``envelope``: the CTF-aware loss's ``g``, as the loss uses it)."""
    import torch

    from .loss import masked_fourier_loss

    return masked_fourier_loss(pred, target, torch.zeros_like(mask), rotated_masks * (1 - mask.to(rotated_masks.device)),
                               wedge_weight=1.0, reduction="none", envelope=envelope)


# --------------------------------------------------------------------------------------------
# the probe the loop runs
# --------------------------------------------------------------------------------------------
class SignalProbe:
    """The fixed crop of both halves (prepared once, with a margin of the refinement overlap)
    and the crop signals of a model: ``probe(net) -> dict``."""

    def __init__(self, tomo0, tomo1, *, subtomo_size: int, tilt_min: float, tilt_max: float, stats,
                 batch_size: int, device, resampling: str = "trilinear", voxel_size=1.0,
                 cubes: int = CROP_CUBES):
        from ..refine.tiles import default_overlap, prepare_half

        s = int(subtomo_size)
        self.s, self.tilt_min, self.tilt_max = s, float(tilt_min), float(tilt_max)
        self.batch_size, self.device, self.resampling = batch_size, device, resampling
        self.voxel_size = voxel_size
        shape = tuple(int(n) for n in tomo0.shape)
        self.box = crop_box(shape, s, cubes)
        ov = default_overlap(s)
        self.outer = tuple((max(0, a - ov), min(n, b + ov)) for (a, b), n in zip(self.box, shape))
        (za, zb), (ya, yb), (xa, xb) = self.outer
        self.inner = tuple(slice(a - oa, b - oa) for (a, b), (oa, _) in zip(self.box, self.outer))
        self.overlap = ov
        self.crops = []
        for h, t in enumerate((tomo0, tomo1)):
            st = None if stats is None else stats[h]
            rows = np.asarray(t[:, ya:yb, :])  # the mask needs whole (z, x) planes of these rows
            self.crops.append(np.ascontiguousarray(prepare_half(rows, self.tilt_min, self.tilt_max, st)[za:zb, :, xa:xb]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.box)

    def refined(self, net) -> tuple[np.ndarray, np.ndarray]:
        """The two halves' crops refined by ``net`` (standardized units)."""
        from ..refine.tiles import predict_tiled

        out = []
        for crop in self.crops:
            r = predict_tiled(net, crop, self.s, overlap=self.overlap, batch_size=self.batch_size,
                              device=self.device, match_resampling=True, resampling=self.resampling)
            out.append(r[self.inner])
        return out[0], out[1]

    def __call__(self, net) -> dict:
        h0, h1 = self.refined(net)
        return halves_signals(h0, h1, self.tilt_min, self.tilt_max, self.voxel_size)


# --------------------------------------------------------------------------------------------
# the stopping rule
# --------------------------------------------------------------------------------------------
def _series(history, signal: str) -> list[tuple[int, float]]:
    """``(epoch, value)`` of the epochs of ``history`` where ``signal`` was measured (finite).
    ``history``: ``fit_log.EpochRecord`` objects or rows ``[epoch, fit, val, s(, signals)]``."""
    out = []
    for r in history:
        if hasattr(r, "as_list"):
            r = r.as_list()
        if signal == "val_loss":
            value = r[2]
        else:
            value = (r[4] if len(r) > 4 and isinstance(r[4], dict) else {}).get(signal)
        if value is not None and math.isfinite(float(value)):
            out.append((int(r[0]), float(value)))
    return out


def best_epoch(history, signal: str) -> int | None:
    """The epoch with the best ``signal`` (:data:`DIRECTION`; the earliest on ties), or None."""
    rows = _series(history, signal)
    if not rows:
        return None
    sign = DIRECTION[signal]
    return max(rows, key=lambda r: (sign * r[1], -r[0]))[0]


def stop_epoch(history, signal: str, patience: int) -> int | None:
    """The first epoch at which the rule "stop when the best ``signal`` is ``patience`` epochs
    old" fires on ``history`` (a whole run, for the study), or None when it never does."""
    if patience <= 0:
        return None
    rows = _series(history, signal)
    sign = DIRECTION[signal]
    best_e, best_v = None, None
    for e, v in rows:
        if best_v is None or sign * v > sign * best_v:
            best_e, best_v = e, v
        if e - best_e >= patience:
            return e
    return None


def should_stop(history, signal: str, patience: int) -> bool:
    """True when ``patience`` > 0 and the best ``signal`` in ``history`` is ``patience`` or more
    epochs older than the last epoch of ``history``."""
    if patience <= 0 or not history:
        return False
    best = best_epoch(history, signal)
    last = history[-1]
    last = int((last.as_list() if hasattr(last, "as_list") else last)[0])
    return best is not None and last - best >= patience


# --------------------------------------------------------------------------------------------
# the loop's decisions
# --------------------------------------------------------------------------------------------
#: what may pick best.pt and drive early stopping (FitConfig.best_by)
BEST_BY = ("val_loss",) + SIGNALS
_WORDS = {"val_loss": "validation loss", "val_wedge": "validation loss in the missing wedge",
          "fsc_area": "half-map FSC (mean to ½ Nyquist)", "fsc_143": "half-map FSC 0.143 resolution",
          "wedge_fsc": "half-map FSC in the missing wedge", "consistency": "half-map difference"}


def check_best_by(cfg, n_val: int) -> None:
    """A :class:`DDWError` when ``cfg.best_by`` cannot be measured by this fit."""
    from ..errors import DDWError

    if cfg.best_by == "val_wedge" and n_val == 0:
        raise DDWError(f"best_by={cfg.best_by} needs validation cubes, but this fit has none; raise "
                       "val_fraction or choose another best_by")


def improved_at(history, signal: str, epoch: int) -> bool:
    """True when ``epoch`` (the last of ``history``) holds the best ``signal`` so far."""
    return best_epoch(history, signal) == int(epoch)


def stop_reason(history, signal: str, patience: int) -> str:
    """Why the rule stops now (``patience`` epochs without a better ``signal``), or ``""``."""
    if not should_stop(history, signal, patience):
        return ""
    best = best_epoch(history, signal)
    return (f"the {_WORDS.get(signal, signal)} has not improved for {patience} epochs "
            f"(best at epoch {best}, kept as best.pt)")


def rule_text(cfg) -> str:
    """The fit's rule in one line (printed at the start of a fit)."""
    what = _WORDS.get(cfg.best_by, cfg.best_by)
    word = "lowest" if DIRECTION[cfg.best_by] < 0 else "highest"
    text = f"best.pt: the epoch with the {word} {what}"
    if cfg.early_stop_patience:
        text += f"; stops when it has not improved for {cfg.early_stop_patience} epochs (at most {cfg.epochs})"
    else:
        text += f"; runs all {cfg.epochs} epochs"
    return text
