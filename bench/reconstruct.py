"""Reconstruction speed and quality: our fbp vs scikit-image iradon vs ASTRA CPU FBP.

Run:  python bench/reconstruct.py                 (full: 128×512×512 tomogram, 61 tilts, ±60°)
      python bench/reconstruct.py --size small    (32×128×128, seconds)
      python bench/reconstruct.py --phantom core  (core.evaluate.phantom's cryo-ET-like phantom)

All three methods get the same noiseless projections and reconstruct the same (Z, Y, X) slab with
the same apodization (cosine):

- ours:   core.reconstruct.fbp.fbp on the whole stack (sparse back-projection, all CPU threads);
- iradon: skimage.transform.iradon slice by slice (one Y-row = one sinogram). It is slow, so it
          is timed on a few evenly spaced Y-slices and the time is extrapolated to all of Y
          (the output says so);
- ASTRA:  astra-toolbox 'FBP' (CPU) on a 2D parallel geometry, slice by slice, one algorithm
          object re-run on every slice (data stored in place), geometry shifted by half a pixel
          so that its centre and sign match ours (x' = x·cosθ + z·sinθ, centre index N//2).

Phantoms: ``blobs`` (default) is a smooth sum of Gaussians made here, whose projections are exact
analytic line integrals, so no method is favoured by the projector that made its data;
``core`` uses ``core.evaluate.phantom.make_phantom`` (slow to build at full size; several minutes) projected
with the package's own projector (which shares our back-projector's interpolation).

CC is the Pearson correlation with the noiseless phantom inside the central region that every
method reconstructs (iradon's circle: |x| ≤ √((X/2)² − (Z/2)²) − 2), over the Y-slices that
iradon reconstructed, and for ours and ASTRA also over all of Y. The machine may be shared with
other jobs; times are wall-clock and can vary by tens of percent between runs.
"""
from __future__ import annotations

import argparse
import math
import os
import threading
import time

import numpy as np

SIZES = {
    # (Z, Y, X), number of tilts, iradon slices timed
    "small": ((32, 128, 128), 61, 8),
    "full": ((128, 512, 512), 61, 8),
}


