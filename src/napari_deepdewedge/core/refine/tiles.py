"""Refinement: run the fitted network over whole tomograms (docs/method.md §2.8).

For each half:

1. standardize with the half's own mean and standard deviation (when the model was fitted on
   standardized halves, the default),
2. apply the observed-mask ``M`` of the tilt range. ``M`` does not depend on ky, so
   ``F⁻¹(M·F(v))`` is computed with 2D FFTs over (z, x), row by row in Y: exact, and any set of
   rows can be prepared on its own,
3. cut into tiles overlapping by ``overlap`` voxels (default ``ceil(s/3)``), of edge up to
   :data:`DEFAULT_TILE` (never below ``s``; :func:`tile_shape`, :func:`tile_edge_for_memory`);
   tiles that run past the far edge of an axis read reflected voxels (``numpy`` "reflect").
   The work goes band by band: the Y rows of one row of tiles are read and prepared
   (steps 1–2), so memory is the output plus one band, never a prepared copy of the tomogram,
4. run the model on ``batch_size`` cubes at a time — only the current batch is on the device;
   the output accumulates on the CPU,
5. blend with separable linear ramps. The weights are normalized per axis (the ramps of all
   tiles covering a position sum to one on every axis), so their product sums to one for every
   voxel and the blend of identical tiles is exact,
6. crop to the input size and undo the standardization.

With an identity model the result is the wedge-masked tomogram to float precision
(``tests/test_refine.py``). Out-of-memory retries live in :mod:`core.oom`; ``out=`` takes a
memory-mapped output, so a tomogram larger than memory refines with one band of memory
(``bench/refine_memory.py``). This module holds steps 1–5 (preparing, tiling, predicting,
blending); :mod:`.tomogram` the entry points (``refine_tomogram``, ``refine_halves``).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import DDWError
from ..oom import BatchRunner, warn_user

#: voxels per chunk when masking a large tomogram (float + complex intermediates ~ 200 MB)
_MASK_CHUNK_VOXELS = 8 * 1024 * 1024
#: default refinement tile edge (see predict_tiled; tile_shape shrinks it per axis, a short Z axis is
#: one tile, and tile_edge_for_memory lowers it when memory is short). Chosen 2026-12-03 (issue 10),
#: fast preset, one thread, process CPU time. Speed, (128, 512, 512), bench/refine.py in one run
#: (load 1.4–3.1): tiles of the fitting cube 48³ before 452 s, edge 160 → (128, 144, 144) tiles
#: 157 s (×2.87), edge 128 → (128, 120, 120) 164 s (×2.75), peak RSS 4.25 GB; another run (load
#: 1.5–1.9): edge 96 → (72, 88, 88) 192 s, 128: 188 s, 160: 146 s. Fewer network voxels (113 M
#: → 54.6 M → 46.1 M → 42.5 M for 33.5 M) but more per voxel in large tiles (feature maps
#: overflow the 32 MB L3). Quality, held-out phantom,
#: bench/time_to_quality.py --tiles, epoch-5 model (s = 32), CC / in-wedge correlation:
#: 64×192×192: 32 0.567/0.487, 96 0.589/0.566, 128 (= 160 there) 0.597/0.564, whole plane
#: 0.598/0.552; 64×256×256: 96 (= 128 there) 0.569/0.525, 160 0.579/0.531, whole 0.577/0.530.
#: A smaller overlap lowers the in-wedge correlation (160 with 8: 0.527), so ⌈s/3⌉ stays.
DEFAULT_TILE = 160
#: float32 feature maps of the first level's width per tile that the memory bounds assume (a
#: training forward's peak; an inference forward measured 7.5–9 at 16 channels, tiles of
#: 1.8–4.3 Mvoxels: 480–570 bytes per voxel; so the bound is about 2.7× conservative)
ACTIVATION_MAPS = 24


# --------------------------------------------------------------------------------------------
# standardization and masking
# --------------------------------------------------------------------------------------------
def _lazy(volume):
    """A memory map or a lazy array (``lazy_bands``: an OME-Zarr level) as it is, read band by
    band; anything else as a numpy array."""
    if isinstance(volume, np.memmap) or getattr(volume, "lazy_bands", False):
        return volume
    return np.asarray(volume)


def standardization_stats(volume) -> tuple[float, float]:
    """Mean and standard deviation of a (possibly memory-mapped) volume, float64 accumulation,
    one Z slab at a time. Raises :class:`DDWError` for a constant or non-finite volume."""
    vol = _lazy(volume)
    if vol.ndim != 3 or vol.size == 0:
        raise DDWError(f"expected a 3D tomogram (Z, Y, X), got shape {tuple(vol.shape)}")
    n = 0
    total = 0.0
    step = max(1, _MASK_CHUNK_VOXELS // max(1, vol.shape[1] * vol.shape[2]))
    for z0 in range(0, vol.shape[0], step):
        slab = np.asarray(vol[z0:z0 + step], dtype=np.float64)
        total += float(slab.sum())
        n += slab.size
    mean = total / n
    sq = 0.0
    for z0 in range(0, vol.shape[0], step):
        slab = np.asarray(vol[z0:z0 + step], dtype=np.float64) - mean
        sq += float(np.vdot(slab.ravel(), slab.ravel()))
    std = math.sqrt(sq / n)
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise DDWError("the tomogram contains NaN or infinite values; fix the reconstruction (or its input) first")
    if std <= 0 or std < 1e-12 * max(1.0, abs(mean)):
        raise DDWError("the tomogram is constant (zero variance); check that the right file or layer was chosen")
    return mean, std


class RowPreparer:
    """Standardize and wedge-mask whole Y rows: ``rows`` ``(Z, k, X)`` → float32 ``(Z, k, X)``.

    Row ``y`` of ``F⁻¹(M·F(v))`` depends only on row ``y`` of ``v`` (``M`` ignores ky), so any
    set of rows — contiguous or not, repeated, reflected — can be prepared on its own.
    """

    def __init__(self, shape_zx, tilt_min, tilt_max, stats=None):
        from ..fourier import observed_mask

        self.Z, self.X = (int(n) for n in shape_zx)
        self.stats = stats
        self.mask = observed_mask((self.Z, 1, self.X), tilt_min, tilt_max, device="cpu", rfft=True)
        self.trivial = bool((self.mask == 1).all())

    def __call__(self, rows) -> np.ndarray:
        import torch

        chunk = np.array(rows, dtype=np.float32)  # a copy: the caller's data is never modified
        if self.stats is not None:
            chunk -= np.float32(self.stats[0])
            chunk /= np.float32(self.stats[1])
        if self.trivial:
            return chunk
        spec = torch.fft.rfftn(torch.from_numpy(chunk), dim=(0, 2))
        spec *= self.mask
        return torch.fft.irfftn(spec, s=(self.Z, self.X), dim=(0, 2)).numpy()


def prepare_half(tomo, tilt_min, tilt_max, stats=None, *, z_range=None, chunk_y=None) -> np.ndarray:
    """Standardize with ``stats = (mean, std)`` (``None``: unchanged) and apply ``M``.

    ``F⁻¹(M·F(v))`` with the observed-mask ``M`` of ``[tilt_min, tilt_max]``: ``M`` depends on
    (kz, kx) only, so 2D FFTs over (z, x) per chunk of Y rows give exactly the 3D result with
    bounded memory. Returns a new float32 array, rows ``z_range = (z0, z1)`` only when given
    (the masking still uses the full Z extent). The input (possibly memory-mapped) is not
    modified.
    """
    tomo = _lazy(tomo)
    if tomo.ndim != 3:
        raise DDWError(f"expected a 3D tomogram (Z, Y, X), got shape {tuple(tomo.shape)}")
    Z, Y, X = (int(n) for n in tomo.shape)
    z0, z1 = (0, Z) if z_range is None else (int(z_range[0]), int(z_range[1]))
    if not 0 <= z0 < z1 <= Z:
        raise DDWError(f"z range ({z0}, {z1}) is outside the tomogram's 0..{Z}; choose rows inside it")
    out = np.empty((z1 - z0, Y, X), dtype=np.float32)
    prep = RowPreparer((Z, X), tilt_min, tilt_max, stats)
    cy = int(chunk_y or max(1, _MASK_CHUNK_VOXELS // max(1, Z * X)))
    for y0 in range(0, Y, cy):
        out[:, y0:y0 + cy] = prep(tomo[:, y0:y0 + cy])[z0:z1]
    return out


# --------------------------------------------------------------------------------------------
# tiling
# --------------------------------------------------------------------------------------------
def default_overlap(subtomo_size: int) -> int:
    return int(math.ceil(int(subtomo_size) / 3))


def tile_starts(n: int, size: int, overlap: int) -> list[int]:
    """Start indices of tiles of ``size`` with ``overlap`` covering ``[0, n)`` (the last tile may
    run past ``n``; it reads reflected voxels there)."""
    step = size - overlap
    if n <= size:
        return [0]
    count = int(math.ceil((n - size) / step)) + 1
    return [i * step for i in range(count)]


def ramp(size: int, overlap: int) -> np.ndarray:
    """Linear blending ramp of a tile: rises over ``overlap`` voxels at both ends, positive."""
    i = np.arange(size, dtype=np.float64)
    return np.minimum(np.minimum(i + 1, size - i), overlap + 1) / (overlap + 1)


def axis_weights(n: int, size: int, overlap: int) -> tuple[list[int], list[np.ndarray]]:
    """Per-tile 1D weights along one axis, normalized so that they sum to one at every position."""
    starts = tile_starts(n, size, overlap)
    r = ramp(size, overlap)
    total = np.zeros(starts[-1] + size)
    for s0 in starts:
        total[s0:s0 + size] += r
    return starts, [(r / total[s0:s0 + size]).astype(np.float32) for s0 in starts]


def reflect_index(n: int, length: int) -> np.ndarray:
    """Indices ``0..length-1`` mapped into ``[0, n)`` by reflection at the far edge (no edge
    repeat, like ``numpy.pad(mode="reflect")``; periodic when ``length`` exceeds ``2n``)."""
    i = np.arange(length)
    if n == 1:
        return np.zeros(length, dtype=np.int64)
    period = 2 * (n - 1)
    m = i % period
    return np.where(m < n, m, period - m).astype(np.int64)


def _check_overlap(size: int, overlap) -> int:
    if overlap is None:
        return default_overlap(size)
    overlap = int(overlap)
    if overlap < 0 or overlap >= size:
        raise DDWError(
            f"overlap {overlap} is invalid for sub-tomograms of edge {size}: it must be between 0 and {size - 1}; "
            f"the default is {default_overlap(size)} (a third of the edge)"
        )
    return overlap


def n_tiles(shape, subtomo_size: int, overlap=None, tile_size=None, multiple: int = 1) -> int:
    """Number of tiles that :func:`predict_tiled` runs through the model for ``shape``
    (``multiple``: the model's 2**depth)."""
    overlap = _check_overlap(int(subtomo_size), overlap)
    tile = tile_shape(shape, subtomo_size, overlap, tile_size, multiple)
    return math.prod(len(tile_starts(int(n), t, overlap)) for n, t in zip(shape, tile))


def tile_shape(shape, subtomo_size: int, overlap: int, tile_size, multiple: int) -> tuple[int, int, int]:
    """Per-axis tile edges for refinement: ``tile_size`` (``None``: :data:`DEFAULT_TILE`,
    never below ``subtomo_size``), rounded down to a multiple of ``multiple`` (2**depth) and
    shrunk on an axis that needs fewer voxels (the smallest multiple covering the axis, so a
    short Z axis is one tile, not two overlapping ones); at least ``subtomo_size`` and more than
    ``overlap``."""
    s, m, ov = int(subtomo_size), max(1, int(multiple)), int(overlap)
    t = max(s, int(tile_size) if tile_size else DEFAULT_TILE)
    t = max(s, t // m * m)
    out = []
    for n in (int(v) for v in shape):
        k = max(1, math.ceil((n - ov) / (t - ov)))  # tiles this axis needs at edge t
        even = -(-(math.ceil((n - ov) / k) + ov) // m) * m  # the same count of equal, smaller tiles
        out.append(max(s, min(t, even)))
    return tuple(out)


def tile_activation_bytes(tile, channels: int) -> int:
    """Estimated peak activation memory of one tile in the U-Net: :data:`ACTIVATION_MAPS`
    float32 feature maps of the first level's width."""
    return ACTIVATION_MAPS * 4 * int(channels) * math.prod(int(n) for n in tile)


def tile_batch_size(tile, channels: int, requested: int, available_bytes: int | None = None) -> int:
    """Tiles per forward pass: ``requested``, lowered so that the activations
    (:func:`tile_activation_bytes`) stay within half of ``available_bytes`` (``None``:
    unknown → ``requested``)."""
    if not available_bytes:
        return max(1, int(requested))
    return max(1, min(int(requested), int(0.5 * available_bytes // tile_activation_bytes(tile, channels))))


def tile_edge_for_memory(shape, subtomo_size: int, overlap: int, tile_size, multiple: int, channels: int,
                         available_bytes: int | None = None) -> int:
    """The tile edge to ask :func:`tile_shape` for: ``tile_size`` (``None``:
    :data:`DEFAULT_TILE`), lowered in steps of ``multiple`` (not below ``subtomo_size``) until
    one tile's activations (:func:`tile_activation_bytes` of the shape :func:`tile_shape` gives)
    fit in half of ``available_bytes`` (``None``: unknown → unchanged). On the CPU running out
    of memory is no exception but the system's out-of-memory killer, so the edge is bounded
    before the first tile runs."""
    s, m = int(subtomo_size), max(1, int(multiple))
    edge = max(s, int(tile_size) if tile_size else DEFAULT_TILE)
    if not available_bytes:
        return edge
    budget = 0.5 * available_bytes
    while edge - m >= s and tile_activation_bytes(tile_shape(shape, s, overlap, edge, m), channels) > budget:
        edge -= m
    return edge


def _free_memory(dev) -> int | None:
    """Free memory of the device the tiles run on (``None``: unknown; then the requested batch)."""
    if dev.type == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except Exception:
            return None
    return _available_memory() if dev.type == "cpu" else None


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def predict_tiled(model, volume: np.ndarray, subtomo_size: int, *, overlap=None, batch_size: int = 4,
                  device=None, progress: Callable[[int, int], None] | None = None,
                  amp: bool | None = None, rows: Callable[[np.ndarray], np.ndarray] | None = None,
                  match_resampling: bool = False, tile_size: int | None = None,
                  out: np.ndarray | None = None, report: Callable[[str], None] | None = None,
                  resampling: str = "trilinear") -> np.ndarray:
    """Run ``model`` over overlapping tiles of ``volume`` and blend; float32 array of its shape.

    Tiles have edge ``tile_size`` (``None``: :data:`DEFAULT_TILE`; ``subtomo_size`` gives the
    fitting cube as tiles), shrunk per axis to what the axis needs (:func:`tile_shape`), and
    overlap by ``overlap`` voxels (default ``ceil(subtomo_size/3)``). Works through one band of
    tile rows in Y at a time (rows past the far edge reflected): the band is read, passed through
    ``rows`` when given (e.g. a :class:`RowPreparer`, so that ``volume`` can be the raw tomogram
    and only one band is ever prepared), and every tile of the band runs through the model in
    batches of at most ``batch_size`` (fewer when memory is short, :func:`tile_batch_size`);
    only the current batch is on the device. Memory: the output plus one band. Without ``rows``
    the volume is used as is. The model may be any module mapping ``(B, 1, z, y, x)`` to the
    same shape (a :class:`core.model.unet.UNet3D` runs channels-last, under the autocast of
    :func:`core.perf.pick_autocast` when ``amp``, default on CUDA). With ``match_resampling``
    every tile goes through :func:`core.model.rotation.match_resampling` (the filter of ``resampling``,
    the kind the model was fitted with) before the model (a network fitted on rotated cubes
    needs it; see there). ``progress(done, total)`` after every batch.
    ``out``: a float32 array of the volume's shape to write into (e.g. a memory-mapped output
    file, so that not even the output is held in memory); its rows are cleared band by band. On
    an out-of-memory error the batch is split (:class:`core.oom.BatchRunner`; ``report(message)``,
    default a ``DDWWarning``).
    """
    import torch

    from .. import perf
    from ..device import pick_device

    s = int(subtomo_size)
    if s < 1:
        raise DDWError(f"sub-tomogram size must be positive, got {s}")
    overlap = _check_overlap(s, overlap)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise DDWError(f"batch size must be at least 1, got {batch_size}")
    vol = volume
    if vol.ndim != 3:
        raise DDWError(f"expected a 3D tomogram (Z, Y, X), got shape {tuple(vol.shape)}")
    dev = pick_device(device)
    if amp is None:
        amp = dev.type == "cuda"
    dtype = perf.pick_autocast(dev) if amp else None
    shape = tuple(int(n) for n in vol.shape)
    depth = int(getattr(model, "depth", 0) or 0)
    multiple, channels, free = 2 ** depth if depth else 1, int(getattr(model, "channels", 16)), _free_memory(dev)
    edge = tile_edge_for_memory(shape, s, overlap, tile_size, multiple, channels, free)
    tz, ty, tx = tile = tile_shape(shape, s, overlap, edge, multiple)
    batch_size = tile_batch_size(tile, channels, batch_size, free)
    (zst, zw), (yst, yw), (xst, xw) = (axis_weights(n, t, overlap) for n, t in zip(shape, tile))
    zi, yi, xi = (reflect_index(n, st[-1] + t) for n, st, t in zip(shape, (zst, yst, xst), tile))
    tiles = [(a, c) for a in range(len(zst)) for c in range(len(xst))]  # tiles of one band
    per_band = int(math.ceil(len(tiles) / batch_size))
    total = len(yst) * per_band
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif tuple(out.shape) != shape or out.dtype != np.float32:
        raise DDWError(f"output array must be float32 of shape {shape}, got {out.dtype} {tuple(out.shape)}")
    cleared = 0  # rows [0, cleared) of out are zeroed/accumulating
    if isinstance(model, torch.nn.Module):
        model = perf.to_channels_last(model, dev)

    def axis_sel(st, idx, n, t, size):
        s0 = st[t]
        return slice(s0, s0 + size) if s0 + size <= n else idx[s0:s0 + size]

    def read_tile(band, a, c):
        zs, xs = axis_sel(zst, zi, shape[0], a, tz), axis_sel(xst, xi, shape[2], c, tx)
        if isinstance(zs, slice) and isinstance(xs, slice):
            return band[zs, :, xs]
        zs = np.arange(zs.start, zs.stop) if isinstance(zs, slice) else zs
        xs = np.arange(xs.start, xs.stop) if isinstance(xs, slice) else xs
        return band[np.ix_(zs, np.arange(ty), xs)]

    from ..model.rotation import match_resampling as _match

    def run(x):
        if match_resampling:
            x = _match(x, resampling)
        with perf.autocast(dev, dtype):
            return model(perf.as_input(x, dev))

    runner = BatchRunner(run, batch_size, dev, report or warn_user)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    done = 0
    try:
        with torch.inference_mode():
            for j, y0 in enumerate(yst):
                band = vol[:, axis_sel(yst, yi, shape[1], j, ty), :]
                band = rows(band) if rows is not None else np.asarray(band, dtype=np.float32)
                ky = min(ty, shape[1] - y0)
                out[:, cleared:y0 + ky] = 0
                cleared = max(cleared, y0 + ky)
                wy = yw[j][None, :ky, None]
                for b in range(per_band):
                    batch = tiles[b * batch_size:(b + 1) * batch_size]
                    x = np.stack([read_tile(band, a, c) for a, c in batch])[:, None]
                    y = runner(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev))
                    y = y.float().cpu().numpy()[:, 0]
                    for (a, c), pred in zip(batch, y):
                        z0, x0 = zst[a], xst[c]
                        kz, kx = min(tz, shape[0] - z0), min(tx, shape[2] - x0)
                        w = zw[a][:kz, None, None] * wy * xw[c][None, None, :kx]
                        out[z0:z0 + kz, y0:y0 + ky, x0:x0 + kx] += pred[:kz, :ky, :kx] * w
                    done += 1
                    if progress is not None:
                        progress(done, total)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    return out
