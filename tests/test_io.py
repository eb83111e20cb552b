"""MRC and tilt-angle I/O: round trips with voxel size, atomic writes, and every bad input."""
import os

import mrcfile
import numpy as np
import pytest

from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.io.angles import angles_from_range
from napari_deepdewedge.core.io.series import find_angle_file, load_tilt_series, read_angles, resolve_angles
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc


def test_write_read_round_trip_keeps_data_dtype_voxel_and_origin(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 6, 7)).astype(np.float32)
    path = write_mrc(tmp_path / "vol.mrc", data, voxel_size=(3.0, 2.0, 1.5), origin=(10.0, 20.0, 30.0))
    vol = read_mrc(path)
    np.testing.assert_array_equal(np.asarray(vol.data), data)
    assert vol.data.dtype == np.float32
    assert vol.voxel_size == pytest.approx((3.0, 2.0, 1.5))
    assert vol.origin == pytest.approx((10.0, 20.0, 30.0))


@pytest.mark.parametrize("dtype", [np.int16, np.int8, np.float16])
def test_round_trip_other_dtypes(tmp_path, dtype):
    data = (np.arange(4 * 5 * 6) % 100).reshape(4, 5, 6).astype(dtype)
    vol = read_mrc(write_mrc(tmp_path / "v.mrc", data, voxel_size=4.2))
    assert vol.data.dtype == dtype
    np.testing.assert_array_equal(np.asarray(vol.data), data)
    assert vol.voxel_size == pytest.approx((4.2, 4.2, 4.2))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "out.mrc"
    write_mrc(target, np.zeros((2, 3, 4), np.float32))
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "set_data", boom)
    with pytest.raises(RuntimeError):
        write_mrc(target, np.ones((2, 3, 4), np.float32))
    assert target.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.mrc"]


def test_float64_is_written_as_float32(tmp_path):
    vol = read_mrc(write_mrc(tmp_path / "d.mrc", np.ones((2, 2, 2))))
    assert vol.data.dtype == np.float32


@pytest.mark.parametrize("suffix", [".st", ".ali", ".rec", ".mrcs", ".map"])
def test_every_mrc_family_suffix_reads(tmp_path, suffix):
    src = write_mrc(tmp_path / "a.mrc", np.ones((3, 4, 5), np.float32), voxel_size=2.0)
    dst = tmp_path / f"a{suffix}"
    os.replace(src, dst)
    assert read_mrc(dst).data.shape == (3, 4, 5)


def test_missing_file(tmp_path):
    with pytest.raises(DDWError, match="not found"):
        read_mrc(tmp_path / "nope.mrc")


def test_wrong_suffix(tmp_path):
    p = tmp_path / "image.tif"
    p.write_bytes(b"II*\x00")
    with pytest.raises(DDWError, match="not an MRC-family file"):
        read_mrc(p)


def test_garbage_file_is_reported_not_raised_raw(tmp_path):
    p = tmp_path / "broken.mrc"
    p.write_bytes(b"this is not an mrc file" * 10)
    with pytest.raises(DDWError, match="cannot be read as MRC"):
        read_mrc(p)


def test_2d_file_is_refused(tmp_path):
    p = tmp_path / "flat.mrc"
    with mrcfile.new(p) as mrc:
        mrc.set_data(np.zeros((8, 8), np.float32))
    with pytest.raises(DDWError, match="expected a 3D"):
        read_mrc(p)


def test_read_angles_and_comments(tmp_path):
    p = tmp_path / "s.tlt"
    p.write_text("# comment\n-60.0\n  -58.5\n\n0\n61.25 extra\n")
    np.testing.assert_allclose(read_angles(p), [-60.0, -58.5, 0.0, 61.25])


def test_read_angles_bad_line_names_line(tmp_path):
    p = tmp_path / "s.tlt"
    p.write_text("-3\nabc\n")
    with pytest.raises(DDWError, match="line 2"):
        read_angles(p)


def test_angles_outside_range(tmp_path):
    p = tmp_path / "s.tlt"
    p.write_text("-1.2\n95\n")
    with pytest.raises(DDWError, match=r"outside \(-90°, 90°\)"):
        read_angles(p)


def test_angles_from_range_inclusive():
    np.testing.assert_allclose(angles_from_range(-60, 60, 3), np.arange(-60, 61, 3))
    np.testing.assert_allclose(angles_from_range(-54, 62, 2)[[0, -1]], [-54, 62])
    with pytest.raises(DDWError):
        angles_from_range(-60, 60, 0)
    with pytest.raises(DDWError):
        angles_from_range(60, -60, 3)
    with pytest.raises(DDWError):
        angles_from_range(-90, 90, 3)


def test_angle_count_mismatch_names_both_numbers(tmp_path):
    stack = write_mrc(tmp_path / "ts.mrc", np.zeros((7, 4, 4), np.float32))
    with pytest.raises(DDWError, match=r"5 tilt angles.*7 projections"):
        load_tilt_series(stack, angles=np.linspace(-40, 40, 5))


def test_auto_detects_angle_file_beside_stack(tmp_path):
    stack = write_mrc(tmp_path / "ts.st", np.zeros((3, 4, 4), np.float32), voxel_size=2.5)
    (tmp_path / "ts.rawtlt").write_text("-10\n0\n10\n")
    assert find_angle_file(stack) == tmp_path / "ts.rawtlt"
    (tmp_path / "ts.tlt").write_text("-11\n0\n11\n")
    assert find_angle_file(stack) == tmp_path / "ts.tlt"  # .tlt wins
    series = load_tilt_series(stack)
    np.testing.assert_allclose(series.angles, [-11, 0, 11])
    assert series.pixel_size == pytest.approx(2.5)


def test_no_angles_anywhere(tmp_path):
    stack = write_mrc(tmp_path / "ts.mrc", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(DDWError, match="no tilt angles"):
        load_tilt_series(stack)


def test_resolve_angles_range_tuple():
    np.testing.assert_allclose(resolve_angles((-6.0, 6.0, 3.0), 5), [-6, -3, 0, 3, 6])


def test_tilt_axis_x_transposes(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    stack = write_mrc(tmp_path / "ts.mrc", data)
    series = load_tilt_series(stack, angles=[-1, 0, 1], tilt_axis_x=True)
    np.testing.assert_array_equal(series.data, data.transpose(0, 2, 1))
