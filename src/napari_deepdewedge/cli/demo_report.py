"""The demo's figures: CC, FSC 0.143 and wedge correlation against the ground truth, the
printed table and the comparison PNG."""
from __future__ import annotations

import math
from pathlib import Path

#: (key, label) of the volumes the demo compares, in table order
DEMO_VOLUMES = (("fbp_full", "FBP (all tilts)"), ("fbp_even_odd_mean", "FBP even/odd mean"),
                ("refined", "DeepDeWedge refined"))


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else None  # JSON has no inf/NaN; printed as '—'


def demo_metrics(gt, volumes: dict, tilt_range, voxel: float) -> dict:
    """CC, FSC 0.143 resolution (Å) and wedge correlation of each volume against the truth.

    ``volumes``: ``{key: (Z, Y, X) array}`` with the keys of :data:`DEMO_VOLUMES`."""
    from ..core.evaluate import metrics

    tmin, tmax = tilt_range
    figures = {"cc": {}, "fsc_0143_angstrom": {}, "wedge_correlation": {}}
    for name, _ in DEMO_VOLUMES:
        vol = volumes[name]
        figures["cc"][name] = _finite(metrics.cc(vol, gt))
        freqs, curve = metrics.fsc(vol, gt, voxel_size=voxel)
        figures["fsc_0143_angstrom"][name] = _finite(metrics.fsc_crossing(freqs, curve, 0.143))
        figures["wedge_correlation"][name] = _finite(metrics.wedge_correlation(vol, gt, tmin, tmax))
    return figures


def _fmt(value, width, digits):
    return f"{value:{width}.{digits}f}" if value is not None else f"{'—':>{width}s}"


def print_demo(figures: dict, paths: dict, out: Path) -> None:
    z, y, x = figures["shape"]
    print(f"demo ({figures['size']}, {z}×{y}×{x}, {figures['epochs']} epochs, "
          f"{figures['seconds']['total']:.0f} s) — against the ground truth:")
    print(f"  {'':22s} {'CC':>7s} {'FSC0.143 [Å]':>13s} {'wedge CC':>9s}")
    for key, label in DEMO_VOLUMES:
        print(f"  {label:22s} {_fmt(figures['cc'][key], 7, 3)} "
              f"{_fmt(figures['fsc_0143_angstrom'][key], 13, 1)} "
              f"{_fmt(figures['wedge_correlation'][key], 9, 3)}")
    for label, path in paths.items():
        print(f"  {label}: {path}")
    print(f"  metrics: {out / 'demo_metrics.json'}")


def demo_figure(path: Path, fbp_vol, refined, gt) -> Path:
    """Central x–y and x–z slices and the Fourier x–z log power of FBP, refined and truth."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import numpy as np
    from matplotlib.figure import Figure

    from ..core.fourier import xz_log_power

    vols = (("FBP (all tilts)", fbp_vol), ("DeepDeWedge", refined), ("ground truth", gt))
    fig = Figure(figsize=(11, 10.5), dpi=100)
    axes = fig.subplots(3, 3)
    zc, yc = gt.shape[0] // 2, gt.shape[1] // 2
    for col, (title, vol) in enumerate(vols):
        vol = np.asarray(vol, dtype=np.float32)
        xy = vol[zc]
        lo, hi = np.percentile(xy, (1, 99))
        axes[0, col].imshow(xy, cmap="gray", vmin=lo, vmax=hi)
        axes[0, col].set_title(f"{title}\ncentral x–y slice")
        xz = vol[:, yc, :]
        lo, hi = np.percentile(xz, (1, 99))
        axes[1, col].imshow(xz, cmap="gray", vmin=lo, vmax=hi)
        axes[1, col].set_title("central x–z slice")
        power = xz_log_power(vol)
        axes[2, col].imshow(power, cmap="magma", vmin=np.percentile(power, 5),
                            vmax=np.percentile(power, 99.9))
        axes[2, col].set_title("Fourier x–z (log power)")
        for row in range(3):
            axes[row, col].set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
