"""MRC files as the field writes them: old IMOD/SerialEM headers, every common mode, stacks."""
import warnings

import mrcfile
import numpy as np
import pytest

from mrc_fixtures import SERIALEM_LABELS, marker_stack, old_style_header, write_old_style_mrc
from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.io.mrc import MRCHeaderWarning, VoxelSizeWarning, read_mrc, write_mrc
from napari_deepdewedge.core.io.series import load_tilt_series


def test_old_style_serialem_header_opens_with_a_warning(tmp_path):
    data = marker_stack((5, 6, 8))
    path = write_old_style_mrc(tmp_path / "TS_01.st", data, pixel=2.675, labels=SERIALEM_LABELS,
                               origin=(0.0, -8.0, 12.5))
    with mrcfile.open(path, permissive=True) as probe:  # the fixture really lacks both
        assert bytes(probe.header.map) == b"\0\0\0\0" and bytes(probe.header.machst) == b"\0" * 4
    with pytest.warns(MRCHeaderWarning) as caught:
        vol = read_mrc(path)
    text = str(caught[0].message)
    assert "no 'MAP ' ID string" in text and "machine stamp 00 00 00 00" in text
    assert vol.data.shape == (5, 6, 8)
    np.testing.assert_array_equal(np.asarray(vol.data), data)  # z, y, x in place
    assert vol.data[2, 3, 7] == 237
    assert vol.voxel_size == pytest.approx((2.675, 2.675, 2.675), abs=1e-4)
    assert vol.origin == pytest.approx((0.0, -8.0, 12.5))
    assert vol.header_notes and "MAP" in vol.header_notes[0]


def test_old_style_header_reads_without_mmap_and_as_a_tilt_series(tmp_path):
    data = marker_stack((3, 6, 8))
    path = write_old_style_mrc(tmp_path / "TS.st", data, pixel=4.0)
    with pytest.warns(MRCHeaderWarning):
        vol = read_mrc(path, mmap=False)
    np.testing.assert_array_equal(vol.data, data)
    with pytest.warns(MRCHeaderWarning):
        series = load_tilt_series(path, angles=[-3, 0, 3])
    assert series.pixel_size == pytest.approx(4.0)
    np.testing.assert_array_equal(np.asarray(series.data), data)


