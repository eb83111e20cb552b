"""The viewer under load (issue 12, item 5): open time and memory of a big tomogram, and the
longest GUI-thread stall while reconstruct / fit / refine / refine many run from the docks.

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/viewer_load.py --gib 2

1. Writes a float32 tomogram of ``--gib`` GiB (memory-mapped, plane by plane), opens it with
   napari's File > Open path (this plugin's reader) and reports the open time, the process RSS
   before/after and how much of the file was paged in (``/proc/self/smaps``).
2. With that layer shown, runs each job from its dock (reconstruct, fit, refine, and refine
   many over two pairs of files) on memory-mapped inputs of a size this shared 2-core machine
   can run in minutes (printed), while a Qt timer ticks every 10 ms in the GUI thread: the gaps
   between ticks are the stalls (longest, 95th percentile), and a watcher thread samples where
   the GUI thread was during stalls over 100 ms.
3. ``--compare``: each job runs twice back to back at the same load, first as before
   (``DDWPanel.in_turns`` runs a result's steps in one slot, the progress bar and the loss
   plot redraw at every message), then as now (one layer per event-loop turn, progress shown
   at most every 0.25 s, the loss plot redrawn at most every 0.3 s); the layers a run added
   are removed before the next, so both add the same layers.
Timings depend on the machine's load (print ``os.getloadavg()`` beside them).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the probes are shared with tests/test_viewer_load.py
os.environ.setdefault("OMP_NUM_THREADS", "2")
JOBS = ("reconstruct", "fit", "refine", "many")


def wait_until(app, condition, timeout=3600.0):
    end = time.perf_counter() + timeout
    while not condition():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() > end:
            raise TimeoutError("job did not finish")


def as_before(on: bool) -> None:
    """``on``: the GUI of a job as before this change (all result layers in one slot, the
    progress bar and the loss plot redrawn at every message); ``off``: as now."""
    from napari_deepdewedge.widgets import _panel, _plots

    def all_in_one_slot(self, *steps):
        for step in steps:
            step()

    if on:
        _panel.DDWPanel.in_turns = all_in_one_slot
        _plots.LossPlot.min_redraw_s = 0.0
        _panel.PROGRESS_EVERY_S = 0.0
    else:
        _panel.DDWPanel.in_turns = IN_TURNS
        _plots.LossPlot.min_redraw_s = MIN_REDRAW_S
        _panel.PROGRESS_EVERY_S = PROGRESS_EVERY_S


def measured(app, panel, start, what, viewer=None, compare=False):
    """Measure ``start``; with ``compare``, twice (before / now), removing the layers the
    first run added before the second."""
    if not compare:
        return measure_once(app, panel, start, what)
    before = {layer.name: layer.visible for layer in viewer.layers}
    for mode in ("before", "now"):
        as_before(mode == "before")
        measure_once(app, panel, start, f"[{mode}] {what}")
        for layer in [lay for lay in viewer.layers if lay.name not in before]:
            viewer.layers.remove(layer)
        for layer in viewer.layers:
            layer.visible = before[layer.name]
        app.processEvents()
    as_before(False)


def measure_once(app, panel, start, what):
    from gui_probe import StallMeter

    meter = StallMeter(watch_ms=100).start()
    t0 = time.perf_counter()
    assert start(), f"{what} did not start"
    wait_until(app, lambda: not panel.busy)
    for _ in range(20):  # what the end of the job does in the GUI counts too
        app.processEvents()
        time.sleep(0.005)
    meter.stop()
    print(f"{meter.summary(what)}; job {time.perf_counter() - t0:.1f} s, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    for count, where in meter.culprits(3):
        print(f"    stalled {count}× in {where}")
    for where in dict.fromkeys(meter.longest_culprits()):
        print(f"    longest stall in {where}")
    return meter


def memmapped(folder, name, array):
    from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc

    return read_mrc(write_mrc(Path(folder) / f"{name}.mrc", array, 10.0)).data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the opened tomogram")
    parser.add_argument("--dir", default=None, help="folder for the files (default: a temp dir)")
    parser.add_argument("--skip-jobs", action="store_true")
    parser.add_argument("--halves-shape", type=int, nargs=3, default=(64, 256, 256),
                        metavar=("Z", "Y", "X"), help="halves of the fit and refine jobs")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the fit job")
    parser.add_argument("--compare", action="store_true",
                        help="run each job as before and as now, back to back")
    parser.add_argument("--jobs", nargs="+", default=JOBS, choices=JOBS,
                        help="the dock jobs to measure (default: all)")
    args = parser.parse_args()

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_deepdewedge.widgets import _panel, _plots

    global IN_TURNS, MIN_REDRAW_S, PROGRESS_EVERY_S
    IN_TURNS, MIN_REDRAW_S = _panel.DDWPanel.in_turns, _plots.LossPlot.min_redraw_s
    PROGRESS_EVERY_S = _panel.PROGRESS_EVERY_S

    from gui_probe import (PIXEL, PLUGIN, add_halves, dock, mapped_bytes_resident, noisy_halves,
                           rss_bytes, setup_fit, setup_reconstruct, setup_refine, tilt_series,
                           tiny_model, write_big_mrc)

    folder = Path(args.dir or tempfile.mkdtemp(prefix="ddw_viewer_load_"))
    folder.mkdir(parents=True, exist_ok=True)
    side = 1024
    n_z = max(1, int(round(args.gib * 2**30 / (4 * side * side))))
    big = folder / "big.mrc"
    t0 = time.perf_counter()
    write_big_mrc(big, (n_z, side, side), voxel_size=PIXEL)
    print(f"wrote {big.stat().st_size / 2**30:.2f} GiB ({n_z}×{side}×{side} float32) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    app.processEvents()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    (layer,) = viewer.open(str(big), plugin=PLUGIN)
    opened = time.perf_counter() - t0
    app.processEvents()
    shown = time.perf_counter() - t0
    print(f"open: {opened:.2f} s to the layer, {shown:.2f} s to the first draw; RSS "
          f"{rss0 / 2**20:.0f} → {rss_bytes() / 2**20:.0f} MiB; "
          f"{mapped_bytes_resident(big) / 2**20:.1f} MiB of the file paged in; "
          f"data {type(layer.data).__name__}, contrast {tuple(round(v, 2) for v in layer.contrast_limits)}",
          flush=True)
    if args.skip_jobs:
        viewer.close()
        return 0

    shape = tuple(args.halves_shape)
    size = "×".join(map(str, shape))
    if "reconstruct" in args.jobs:
        series, angles = tilt_series(n_tilts=41, size=384)
        series = memmapped(folder, "ts", series)
        widget = setup_reconstruct(viewer, series, angles, thickness=96)
        measured(app, widget, widget.reconstruct, "reconstruct (41×384×384 → 3 × 96×384×384)",
                 viewer, args.compare)
    if "fit" in args.jobs or "refine" in args.jobs:
        even, odd = (memmapped(folder, name, a) for name, a in zip(("e", "o"), noisy_halves(shape)))
        add_halves(viewer, even, odd)
    if "fit" in args.jobs:
        fit = setup_fit(viewer, folder / "run", epochs=args.epochs)
        runs = iter(range(1, 3))

        def start_fit():  # a new folder for each run (no question about an earlier fit)
            fit.out_dir.setText(str(folder / f"run{next(runs)}"))
            return fit.start()

        measured(app, fit, start_fit, f"fit ({size}, {args.epochs} epochs, previews)", viewer,
                 args.compare)
    model = tiny_model(folder / "m.pt")
    if "refine" in args.jobs:
        ref = setup_refine(viewer, model, batch=8)
        measured(app, ref, ref.refine, f"refine ({size}, both halves)", viewer,
                 args.compare)
    if "many" in args.jobs:
        from napari_deepdewedge.core.io.mrc import write_mrc

        for k in range(2):
            for half, data in zip(("even", "odd"), noisy_halves(shape, seed=k + 1)):
                write_mrc(folder / "batch" / f"T{k}_{half}.mrc", data, PIXEL)
        many = dock(viewer, "Refine many")
        many.inputs.setText(str(folder / "batch" / "*_even.mrc"))
        many.model_path.setText(str(model))
        many.out_dir.setText(str(folder / "batch_refined"))
        many.overwrite.setChecked(True)  # a --dir reused from an earlier run is refined again
        measured(app, many, many.start, f"refine many (2 × {size}, files)", viewer,
                 args.compare)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
