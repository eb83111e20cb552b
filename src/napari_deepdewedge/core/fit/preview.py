"""Previews during a fit: the current model's refined slab (mean of both halves) around the
rows a front end asks for, at the end of every ``preview_every`` epochs."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import DDWError
from .events import PreviewReady


def default_slab(Z: int, s: int) -> tuple[int, int]:
    """A central slab of ``min(Z, s)`` rows."""
    t = min(Z, s)
    z0 = max(0, Z // 2 - t // 2)
    return z0, z0 + t


class Previewer:
    """Refines the slab ``slab()`` (default: :func:`default_slab`) of both halves with the model.

    The masked (and standardized) input slabs are cached while the requested rows stay the
    same; only the network runs again at each preview.
    """

    def __init__(self, tomo0, tomo1, *, subtomo_size: int, tilt_min: float, tilt_max: float,
                 stats, batch_size: int, device, slab: Callable[[], tuple[int, int]] | None = None,
                 resampling: str = "trilinear"):
        self.halves = (tomo0, tomo1)
        self.resampling = resampling  # the matching filter of the fit's resampling kind
        self.s, self.tilt_min, self.tilt_max = subtomo_size, tilt_min, tilt_max
        self.stats, self.batch_size, self.device = stats, batch_size, device
        self.slab = slab
        self.cache: dict = {}

    def _rows(self) -> tuple[int, int]:
        Z = int(self.halves[0].shape[0])
        z0, z1 = self.slab() if self.slab is not None else default_slab(Z, self.s)
        z0, z1 = int(z0), int(z1)
        if not 0 <= z0 < z1 <= Z:
            raise DDWError(f"preview slab ({z0}, {z1}) is outside the tomogram's 0..{Z} rows; pick rows inside it")
        return z0, z1

    def __call__(self, net, epoch: int) -> PreviewReady:
        from ..refine.tiles import predict_tiled, prepare_half

        Z = int(self.halves[0].shape[0])
        s = self.s
        z0, z1 = self._rows()
        ov = int(math.ceil(s / 3))
        za, zb = max(0, z0 - ov), min(Z, z1 + ov)
        if self.cache.get("rows") != (za, zb):  # masked slabs, reused while the slab stays
            self.cache = {"rows": (za, zb)}
        vols = []
        for h, t in enumerate(self.halves):
            stats = None if self.stats is None else self.stats[h]
            if h not in self.cache:
                self.cache[h] = prepare_half(t, self.tilt_min, self.tilt_max, stats, z_range=(za, zb))
            out = predict_tiled(net, self.cache[h], s, overlap=ov, batch_size=self.batch_size,
                                device=self.device, match_resampling=True,
                                resampling=self.resampling)
            out = out[z0 - za:z1 - za]
            if stats is not None:
                out = out * np.float32(stats[1]) + np.float32(stats[0])
            vols.append(out)
        return PreviewReady(epoch=epoch, z_start=z0, z_stop=z1, volume=(vols[0] + vols[1]) * np.float32(0.5))
