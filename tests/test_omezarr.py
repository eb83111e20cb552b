"""OME-Zarr in and out (issue 21): reading NGFF 0.4 (zarr v2) and 0.5 (zarr v3) images made by
ome-zarr-py, refusing what is not one 3D image with units, writing pyramids that ome-zarr-py
reads back, the temporary folder of a failed or killed write, and ``fit``/``refine`` from
OME-Zarr halves giving what the MRC route gives, voxel for voxel."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
ome_zarr = pytest.importorskip("ome_zarr")

from napari_deepdewedge import cli  # noqa: E402
from napari_deepdewedge.core.errors import DDWError  # noqa: E402
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc  # noqa: E402
from napari_deepdewedge.core.io.omezarr import LazyZarrArray, omezarr_levels  # noqa: E402
from napari_deepdewedge.core.io.omezarr_write import pyramid_shapes, write_omezarr  # noqa: E402


def ome_image(path, levels, *, version="0.4", unit="nanometer", scale=(1.0, 1.0, 1.0),
              translation=None, axes="zyx", global_scale=None):
    """An OME-Zarr image written by ome-zarr-py: ``levels`` finest first, level k's scale
    ``scale·2**k`` (in ``unit``; ``unit=None``: axes without units)."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscale

    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    axes_meta = [dict(name=n, type="space", **({"unit": unit} if unit else {})) for n in axes]
    transforms = []
    for k, _ in enumerate(levels):
        t = [{"type": "scale", "scale": [float(s) * 2 ** k for s in scale]}]
        if translation is not None:
            t.append({"type": "translation", "translation": [float(v) for v in translation]})
        transforms.append(t)
    write_multiscale(list(levels), root, fmt=fmt, axes=axes_meta,
                     coordinate_transformations=transforms)
    if global_scale is not None:  # a multiscale-wide transform (allowed by the spec)
        attrs = dict(root.attrs)
        ms = (attrs["ome"] if "ome" in attrs else attrs)["multiscales"][0]
        ms["coordinateTransformations"] = [{"type": "scale", "scale": list(global_scale)}]
        root.attrs.update(attrs)
    return Path(path)


def volume(shape=(20, 24, 28), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def halved(a):
    z, y, x = (n // 2 * 2 for n in a.shape)
    return a[:z, :y, :x].reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5))


# ---------------------------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("unit, factor", [("nanometer", 10.0), ("angstrom", 1.0)])
def test_reads_the_finest_level_with_voxel_size_and_origin(tmp_path, version, unit, factor):
    a = volume()
    path = ome_image(tmp_path / "t.zarr", [a, a[::2, ::2, ::2]], version=version, unit=unit,
                     scale=(1.5, 0.8, 0.8), translation=(3.0, -2.0, 1.0))
    vol = read_mrc(path)  # the one reading function of every front end dispatches on .zarr
    assert isinstance(vol.data, LazyZarrArray)
    assert vol.voxel_size == pytest.approx((1.5 * factor, 0.8 * factor, 0.8 * factor))
    assert vol.origin == pytest.approx((3.0 * factor, -2.0 * factor, 1.0 * factor))
    assert vol.data.shape == a.shape and vol.data.dtype == np.float32
    assert np.array_equal(np.asarray(vol.data), a)
    # a trailing slash names the same folder; mmap=False gives a numpy array
    again = read_mrc(str(path) + "/", mmap=False)
    assert isinstance(again.data, np.ndarray) and np.array_equal(again.data, a)
    assert omezarr_levels(path)["version"] == version


def test_lazy_level_reads_what_refinement_slices_as_numpy_does(tmp_path):
    a = volume((9, 13, 11), seed=1)
    lazy = read_mrc(ome_image(tmp_path / "t.zarr", [a, a[::2, ::2, ::2]])).data
    reflected = np.array([10, 11, 12, 11, 10])  # rows past the far edge, as predict_tiled reads
    for key in [(slice(None), slice(2, 7), slice(None)), (slice(3, 5),), 4,
                (slice(None), reflected, slice(None)), (slice(1, 8), reflected, slice(2, 9)),
                (np.array([0, 8, 8]), slice(None), 3)]:
        got = lazy[key]
        assert isinstance(got, np.ndarray)
        assert np.array_equal(got, a[key]), key


