"""Nothing is overwritten by surprise, and the docks write the CLI's files (issue 7):

- Refine's Save writes the pipeline's names (``OUT.mrc``, ``OUT_half0/_half1.mrc``,
  ``OUT_consistency.mrc`` with the SIGNED half0 − half1, while the layer shows its absolute
  value), and asks before replacing existing files (a confirmation the test answers);
- a new fit into a folder holding an earlier fit's checkpoints asks first and offers Resume.

Run under a virtual display:  xvfb-run -a python -m pytest tests/test_widget_saving.py -q
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

pytestmark = pytest.mark.gui

from conftest import PLUGIN, dock  # noqa: E402  (the one dock helper)
WAIT_MS = 120_000
VOXEL = (20.0, 20.0, 20.0)
ORIGIN = (0.0, 30.0, -20.0)


def read(path):
    import mrcfile

    with mrcfile.open(path, permissive=True) as mrc:
        return np.array(mrc.data), tuple(float(getattr(mrc.voxel_size, a)) for a in "zyx"), \
            tuple(float(getattr(mrc.header.origin, a)) for a in "zyx")


def a_result(seed):
    """A refinement result as pipeline.refine returns it (the Save path does not care how it
    was computed)."""
    from napari_deepdewedge.core.refine.tomogram import RefineResult

    rng = np.random.default_rng(seed)
    half0, half1 = (rng.normal(size=(8, 12, 12)).astype(np.float32) for _ in range(2))
    return RefineResult(refined=(half0 + half1) * np.float32(0.5), half0=half0, half1=half1,
                        difference=half0 - half1)


def show_result(ref, result, qtbot):
    """What the Refine dock does when its worker returns (the geometry of the halves); its
    layers are added one per event-loop turn, so wait until the dock is no longer busy."""
    from napari_deepdewedge.widgets._refine import display_of

    ref._geometry = (VOXEL, ORIGIN)
    ref._base = "TS"
    ref._keep = True
    ref._on_done(display_of(result))
    assert ref.busy  # the layers are still to come
    qtbot.waitUntil(lambda: not ref.busy, timeout=WAIT_MS)


def answer(panel, qtbot, button):
    from qtpy.QtWidgets import QMessageBox

    qtbot.waitUntil(lambda: panel.question is not None and panel.question.isVisible(),
                    timeout=WAIT_MS)
    panel.question.button(getattr(QMessageBox.StandardButton, button)).click()
    qtbot.waitUntil(lambda: panel.question is None, timeout=5_000)


def test_refine_save_writes_the_cli_names_and_asks_before_replacing(make_napari_viewer, qtbot,
                                                                   tmp_path):
    viewer = make_napari_viewer()
    ref = dock(viewer, "Refine")
    first = a_result(1)
    show_result(ref, first, qtbot)
    shown = viewer.layers[ref.outputs["consistency"]].data
    np.testing.assert_array_equal(shown, np.abs(first.half0 - first.half1))

    out = tmp_path / "TS_refined.mrc"
    assert ref.save(str(out))
    qtbot.waitUntil(lambda: not ref.busy, timeout=WAIT_MS)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["TS_refined.mrc", "TS_refined_consistency.mrc", "TS_refined_half0.mrc",
                     "TS_refined_half1.mrc"]
    consistency, voxel, origin = read(tmp_path / "TS_refined_consistency.mrc")
    np.testing.assert_array_equal(consistency, first.half0 - first.half1)  # signed
    assert consistency.min() < 0 < consistency.max()
    assert voxel == VOXEL and origin == ORIGIN
    np.testing.assert_array_equal(read(out)[0], first.refined)

    # a second result saved under the same name: asked first, Cancel leaves the files alone
    second = a_result(2)
    show_result(ref, second, qtbot)
    assert ref.save(str(out))
    answer(ref, qtbot, "Cancel")
    assert not ref.busy
    np.testing.assert_array_equal(read(out)[0], first.refined)
    assert "already exist" in ref.status.text()
    # … and Replace writes all four files anew
    assert ref.save(str(out))
    answer(ref, qtbot, "Yes")
    qtbot.waitUntil(lambda: not ref.busy, timeout=WAIT_MS)
    np.testing.assert_array_equal(read(out)[0], second.refined)
    np.testing.assert_array_equal(read(tmp_path / "TS_refined_half1.mrc")[0], second.half1)
    assert ref.status.text().startswith("Saved TS_refined.mrc")


def test_a_new_fit_into_an_earlier_fits_folder_asks_first(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    for role in ("even", "odd"):
        viewer.add_image(rng.normal(size=(16, 24, 24)).astype(np.float32), name=f"cell {role}",
                         metadata={"tilt_min": -60.0, "tilt_max": 60.0, "ddw_role": role})
    fit = dock(viewer, "Fit")
    assert (fit.even.layer_name(), fit.odd.layer_name()) == ("cell even", "cell odd")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "latest.pt").write_bytes(b"an earlier fit")
    fit.device.setCurrentText("cpu")
    for box, value in ((fit.subtomo_size, 8), (fit.channels, 2), (fit.depth, 1), (fit.batch_size, 2),
                       (fit.epochs, 1), (fit.preview_every, 0), (fit.update_every, 0)):
        box.setValue(value)
    fit.out_dir.setText(str(folder))

    assert not fit.start()  # not started: asked
    assert fit.resume_path.text() == str(folder / "latest.pt")
    answer(fit, qtbot, "Cancel")
    assert not fit.busy and fit._job is None
    assert (folder / "latest.pt").read_bytes() == b"an earlier fit"

    assert not fit.start()
    answer(fit, qtbot, "Yes")  # "Start afresh"
    assert fit._job is not None
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    assert fit.finished is not None and fit.finished.epochs_done == 1
    assert (folder / "latest.pt").read_bytes() != b"an earlier fit"

    # Resume follows the pipeline's one rule (plan_fit): the checkpoint's fixed settings (the
    # cube size typed since is not used, and the form shows the checkpoint's), the form's
    # changeable ones (more epochs)
    from napari_deepdewedge.pipeline import FitResumed

    fit.subtomo_size.setValue(16)
    fit.epochs.setValue(2)
    assert fit.resume(str(folder / "latest.pt"))
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    assert isinstance(fit.events[0], FitResumed) and fit.events[0].config.subtomo_size == 8
    assert fit.subtomo_size.value() == 8
    assert fit.finished is not None and fit.finished.epochs_done == 2
