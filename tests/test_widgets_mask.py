"""The Fit dock's Mask row (issue 20): Auto computes the automatic mask on a worker and shows it
as a Labels layer over the tomogram — the same mask as ``deepdewedge mask`` / ``fit --mask
auto`` for the same halves (parity) —; the fit uses the layer as painted at Start, and the
checkpoint records where the mask came from.

    xvfb-run -a python -m pytest tests/test_widgets_mask.py -q
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

pytestmark = pytest.mark.gui
sys.path.insert(0, str(Path(__file__).parent))
from gui_probe import set_tiny_fit  # noqa: E402

WAIT_MS = 300_000
VOXEL = 7.0


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """rec/ts_even.mrc, rec/ts_odd.mrc: the halves of a thin-slab phantom (FBP of a simulated
    tilt series), and the specimen label."""
    from napari_deepdewedge.core.io import write_mrc
    from napari_deepdewedge.core.mask_phantoms import mask_phantom_halves

    folder = tmp_path_factory.mktemp("mask") / "rec"
    ph = mask_phantom_halves((64, 64, 64), "thin", seed=0, snr=0.3)
    write_mrc(folder / "ts_even.mrc", ph.even, VOXEL)
    write_mrc(folder / "ts_odd.mrc", ph.odd, VOXEL)
    return folder, ph.specimen


def _dock(make_napari_viewer, folder, out_dir):
    from napari_deepdewedge.widgets import FitWidget

    viewer = make_napari_viewer()
    for half in ("even", "odd"):
        viewer.open(str(folder / f"ts_{half}.mrc"), plugin="napari-deepdewedge")
    fit = FitWidget(viewer)
    fit.even.set_layer_name("ts_even")
    fit.odd.set_layer_name("ts_odd")
    set_tiny_fit(fit, out_dir, 1)
    fit.update_every.setValue(0)
    fit.preview_every.setValue(0)
    return viewer, fit


def test_auto_equals_the_cli_and_the_fit_uses_the_painted_layer(make_napari_viewer, qtbot, rec, tmp_path):
    from napari_deepdewedge import cli
    from napari_deepdewedge.core.checkpoint import load_checkpoint
    from napari_deepdewedge.core.io import read_mrc
    from napari_deepdewedge.widgets._fit_pairs import fit_request

    folder, specimen = rec
    cli_mask = tmp_path / "cli_mask.mrc"
    assert cli.main(["mask", "--even", str(folder / "ts_even.mrc"), "--odd", str(folder / "ts_odd.mrc"),
                     "--out", str(cli_mask), "-q"]) == 0
    expected = np.asarray(read_mrc(cli_mask).data) != 0

    viewer, fit = _dock(make_napari_viewer, folder, tmp_path / "run")
    assert fit.mask_row.auto()
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    layer = viewer.layers["ts_even mask"]
    assert layer.__class__.__name__ == "Labels"
    assert tuple(layer.scale) == tuple(viewer.layers["ts_even"].scale)  # over the tomogram
    assert np.array_equal(np.asarray(layer.data) != 0, expected)  # parity with the CLI
    assert fit.mask.layer() is layer and "automatic mask" in fit.status.text()
    assert np.asarray(layer.data)[specimen].mean() > 0.9

    # the user erases the top half of the mask: the fit takes the layer as it is at Start
    edited = np.asarray(layer.data).copy()
    edited[:32] = 0
    layer.data = edited
    inputs = fit.job_inputs()
    inputs.pop("size_typed")  # the job's, not the request's: the preset size is fitted in the job
    request = fit_request(**inputs)
    first = request.pairs[0]
    assert np.array_equal(first.mask, edited > 0)
    assert first.mask_source["kind"] == "layer" and first.mask_source["name"] == "ts_even mask"
    assert first.mask_source["auto"]["kind"] == "auto"

    shown = []
    set_text = fit.status.setText
    fit.status.setText = lambda text: (shown.append(text), set_text(text))
    assert fit.start()
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    assert fit.finished is not None and not fit.finished.stopped
    assert any("the mask keeps" in text for text in shown), shown
    payload = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert payload["inputs"][0]["mask"]["name"] == "ts_even mask"


def test_auto_without_halves_is_refused(make_napari_viewer, tmp_path):
    from napari_deepdewedge.widgets import FitWidget

    viewer = make_napari_viewer()
    fit = FitWidget(viewer)
    assert not fit.mask_row.auto()  # a notification names the missing halves; nothing runs
    assert not fit.busy


def test_also_fit_on_tomograms_get_auto_masks(rec, tmp_path):
    """With 'auto masks for Also fit on', the extra pairs get the automatic mask of their own
    halves (what the CLI's --mask auto computes), and the message before the cubes are cut says
    what each mask keeps."""
    from types import SimpleNamespace

    from napari_deepdewedge.core.fitting import FitConfig
    from napari_deepdewedge.core.io import read_mrc
    from napari_deepdewedge.core.sample_mask import auto_mask
    from napari_deepdewedge.widgets._fit_pairs import fit_request, pairs_message

    folder, _ = rec
    even, odd = read_mrc(folder / "ts_even.mrc").data, read_mrc(folder / "ts_odd.mrc").data
    extra = [SimpleNamespace(even_path=folder / "ts_even.mrc", odd_path=folder / "ts_odd.mrc",
                             tilt_range=(-60.0, 60.0))]
    cfg = FitConfig(subtomo_size=16, channels=4, depth=2, tilt_min=-60.0, tilt_max=60.0).validate()
    plain = fit_request(np.asarray(even), np.asarray(odd), None, cfg, None, extra=extra)
    assert all(p.mask is None for p in plain.pairs) and plain.mask_notes == []
    request = fit_request(np.asarray(even), np.asarray(odd), None, cfg, None, extra=extra, extra_auto=True)
    first, second = request.pairs
    assert first.mask is None  # the picked pair keeps what the Mask row says (here: none)
    assert np.array_equal(second.mask, auto_mask(even, odd).mask) and second.mask_source["kind"] == "auto"
    message = pairs_message(request, cfg)
    assert any("automatic mask" in line for line in message.masks)
    assert any("the mask keeps" in line for line in message.masks)