def test_multiscale_wide_scale_multiplies_the_levels(tmp_path):
    a = volume()
    path = ome_image(tmp_path / "t.zarr", [a, a[::2, ::2, ::2]], unit="angstrom",
                     scale=(1.0, 2.0, 2.0), translation=(1.0, 1.0, 1.0), global_scale=(3.0, 3.0, 3.0))
    vol = read_mrc(path)
    assert vol.voxel_size == pytest.approx((3.0, 6.0, 6.0))
    assert vol.origin == pytest.approx((3.0, 3.0, 3.0))


def test_bad_inputs_are_one_clear_error(tmp_path):
    a = volume()
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    plain.create_array("0", shape=a.shape, dtype=a.dtype)[...] = a
    with pytest.raises(DDWError, match="without OME-Zarr multiscales"):
        read_mrc(tmp_path / "plain.zarr")

    flat = ome_image(tmp_path / "flat.zarr", [a[0], a[0, ::2, ::2]], axes="yx", scale=(1, 1))
    with pytest.raises(DDWError, match="2D array"):
        read_mrc(flat)
    four = ome_image(tmp_path / "four.zarr", [a[None], a[None, :, ::2, ::2]], axes="czyx",
                     scale=(1, 1, 1, 1), unit=None)
    with pytest.raises(DDWError, match="4D array"):
        read_mrc(four)
    no_unit = ome_image(tmp_path / "nounit.zarr", [a, a[::2, ::2, ::2]], unit=None)
    with pytest.raises(DDWError, match="no unit"):
        read_mrc(no_unit)
    parsec = ome_image(tmp_path / "parsec.zarr", [a, a[::2, ::2, ::2]], unit="parsec")
    with pytest.raises(DDWError, match="unit 'parsec'"):
        read_mrc(parsec)
    # level 0 listed coarsest: its scale is larger than level 1's
    coarse_first = ome_image(tmp_path / "coarse.zarr", [a[::2, ::2, ::2], a], scale=(2, 2, 2))
    attrs = dict(zarr.open_group(str(coarse_first)).attrs)
    for d, s in zip(attrs["multiscales"][0]["datasets"], (4.0, 2.0)):
        d["coordinateTransformations"][0]["scale"] = [s] * 3
    zarr.open_group(str(coarse_first)).attrs.update(attrs)
    with pytest.raises(DDWError, match="is not the finest"):
        read_mrc(coarse_first)
    (tmp_path / "file.zarr").write_text("not a folder")
    with pytest.raises(DDWError, match="is a file"):
        read_mrc(tmp_path / "file.zarr")
    with pytest.raises(DDWError, match="not found"):
        read_mrc(tmp_path / "absent.zarr")


# ---------------------------------------------------------------------------------------------
# writing


def test_pyramid_shapes_halve_to_about_256_and_keep_two_levels():
    assert pyramid_shapes((300, 1100, 900)) == [(300, 1100, 900), (150, 550, 450),
                                                (75, 275, 225), (37, 137, 112)]
    assert pyramid_shapes((20, 24, 28)) == [(20, 24, 28), (10, 12, 14)]
    assert pyramid_shapes((1, 64, 64)) == [(1, 64, 64)]  # nothing to average along Z


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_written_image_reads_back_in_ome_zarr_py(tmp_path, version):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    a = volume((37, 41, 30), seed=2)
    out = write_omezarr(tmp_path / "r.zarr", a, (8.0, 7.0, 6.0), (1.0, 2.0, 3.0),
                        version=version, provenance={"model": "best.pt", "command": "x"},
                        slab=16)  # several slabs: 16, 16, 5 rows
    node = list(Reader(parse_url(str(out)))())[0]
    assert len(node.data) >= 2
    transforms = node.metadata["coordinateTransformations"]
    assert transforms[0][0] == {"type": "scale", "scale": [8.0, 7.0, 6.0]}
    assert transforms[0][1]["translation"] == [1.0, 2.0, 3.0]
    assert transforms[1][0]["scale"] == [16.0, 14.0, 12.0]
    assert [ax["unit"] for ax in node.metadata["axes"]] == ["angstrom"] * 3
    assert np.array_equal(np.asarray(node.data[0]), a)
    np.testing.assert_allclose(np.asarray(node.data[1]), halved(a), rtol=0, atol=1e-6)
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["deepdewedge"]["model"] == "best.pt"
    if version == "0.5":
        assert attrs["ome"]["version"] == "0.5"
    level0 = zarr.open_group(str(out), mode="r")["0"]
    assert level0.chunks == (16, 41, 30)  # CHUNKS clipped to the shape
    assert not list(tmp_path.glob(".r.zarr.*"))  # no temporary left


