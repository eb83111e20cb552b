"""Tilt angles from SerialEM/IMOD/AreTomo/Warp/RELION metadata, matched to stacks (fixtures in
tests/data, see its README), and the one resolving function every front end calls."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_deepdewedge.core.io import tilt_metadata
from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.reconstruct.halves import split_even_odd
from napari_deepdewedge.core.io.series import find_angle_file, load_tilt_series, read_angles, resolve_angles
from napari_deepdewedge.core.io.mrc import write_mrc
from napari_deepdewedge.core.io.tilt_metadata import (
    parse_view_list,
    read_imod_exclusions,
    resolve_tilt_metadata,
)

DATA = Path(__file__).parent / "data"
SORTED = np.arange(-60.0, 60.1, 6.0)  # the fixtures' 21 views
DOSE_SYMMETRIC = [0, 6, -6, -12, 12, 18, -18, -24, 24, 30, -30, -36, 36, 42, -42, -48, 48, 54,
                  -54, -60, 60]


def _stack(folder: Path, name: str, n: int, shape=(6, 8)) -> Path:
    """A stack whose projection i holds the value i (to follow views through exclusion)."""
    data = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, *shape)).copy()
    return write_mrc(folder / name, data, voxel_size=2.675)


def _copy(tmp_path: Path, sub: str) -> Path:
    target = tmp_path / sub
    shutil.copytree(DATA / sub, target)
    return target


def test_serialem_mdoc_angles_in_zvalue_order_with_axis_dose_defocus(tmp_path):
    folder = _copy(tmp_path, "serialem")
    stack = _stack(folder, "TS_01.mrc", 21)
    assert find_angle_file(stack) == folder / "TS_01.mrc.mdoc"
    meta = resolve_tilt_metadata(None, 21, stack, frame_shape=(6, 8))
    assert meta.kind == "mdoc" and meta.source == folder / "TS_01.mrc.mdoc"
    np.testing.assert_allclose(meta.angles, np.asarray(DOSE_SYMMETRIC) + 0.0012, atol=1e-6)
    assert meta.tilt_axis == pytest.approx(85.3)
    np.testing.assert_allclose(meta.dose, 3.05)
    np.testing.assert_allclose(meta.defocus, -4.0)  # TargetDefocus, µm
    assert meta.excluded == () and meta.keep is None


def test_mdoc_of_another_stack_is_refused(tmp_path):
    folder = _copy(tmp_path, "serialem")
    stack = _stack(folder, "TS_01.mrc", 21, shape=(7, 9))
    with pytest.raises(DDWError, match=r"8×6 images but the stack's are 9×7.*another stack"):
        load_tilt_series(stack)
    binned = _stack(folder, "TS_01.mrc", 21, shape=(3, 4))  # the same stack binned by 2 fits
    assert load_tilt_series(binned).n_tilts == 21


@pytest.mark.parametrize("image_size, stack_shape, fits", [
    ("4096 4096", (64, 64), True),      # binning 64 (issue 17: refused before "at no whole-number binning")
    ("4096 4096", (128, 128), True),    # binning 32
    ("5760 4092", (1023, 1440), True),  # K3 binned by 4: newstack drops the remainder (4092 // 4)
    ("5760 4092", (1440, 1023), True),  # the same, rotated by 90°
    ("4096 4096", (64, 48), False),     # 64 along X, 85.3 along Y: no one binning
    ("4096 4096", (100, 100), False),   # 4096 // 40 = 102, 4096 // 41 = 99: no binning gives 100
])
def test_mdoc_image_size_fits_the_stack_at_any_whole_number_binning(tmp_path, image_size, stack_shape, fits):
    folder = _copy(tmp_path, "serialem")
    mdoc = folder / "TS_01.mrc.mdoc"
    mdoc.write_text(mdoc.read_text().replace("ImageSize = 8 6", f"ImageSize = {image_size}"))
    stack = _stack(folder, "TS_01.mrc", 21, shape=stack_shape)
    if fits:
        assert load_tilt_series(stack).n_tilts == 21
    else:
        x, y = image_size.split()
        with pytest.raises(DDWError, match=rf"{x}×{y} images but the stack's are {stack_shape[1]}×"
                                           rf"{stack_shape[0]} \(X×Y\): no whole-number binning"):
            load_tilt_series(stack)


def test_aretomo_aln_kept_views_match_a_stack_without_the_dark_ones(tmp_path):
    folder = _copy(tmp_path, "aretomo")
    stack = _stack(folder, "TS_01.mrc", 19)
    series = load_tilt_series(stack)
    meta = series.meta["tilt_metadata"]
    assert meta.kind == "aln" and meta.excluded == (1, 21) and meta.keep is None
    np.testing.assert_allclose(series.angles, SORTED[1:-1])
    np.testing.assert_allclose(meta.excluded_angles, [-60.0, 60.0])
    assert meta.tilt_axis == pytest.approx(85.31, abs=0.01)
    assert "views 1,21 excluded" in meta.summary()


def test_aln_on_the_raw_stack_drops_the_dark_views_angle_by_angle(tmp_path):
    folder = _copy(tmp_path, "aretomo")
    stack = _stack(folder, "TS_01.mrc", 21)
    series = load_tilt_series(stack)
    assert series.n_tilts == 19
    # projection i of the stack holds the value i: views 2..20 remain, each with its angle
    np.testing.assert_array_equal(np.asarray(series.data)[:, 0, 0], np.arange(1, 20))
    np.testing.assert_allclose(series.angles, SORTED[np.arange(1, 20)])


def test_aln_excluding_more_views_than_exist_is_refused(tmp_path):
    folder = _copy(tmp_path, "aretomo")
    aln = folder / "TS_01.aln"
    aln.write_text(aln.read_text().replace("# DarkFrame =    20   20    60.00",
                                           "# DarkFrame =    20   20    60.00\n"
                                           "# DarkFrame =    24   24    72.00"))
    with pytest.raises(DDWError, match=r"19 kept views and 3 dark.*21 views of its RawSize"):
        resolve_tilt_metadata(aln, 19)


def test_warp_xml_usetilt_false_views_are_excluded(tmp_path):
    folder = _copy(tmp_path, "warp")
    (folder / "TS_01.tomostar").unlink()
    stack = _stack(folder, "TS_01_EVN.mrc", 19)  # found through the stem without _EVN
    meta = load_tilt_series(stack).meta["tilt_metadata"]
    assert meta.kind == "warp-xml" and meta.excluded == (1, 21)
    np.testing.assert_allclose(meta.angles, SORTED[1:-1])
    assert meta.tilt_axis == pytest.approx(85.3)
    assert meta.dose is not None and meta.dose.size == 19


def test_warp_xml_inverted_angles_are_negated(tmp_path):
    folder = _copy(tmp_path, "warp")
    xml = folder / "TS_01.xml"
    xml.write_text(xml.read_text().replace('AreAnglesInverted="False"', 'AreAnglesInverted="True"'))
    meta = resolve_tilt_metadata(xml, 19)
    np.testing.assert_allclose(meta.angles, -SORTED[1:-1])


def test_warp_tomostar(tmp_path):
    meta = resolve_tilt_metadata(DATA / "warp" / "TS_01.tomostar", 21)
    assert meta.kind == "tomostar"
    np.testing.assert_allclose(meta.angles, SORTED)
    assert meta.tilt_axis == pytest.approx(85.3)
    assert meta.dose[10] == pytest.approx(0.0)  # the 0° view was taken first


@pytest.mark.parametrize("name, shift", [("TS_01", 0.35), ("TS_02", -0.2)])
def test_relion5_tomograms_star_picks_the_stack_by_name(tmp_path, name, shift):
    stack = _stack(tmp_path, f"{name}.mrc", 21)
    star = DATA / "relion" / "AlignTiltSeries" / "job007" / "tomograms.star"
    meta = load_tilt_series(stack, angles=str(star)).meta["tilt_metadata"]
    assert meta.kind == "relion-star" and meta.source.name == f"{name}.star"
    # the refined rlnTomoYTilt, not the nominal stage tilt
    np.testing.assert_allclose(meta.angles, np.asarray(DOSE_SYMMETRIC) + shift, atol=1e-6)
    assert meta.tilt_axis == pytest.approx(85.712)
    np.testing.assert_allclose(meta.dose, 3.05 * np.arange(21), atol=1e-6)
    assert meta.defocus[0] == pytest.approx(39000.0)


def test_relion_tomograms_star_without_a_matching_name(tmp_path):
    stack = _stack(tmp_path, "other.mrc", 21)
    star = DATA / "relion" / "AlignTiltSeries" / "job007" / "tomograms.star"
    with pytest.raises(DDWError, match=r"TS_01, TS_02.*none is named like the stack \(other\)"):
        load_tilt_series(stack, angles=star)


def test_imod_tlt_with_tilt_com_excludelist(tmp_path):
    folder = _copy(tmp_path, "imod")
    tlt = SORTED + 0.21
    # the .ali holds all 21 views: EXCLUDELIST 1,20-21 drops three of them
    series = load_tilt_series(_stack(folder, "TS_01.ali", 21))
    meta = series.meta["tilt_metadata"]
    assert meta.kind == "tlt" and meta.excluded == (1, 20, 21)
    np.testing.assert_array_equal(np.asarray(series.data)[:, 0, 0], np.arange(1, 19))
    np.testing.assert_allclose(series.angles, tlt[1:19])
    assert "EXCLUDELIST from tilt.com" in meta.notes
    # a stack already without them matches the kept angles
    series = load_tilt_series(_stack(folder, "TS_01.ali", 18))
    np.testing.assert_allclose(series.angles, tlt[1:19])


def test_user_exclude_list_one_based_as_imod(tmp_path):
    folder = _copy(tmp_path, "imod")
    (folder / "tilt.com").unlink()
    raw = folder / "TS_01.rawtlt"
    series = load_tilt_series(_stack(folder, "TS_01.st", 18), angles=raw, exclude="1,2,21")
    np.testing.assert_allclose(series.angles, SORTED[2:20])
    series = load_tilt_series(_stack(folder, "TS_01.st", 21), angles=raw, exclude=[1, 2, 21])
    np.testing.assert_array_equal(np.asarray(series.data)[:, 0, 0], np.arange(2, 20))
    np.testing.assert_allclose(series.angles, SORTED[2:20])
    with pytest.raises(DDWError, match=r"view 40 is excluded but TS_01.rawtlt lists only 21"):
        load_tilt_series(_stack(folder, "TS_01.st", 18), angles=raw, exclude=[1, 2, 40])


def test_more_angles_than_projections_without_exclusions_names_counts_and_fix(tmp_path):
    with pytest.raises(DDWError, match=r"gives 21 tilt angles but the stack has 19 projections.*"
                                       r"--exclude 1,2,40"):
        resolve_angles(DATA / "imod" / "TS_01.rawtlt", 19)
    with pytest.raises(DDWError, match=r"21 tilt angles \(1 marked excluded\).*stack has 17"):
        resolve_tilt_metadata(DATA / "imod" / "TS_01.rawtlt", 17, exclude=[3])


def test_imod_view_lists_and_com_files(tmp_path):
    assert parse_view_list("1,4-6, 40") == {1, 4, 5, 6, 40}
    with pytest.raises(DDWError, match="not a view number"):
        parse_view_list("1,a")
    com = tmp_path / "newst.com"
    com.write_text("$newstack -StandardInput\nInputFile TS.st\nExcludeSections 3-4\n")
    assert read_imod_exclusions(com) == {3, 4}
    assert read_imod_exclusions(DATA / "imod" / "tilt.com") == {1, 20, 21}


@pytest.mark.parametrize("path, expected", [
    ("serialem/TS_01.mrc.mdoc", np.asarray(DOSE_SYMMETRIC) + 0.0012),
    ("aretomo/TS_01.aln", SORTED[1:-1]),
    ("warp/TS_01.xml", SORTED[1:-1]),
    ("warp/TS_01.tomostar", SORTED),
    ("imod/TS_01.tlt", SORTED + 0.21),
])
def test_wedge_tilt_range_equals_the_metadata_range(path, expected):
    """read_angles (the CLI's fit uses it for the missing-wedge range) gives the used views."""
    angles = read_angles(DATA / path)
    np.testing.assert_allclose(angles, expected, atol=1e-6)
    assert (angles.min(), angles.max()) == pytest.approx((expected.min(), expected.max()))


def test_halves_keep_the_metadata_range(tmp_path):
    folder = _copy(tmp_path, "aretomo")
    series = load_tilt_series(_stack(folder, "TS_01.mrc", 19))
    even, odd = split_even_odd(series)
    both = np.concatenate([even.angles, odd.angles])
    lo, hi = series.meta["tilt_metadata"].tilt_range
    assert (both.min(), both.max()) == (lo, hi) == (-54.0, 54.0)


def test_unknown_kind_and_non_warp_xml(tmp_path):
    other = tmp_path / "TS.csv"
    other.write_text("1\n")
    with pytest.raises(DDWError, match="not a tilt-angle file"):
        resolve_tilt_metadata(other, 1)
    xml = tmp_path / "TS.xml"
    xml.write_text("<Settings><Angles>1</Angles></Settings>")
    with pytest.raises(DDWError, match="not a Warp tilt-series XML"):
        resolve_tilt_metadata(xml, 1)
    assert find_angle_file(write_mrc(tmp_path / "TS.mrc", np.zeros((1, 2, 2), np.float32))) \
        is None  # a foreign .xml beside the stack is not taken


def test_resolve_angles_routes_through_the_one_function(monkeypatch):
    calls = []
    real = tilt_metadata.resolve_tilt_metadata

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(tilt_metadata, "resolve_tilt_metadata", spy)
    resolve_angles([-3, 0, 3], 3)
    assert len(calls) == 1
