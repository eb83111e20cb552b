"""Probes of the viewer under load, shared by tests/test_viewer_load.py and bench/viewer_load.py.

- :class:`StallMeter`: a Qt timer ticking every ~10 ms in the GUI thread; the gap between two
  ticks is how long the GUI thread could not process events (a "stall").
- :class:`ThreadRecordingArray`: an array-like layer data that records which thread reads how
  many elements (napari reads the slice it shows; a job must read the rest on its worker).
- :func:`mapped_bytes_resident`: how much of a file a process has touched through its memory
  maps (``Rss`` of the file's mappings in ``/proc/self/smaps``): what opening a file really read.
- ``setup_*``: the docks with tiny settings filled in, ready to start a job.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from conftest import PLUGIN, dock  # noqa: E402  (the one dock helper)
PIXEL = 10.0


class StallMeter:
    """Longest and 95th-percentile gap between ticks of a ~10 ms GUI-thread timer."""

    def __init__(self, interval_ms: int = 10, *, watch_ms: float | None = None):
        """``watch_ms``: also sample, from a helper thread, where the GUI thread is whenever a
        tick is more than ``watch_ms`` late (``culprits``: stack excerpts, most frequent
        first) — to find what stalls, not for the figures."""
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []  # seconds between consecutive ticks
        self._last = None
        self._watch_s = None if watch_ms is None else watch_ms / 1000.0
        self._samples: dict[str, int] = {}
        self._by_gap: dict[int, list[str]] = {}  # index in gaps → stack excerpts sampled
        self._watching = threading.Event()

    def start(self) -> "StallMeter":
        self.gaps = []
        self._last = time.perf_counter()
        self.timer.start()
        if self._watch_s is not None:
            self._watching.set()
            threading.Thread(target=self._watch, name="stall-watch", daemon=True).start()
        return self

    def _watch(self) -> None:
        import sys
        import traceback

        main = threading.main_thread().ident
        while self._watching.is_set():
            time.sleep(0.02)
            if time.perf_counter() - self._last > self._watch_s:
                frame = sys._current_frames().get(main)
                if frame is None:
                    continue
                stack = traceback.extract_stack(frame)[-12:]
                key = " <- ".join(f"{Path(f.filename).name}:{f.name}" for f in stack[::-1][:8])
                self._samples[key] = self._samples.get(key, 0) + 1
                self._by_gap.setdefault(len(self.gaps), []).append(key)

    def culprits(self, n: int = 5) -> list[tuple[int, str]]:
        """The ``n`` stack excerpts seen most often during stalls, with their sample counts."""
        return sorted(((c, k) for k, c in self._samples.items()), reverse=True)[:n]

    def longest_culprits(self) -> list[str]:
        """The stack excerpts sampled during the longest gap (in sampling order)."""
        if not self.gaps:
            return []
        return self._by_gap.get(int(np.argmax(self.gaps)), [])

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def stop(self) -> "StallMeter":
        self._watching.clear()
        self.timer.stop()
        self._tick()  # a stall right before stop() counts too
        return self

    @property
    def longest_ms(self) -> float:
        return 1000.0 * max(self.gaps, default=0.0)

    @property
    def p95_ms(self) -> float:
        return 1000.0 * float(np.percentile(self.gaps, 95)) if self.gaps else 0.0

    def summary(self, what: str) -> str:
        return (f"{what}: longest GUI stall {self.longest_ms:.0f} ms, 95th percentile "
                f"{self.p95_ms:.0f} ms over {len(self.gaps)} ticks of {self.interval_ms} ms")


class ThreadRecordingArray:
    """Read-only array-like (shape, dtype, ``[]``, ``np.asarray``) over ``array`` that records
    ``(thread name, elements read)`` of every read in ``reads``."""

    def __init__(self, array):
        self._array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.size = int(np.prod(self.shape))
        self.reads: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def _record(self, n: int) -> None:
        with self._lock:
            self.reads.append((threading.current_thread().name, int(n)))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        out = np.asarray(self._array[key])
        self._record(out.size)
        return out

    def __array__(self, dtype=None, copy=None):
        self._record(self.size)
        return np.asarray(self._array, dtype=dtype)

    def read_on_main_thread(self) -> int:
        """Elements read in the GUI (main) thread."""
        main = threading.main_thread().name
        return sum(n for name, n in self.reads if name == main)

    def largest_main_thread_read(self) -> int:
        main = threading.main_thread().name
        return max((n for name, n in self.reads if name == main), default=0)

    def read_elsewhere(self) -> int:
        main = threading.main_thread().name
        return sum(n for name, n in self.reads if name != main)


def mapped_bytes_resident(path) -> int:
    """Bytes of ``path`` resident in this process through memory maps (0 if not mapped)."""
    target = str(Path(path).resolve())
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().endswith(target)
            elif inside and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def python_threads() -> set:
    """Live threads Python started (napari's Qt pool threads appear only as dummies)."""
    return {t for t in threading.enumerate()
            if t.is_alive() and not isinstance(t, threading._DummyThread)}


def write_big_mrc(path, shape, voxel_size=10.0, seed=0) -> Path:
    """A float32 MRC of ``shape`` written plane by plane (never the whole volume in memory)."""
    import mrcfile

    rng = np.random.default_rng(seed)
    with mrcfile.new_mmap(str(path), shape=shape, mrc_mode=2, overwrite=True) as mrc:
        plane = rng.standard_normal(shape[1:]).astype(np.float32)
        for z in range(shape[0]):
            mrc.data[z] = plane + np.float32(6.0 * z / shape[0])  # a ramp along Z
        mrc.voxel_size = voxel_size
    return Path(path)


# ----------------------------------------------------------------------------- docks


def tiny_model(path):
    """An untrained tiny U-Net checkpoint (refinement only needs a model, not a good one)."""
    import torch

    from napari_deepdewedge.core.model import checkpoint as ckpt
    from napari_deepdewedge.core.model.unet import UNet3D

    torch.manual_seed(0)
    model = UNet3D(channels=4, depth=2)
    payload = dict(format=ckpt.FORMAT_TAG, version=ckpt.FORMAT_VERSION, arch=model.arch_dict(),
                   state_dict=model.state_dict(), subtomo_size=16, tilt_min=-60.0,
                   tilt_max=60.0, standardization=[[0.0, 1.0], [0.0, 1.0]])
    return ckpt.save_checkpoint(path, payload)


def noisy_halves(shape, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape),
                          indexing="ij")
    blob = (x ** 2 + y ** 2 + (2 * z) ** 2 < 0.5).astype(np.float32)
    return [blob + rng.normal(0, 0.5, shape).astype(np.float32) for _ in range(2)]


