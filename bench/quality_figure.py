"""The picture for docs/benchmarks.md "How good is it?" and the README: central slices of the
ground truth and of each method, and their Fourier x–z slices (where the missing wedge shows),
one column per method.

Used by bench/quality_peers.py ``--figure PATH``; no torch here.
"""
from __future__ import annotations

import numpy as np

#: columns, in order: (row name in the benchmark, column title); rows that did not run are skipped
COLUMNS = (
    ("FBP", "FBP"),
    ("Topaz-Denoise 3D (pretrained)", "Topaz-Denoise 3D"),
    ("Noise2Noise 3D, no wedge filling (CAREamics)", "Noise2Noise\n(CAREamics)"),
    ("our U-Net, plain N2N loss, no wedge term", "Noise2Noise\n(our U-Net, no wedge)"),
    ("original DeepDeWedge", "original\nDeepDeWedge"),
    ("ours", "napari-deepdewedge"),
)


def _window(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, (1, 99))
    return float(lo), float(hi if hi > lo else lo + 1)


def fourier_xz(vol: np.ndarray) -> np.ndarray:
    """log |F| on the ky = 0 plane, centred: rows kz, columns kx (the wedge is the empty double cone)."""
    spec = np.fft.fftshift(np.abs(np.fft.fftn(vol - vol.mean())))
    return np.log1p(spec[:, vol.shape[1] // 2, :])


def slice_figure(sample, rows, path, header: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {r.name: r for r in rows if r.volume is not None}
    cols = [("ground truth", sample.truth, None)] + [
        (title, by_name[name].volume, by_name[name]) for name, title in COLUMNS if name in by_name]
    Z, Y, X = sample.truth.shape
    z0, z1 = sample.slab
    zc = (z0 + z1) // 2
    n = len(cols)
    heights = [Y / X, Z / X, Z / X]
    fig, axes = plt.subplots(3, n, figsize=(2.3 * n, 2.3 * sum(heights) + 1.2),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    spec_ref = fourier_xz(sample.truth)
    spec_lim = (float(np.percentile(spec_ref, 5)), float(np.percentile(spec_ref, 99.9)))
    for j, (title, vol, row) in enumerate(cols):
        xy, xz = vol[zc], vol[:, Y // 2, :]
        lo, hi = _window(xy)
        axes[0, j].imshow(xy, cmap="gray", vmin=lo, vmax=hi)
        axes[1, j].imshow(xz, cmap="gray", vmin=lo, vmax=hi)
        axes[2, j].imshow(fourier_xz(vol), cmap="magma", vmin=spec_lim[0], vmax=spec_lim[1])
        label = title if row is None else f"{title}\nCC {row.cc_slab:.2f} · wedge {row.wedge:.2f}"
        axes[0, j].set_title(label, fontsize=8)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("x–y slice\n(slab centre)", fontsize=8)
    axes[1, 0].set_ylabel("x–z slice", fontsize=8)
    axes[2, 0].set_ylabel("Fourier x–z\n(log |F|, ky = 0)", fontsize=8)
    shape = "×".join(str(v) for v in header["shape"])
    fig.suptitle(f"phantom {shape} voxels, tilts {sample.tilt_min:g}…{sample.tilt_max:g}°, "
                 f"{header['size']} size, {header['epochs']} epochs, {header['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