class FailingVolume:
    """A volume whose second slab cannot be read (a failing disk, a cancelled job)."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, 0

    def __getitem__(self, key):
        self.reads += 1
        if self.reads == 2:
            raise OSError(5, "Input/output error")
        return self.a[key]


def test_failed_write_leaves_nothing_and_the_previous_image_unchanged(tmp_path):
    a = volume((40, 16, 16))
    target = tmp_path / "r.zarr"
    with pytest.raises(DDWError, match="could not write OME-Zarr image"):
        write_omezarr(target, FailingVolume(a), 5.0, slab=16)
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # the temporary folder is gone too
    write_omezarr(target, a, 5.0)
    with pytest.raises(DDWError):
        write_omezarr(target, FailingVolume(a * 2), 5.0, slab=16)
    assert np.array_equal(np.asarray(read_mrc(target).data), a)
    assert os.listdir(tmp_path) == ["r.zarr"]


def test_killed_write_leaves_no_image_under_the_final_name(tmp_path):
    """SIGKILL while the second slab is being read: the temporary folder holds the first slab,
    the final name does not exist. The kill waits for a file the writer creates (no sleep)."""
    reached = tmp_path / "reached"
    script = textwrap.dedent(f"""
        import time, numpy as np
        from pathlib import Path
        from napari_deepdewedge.core.io.omezarr_write import write_omezarr
        a = np.ones((48, 16, 16), np.float32)
        class Stalling:
            shape, dtype, reads = a.shape, a.dtype, 0
            def __getitem__(self, key):
                Stalling.reads += 1
                if Stalling.reads == 2:
                    Path({str(reached)!r}).write_text("x")
                    time.sleep(600)
                return a[key]
        write_omezarr({str(tmp_path / 'r.zarr')!r}, Stalling(), 4.0, slab=16)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        while not reached.exists():
            assert proc.poll() is None, "the writer ended before it was killed"
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "r.zarr").exists()
    temps = list(tmp_path.glob(".r.zarr.*.tmp"))
    assert len(temps) == 1 and (temps[0] / "0").is_dir()  # the first slab got written there
    write_omezarr(tmp_path / "r.zarr", np.zeros((8, 8, 8), np.float32), 4.0)
    assert not list(tmp_path.glob(".r.zarr.*.tmp"))  # the next write of the name removes it


# ---------------------------------------------------------------------------------------------
# the command line: fit and refine from OME-Zarr halves

TINY_FIT = ["--subtomo-size", "16", "--channels", "4", "--depth", "2", "--epochs", "1",
            "--batch-size", "2", "--strides", "8", "16", "16", "--device", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """The same two noisy halves (24×32×32, 8 Å) as MRC and as OME-Zarr: the even half 0.4 in
    nm, the odd half 0.5 in Å."""
    root = tmp_path_factory.mktemp("halves")
    rng = np.random.default_rng(3)
    zz, yy, xx = np.mgrid[:24, :32, :32]
    signal_ = np.zeros((24, 32, 32), np.float32)
    for _ in range(6):
        c = rng.uniform((4, 4, 4), (20, 28, 28))
        signal_ += np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 8.0)
    even = (signal_ + 0.5 * rng.standard_normal(signal_.shape)).astype(np.float32)
    odd = (signal_ + 0.5 * rng.standard_normal(signal_.shape)).astype(np.float32)
    return {
        "mrc": (write_mrc(root / "t_even.mrc", even, 8.0), write_mrc(root / "t_odd.mrc", odd, 8.0)),
        "zarr": (ome_image(root / "t_even.zarr", [even, even[::2, ::2, ::2]], version="0.4",
                           unit="nanometer", scale=(0.8, 0.8, 0.8)),
                 ome_image(root / "t_odd.zarr", [odd, odd[::2, ::2, ::2]], version="0.5",
                           unit="angstrom", scale=(8.0, 8.0, 8.0))),
        "root": root,
    }


def _fit(even, odd, out):
    rc = cli.main(["fit", "--even", str(even), "--odd", str(odd), "--tilt-range", "-60", "60",
                   "--out", str(out), "--val-fraction", "0.2", "-q", *TINY_FIT])
    assert rc == 0
    return out


