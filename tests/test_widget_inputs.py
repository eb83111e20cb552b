"""What the docks offer as input and how they read it (issue 7):

- the one even/odd picker offers tomograms only: with just the sample open, no dock offers
  the tilt-series stack as a half (nor as a volume to compare);
- partner matching (``X even`` ↔ ``X odd``, ``_EVN`` ↔ ``_ODD``) and an immediate shape warning;
- layer data is not read in the GUI thread: a lazy layer is materialised by the worker only.

Run under a virtual display:  xvfb-run -a python -m pytest tests/test_widget_inputs.py -q
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

pytestmark = pytest.mark.gui

from conftest import PLUGIN, dock  # noqa: E402  (the one dock helper)
WAIT_MS = 120_000


def items(combo):
    return [combo.itemText(i) for i in range(combo.count())]


def errors_since(start):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[start:]
            if str(n.severity).lower().endswith("error")]


def n_notes():
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def test_with_only_the_sample_open_no_dock_offers_the_tilt_series_as_a_half(
        make_napari_viewer, monkeypatch):
    """File > Open Sample, then every dock: the tilt-series stack is offered only where a
    tilt series belongs (step 1's 'Tilt series'), never as a half or a volume to compare."""
    import napari_deepdewedge._sample_data as S

    # the real sample command, on a smaller phantom to keep the test fast. Patch what the
    # command calls, not the command: npe2 keeps the first callable it resolves for a command,
    # so a patched command would outlive this test (the sample click-path test then got it)
    real = S.sample_layers
    monkeypatch.setattr(S, "sample_layers",
                        lambda: real(shape=(32, 48, 48), tilt_range=(-60, 60, 4.0)))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "tilt_series")
    series = "phantom tilt series"
    assert series in [layer.name for layer in viewer.layers]

    combined = dock(viewer, "DeepDeWedge")
    separate = {name: dock(viewer, name) for name in ("Fit", "Refine", "Compare",
                                                     "Tilt series → halves")}
    fits = [combined.fit, separate["Fit"]]
    refines = [combined.refine, separate["Refine"]]
    compares = [combined.compare, separate["Compare"]]
    steps1 = [combined.tiltseries, separate["Tilt series → halves"]]
    for panel in fits + refines + steps1:
        for combo in (panel.halves.even, panel.halves.odd):
            assert series not in items(combo), type(panel).__name__
            assert combo.layer_name() == "", f"{type(panel).__name__} preselected a half"
    for panel in compares:
        for combo in (panel.before, panel.after):
            assert series not in items(combo)
            assert combo.layer_name() == ""
        assert panel.truth.layer_name() == "phantom ground truth"
    for step1 in steps1:  # where a tilt series belongs, it is offered and chosen
        assert step1.series.layer_name() == series
    # and nothing can start on the tilt series by accident
    start = n_notes()
    assert not combined.fit.start() and not combined.refine.refine()
    assert not combined.compare.compare()
    errors = errors_since(start)
    assert len(errors) == 3 and "halves" in errors[0]


def test_halves_picker_partners_and_shape_warning(make_napari_viewer):
    from napari_deepdewedge.core.errors import DDWError

    viewer = make_napari_viewer()
    fit = dock(viewer, "Fit")
    picker = fit.halves
    vol = np.zeros((8, 16, 16), np.float32)
    # a complete pair appearing is chosen by itself
    viewer.add_image(vol, name="TS_01_EVN")
    assert picker.even.layer_name() == ""
    viewer.add_image(vol, name="TS_01_ODD")
    assert (picker.even.layer_name(), picker.odd.layer_name()) == ("TS_01_EVN", "TS_01_ODD")
    # choosing an even half picks its partner, in either naming
    viewer.add_image(vol, name="cell even")
    viewer.add_image(vol, name="cell odd")
    picker.even.set_layer_name("cell even")
    assert picker.odd.layer_name() == "cell odd"
    picker.even.set_layer_name("TS_01_EVN")
    assert picker.odd.layer_name() == "TS_01_ODD"
    assert not picker.warning.isVisibleTo(fit)
    # halves of different shapes: warned at once, refused with the reason
    viewer.add_image(np.zeros((8, 16, 12), np.float32), name="big odd")
    picker.odd.set_layer_name("big odd")
    assert picker.warning.isVisibleTo(fit)
    assert "8×16×16 vs 8×16×12" in picker.warning.text()
    with pytest.raises(DDWError, match="different shapes"):
        picker.layers()
    # the same layer twice
    picker.odd.set_layer_name("TS_01_EVN")
    assert "same layer" in picker.warning.text()
    with pytest.raises(DDWError, match="two different layers"):
        picker.layers()
    # choosing the odd half first fills in the even one
    refine = dock(viewer, "Refine")
    refine.halves.even.set_layer_name("")
    refine.halves.odd.set_layer_name("")
    refine.halves.even.setCurrentIndex(0)  # "(none)"
    refine.halves.odd.set_layer_name("cell odd")
    assert refine.halves.even.layer_name() in ("cell even", "TS_01_EVN")


