"""Out of memory in refinement (issue 12).

Device out-of-memory errors are injected on the CPU (a model that raises
``torch.OutOfMemoryError`` for batches or tiles above a size, or the first N times): refinement
halves the batch, then the tile, reports each step, and gives the same result as a run that
used the smaller sizes from the start. The band-by-band path is checked with a memory bound: a
memory-mapped tomogram on disk is refined into a memory-mapped output while the process's
anonymous memory (RssAnon) is sampled; loading the volume would break the bound.
"""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
import torch

from napari_deepdewedge.core.refine import tiles as rf
from napari_deepdewedge.core.refine import tomogram
from napari_deepdewedge.core.errors import DDWError, DDWWarning
from napari_deepdewedge.core.model.unet import UNet3D


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Cramped(torch.nn.Module):
    """Wraps a model; raises an out-of-memory error for inputs above ``max_batch`` cubes or
    ``max_edge`` voxels per edge, or for the first ``fail_first`` calls. Records batch shapes."""

    def __init__(self, inner, max_batch=10**9, max_edge=10**9, fail_first=0, error=None):
        super().__init__()
        self.inner, self.max_batch, self.max_edge, self.fail_first = inner, max_batch, max_edge, fail_first
        self.error = error or (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        self.depth = getattr(inner, "depth", 1)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        if len(self.calls) <= self.fail_first or x.shape[0] > self.max_batch or x.shape[-1] > self.max_edge:
            raise self.error()
        return self.inner(x)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet3D(channels=2, depth=2).eval()


@pytest.fixture(scope="module")
def tomo():
    return np.random.default_rng(1).standard_normal((24, 40, 56)).astype(np.float32)


def _refine(model, tomo, s, **kw):
    kw.setdefault("tile_size", s)  # tiles of the fitting cube: many small tiles to batch and halve
    return tomogram.refine_tomogram(model, tomo, -60, 60, subtomo_size=s, device="cpu", **kw)


def test_batch_is_halved_until_it_fits_and_the_result_is_unchanged(net, tomo):
    expected = _refine(net, tomo, 16, batch_size=1)
    cramped = Cramped(net, max_batch=1)
    messages = []
    got = _refine(cramped, tomo, 16, batch_size=4, report=messages.append)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert messages == ["out of memory on cpu with a batch of 4 cubes; continuing with batches of 2",
                        "out of memory on cpu with a batch of 2 cubes; continuing with batches of 1"]
    # the smaller batch sticks: after the first failures, every call has one cube
    assert cramped.calls[:3] == [(4, 1, 16, 16, 16), (2, 1, 16, 16, 16), (1, 1, 16, 16, 16)]
    assert {c[0] for c in cramped.calls[3:]} == {1}


def test_failing_only_the_first_time_keeps_the_halved_batch_and_warns(net, tomo):
    cramped = Cramped(net, fail_first=1)
    with pytest.warns(DDWWarning, match="batch of 4 cubes; continuing with batches of 2"):
        got = _refine(cramped, tomo, 16, batch_size=4)
    np.testing.assert_allclose(got, _refine(net, tomo, 16, batch_size=4), rtol=1e-5, atol=1e-5)
    assert max(c[0] for c in cramped.calls[1:]) == 2


def test_then_the_tile_is_halved(net, tomo):
    expected = _refine(net, tomo, 16, batch_size=2, overlap=5)  # what the retry ends up using
    cramped = Cramped(net, max_edge=16)
    messages = []
    got = _refine(cramped, tomo, 32, batch_size=2, overlap=11, report=messages.append)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert messages == ["out of memory on cpu with a batch of 2 cubes; continuing with batches of 1",
                        "out of memory with one 32³ tile per batch; restarting this half with 16³ tiles"]


def test_mps_message_is_recognized_and_other_errors_are_not_swallowed(net, tomo):
    mps = Cramped(net, max_batch=2, error=lambda: RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _refine(mps, tomo, 16, batch_size=4)
    assert any(issubclass(w.category, DDWWarning) for w in caught)

    broken = Cramped(net, max_batch=0, error=lambda: RuntimeError("shape mismatch in conv"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _refine(broken, tomo, 16, batch_size=4)


def test_out_of_memory_with_the_smallest_tile_is_one_clear_error(net, tomo):
    hopeless = Cramped(net, max_batch=0)
    with pytest.raises(DDWError, match=r"even with one tile of 4³ voxels.*--device cpu"):
        _refine(hopeless, tomo, 16, batch_size=2, report=lambda m: None)


def test_refine_halves_passes_the_report_through(net, tomo):
    messages = []
    tomogram.refine_halves(Cramped(net, max_batch=1), tomo, tomo[::-1].copy(), subtomo_size=16, tilt_min=-60,
                     tilt_max=60, batch_size=2, device="cpu", report=messages.append, tile_size=16)
    # each half starts from the requested batch again (one failed allocation per half)
    assert messages == ["out of memory on cpu with a batch of 2 cubes; continuing with batches of 1"] * 2


# ---------------------------------------------------------------------------------------------
# bounded host memory: band by band from a memory-mapped file


def _rss_anon() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


class PeakAnon:
    """Samples RssAnon every millisecond while active; ``growth`` = peak − value at start."""

    def __enter__(self):
        self.start = self.peak = _rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_anon())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())
        self.growth = self.peak - self.start


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_refinement_memory_is_one_band_not_the_volume(tmp_path, monkeypatch):
    import mrcfile

    from napari_deepdewedge.core.io.mrc import read_mrc

    shape = (32, 1024, 512)  # 64 MB of float32 on disk
    volume_bytes = 4 * int(np.prod(shape))
    with mrcfile.new_mmap(tmp_path / "big.mrc", shape=shape, mrc_mode=2) as mrc:
        rng = np.random.default_rng(0)
        for y0 in range(0, shape[1], 128):
            mrc.data[:, y0:y0 + 128] = rng.standard_normal((shape[0], 128, shape[2]), dtype=np.float32)
    tomo = read_mrc(tmp_path / "big.mrc").data
    assert isinstance(tomo, np.memmap)
    # the statistics pass reads slabs of this many voxels (8 Mi by default, ~130 MB of float64
    # temporaries — bounded, but here larger than the whole test volume)
    monkeypatch.setattr(rf, "_MASK_CHUNK_VOXELS", 1 << 20)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, 3, padding=1).eval()  # the data path is under test, not the network
    _refine(net, tomo[:, :64], 32, batch_size=4)  # warm up (kernels, allocator) outside the window

    with mrcfile.new_mmap(tmp_path / "out.mrc", shape=shape, mrc_mode=2) as out_mrc:
        with PeakAnon() as to_file:
            _refine(net, tomo, 32, batch_size=4, out=out_mrc.data)
        sample = np.array(out_mrc.data[10:12, 500:520, 100:140])
    with PeakAnon() as to_memory:
        in_memory = _refine(net, tomo, 32, batch_size=4)
    np.testing.assert_allclose(in_memory[10:12, 500:520, 100:140], sample, rtol=1e-5, atol=1e-5)
    print(f"RssAnon growth: memory-mapped output {to_file.growth / 2**20:.1f} MB, output in memory "
          f"{to_memory.growth / 2**20:.1f} MB, volume {volume_bytes / 2**20:.0f} MB")
    # band by band: a fraction of the volume; the output in memory adds the volume once, not twice
    assert to_file.growth < volume_bytes / 3
    assert to_memory.growth < volume_bytes + volume_bytes / 3