def add_halves(viewer, even, odd):
    meta = {"tilt_min": -60.0, "tilt_max": 60.0}
    for name, data in (("cell even", even), ("cell odd", odd)):
        viewer.add_image(data, name=name, scale=(PIXEL,) * 3, contrast_limits=(-1.0, 2.0),
                         metadata=dict(meta), units=("angstrom",) * 3)


def tilt_series(n_tilts=31, size=64, seed=0):
    angles = np.linspace(-60.0, 60.0, n_tilts)
    data = np.random.default_rng(seed).normal(size=(n_tilts, size, size)).astype(np.float32)
    return data, angles


def set_tiny_fit(fit, out_dir, epochs):
    fit.device.setCurrentText("cpu")
    fit.subtomo_size.setValue(16)
    fit.channels.setValue(4)
    fit.depth.setValue(2)
    fit.batch_size.setValue(4)
    fit.epochs.setValue(epochs)
    fit.update_every.setValue(2)
    fit.preview_every.setValue(1)
    fit.val_fraction.setValue(0.1)
    fit.out_dir.setText(str(out_dir))


def setup_reconstruct(viewer, series, angles, thickness):
    """The reconstruction dock with its form filled in (``widget.reconstruct()`` starts it)."""
    widget = dock(viewer, "Tilt series → halves")
    viewer.add_image(series, name="ts", scale=(PIXEL,) * 3, contrast_limits=(-3.0, 3.0),
                     metadata={"tilt_angles": list(angles)}, units=("angstrom",) * 3)
    widget.series.set_layer_name("ts")
    widget.angle_source.setCurrentText("From the layer")
    widget.thickness.setValue(thickness)
    widget.device.setCurrentText("cpu")
    return widget


def setup_fit(viewer, out_dir, epochs):
    fit = dock(viewer, "Fit")
    fit.even.set_layer_name("cell even")
    fit.odd.set_layer_name("cell odd")
    set_tiny_fit(fit, out_dir, epochs)
    return fit


def setup_refine(viewer, model, batch=4):
    ref = dock(viewer, "Refine")
    ref.even.set_layer_name("cell even")
    ref.odd.set_layer_name("cell odd")
    ref.model_path.setText(str(model))
    ref.device.setCurrentText("cpu")
    ref.batch.setValue(batch)
    return ref
