"""The docks on OME-Zarr halves opened by napari-ome-zarr (issue 21): multiscale layers of dask
arrays are picked as halves, fitted and refined; the GUI thread never computes a whole level
(every full read happens on a worker); the layer's scale in nanometres gives the voxel size in
Å; a big refined result comes back as a multiscale layer; this plugin's reader opens the same folder as one multiscale layer in Å, and the Refine
dock's Save… writes OME-Zarr.

Run under a virtual display:  xvfb-run -a python -m pytest tests/test_widget_omezarr.py -q
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")
zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")
pytest.importorskip("napari_ome_zarr")

from test_omezarr import ome_image  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-deepdewedge"
WAIT_MS = 120_000


def _halves(tmp_path):
    """Two noisy halves (24×32×32) of blobs, 0.8 nm voxels: even as NGFF 0.4, odd as 0.5."""
    rng = np.random.default_rng(5)
    zz, yy, xx = np.mgrid[:24, :32, :32]
    signal_ = np.zeros((24, 32, 32), np.float32)
    for _ in range(6):
        c = rng.uniform((4, 4, 4), (20, 28, 28))
        signal_ += np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 8.0)
    paths = {}
    for role, version in (("even", "0.4"), ("odd", "0.5")):
        a = (signal_ + 0.5 * rng.standard_normal(signal_.shape)).astype(np.float32)
        paths[role] = ome_image(tmp_path / f"cell_{role}.zarr", [a, a[::2, ::2, ::2]],
                                version=version, unit="nanometer", scale=(0.8, 0.8, 0.8))
    return paths


@pytest.fixture
def full_reads(monkeypatch):
    """(thread, shape) of every dask compute / numpy conversion of a whole 24×32×32 level."""
    import dask.array as da

    seen: list[tuple[str, tuple]] = []
    real_compute, real_array = da.Array.compute, da.Array.__array__

    def note(arr):
        if tuple(arr.shape) == (24, 32, 32):
            seen.append((threading.current_thread().name, tuple(arr.shape)))

    def compute(self, *a, **kw):
        note(self)
        return real_compute(self, *a, **kw)

    def array(self, *a, **kw):
        note(self)
        return real_array(self, *a, **kw)

    monkeypatch.setattr(da.Array, "compute", compute)
    monkeypatch.setattr(da.Array, "__array__", array)
    return seen


def test_docks_fit_and_refine_multiscale_halves_from_napari_ome_zarr(
        make_napari_viewer, qtbot, tmp_path, full_reads, monkeypatch):
    from napari_deepdewedge.core.model.checkpoint import load_model
    from napari_deepdewedge.core.io.mrc import read_mrc
    from napari_deepdewedge.widgets import _refine

    monkeypatch.setattr(_refine, "MULTISCALE_BYTES", 0)  # this toy result counts as big

    gui = threading.current_thread().name
    paths = _halves(tmp_path)
    viewer = make_napari_viewer()
    names = {}
    for role, path in paths.items():
        (layer,) = viewer.open(str(path), plugin="napari-ome-zarr")
        assert layer.multiscale and len(layer.data) == 2
        assert [str(u) for u in layer.units] == ["nanometer"] * 3
        layer.name = f"cell {role}"
        layer.metadata.update({"tilt_min": -60.0, "tilt_max": 60.0})
        names[role] = layer.name
    full_reads.clear()  # what napari did while adding the layers does not count

    ddw = viewer.window.add_plugin_dock_widget(PLUGIN, "DeepDeWedge")[1]
    fit = ddw.fit
    fit.halves.set_pair(names["even"], names["odd"])
    fit.device.setCurrentText("cpu")
    for box, value in ((fit.subtomo_size, 16), (fit.channels, 4), (fit.depth, 2), (fit.batch_size, 4),
                       (fit.epochs, 1), (fit.preview_every, 0), (fit.update_every, 0)):
        box.setValue(value)
    fit.out_dir.setText(str(tmp_path / "run"))
    assert fit.start()
    assert all(thread != gui for thread, _ in full_reads), "the GUI thread read a half"
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    assert fit.finished is not None and not fit.finished.stopped
    _, meta = load_model(tmp_path / "run" / "best.pt", device="cpu")
    assert np.allclose(meta["voxel_size"], (8.0, 8.0, 8.0))  # 0.8 nm → 8 Å

    ref = ddw.refine
    ref.halves.set_pair(names["even"], names["odd"])
    ref.device.setCurrentText("cpu")
    assert ref.refine()
    assert all(thread != gui for thread, _ in full_reads), "the GUI thread read a half"
    qtbot.waitUntil(lambda: not ref.busy, timeout=WAIT_MS)
    refined = viewer.layers["cell refined"]
    assert np.allclose(refined.scale, (8.0, 8.0, 8.0))
    # a big result comes back as a multiscale layer: the result itself, then block means
    assert refined.multiscale and [tuple(d.shape) for d in refined.data] == [(24, 32, 32),
                                                                            (12, 16, 16)]
    assert refined.data[0] is ref.result.refined
    np.testing.assert_allclose(refined.data[1][3, 4, 5],
                               ref.result.refined[6:8, 8:10, 10:12].mean(), rtol=1e-5)
    assert full_reads and all(thread != gui for thread, _ in full_reads), full_reads

    # Save… as OME-Zarr: the refined tomogram in Å, a pyramid
    out = tmp_path / "saved" / "cell_refined.zarr"
    assert ref.save(str(out))
    qtbot.waitUntil(lambda: out.exists(), timeout=WAIT_MS)
    saved = read_mrc(out)
    assert saved.voxel_size == pytest.approx((8.0, 8.0, 8.0))
    assert np.array_equal(np.asarray(saved.data), ref.result.refined)
    assert len(zarr.open_group(str(out), mode="r")) >= 2  # levels


def test_plugin_reader_opens_ome_zarr_as_one_multiscale_layer_in_angstrom(make_napari_viewer,
                                                                          tmp_path):
    paths = _halves(tmp_path)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(paths["odd"]) + "/", plugin=PLUGIN)
    assert layer.multiscale and [tuple(d.shape) for d in layer.data] == [(24, 32, 32), (12, 16, 16)]
    assert np.allclose(layer.scale, (8.0, 8.0, 8.0))
    assert [str(u) for u in layer.units] == ["angstrom"] * 3
    assert layer.metadata["voxel_size"] == pytest.approx((8.0, 8.0, 8.0))
    assert layer.name == "cell_odd"