# --------------------------------------------------------------------------------------------
# phantom and projections
# --------------------------------------------------------------------------------------------
def blob_phantom(shape, angles, seed=0):
    """Smooth phantom (Gaussian blobs) and its exact line-integral projections (n, Y, X)."""
    Z, Y, X = shape
    rng = np.random.default_rng(seed)
    scale = X / 512
    blobs = []
    # a few large, faint blobs (low frequencies) and many small ones (detail)
    for n, (s_lo, s_hi), (a_lo, a_hi) in (
        (int(12 * scale**2) + 2, (10.0, 18.0), (0.15, 0.3)),
        (int(600 * scale**2) + 8, (1.5, 5.0), (0.3, 1.0)),
    ):
        for _ in range(n):
            s = rng.uniform(s_lo, s_hi) * max(scale, 0.25) ** 0.5
            s = min(s, Z / 8)
            cz = rng.uniform(-Z / 2 + 3 * s, Z / 2 - 3 * s)
            cy = rng.uniform(-Y / 2 + 3 * s, Y / 2 - 3 * s)
            cx = rng.uniform(-0.42 * X + 3 * s, 0.42 * X - 3 * s)  # stays on the detector
            blobs.append((cz, cy, cx, s, rng.uniform(a_lo, a_hi)))
    vol = np.zeros(shape, np.float32)
    axes = [np.arange(n, dtype=np.float64) - n // 2 for n in shape]
    for cz, cy, cx, s, a in blobs:
        r = 4.5 * s
        sl, g = [], []
        for c, ax, n in zip((cz, cy, cx), axes, shape):
            lo, hi = max(0, int(c - r) + n // 2), min(n, int(c + r) + n // 2 + 2)
            sl.append(slice(lo, hi))
            g.append(np.exp(-((ax[lo:hi] - c) ** 2) / (2 * s * s)))
        vol[tuple(sl)] += (a * g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]).astype(
            np.float32
        )
    proj = np.zeros((len(angles), Y, X), np.float32)
    ay, ax_ = axes[1], axes[2]
    for t, th in enumerate(np.deg2rad(angles)):
        c, s_ = math.cos(th), math.sin(th)
        for cz, cy, cx, s, a in blobs:
            u, r = cx * c + cz * s_, 4.5 * s
            ylo, yhi = max(0, int(cy - r) + Y // 2), min(Y, int(cy + r) + Y // 2 + 2)
            xlo, xhi = max(0, int(u - r) + X // 2), min(X, int(u + r) + X // 2 + 2)
            if ylo >= yhi or xlo >= xhi:
                continue
            gy = np.exp(-((ay[ylo:yhi] - cy) ** 2) / (2 * s * s))
            gx = np.exp(-((ax_[xlo:xhi] - u) ** 2) / (2 * s * s))
            proj[t, ylo:yhi, xlo:xhi] += (a * s * math.sqrt(2 * math.pi) * gy[:, None] * gx[None, :]).astype(
                np.float32
            )
    return vol, proj


def core_phantom(shape, angles):
    from napari_deepdewedge.core.evaluate.phantom import make_phantom
    from napari_deepdewedge.core.reconstruct.geometry import forward_project

    vol = make_phantom(shape, 0)
    return vol, forward_project(vol, angles)


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the starting level while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.extra = self.peak - self.base


# --------------------------------------------------------------------------------------------
# the other methods
# --------------------------------------------------------------------------------------------
def run_iradon(proj, angles, thickness, ys):
    """iradon on the sinograms of the given Y-rows → (thickness, len(ys), X)."""
    from skimage.transform import iradon

    n, _, X = proj.shape
    out = np.empty((thickness, len(ys), X), np.float32)
    top = X // 2 - thickness // 2
    # skimage's radon puts row r (= z) at x'= x·cosφ − z·sinφ: φ = −θ gives our convention
    theta = -np.asarray(angles, np.float64)
    for j, y in enumerate(ys):
        sino = np.ascontiguousarray(proj[:, y, :].T)  # (X, n)
        img = iradon(sino, theta=theta, output_size=X, filter_name="cosine", circle=True)
        out[:, j, :] = img[top : top + thickness]
    return out


def run_astra(proj, angles, thickness, ys):
    """ASTRA CPU FBP slice by slice → (thickness, len(ys), X)."""
    import astra

    n, _, X = proj.shape
    T = thickness
    # Our centred coordinates put index N//2 at 0; ASTRA puts the geometric centre there. Shift
    # the volume window by half a pixel, and (even X) give the detector one extra zero column so
    # that its centre column is X//2 as well. ASTRA's rows run against z and its angle against
    # ours, so  x'_astra = x·cos(−θ) + (−z)·sin(−θ) = x·cosθ + z·sinθ.
    n_det = X + 1 if X % 2 == 0 else X
    minx = -(X // 2) - 0.5
    maxy = T // 2 + 0.5
    vol_geom = astra.create_vol_geom(T, X, minx, minx + X, maxy - T, maxy)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n_det, np.deg2rad(-np.asarray(angles)))
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    sino = np.zeros((n, n_det), np.float32)
    sino_id = astra.data2d.create("-sino", proj_geom, sino)
    rec_id = astra.data2d.create("-vol", vol_geom, 0.0)
    cfg = astra.astra_dict("FBP")
    cfg["ProjectorId"] = projector
    cfg["ProjectionDataId"] = sino_id
    cfg["ReconstructionDataId"] = rec_id
    cfg["FilterType"] = "cosine"
    alg = astra.algorithm.create(cfg)
    out = np.empty((T, len(ys), X), np.float32)
    try:
        for j, y in enumerate(ys):
            sino[:, :X] = proj[:, y, :]
            astra.data2d.store(sino_id, sino)
            astra.algorithm.run(alg)
            out[:, j, :] = astra.data2d.get_shared(rec_id)
    finally:
        astra.algorithm.delete(alg)
        astra.data2d.delete([sino_id, rec_id])
        astra.projector.delete(projector)
    return out


def cc(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def gain(rec, truth):
    """Least-squares scale of ``rec`` relative to ``truth`` (1 = phantom's scale)."""
    r = np.asarray(rec, np.float64).ravel()
    t = np.asarray(truth, np.float64).ravel()
    return float(r @ t / (t @ t))


# --------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--phantom", choices=("blobs", "core"), default="blobs")
    ap.add_argument("--tilt", type=float, default=60.0, help="symmetric tilt range ±TILT degrees")
    ap.add_argument("--iradon-slices", type=int, default=None, help="Y-slices timed for iradon")
    ap.add_argument("--astra-slices", type=int, default=None, help="Y-slices for ASTRA (default: all)")
    args = ap.parse_args(argv)

    import torch

    from napari_deepdewedge.core.reconstruct.fbp import fbp

    shape, n_tilts, n_iradon = SIZES[args.size]
    n_iradon = args.iradon_slices or n_iradon
    Z, Y, X = shape
    angles = np.linspace(-args.tilt, args.tilt, n_tilts)
    print(f"tomogram {Z}×{Y}×{X} from {n_tilts} tilts at ±{args.tilt:g}° "
          f"(step {angles[1] - angles[0]:g}°); phantom: {args.phantom}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (shared machine: times vary with it)")
    t0 = time.perf_counter()
    vol, proj = (blob_phantom if args.phantom == "blobs" else core_phantom)(shape, angles)
    how = "analytic line integrals" if args.phantom == "blobs" else "core forward_project"
    print(f"phantom + projections ({how}): {time.perf_counter() - t0:.1f} s")

    # region every method reconstructs (inside iradon's circle), on all of Y
    xr = min(X // 2, int(math.sqrt((X / 2) ** 2 - (Z / 2) ** 2)) - 2)
    xs = slice(X // 2 - xr, X // 2 + xr)
    ys_sub = np.linspace(Y * 0.1, Y * 0.9, n_iradon).round().astype(int)
    ys_astra = (np.arange(Y) if args.astra_slices is None
                else np.linspace(0, Y - 1, args.astra_slices).round().astype(int))

    # Wall-clock AND process CPU time for every method: on a shared machine the wall time of a
    # multi-threaded run suffers most from competing jobs; CPU seconds barely depend on the load.
    def timed(fn, *a):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*a)
        return out, time.perf_counter() - w, time.process_time() - c

    # ours: warm-up on a tiny problem (library loading), then the timed run(s)
    fbp(proj[:, :2, :64], angles, 8)
    runs = []
    for _ in range(2):
        with PeakRSS() as mem:
            ours, w, c = timed(fbp, proj, angles, Z)
        runs.append((w, c, mem.extra))
    w_ours, c_ours, _ = min(runs)
    extra = max(r[2] for r in runs)  # RSS: the larger of the runs (allocator reuse hides some)
    threads = torch.get_num_threads()
    print(f"\nours    fbp: {w_ours:8.2f} s wall {c_ours:7.2f} s CPU  (best of "
          f"{', '.join(f'{r[0]:.2f}' for r in runs)} s, {threads} threads); peak extra RSS "
          f"{extra / 2**20:.0f} MB (incl. the {ours.nbytes / 2**20:.0f} MB output)")
    # one thread too: like for like with the single-threaded iradon and ASTRA
    torch.set_num_threads(1)
    _, w_ours1, c_ours1 = timed(fbp, proj, angles, Z)
    torch.set_num_threads(threads)
    print(f"ours 1 thr.: {w_ours1:8.2f} s wall {c_ours1:7.2f} s CPU")

    rec_ir, w, c = timed(run_iradon, proj, angles, Z, ys_sub)
    f_ir = Y / len(ys_sub)
    w_ir, c_ir = w * f_ir, c * f_ir
    print(f"iradon     : {w_ir:8.2f} s wall {c_ir:7.2f} s CPU  EXTRAPOLATED from {len(ys_sub)} of "
          f"{Y} Y-slices ({w:.2f} s, {1000 * w / len(ys_sub):.0f} ms/slice)")

    rec_as, w, c = timed(run_astra, proj, angles, Z, ys_astra)
    f_as = Y / len(ys_astra)
    w_as, c_as = w * f_as, c * f_as
    note = "all Y-slices" if len(ys_astra) == Y else f"EXTRAPOLATED from {len(ys_astra)} Y-slices"
    print(f"ASTRA FBP  : {w_as:8.2f} s wall {c_as:7.2f} s CPU  ({note}, "
          f"{1000 * w / len(ys_astra):.1f} ms/slice)")

    print(f"\nspeed-up, wall clock:  iradon/ours = {w_ir / w_ours:.0f}×   ASTRA/ours = {w_as / w_ours:.1f}×"
          f"   (ours on 1 thread: {w_ir / w_ours1:.0f}×, {w_as / w_ours1:.1f}×)")
    print(f"speed-up, CPU seconds: iradon/ours = {c_ir / c_ours:.0f}×   ASTRA/ours = {c_as / c_ours:.1f}×"
          f"   (ours on 1 thread: {c_ir / c_ours1:.0f}×, {c_as / c_ours1:.1f}×)")

    truth_sub = vol[:, ys_sub, xs]
    print(f"\nCC vs noiseless phantom, central region z all {Z}, |x| ≤ {xr}:")
    print(f"  on the {len(ys_sub)} iradon Y-slices:  ours {cc(ours[:, ys_sub, xs], truth_sub):.4f}   "
          f"iradon {cc(rec_ir[:, :, xs], truth_sub):.4f}   "
          f"ASTRA {cc(rec_as[:, np.searchsorted(ys_astra, ys_sub), xs], truth_sub):.4f}"
          if np.all(np.isin(ys_sub, ys_astra)) else
          f"  on the {len(ys_sub)} iradon Y-slices:  ours {cc(ours[:, ys_sub, xs], truth_sub):.4f}   "
          f"iradon {cc(rec_ir[:, :, xs], truth_sub):.4f}")
    truth_as = vol[:, ys_astra, xs]
    print(f"  on {len(ys_astra)} Y-slices:           ours {cc(ours[:, ys_astra, xs], truth_as):.4f}   "
          f"ASTRA {cc(rec_as[:, :, xs], truth_as):.4f}")
    print(f"  scale (least-squares gain vs phantom): ours {gain(ours[:, ys_sub, xs], truth_sub):.3f}   "
          f"iradon {gain(rec_ir[:, :, xs], truth_sub):.3f}   ASTRA {gain(rec_as[:, :, xs], truth_as):.3f}")
    if args.phantom == "blobs":
        print(f"  expected on the phantom's scale: {observed_power_fraction(vol, args.tilt):.3f} "
              "(its power outside the missing wedge, before apodization); iradon and ASTRA weight "
              "every tilt as if the tilts covered 180°")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


def observed_power_fraction(vol, tilt):
    """Fraction of the phantom's spectral power at observed frequencies (±tilt)."""
    import torch

    from napari_deepdewedge.core.fourier import observed_mask

    spec = torch.fft.rfftn(torch.from_numpy(vol))
    power = spec.real**2 + spec.imag**2
    del spec
    power[:, :, 1:] *= 2  # the rfft half grid stands for both halves (roughly; Nyquist aside)
    mask = observed_mask(vol.shape, -tilt, tilt, rfft=True)
    return float((power * mask).sum() / power.sum())


if __name__ == "__main__":
    main()