def test_fit_and_refine_from_ome_zarr_halves_equal_the_mrc_route(halves, tmp_path, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    (em, om), (ez, oz) = halves["mrc"], halves["zarr"]
    fm, fz = _fit(em, om, tmp_path / "fm"), _fit(ez, str(oz) + "/", tmp_path / "fz")

    def losses(folder):  # epoch, fit and validation loss (not the seconds)
        return [line.split(",")[:3] for line in (folder / "losses.csv").read_text().splitlines()]

    assert losses(fz) == losses(fm) and len(losses(fm)) == 2  # the same cubes, the same fit
    model = fm / "best.pt"
    common = ["--model", str(model), "--device", "cpu", "--batch-size", "3", "-q"]
    assert cli.main(["refine", "--even", str(em), "--odd", str(om), "--out",
                     str(tmp_path / "refined.mrc"), *common]) == 0
    assert cli.main(["refine", "--even", str(ez), "--odd", str(oz), "--out",
                     str(tmp_path / "refined.zarr"), *common]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "refined.zarr") in printed
    mrc = read_mrc(tmp_path / "refined.mrc", mmap=False).data
    node = list(Reader(parse_url(str(tmp_path / "refined.zarr")))())[0]
    assert len(node.data) >= 2
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [8.0, 8.0, 8.0]
    assert np.array_equal(np.asarray(node.data[0]), mrc)  # voxel for voxel
    provenance = dict(zarr.open_group(str(tmp_path / "refined.zarr"), mode="r").attrs)["deepdewedge"]
    assert provenance["model"] == str(model) and "refine" in provenance["command"]

    # with the per-half results: the same names, as OME-Zarr folders
    assert cli.main(["refine", "--even", str(ez), "--odd", str(oz), "--out",
                     str(tmp_path / "withhalves.zarr"), "--halves", *common]) == 0
    for name in ("withhalves", "withhalves_half0", "withhalves_half1", "withhalves_consistency"):
        assert read_mrc(tmp_path / f"{name}.zarr").data.shape == (24, 32, 32)


def _one_error(capsys, rc, *fragments):
    assert rc == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_refine_refuses_mismatched_or_bad_halves_and_writes_nothing(halves, tmp_path, capsys):
    (em, _), (ez, oz) = halves["mrc"], halves["zarr"]
    model = _fit(em, halves["mrc"][1], tmp_path / "fit") / "best.pt"
    a = np.asarray(read_mrc(oz).data)
    cases = {
        "voxel": (ome_image(tmp_path / "v.zarr", [a, a[::2, ::2, ::2]], unit="angstrom",
                            scale=(10.0, 10.0, 10.0)), "different voxel sizes"),
        "shape": (ome_image(tmp_path / "s.zarr", [a[:20], a[:20:2, ::2, ::2]], unit="angstrom",
                            scale=(8.0, 8.0, 8.0)), "different shapes"),
        "unit": (ome_image(tmp_path / "u.zarr", [a, a[::2, ::2, ::2]], unit=None), "no unit"),
    }
    for name, (odd, fragment) in cases.items():
        out = tmp_path / f"out_{name}.zarr"
        rc = cli.main(["refine", "--even", str(ez), "--odd", str(odd), "--model", str(model),
                       "--out", str(out), "--device", "cpu", "-q"])
        _one_error(capsys, rc, fragment)
        assert not out.exists() and not list(tmp_path.glob(f".out_{name}.zarr.*"))
    rc = cli.main(["fit", "--even", str(ez), "--odd", str(cases["voxel"][0]), "--tilt-range",
                   "-60", "60", "--out", str(tmp_path / "nofit"), "-q", *TINY_FIT])
    _one_error(capsys, rc, "different voxel sizes")
    assert not (tmp_path / "nofit").exists()


def test_run_writes_ome_zarr_refined_tomograms_on_request(tmp_path, capsys):
    """``run --refined-format zarr``: DIR/<stem>_refined.zarr (+ per-half images), equal to
    refining the run's own halves with its model to MRC."""
    rng = np.random.default_rng(4)
    stack = write_mrc(tmp_path / "TS.st", rng.standard_normal((21, 32, 32)).astype(np.float32)
                      + np.linspace(0, 1, 32, dtype=np.float32), 5.0)
    (tmp_path / "TS.rawtlt").write_text("\n".join(f"{a:g}" for a in np.arange(-60, 61, 6.0)))
    out = tmp_path / "job"
    rc = cli.main(["run", str(stack), "--thickness", "24", "--out", str(out), "-q",
                   "--refined-format", "zarr", *TINY_FIT])
    assert rc == 0, capsys.readouterr().err
    for name in ("TS_refined", "TS_refined_half0", "TS_refined_half1", "TS_refined_consistency"):
        vol = read_mrc(out / f"{name}.zarr")
        assert vol.data.shape == (24, 32, 32) and vol.voxel_size == pytest.approx((5.0,) * 3)
    assert not (out / "TS_refined.mrc").exists()
    model = out / "model" / "best.pt"
    assert cli.main(["refine", "--even", str(out / "TS_even.mrc"), "--odd", str(out / "TS_odd.mrc"),
                     "--model", str(model), "--out", str(tmp_path / "again.mrc"), "--device",
                     "cpu", "-q"]) == 0
    assert np.array_equal(np.asarray(read_mrc(out / "TS_refined.zarr").data),
                          read_mrc(tmp_path / "again.mrc", mmap=False).data)


def test_napari_writer_saves_a_multiscale_layer_finest_level_in_angstrom(tmp_path):
    from napari_deepdewedge._reader import get_reader
    from napari_deepdewedge._writer import write_omezarr_layer

    a = volume((12, 16, 20), seed=6)
    written = write_omezarr_layer(str(tmp_path / "layer"), [a, a[::2, ::2, ::2]],
                                  {"name": "layer", "scale": (1.0, 4.0, 4.0, 4.0),
                                   "translate": (0.0, 8.0, 0.0, 0.0), "metadata": {"model": "m.pt"}})
    assert written == [str(tmp_path / "layer.zarr")]
    vol = read_mrc(written[0])
    assert vol.voxel_size == (4.0, 4.0, 4.0) and vol.origin == (8.0, 0.0, 0.0)
    assert np.array_equal(np.asarray(vol.data), a)
    data, kwargs, kind = get_reader(written[0] + "/")(written[0])[0]
    assert kind == "image" and kwargs["multiscale"] and len(data) == 2
    assert kwargs["scale"] == (4.0, 4.0, 4.0) and kwargs["units"] == ("angstrom",) * 3
    assert get_reader(str(tmp_path)) is None  # a folder that is no zarr image: another reader


def test_refinement_reads_an_ome_zarr_half_in_bands_never_whole(tmp_path, monkeypatch):
    """The engine keeps the lazy level lazy (as a memory map): refining reads slices only, and
    gives what refining the same arrays in memory gives."""
    import torch

    from napari_deepdewedge.core.refine.tomogram import refine_halves

    a, b = volume((20, 40, 24), seed=7), volume((20, 40, 24), seed=8)
    za = read_mrc(ome_image(tmp_path / "a.zarr", [a, a[::2, ::2, ::2]])).data
    zb = read_mrc(ome_image(tmp_path / "b.zarr", [b, b[::2, ::2, ::2]], version="0.5")).data
    slices = []
    real_getitem = LazyZarrArray.__getitem__

    def whole(self, *args, **kwargs):
        raise AssertionError("an OME-Zarr half was read whole")

    def recorded(self, key):
        out = real_getitem(self, key)
        slices.append(out.size)
        return out

    monkeypatch.setattr(LazyZarrArray, "__array__", whole)
    monkeypatch.setattr(LazyZarrArray, "__getitem__", recorded)
    # the mean/std pass reads slabs of _MASK_CHUNK_VOXELS (8 M voxels): make the toy need several
    monkeypatch.setattr("napari_deepdewedge.core.refine.tiles._MASK_CHUNK_VOXELS", 4 * 40 * 24)
    kw = dict(subtomo_size=16, tilt_min=-60.0, tilt_max=60.0, device="cpu", tile_size=16,
              overlap=4, match_resampling=False)
    lazy = refine_halves(torch.nn.Identity(), za, zb, **kw).refined
    assert slices and max(slices) <= 20 * 16 * 24  # bands of tiles and slabs, never whole
    np.testing.assert_array_equal(lazy, refine_halves(torch.nn.Identity(), a, b, **kw).refined)
