"""The napari side of the foundation: one manifest for both install modes, reader, writer."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import napari_deepdewedge
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc

REPO = Path(__file__).resolve().parents[1]


def test_manifest_has_one_source_of_truth():
    packaged = Path(napari_deepdewedge.__file__).parent / "napari.yaml"
    assert packaged.is_symlink(), "the package must link to the root manifest, not copy it"
    assert packaged.resolve() == (REPO / "napari.yaml").resolve()


def test_npe2_validates_manifest_and_imports_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-deepdewedge", "--imports"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_importing_the_package_and_reader_does_not_import_torch():
    code = (
        "import sys, napari_deepdewedge, napari_deepdewedge._reader, napari_deepdewedge._writer;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_wheel_in_fresh_venv_exposes_all_contributions(tmp_path):
    """Build a wheel, install it into an isolated venv (with npe2, the engine napari uses to
    discover plugins), and list the contributions from there."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheel_dir)],
        check=True, timeout=300,
    )
    (wheel,) = wheel_dir.glob("napari_deepdewedge-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300
    )
    subprocess.run([str(py), "-m", "pip", "install", "-q", "npe2"], check=True, timeout=600)
    probe = textwrap.dedent(
        """
        import json, npe2, importlib.metadata as md
        pm = npe2.PluginManager.instance(); pm.discover()
        m = pm.get_manifest("napari-deepdewedge")
        c = m.contributions
        dist = md.distribution("napari-deepdewedge")
        print(json.dumps({
            "readers": [r.command for r in c.readers or []],
            "writers": [w.command for w in c.writers or []],
            "samples": [s.key for s in c.sample_data or []],
            "widgets": [w.display_name for w in c.widgets or []],
            "editable": any(str(f).endswith(".pth") for f in dist.files or []),
        }))
        """
    )
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    listed = json.loads(out.stdout.strip().splitlines()[-1])
    assert not listed["editable"]
    assert listed["readers"] == ["napari-deepdewedge.get_reader"]
    assert listed["writers"] == ["napari-deepdewedge.write_mrc",
                                 "napari-deepdewedge.write_omezarr"]
    assert "tilt_series" in listed["samples"]
    import yaml

    root = yaml.safe_load((REPO / "napari.yaml").read_text())
    expected_widgets = [w["display_name"] for w in root["contributions"].get("widgets", [])]
    assert listed["widgets"] == expected_widgets


def test_reader_opens_mrc_with_scale_and_angles(tmp_path, ddw_plugin):
    from napari.components import ViewerModel

    data = np.random.default_rng(1).normal(size=(5, 8, 9)).astype(np.float32)
    stack = write_mrc(tmp_path / "ts.st", data, voxel_size=(3.0, 3.0, 3.0), origin=(0, 6, 9))
    (tmp_path / "ts.tlt").write_text("\n".join(str(a) for a in (-60, -30, 0, 30, 60)))
    viewer = ViewerModel()
    layers = viewer.open(str(stack), plugin="napari-deepdewedge")
    (layer,) = layers
    np.testing.assert_array_equal(np.asarray(layer.data), data)
    assert tuple(layer.scale) == pytest.approx((3.0, 3.0, 3.0))
    assert tuple(layer.translate) == pytest.approx((0.0, 6.0, 9.0))
    assert layer.metadata["tilt_angles"] == [-60, -30, 0, 30, 60]
    assert layer.name == "ts"


def test_reader_declines_other_files():
    from napari_deepdewedge._reader import get_reader

    assert get_reader("image.tif") is None
    assert get_reader(["a.mrc", "b.mrc"]) is None
    assert callable(get_reader("a.MRC"))


def test_writer_round_trip_keeps_voxel_size(tmp_path, ddw_plugin):
    from napari.components import ViewerModel

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    viewer = ViewerModel()
    layer = viewer.add_image(data, scale=(2.5, 2.5, 2.5), translate=(1.0, 2.0, 3.0), name="tomo")
    written = layer.save(str(tmp_path / "tomo.mrc"), plugin="napari-deepdewedge")
    assert written
    vol = read_mrc(tmp_path / "tomo.mrc")
    np.testing.assert_array_equal(np.asarray(vol.data), data)
    assert vol.data.dtype == np.float32
    assert vol.voxel_size == pytest.approx((2.5, 2.5, 2.5))
    assert vol.origin == pytest.approx((1.0, 2.0, 3.0))
