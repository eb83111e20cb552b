"""``deepdewedge mask`` and ``--mask auto`` / mask files on ``fit`` (issue 20)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deepdewedge import cli
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc
from napari_deepdewedge.core.evaluate.mask_phantoms import mask_phantom_halves
from napari_deepdewedge.core.fit.sample_mask import auto_mask

# one epoch of the smallest U-Net on 16³ cubes
TINY_FIT = ["--subtomo-size", "16", "--channels", "4", "--depth", "2", "--epochs", "1",
            "--batch-size", "4", "--device", "cpu", "--seed", "1", "--tilt-range", "-60", "60"]


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    root = tmp_path_factory.mktemp("halves")
    # 96 rows: the mask's margins (12 voxels on each surface) leave empty rows whose cubes go
    ph = mask_phantom_halves((96, 64, 64), "thin", seed=0, snr=0.3)
    even = write_mrc(root / "ts_even.mrc", ph.even, (7.0, 7.0, 7.0), origin=(1.0, 2.0, 3.0))
    odd = write_mrc(root / "ts_odd.mrc", ph.odd, (7.0, 7.0, 7.0), origin=(1.0, 2.0, 3.0))
    return even, odd, ph


def one_error(capsys, rc, *fragments):
    assert rc == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err  # info lines may come before it
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_mask_command_writes_the_engines_mask(halves, tmp_path, capsys):
    even, odd, ph = halves
    out = tmp_path / "mask.mrc"
    assert cli.main(["mask", "--even", str(even), "--odd", str(odd), "--out", str(out)]) == 0
    vol = read_mrc(out)
    assert np.allclose(vol.voxel_size, 7.0) and np.allclose(vol.origin, (1.0, 2.0, 3.0))
    data = np.asarray(vol.data)
    assert set(np.unique(data)) <= {0, 1}
    expected = auto_mask(read_mrc(even).data, read_mrc(odd).data).mask
    assert np.array_equal(data != 0, expected)  # the file is the engine's mask, voxel for voxel
    assert data[ph.specimen].mean() > 0.9
    # an existing output is refused before anything is computed, and left as it was
    before = out.read_bytes()
    capsys.readouterr()
    rc = cli.main(["mask", "--even", str(even), "--odd", str(odd), "--out", str(out)])
    one_error(capsys, rc, "already exists")
    assert out.read_bytes() == before
    # settings are options
    rc = cli.main(["mask", "--even", str(even), "--odd", str(odd), "--out", str(tmp_path / "wide.mrc"),
                   "--mask-margin", "24"])
    assert rc == 0
    assert (np.asarray(read_mrc(tmp_path / "wide.mrc").data) != 0).sum() > (data != 0).sum()


def test_mask_command_bad_input(halves, tmp_path, capsys):
    even, odd, _ = halves
    small = write_mrc(tmp_path / "small.mrc", np.zeros((16, 16, 16), np.float32))
    one_error(capsys, cli.main(["mask", "--even", str(even), "--odd", str(small), "--out",
                                str(tmp_path / "m.mrc")]), "shape")
    one_error(capsys, cli.main(["mask", "--even", str(even), "--odd", str(odd)]), "--out")
    one_error(capsys, cli.main(["mask", "--even", str(even), "--odd", str(odd), "--out",
                                str(tmp_path / "m.mrc"), "--mask-margin", "-1"]), "margin")
    assert not (tmp_path / "m.mrc").exists()


def test_fit_mask_auto_logs_cubes_and_records_source(halves, tmp_path, capsys):
    even, odd, _ = halves
    out = tmp_path / "fit"
    rc = cli.main(["fit", "--even", str(even), "--odd", str(odd), "--mask", "auto", "--out", str(out),
                   *TINY_FIT])
    assert rc == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "the mask keeps" in line)
    kept, total = (int(w) for w in line.split("keeps ")[1].split(" cubes")[0].split(" of "))
    assert 0 < kept < total
    assert "automatic mask" in err
    capsys.readouterr()
    payload = torch.load(out / "latest.pt", map_location="cpu", weights_only=True)
    source = payload["inputs"][0]["mask"]
    assert source["kind"] == "auto" and source["tilt_x"] == pytest.approx(source["tilt_x"])
    assert {"bin", "tiles", "threshold", "level", "margin"} <= set(source)
    assert payload["n_fit"] + payload["n_val"] == kept if "n_fit" in payload else True


def test_fit_mask_files_bad_input(halves, tmp_path, capsys):
    even, odd, _ = halves
    shape = read_mrc(even).data.shape
    base = ["fit", "--even", str(even), "--odd", str(odd), *TINY_FIT]
    wrong = write_mrc(tmp_path / "wrong.mrc", np.ones((8, 8, 8), np.int8))
    one_error(capsys, cli.main(base + ["--mask", str(wrong), "--out", str(tmp_path / "a")]), "shape")
    empty = write_mrc(tmp_path / "empty.mrc", np.zeros(shape, np.int8))
    one_error(capsys, cli.main(base + ["--mask", str(empty), "--out", str(tmp_path / "b")]), "no voxel")
    thin = np.zeros(shape, np.int8)
    thin[30:32] = 1  # two rows: no 16³ cube (extracted at 24³) is 30 % inside
    thin_path = write_mrc(tmp_path / "thin.mrc", thin)
    one_error(capsys, cli.main(base + ["--mask", str(thin_path), "--out", str(tmp_path / "c")]),
              "no cube", "inside its mask")
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").glob("*.pt"))
    soft = np.zeros(shape, np.float32)
    soft[16:48] = 0.8
    soft_path = write_mrc(tmp_path / "soft.mrc", soft)
    assert cli.main(base + ["--mask", str(soft_path), "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "thresholded at 0.5" in err and "warning:" in err
    payload = torch.load(tmp_path / "d" / "latest.pt", map_location="cpu", weights_only=True)
    assert payload["inputs"][0]["mask"] == {"kind": "file", "path": str(soft_path)}
    # a mask that keeps everything warns (core: test_sample_mask.test_checked_mask)


def test_fit_mask_auto_masks_every_pair(halves, tmp_path, capsys):
    """``fit`` on several pairs with one ``--mask auto``: each pair gets the automatic mask of
    its own halves (not the first pair's, not none), logged and recorded per pair."""
    even, odd, _ = halves
    tilted = mask_phantom_halves((64, 64, 64), "tilted", seed=1, snr=0.3)
    even2 = write_mrc(tmp_path / "tilt_even.mrc", tilted.even, (7.0, 7.0, 7.0))
    odd2 = write_mrc(tmp_path / "tilt_odd.mrc", tilted.odd, (7.0, 7.0, 7.0))
    out = tmp_path / "fit"
    rc = cli.main(["fit", "--even", str(even), "--odd", str(odd), "--even", str(even2), "--odd",
                   str(odd2), "--mask", "auto", "--out", str(out), *TINY_FIT])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "ts: automatic mask" in err and "tilt: automatic mask" in err
    assert "ts: the mask keeps" in err and "tilt: the mask keeps" in err
    payload = torch.load(out / "latest.pt", map_location="cpu", weights_only=True)
    sources = [i.get("mask") for i in payload["inputs"]]
    assert [s["kind"] for s in sources] == ["auto", "auto"]
    first = auto_mask(read_mrc(even).data, read_mrc(odd).data)
    second = auto_mask(tilted.even, tilted.odd)
    assert sources == [first.source(), second.source()]  # each pair's own halves' mask
    assert first.fraction != second.fraction
    assert second.mask[tilted.specimen].mean() > 0.9  # its own slab, tilted