class RecordingArray:
    """A lazy array-like (as a dask or zarr array): slicing is cheap and allowed anywhere;
    reading the WHOLE array (``__array__``) is recorded with the thread that did it."""

    def __init__(self, data: np.ndarray):
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.size = data.size
        self.reads: list[str] = []

    def __getitem__(self, index):
        return self._data[index]

    def __len__(self):
        return len(self._data)

    def __array__(self, dtype=None, copy=None):
        self.reads.append(threading.current_thread().name)
        return self._data if dtype is None else self._data.astype(dtype)


def test_layer_data_is_read_by_the_worker_not_the_gui_thread(make_napari_viewer, qtbot,
                                                            tmp_path):
    """Reconstruct, Fit and Refine hand a lazy layer to their worker unread: every full read of
    the array happens off the GUI thread."""
    from napari_deepdewedge._sample_data import sample_layers

    gui = threading.current_thread().name
    viewer = make_napari_viewer()
    (series, kwargs, _), (truth, _, _) = sample_layers(shape=(32, 48, 48),
                                                       tilt_range=(-60.0, 60.0, 4.0), seed=2)
    lazy_series = RecordingArray(series)
    viewer.add_image(lazy_series, **kwargs)
    rng = np.random.default_rng(0)
    halves = {}
    for role in ("even", "odd"):
        noisy = (truth + rng.normal(0, truth.std(), truth.shape)).astype(np.float32)
        halves[role] = RecordingArray(noisy)
        viewer.add_image(halves[role], name=f"cell {role}", contrast_limits=(-1.0, 1.0),
                         metadata={"tilt_min": -60.0, "tilt_max": 60.0, "ddw_role": role})
    arrays = [lazy_series, *halves.values()]
    for array in arrays:
        array.reads.clear()  # whatever napari did while adding the layers does not count

    ddw = dock(viewer, "DeepDeWedge")
    step1 = ddw.tiltseries
    step1.series.set_layer_name("phantom tilt series")
    step1.device.setCurrentText("cpu")
    step1.full.setChecked(False)
    assert step1.reconstruct()
    assert gui not in lazy_series.reads, "the GUI thread read the tilt series"
    qtbot.waitUntil(lambda: not step1.busy, timeout=WAIT_MS)
    assert lazy_series.reads and gui not in lazy_series.reads  # the worker read it

    fit = ddw.fit
    fit.halves.set_pair("cell even", "cell odd")
    fit.device.setCurrentText("cpu")
    for box, value in ((fit.subtomo_size, 16), (fit.channels, 4), (fit.depth, 2), (fit.batch_size, 4),
                       (fit.epochs, 1), (fit.preview_every, 0), (fit.update_every, 0)):
        box.setValue(value)
    fit.out_dir.setText(str(tmp_path / "run"))
    assert fit.start()
    assert all(gui not in a.reads for a in halves.values()), "the GUI thread read a half"
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    assert fit.finished is not None and not fit.finished.stopped

    ref = ddw.refine
    ref.halves.set_pair("cell even", "cell odd")
    ref.device.setCurrentText("cpu")
    assert ref.refine()
    assert all(gui not in a.reads for a in halves.values()), "the GUI thread read a half"
    qtbot.waitUntil(lambda: not ref.busy, timeout=WAIT_MS)
    assert "cell refined" in [layer.name for layer in viewer.layers]
    for array in arrays:
        assert array.reads and gui not in array.reads, array.reads


def test_thickness_is_in_binned_voxels_as_in_the_cli(make_napari_viewer, qtbot):
    """The Thickness field is the tomogram's Z in output (binned) voxels, like
    `deepdewedge reconstruct --thickness`; a thickness the layer carries (unbinned pixels)
    follows the binning until the user types another value."""
    from napari_deepdewedge._sample_data import sample_layers

    viewer = make_napari_viewer()
    for data, kwargs, _ in sample_layers(shape=(32, 48, 48), tilt_range=(-60.0, 60.0, 4.0)):
        viewer.add_image(data, **kwargs)
    step1 = dock(viewer, "Tilt series → halves")
    assert step1.thickness.value() == 32
    step1.binning.setValue(2)
    assert step1.thickness.value() == 16  # the sample's 32 pixels are 16 binned voxels
    step1.thickness.setValue(10)
    step1.binning.setValue(4)
    assert step1.thickness.value() == 10  # typed by the user: kept
    step1.binning.setValue(2)
    step1.full.setChecked(False)
    step1.device.setCurrentText("cpu")
    assert step1.reconstruct()
    qtbot.waitUntil(lambda: not step1.busy, timeout=WAIT_MS)
    even = viewer.layers["phantom even"]
    assert even.data.shape == (10, 24, 24)
