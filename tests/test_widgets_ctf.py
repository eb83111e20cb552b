"""The tilt-series dock's CTF switch (issue 19, docks): the defocus summary from the file beside
the stack, and halves equal to `deepdewedge reconstruct`'s (the same resolver and request);
switched off or inverted, as --no-ctf / --invert.

Run under a virtual display:  xvfb-run -a python -m pytest tests/test_widgets_ctf.py -q
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

pytestmark = pytest.mark.gui

PLUGIN = "napari-deepdewedge"
WAIT_MS = 120_000


def _stack(folder):
    from napari_deepdewedge.core.ctf import constant_ctf
    from napari_deepdewedge.core.evaluate.ctf_phantom import write_ctffind_txt
    from napari_deepdewedge.core.io.mrc import write_mrc

    angles = np.arange(-60.0, 60.1, 8.0)  # 16 views
    data = np.random.default_rng(0).normal(size=(angles.size, 32, 48)).astype(np.float32)
    stack = write_mrc(folder / "TS.mrc", data, voxel_size=5.0)
    (folder / "TS.tlt").write_text("\n".join(f"{a:.2f}" for a in angles) + "\n")
    ctf = constant_ctf(angles.size, 3.0)
    ctf.defocus_u[:] = ctf.defocus_v[:] = 3.0 + 0.05 * np.arange(angles.size)
    write_ctffind_txt(folder / "TS_ctffind4.txt", ctf, 5.0)
    return stack


def _dock_halves(viewer, qtbot, *, ctf=True, invert=False):
    step1 = viewer.window.add_plugin_dock_widget(PLUGIN, "Tilt series → halves")[1]
    step1.series.set_layer_name("TS")
    step1.thickness.setValue(8)
    step1.full.setChecked(False)
    step1.device.setCurrentText("cpu")
    step1.ctf.setChecked(ctf)
    step1.invert.setChecked(invert)
    summary = step1.ctf_summary.text()
    assert step1.reconstruct()
    qtbot.waitUntil(lambda: not step1.busy, timeout=WAIT_MS)
    return summary, np.asarray(viewer.layers["TS even"].data), step1.ctf_summary.text()


def test_dock_phase_flips_like_the_cli(make_napari_viewer, qtbot, tmp_path):
    from napari_deepdewedge.cli import main
    from napari_deepdewedge.core.io.mrc import read_mrc

    stack = _stack(tmp_path)
    assert main(["reconstruct", str(stack), "--thickness", "8", "--device", "cpu", "--out",
                 str(tmp_path / "cli"), "--quiet"]) == 0
    cli_even = read_mrc(tmp_path / "cli" / "TS_even.mrc").data
    assert main(["reconstruct", str(stack), "--thickness", "8", "--device", "cpu", "--no-ctf",
                 "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    plain = read_mrc(tmp_path / "plain" / "TS_even.mrc").data
    assert np.abs(cli_even - plain).max() > 0.1 * np.abs(plain).max()  # the CLI did flip

    viewer = make_napari_viewer()
    viewer.open(str(stack), plugin=PLUGIN)
    before, even, after = _dock_halves(viewer, qtbot)
    assert before.startswith("CTF: 16 defoci from TS_ctffind4.txt, 3.00…3.75 µm")
    assert "phase flipped" in after and "dense material dark" in after
    np.testing.assert_allclose(even, cli_even, rtol=0, atol=1e-6 * np.abs(cli_even).max())

    del viewer.layers["TS even"], viewer.layers["TS odd"]
    _, even, after = _dock_halves(viewer, qtbot, ctf=False, invert=True)
    assert "not corrected" in after and "dense material bright" in after
    np.testing.assert_allclose(even, -plain, rtol=0, atol=1e-6 * np.abs(plain).max())


def test_inspector_draws_the_ctf_zeros_of_the_mean_defocus(make_napari_viewer, qtbot, tmp_path):
    """Issue 19 item 4: the halves carry the mean CTF; the inspector draws its zeros over the
    x–z slice (and into the viewer with Add as layers); with no defocus the toggle is off,
    disabled, and says why."""
    from napari_deepdewedge.core.ctf import ctf_zeros

    stack = _stack(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(stack), plugin=PLUGIN)
    _dock_halves(viewer, qtbot)
    record = viewer.layers["TS even"].metadata["ddw_ctf"]
    # 16 views at 3.00, 3.05, … 3.75 µm: mean 3.375 µm; the file's optics are the defaults
    assert record["defocus_um"] == pytest.approx(3.375)
    assert (record["voltage"], record["cs"], record["amplitude_contrast"]) == (300.0, 2.7, 0.07)
    insp = viewer.window.add_plugin_dock_widget(PLUGIN, "Fourier inspector")[1]
    qtbot.waitUntil(lambda: set(insp.images) == {"TS even", "TS odd"}, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: insp.show_ctf.isEnabled(), timeout=WAIT_MS)
    assert insp.show_ctf.isChecked() and "3.38 µm" in insp.show_ctf.toolTip()
    # 5 Å voxels: zeros up to 0.1 1/Å; λΔf = 664 Å², so k_n ≈ √(n/664): six of them
    assert ctf_zeros(3.375, 0.1).size == 6
    assert insp.panel.rings_drawn == [6, 6]
    insp.show_ctf.click()  # off: the user's choice
    assert insp.panel.rings_drawn == [0, 0]
    insp.show_ctf.click()
    assert insp.panel.rings_drawn == [6, 6]
    insp.add_layers()
    shapes = viewer.layers["TS even CTF zeros"]
    assert shapes.shape_type == ["ellipse"] * 6
    spectrum = viewer.layers["TS even x–z power"].data  # (Z, X) = (8, 48)
    # the first zero's half width along kx: k₁·v·X pixels = 0.0388 · 5 · 48 = 9.3
    first = shapes.data[0]
    assert (first[:, 1].max() - first[:, 1].min()) / 2 == pytest.approx(
        ctf_zeros(3.375, 0.1)[0] * 5.0 * spectrum.shape[1], rel=1e-6)

    # Refine keeps the halves' CTF on what it makes (the worker's result is stood in for)
    from napari_deepdewedge.core.refine.tomogram import RefineResult
    from napari_deepdewedge.widgets._refine import display_of

    ref = viewer.window.add_plugin_dock_widget(PLUGIN, "Refine")[1]
    ref.halves.set_pair("TS even", "TS odd")
    (tmp_path / "model.pt").write_bytes(b"")
    ref.model_path.setText(str(tmp_path / "model.pt"))
    ref._prepare()  # what Start does before the worker runs
    ref._on_done(display_of(RefineResult(refined=np.asarray(viewer.layers["TS even"].data),
                                         half0=None, half1=None, difference=None)))
    qtbot.waitUntil(lambda: not ref.busy, timeout=WAIT_MS)
    assert viewer.layers["TS refined"].metadata["ddw_ctf"] == record
    insp.set_checked(["TS refined"])
    qtbot.waitUntil(lambda: set(insp.images) == {"TS refined"}, timeout=WAIT_MS)
    assert insp.panel.rings_drawn == [6]

    # Phase flip off: nothing corrected, but the defocus beside the stack still gives the zeros
    # (why the uncorrected halves show rings)
    for name in [layer.name for layer in viewer.layers if layer.name != "TS"]:
        del viewer.layers[name]
    _, _, line = _dock_halves(viewer, qtbot, ctf=False)
    assert line.startswith("CTF: not corrected")
    assert viewer.layers["TS even"].metadata["ddw_ctf"] == record
    insp.set_checked(["TS even", "TS odd"])  # (with a refined layer named, the even and it)
    qtbot.waitUntil(lambda: set(insp.images) == {"TS even", "TS odd"}
                    and insp.panel.rings_drawn == [6, 6], timeout=WAIT_MS)

    # no defocus file: no zeros, the toggle disabled with the reason, no error
    (tmp_path / "TS_ctffind4.txt").unlink()
    for name in [layer.name for layer in viewer.layers if layer.name != "TS"]:
        del viewer.layers[name]
    _, _, line = _dock_halves(viewer, qtbot)
    assert line.startswith("CTF: not corrected")
    assert viewer.layers["TS even"].metadata["ddw_ctf"] is None
    insp.set_checked(["TS even", "TS odd"])
    qtbot.waitUntil(lambda: set(insp.images) == {"TS even", "TS odd"}
                    and not insp.show_ctf.isEnabled(), timeout=WAIT_MS)
    assert not insp.show_ctf.isChecked() and "No defocus" in insp.show_ctf.toolTip()
    assert insp.panel.rings_drawn == [0, 0]
    insp.add_layers()
    assert "TS even CTF zeros" not in [layer.name for layer in viewer.layers]