def test_a_valid_file_gives_no_header_warning(tmp_path):
    path = write_mrc(tmp_path / "ok.mrc", np.ones((2, 3, 4), np.float32), voxel_size=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_mrc(path)


@pytest.mark.parametrize("old_style", [False, True])
def test_truncated_file_still_fails_clearly(tmp_path, old_style):
    data = marker_stack((5, 6, 8))
    path = tmp_path / "cut.mrc"
    if old_style:
        write_old_style_mrc(path, data)
    else:
        write_mrc(path, data)
    path.write_bytes(path.read_bytes()[:-40])  # the last section is short
    with pytest.raises(DDWError, match=r"cannot be read as MRC.*(data block|bytes)"):
        read_mrc(path)


def test_unknown_mode_still_fails_clearly(tmp_path):
    path = tmp_path / "mode7.mrc"
    path.write_bytes(old_style_header((2, 4, 4), 7, 1.0) + b"\0" * 2 * 4 * 4 * 4)
    with pytest.raises(DDWError, match=r"cannot be read as MRC.*mode"):
        read_mrc(path)


@pytest.mark.parametrize("dtype, mode", [(np.int8, 0), (np.int16, 1), (np.float32, 2),
                                         (np.uint16, 6), (np.float16, 12)])
def test_each_mode_round_trips(tmp_path, dtype, mode):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    values = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    data = (values % (int(info.max) + 1 - int(info.min)) + int(info.min)) if info else values * 0.5
    data = data.astype(dtype)
    path = write_mrc(tmp_path / "v.mrc", data, voxel_size=(1.5, 2.5, 3.5))
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == mode
    vol = read_mrc(path)
    assert vol.data.dtype == dtype
    np.testing.assert_array_equal(np.asarray(vol.data), data)
    assert vol.voxel_size == pytest.approx((1.5, 2.5, 3.5))


def test_uint8_is_written_as_uint16_and_reads_back_equal(tmp_path):
    data = (np.arange(60) * 4).reshape(3, 4, 5).astype(np.uint8)  # values up to 236
    vol = read_mrc(write_mrc(tmp_path / "b.mrc", data))
    assert vol.data.dtype == np.uint16  # mrcfile stores uint8 as mode 6
    np.testing.assert_array_equal(np.asarray(vol.data), data)


@pytest.mark.parametrize("imod_flags, nversion, expected", [
    (None, 0, np.uint8),      # old file, no IMOD stamp: unsigned bytes (IMOD's reading)
    (0, 0, np.uint8),         # IMOD stamp, signed-bytes flag off
    (1, 0, np.int8),          # IMOD stamp, signed-bytes flag on
    (None, 20140, np.int8),   # MRC2014 file: mode 0 is signed
])
def test_mode0_signedness_follows_the_header(tmp_path, imod_flags, nversion, expected):
    raw = (np.arange(2 * 4 * 4) * 9 % 256).astype(np.uint8).reshape(2, 4, 4)
    path = tmp_path / "bytes.mrc"
    header = old_style_header(raw.shape, 0, 1.0, map_id=b"MAP ", machst=b"\x44\x44\0\0",
                              imod_flags=imod_flags, nversion=nversion)
    path.write_bytes(header + raw.tobytes())
    vol = read_mrc(path)
    assert vol.data.dtype == expected
    np.testing.assert_array_equal(np.asarray(vol.data), raw.view(expected))


@pytest.mark.parametrize("ispg", [0, 1])
def test_image_stack_and_volume_space_groups_read_alike(tmp_path, ispg):
    data = marker_stack((4, 6, 8))
    path = tmp_path / f"s{ispg}.mrc"
    path.write_bytes(old_style_header(data.shape, 1, 3.0, map_id=b"MAP ",
                                      machst=b"\x44\x44\0\0", ispg=ispg, nversion=20140)
                     + data.astype("<i2").tobytes())
    vol = read_mrc(path)
    assert vol.data.shape == (4, 6, 8)
    np.testing.assert_array_equal(np.asarray(vol.data), data)
    assert vol.voxel_size == pytest.approx((3.0, 3.0, 3.0))


def test_stack_with_z_cell_of_one_section_takes_the_inplane_pixel(tmp_path):
    data = marker_stack((4, 6, 8))
    path = write_old_style_mrc(tmp_path / "mz1.st", data, pixel=2.0, mxyz=(8, 6, 0))
    with pytest.warns(MRCHeaderWarning):
        vol = read_mrc(path)
    assert vol.voxel_size == pytest.approx((2.0, 2.0, 2.0))


def test_stack_stored_as_n_by_1_sections_becomes_3d(tmp_path):
    data = np.arange(3 * 1 * 4 * 5, dtype=np.float32).reshape(3, 1, 4, 5)
    path = tmp_path / "stack.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)  # a volume stack of single sections (ispg 401)
        mrc.voxel_size = 2.0
    assert mrcfile.open(path).data.ndim == 4
    for mmap in (True, False):
        vol = read_mrc(path, mmap=mmap)
        assert vol.data.shape == (3, 4, 5)
        np.testing.assert_array_equal(np.asarray(vol.data), data[:, 0])


def test_zero_voxel_size_warns_and_the_override_wins(tmp_path):
    data = np.ones((3, 4, 5), np.float32)
    path = write_mrc(tmp_path / "nosize.mrc", data, voxel_size=(0.0, 0.0, 0.0))
    with pytest.warns(VoxelSizeWarning, match="voxel_size"):
        assert read_mrc(path).voxel_size == (1.0, 1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_mrc(path, voxel_size=3.2).voxel_size == (3.2, 3.2, 3.2)
        assert load_tilt_series(path, angles=[-1, 0, 1], voxel_size=3.2).pixel_size == 3.2
    one = write_mrc(tmp_path / "one.mrc", data, voxel_size=1.0)
    assert read_mrc(one, voxel_size=(4.0, 5.0, 6.0)).voxel_size == (4.0, 5.0, 6.0)
    assert read_mrc(one).header_voxel_size == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(DDWError, match="positive"):
        read_mrc(one, voxel_size=-2)
