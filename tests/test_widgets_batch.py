"""The 'Refine many' dock: one model over several pairs, progress overall, Stop keeps what is
finished and a second run continues."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

from napari_deepdewedge import cli  # noqa: E402
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc  # noqa: E402

TINY_FIT = ["--subtomo-size", "16", "--channels", "4", "--depth", "2", "--epochs", "1",
            "--batch-size", "2", "--strides", "8", "16", "16", "--device", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dock_batch")
    rng = np.random.default_rng(2)
    for k in range(3):
        signal = rng.standard_normal((24, 32, 32)).astype(np.float32)
        for half in ("even", "odd"):
            write_mrc(root / "rec" / f"T{k}_{half}.mrc",
                      signal + 0.5 * rng.standard_normal(signal.shape), 8.0)
    assert cli.main(["fit", "--even", str(root / "rec" / "T0_even.mrc"), "--odd",
                     str(root / "rec" / "T0_odd.mrc"), "--tilt-range", "-60", "60", "--out",
                     str(root / "model"), "-q", *TINY_FIT]) == 0
    return root


def _panel(make_napari_viewer, dataset, out):
    from napari_deepdewedge.widgets import BatchRefineWidget

    panel = BatchRefineWidget(make_napari_viewer())
    panel.inputs.setText(str(dataset / "rec" / "*_even.mrc"))
    panel.model_path.setText(str(dataset / "model" / "latest.pt"))
    panel.out_dir.setText(str(out))
    return panel


def test_stop_keeps_finished_outputs_and_a_second_run_continues(make_napari_viewer, qtbot,
                                                                dataset, tmp_path):
    out = tmp_path / "refined"
    panel = _panel(make_napari_viewer, dataset, out)
    panel.start()
    qtbot.waitUntil(lambda: panel.progress_info.get("finished", 0) >= 1, timeout=120_000)
    panel.stop_button.click()
    qtbot.waitUntil(lambda: not panel.busy, timeout=60_000)
    assert panel.status.text().startswith("Stopped:"), panel.status.text()
    finished = sorted(p.name for p in out.glob("T*_refined.mrc"))
    assert "T0_refined.mrc" in finished and len(finished) < 3
    first_mtime = (out / "T0_refined.mrc").stat().st_mtime_ns

    panel.start()
    qtbot.waitUntil(lambda: not panel.busy, timeout=120_000)
    assert panel.result is not None, panel.status.text()
    assert "T0" in panel.result.skipped
    assert sorted(panel.result.skipped + panel.result.refined) == ["T0", "T1", "T2"]
    assert (out / "T0_refined.mrc").stat().st_mtime_ns == first_mtime
    for k in range(3):
        assert read_mrc(out / f"T{k}_refined.mrc", mmap=False).data.shape == (24, 32, 32)
    assert panel.status.text().startswith("Done:") and "of 3" in panel.status.text()


def test_bad_input_is_one_notification(make_napari_viewer, dataset, tmp_path, monkeypatch):
    from napari_deepdewedge.widgets import _panel as panel_module

    shown = []
    monkeypatch.setattr(panel_module, "notify_error", shown.append)
    panel = _panel(make_napari_viewer, dataset, tmp_path / "x")
    panel.inputs.setText(str(tmp_path / "*_none.mrc"))
    assert panel.start() is False
    assert len(shown) == 1 and "no file matches" in shown[0]
    assert not panel.busy
