"""The napari reader with real-format metadata, and every front end resolving angles through
the one function (core.io.tilt_metadata.resolve_tilt_metadata)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mrc_fixtures import SERIALEM_LABELS, marker_stack, write_old_style_mrc
from napari_deepdewedge._reader import layer_data_for
from napari_deepdewedge.core.io import tilt_metadata
from napari_deepdewedge.core.io.mrc import MRCHeaderWarning, write_mrc

DATA = Path(__file__).parent / "data"
SORTED = np.arange(-60.0, 60.1, 6.0)


def _stack(folder: Path, name: str, n: int) -> Path:
    data = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 6, 8)).copy()
    return write_mrc(folder / name, data, voxel_size=2.675)


@pytest.fixture
def spy(monkeypatch):
    """Count the calls of the one resolving function."""
    calls = []
    real = tilt_metadata.resolve_tilt_metadata

    def counting(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(tilt_metadata, "resolve_tilt_metadata", counting)
    return calls


@pytest.mark.parametrize("folder, n, expected, excluded", [
    ("serialem", 21, None, []),
    ("aretomo", 19, SORTED[1:-1], []),
    ("aretomo", 21, SORTED, [1, 21]),  # the layer holds the dark views; they are named
    ("warp", 19, SORTED[1:-1], []),
    ("imod", 21, SORTED + 0.21, [1, 20, 21]),
])
def test_reader_puts_angles_and_summary_in_layer_metadata(tmp_path, spy, folder, n, expected,
                                                          excluded):
    target = tmp_path / folder
    shutil.copytree(DATA / folder, target)
    data, kwargs, kind = layer_data_for(_stack(target, "TS_01.mrc", n))
    meta = kwargs["metadata"]
    assert kind == "image" and len(spy) == 1
    assert len(meta["tilt_angles"]) == data.shape[0] == n
    if expected is not None:
        np.testing.assert_allclose(meta["tilt_angles"], expected, atol=1e-6)
    assert meta["excluded_views"] == excluded
    summary = meta["tilt_metadata"]
    assert summary["source"] == meta["angle_file"] and Path(summary["source"]).parent == target
    assert summary["count"] == n - len(excluded)
    assert summary["range"] == pytest.approx([min(meta["tilt_angles"][i] for i in range(n)
                                                  if i + 1 not in excluded),
                                              max(meta["tilt_angles"][i] for i in range(n)
                                                  if i + 1 not in excluded)])
    assert kwargs["units"] == ("angstrom",) * 3
    assert kwargs["scale"] == pytest.approx((2.675,) * 3)
    assert kwargs["axis_labels"][0] == "tilt"


def test_reader_keeps_a_misfit_metadata_file_as_a_note(tmp_path):
    shutil.copytree(DATA / "aretomo", tmp_path / "a")
    _data, kwargs, _ = layer_data_for(_stack(tmp_path / "a", "TS_01.mrc", 7))
    meta = kwargs["metadata"]
    assert "tilt_angles" not in meta
    assert "21 tilt angles (2 marked excluded) but the stack has 7" in meta["tilt_metadata_error"]


def test_reader_opens_an_old_style_header_with_voxel_and_override(tmp_path):
    path = write_old_style_mrc(tmp_path / "old.st", marker_stack((3, 6, 8)), pixel=3.1,
                               labels=SERIALEM_LABELS)
    with pytest.warns(MRCHeaderWarning):
        data, kwargs, _ = layer_data_for(path)
    assert kwargs["scale"] == pytest.approx((3.1,) * 3)
    assert "MAP" in kwargs["metadata"]["mrc_header_notes"][0]
    np.testing.assert_array_equal(np.asarray(data), marker_stack((3, 6, 8)))
    with pytest.warns(MRCHeaderWarning):
        _, kwargs, _ = layer_data_for(path, voxel_size=5.0)
    assert kwargs["scale"] == (5.0, 5.0, 5.0)


def test_reader_turns_float16_into_float32(tmp_path):
    path = write_mrc(tmp_path / "h.mrc", np.full((2, 3, 4), 1.5, np.float16))
    data, _, _ = layer_data_for(path)
    assert data.dtype == np.float32 and float(data[0, 0, 0]) == 1.5


def test_reader_with_metadata_does_not_import_torch(tmp_path):
    target = tmp_path / "serialem"
    shutil.copytree(DATA / "serialem", target)
    stack = _stack(target, "TS_01.mrc", 21)
    code = (
        "import sys, json\n"
        "from napari_deepdewedge._reader import get_reader\n"
        f"layers = get_reader({str(stack)!r})({str(stack)!r})\n"
        "print(json.dumps([len(layers[0][1]['metadata']['tilt_angles']),"
        " 'torch' in sys.modules]))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [21, False]


def test_cli_resolves_through_the_one_function(tmp_path, spy, capsys):
    from napari_deepdewedge import cli

    folder = tmp_path / "aretomo"
    shutil.copytree(DATA / "aretomo", folder)
    stack = _stack(folder, "TS_01.mrc", 19)
    code = cli.main(["reconstruct", str(stack), "--thickness", "4", "--out", str(tmp_path / "o"),
                     "--device", "cpu", "--quiet"])
    assert code == 0 and len(spy) == 1
    args, kwargs = spy[0]
    assert args[0] is None and Path(kwargs["stack_path"]) == stack


def test_dock_resolves_through_the_one_function(make_napari_viewer, spy, tmp_path):
    pytest.importorskip("pytestqt")
    from napari_deepdewedge.widgets import _tiltseries as T

    folder = tmp_path / "warp"
    shutil.copytree(DATA / "warp", folder)
    stack = _stack(folder, "TS_01.mrc", 19)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(stack), plugin="napari-deepdewedge")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-deepdewedge",
                                                         "Tilt series → halves")
    widget.series.set_layer_name(layer.name)
    spy.clear()
    widget.angle_source.setCurrentText(T.ANGLES_FILE)
    widget.angle_file.setText(str(folder / "TS_01.xml"))
    angles = widget._angles_for(layer, 19)
    np.testing.assert_allclose(angles, SORTED[1:-1])
    assert spy and Path(spy[-1][0][0]) == folder / "TS_01.xml"


def test_dock_shows_the_summary_and_drops_excluded_views_the_layer_holds(make_napari_viewer,
                                                                           tmp_path):
    pytest.importorskip("pytestqt")
    from napari_deepdewedge.widgets import _tiltseries as T

    folder = tmp_path / "aretomo"
    shutil.copytree(DATA / "aretomo", folder)
    stack = _stack(folder, "TS_01.mrc", 21)  # the raw stack: dark views 1 and 21 still in it
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(stack), plugin="napari-deepdewedge")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-deepdewedge",
                                                         "Tilt series → halves")
    widget.series.set_layer_name(layer.name)
    widget.angle_source.setCurrentText(T.ANGLES_LAYER)
    widget._update_angle_summary()
    assert widget.angle_summary.text() == layer.metadata["tilt_metadata"]["summary"]
    assert "views 1,21 excluded (dropped from the stack)" in widget.angle_summary.text()
    _layer, inputs, _params = widget._validate()
    from napari_deepdewedge.widgets._reconstruct_job import read_stacks

    (data,) = read_stacks(inputs)  # what the worker reconstructs (the GUI thread reads nothing)
    assert data.shape[0] == 19
    np.testing.assert_array_equal(data[:, 0, 0], np.arange(1, 20))
    np.testing.assert_allclose(inputs["angles"], SORTED[1:-1])
