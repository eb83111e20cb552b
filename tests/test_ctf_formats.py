"""Per-view defocus from CTFFIND, IMOD ctfplotter, RELION 5, Warp and SerialEM files (fixtures in
tests/data/ctf written by make_ctf_fixtures.py, and the angle fixtures of tests/data), matched to
stacks through the angles' one resolver, and the bad input refused with one clear message."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_deepdewedge.core.io.ctf_formats import CTFRequest, find_ctf_file, read_ctf_file
from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.reconstruct.halves import split_even_odd
from napari_deepdewedge.core.io.series import load_tilt_series
from napari_deepdewedge.core.io.mrc import write_mrc
from napari_deepdewedge.core.io.tilt_metadata import resolve_tilt_metadata

DATA = Path(__file__).parent / "data"
CTF = DATA / "ctf"
ANGLES = np.arange(-60.0, 60.1, 6.0)
TRUE_UM = 3.9 + 0.01 * np.arange(21)  # view i (0-based) of the fixtures


def _stack(folder: Path, name: str, n: int, pixel=2.675, shape=(6, 8)) -> Path:
    data = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, *shape)).copy()
    return write_mrc(folder / name, data, voxel_size=pixel)


def test_ctffind4_txt_defocus_astigmatism_and_optics_from_the_header():
    listed = read_ctf_file(CTF / "TS_01_ctffind4.txt")
    assert listed.kind == "ctffind" and listed.count == 21
    np.testing.assert_allclose(listed.defocus_u, TRUE_UM + 0.05, atol=1e-9)  # Å → µm
    np.testing.assert_allclose(listed.defocus_v, TRUE_UM - 0.05, atol=1e-9)
    np.testing.assert_allclose(listed.astigmatism_angle, 35.0)
    assert listed.optics == {"voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.07}
    assert listed.pixel_size == 2.675


def test_ctffind5_txt_with_its_three_extra_columns():
    """CTFFIND 5.0.2 writes 10 columns (tilt axis, tilt angle, thickness after the 7 of 4.1)."""
    listed = read_ctf_file(CTF / "TS_01_ctffind5.txt")
    assert listed.kind == "ctffind" and listed.count == 21
    np.testing.assert_allclose(listed.defocus_u, TRUE_UM + 0.05, atol=1e-9)
    np.testing.assert_allclose(listed.defocus_v, TRUE_UM - 0.05, atol=1e-9)
    np.testing.assert_allclose(listed.astigmatism_angle, 35.0)
    assert listed.optics == {"voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.07}
    assert listed.pixel_size == 2.675


@pytest.mark.parametrize("name, astig", [("TS_01.defocus", 0.0), ("TS_01_v3.defocus", 0.05)])
def test_imod_defocus_versions_2_and_3_in_nm(name, astig):
    listed = read_ctf_file(CTF / name)
    assert listed.kind == "imod-defocus" and listed.count == 21
    # v2 as ctfplotter prints it: whole nm ("%6.0f"), the version after three spaces
    assert (CTF / "TS_01.defocus").read_text().splitlines()[0] == "1\t1\t-60.00\t-60.00\t  3900   2"
    np.testing.assert_allclose(listed.defocus_u, TRUE_UM + astig, atol=1e-9)  # nm → µm
    np.testing.assert_allclose(listed.defocus_v, TRUE_UM - astig, atol=1e-9)
    np.testing.assert_allclose(listed.angles, ANGLES)
    assert listed.astigmatism_angle[0] == (35.0 if astig else 0.0)


def test_imod_defocus_v3_with_a_phase_plate_in_degrees():
    """ctfplotter writes the phase shift in degrees (flags 4, not 8) after the astigmatism."""
    listed = read_ctf_file(CTF / "TS_01_v3_phase.defocus")
    assert (CTF / "TS_01_v3_phase.defocus").read_text().splitlines()[0] == "5\t0\t0.0\t0.0\t0.0\t3"
    np.testing.assert_allclose(listed.defocus_u, TRUE_UM + 0.05, atol=1e-9)
    np.testing.assert_allclose(listed.phase_shift, 90.0)
    np.testing.assert_allclose(listed.astigmatism_angle, 35.0)


def test_imod_defocus_ranges_cover_their_views_and_gaps_are_interpolated(tmp_path):
    path = tmp_path / "TS.defocus"
    path.write_text("1\t2\t-3.00\t0.00\t4000.0\t2\n4\t4\t6.00\t6.00\t5000.0\n")
    listed = read_ctf_file(path)
    np.testing.assert_allclose(listed.defocus_u, [4.0, 4.0, 4.5, 5.0])
    assert "views 3 not in the file" in listed.notes[0]


def test_warp_xml_ctf_node_and_per_tilt_grid_in_um():
    """Warp's grids as CubicGrid.Save writes them: <Node X= Y= Z= Value= />, Depth = tilts."""
    listed = read_ctf_file(CTF / "warp" / "TS_01.xml")
    assert listed.kind == "warp-xml" and listed.count == 21
    np.testing.assert_allclose(listed.defocus_u, TRUE_UM + 0.05, atol=1e-6)  # float32 text
    np.testing.assert_allclose(listed.defocus_v, TRUE_UM - 0.05, atol=1e-6)
    np.testing.assert_allclose(listed.astigmatism_angle, 35.0)
    assert listed.optics == {"voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.07}
    assert listed.pixel_size == 2.675


def test_a_warp_xml_before_its_ctf_fit_gives_no_defocus(tmp_path):
    """Warp writes <CTF> (Defocus 1.0 by default) and a 1×1×1 GridCTF of 0 into every XML: that
    is no fit — 'auto' finds no CTF there, and naming the file says what to run."""
    nofit = CTF / "warp" / "TS_01_nofit.xml"
    with pytest.raises(DDWError, match=r"no per-tilt CTF fit .*\(WarpTools ts_ctf\)"):
        read_ctf_file(nofit)
    folder = tmp_path / "w"
    folder.mkdir()
    shutil.copy(nofit, folder / "TS_01.xml")
    stack = _stack(folder, "TS_01.mrc", 19)
    series = load_tilt_series(stack, ctf="auto")
    assert series.meta["ctf"] is None and series.angles.size == 19  # the angles still read
    # the angle fixture (tests/data/warp) is such an XML too
    shutil.copy(DATA / "warp" / "TS_01.xml", folder / "TS_01.xml")
    assert load_tilt_series(stack, ctf="auto").meta["ctf"] is None


def test_relion5_star_defocus_u_v_and_optics_from_tomograms_star(tmp_path):
    shutil.copytree(DATA / "relion", tmp_path / "relion")
    listed = read_ctf_file(tmp_path / "relion/AlignTiltSeries/job007/tomograms.star", "TS_01")
    assert listed.kind == "relion-star" and listed.count == 21
    np.testing.assert_allclose(listed.defocus_u, (39000 + 10 * np.arange(21)) * 1e-4)
    np.testing.assert_allclose(listed.defocus_v, (38800 + 10 * np.arange(21)) * 1e-4)
    np.testing.assert_allclose(listed.astigmatism_angle, -35.47666)  # rlnDefocusAngle, degrees
    assert listed.optics == {"voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.1}


def test_serialem_mdoc_nominal_defocus_negated_with_a_warning():
    listed = read_ctf_file(DATA / "serialem" / "TS_01.mrc.mdoc")
    np.testing.assert_allclose(listed.defocus_u, 3.9 + 0.01 * np.arange(21))  # -Defocus
    assert "NOMINAL" in listed.warnings[0]


def test_ctf_follows_the_views_through_exclusion_and_the_even_odd_split(tmp_path):
    """21 defoci for a 21-view stack with views 1, 20, 21 excluded: the 18 used views' defoci,
    in stack order, and each half carries its own views' defoci."""
    stack = _stack(tmp_path, "TS_01.mrc", 21)
    shutil.copy(CTF / "TS_01_ctffind4.txt", tmp_path)
    (tmp_path / "TS_01.tlt").write_text("\n".join(f"{a:.2f}" for a in ANGLES) + "\n")
    series = load_tilt_series(stack, exclude="1,20-21", ctf="auto")  # found beside the stack
    ctf = series.meta["ctf"]
    assert ctf.source.name == "TS_01_ctffind4.txt"
    used = np.r_[1:19]
    np.testing.assert_allclose(ctf.defocus, TRUE_UM[used])
    np.testing.assert_allclose(series.data[:, 0, 0], used)  # the same views as the data
    even, odd = split_even_odd(series)
    np.testing.assert_allclose(even.meta["ctf"].defocus, TRUE_UM[used][0::2])
    np.testing.assert_allclose(odd.meta["ctf"].defocus, TRUE_UM[used][1::2])
    # a file listing only the used views is taken as it is
    meta = resolve_tilt_metadata(ANGLES, 21, exclude="1,20-21", ctf=_only(tmp_path, used))
    np.testing.assert_allclose(meta.ctf.defocus, TRUE_UM[used])


def _only(folder, used):
    lines = (CTF / "TS_01_ctffind4.txt").read_text().splitlines()
    head = [line for line in lines if line.startswith("#")]
    rows = [line for line in lines if not line.startswith("#")]
    path = folder / "used_ctffind4.txt"
    path.write_text("\n".join(head + [rows[i] for i in used]) + "\n")
    return path


def test_defocus_in_the_angle_metadata_is_used_when_auto_but_not_a_nominal_mdoc(tmp_path):
    warp = tmp_path / "warp"
    shutil.copytree(CTF / "warp", warp)
    stack = _stack(warp, "TS_01.mrc", 19)
    ctf = load_tilt_series(stack, ctf="auto").meta["ctf"]
    np.testing.assert_allclose(ctf.defocus, TRUE_UM[1:20], atol=1e-9)  # UseTilt drops 1, 21
    shutil.copy(DATA / "serialem" / "TS_01.mrc.mdoc", tmp_path)
    stack = _stack(tmp_path, "TS_01.mrc", 21)
    assert load_tilt_series(stack, ctf="auto").meta["ctf"] is None
    named = load_tilt_series(stack, ctf=str(tmp_path / "TS_01.mrc.mdoc")).meta["ctf"]
    assert named.warnings and named.count == 21


def test_flags_fill_the_optics_the_file_does_not_give(tmp_path):
    meta = resolve_tilt_metadata(ANGLES, 21, ctf=CTFRequest(CTF / "TS_01.defocus", voltage=200,
                                                           cs=2.0, amplitude_contrast=0.1))
    assert (meta.ctf.voltage, meta.ctf.cs, meta.ctf.amplitude_contrast) == (200, 2.0, 0.1)
    meta = resolve_tilt_metadata(ANGLES, 21, ctf=CTF / "TS_01.defocus")
    assert (meta.ctf.voltage, meta.ctf.cs, meta.ctf.amplitude_contrast) == (300, 2.7, 0.07)
    assert "defaults" in meta.ctf.summary()
    # the file's optics win over flags
    meta = resolve_tilt_metadata(ANGLES, 21, ctf=CTFRequest(CTF / "TS_01_ctffind4.txt",
                                                           voltage=200))
    assert meta.ctf.voltage == 300


def test_find_ctf_file_beside_the_stack_also_for_halves(tmp_path):
    shutil.copy(CTF / "TS_01.defocus", tmp_path)
    assert find_ctf_file(tmp_path / "TS_01_EVN.mrc") == tmp_path / "TS_01.defocus"
    assert find_ctf_file(tmp_path / "TS_02.mrc") is None


# ------------------------------------------------------------------------------ bad input


def _write_ctffind(path: Path, values_a, extra_cols=True):
    text = (CTF / "TS_01_ctffind4.txt").read_text().splitlines()[:5]
    for i, v in enumerate(values_a, 1):
        cols = [f"{i:.6f}", f"{v:.6f}", f"{v:.6f}", "0.000000", "0.000000"]
        cols += ["0.03", "8.1"] if extra_cols else []
        text.append(" ".join(cols))
    path.write_text("\n".join(text) + "\n")
    return path


def test_a_count_that_matches_no_view_listing_names_both_counts(tmp_path):
    path = _write_ctffind(tmp_path / "x.txt", [40000.0] * 19)
    with pytest.raises(DDWError, match=r"19 defoci but the stack's metadata lists 21 views \(18"):
        resolve_tilt_metadata(ANGLES, 21, exclude="1,2,3", ctf=path)


def test_negative_or_zero_defocus_is_refused(tmp_path):
    path = _write_ctffind(tmp_path / "x.txt", [40000.0] * 20 + [-100.0])
    with pytest.raises(DDWError, match="zero or negative defoci"):
        read_ctf_file(path)


def test_micrometres_in_a_ctffind_file_say_which_unit_was_assumed_and_why(tmp_path):
    path = _write_ctffind(tmp_path / "x.txt", [4.5] * 21)
    with pytest.raises(DDWError) as err:
        read_ctf_file(path)
    text = str(err.value)
    assert "read as Å (CTFFIND writes defocus 1/2 in Å" in text and "look like µm" in text


def test_angstrom_in_an_imod_file_is_refused_as_above_20_um(tmp_path):
    path = tmp_path / "x.defocus"
    path.write_text("1\t1\t0.00\t0.00\t45000.0\t2\n")
    with pytest.raises(DDWError, match=r"read as nm .* is 45…45 µm, outside 0.05–20 µm; the "
                                       r"values look like Å"):
        read_ctf_file(path)


def test_missing_columns_are_named(tmp_path):
    path = _write_ctffind(tmp_path / "x.txt", [40000.0] * 21, extra_cols=False)
    with pytest.raises(DDWError, match="5 columns, CTFFIND writes 7"):
        read_ctf_file(path)
    path = tmp_path / "x.defocus"
    path.write_text("1\t0\t0.0\t0.0\t0.0\t3\n1\t1\t0.00\t0.00\t4000.0\n")
    with pytest.raises(DDWError, match="5 columns, but a version 3 file with flags 1 has 7"):
        read_ctf_file(path)


def test_a_file_for_another_stack_by_angles_or_pixel_size(tmp_path):
    path = tmp_path / "other.defocus"
    path.write_text("".join(f"{v}\t{v}\t{a:.2f}\t{a:.2f}\t4000.0{chr(9) + '2' if v == 1 else ''}\n"
                            for v, a in enumerate(np.linspace(-40, 40, 21), 1)))
    with pytest.raises(DDWError, match="belongs to another stack"):
        resolve_tilt_metadata(ANGLES, 21, ctf=path)
    # the aligned angles' constant offset is no reason to refuse
    assert resolve_tilt_metadata(ANGLES + 0.21, 21, ctf=CTF / "TS_01.defocus").ctf.count == 21
    stack = _stack(tmp_path, "TS_01.mrc", 21, pixel=3.1)
    (tmp_path / "TS_01.tlt").write_text("\n".join(f"{a:.2f}" for a in ANGLES) + "\n")
    with pytest.raises(DDWError, match=r"estimated at 2.675 Å/pixel but the stack has 3.1"):
        load_tilt_series(stack, ctf=CTF / "TS_01_ctffind4.txt")
    stack = _stack(tmp_path, "TS_01.mrc", 21, pixel=2.675 * 4)  # binned by 4: fine
    assert load_tilt_series(stack, ctf=CTF / "TS_01_ctffind4.txt").meta["ctf"].count == 21


def test_not_a_ctf_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(DDWError, match="not a CTFFIND diagnostic output"):
        read_ctf_file(path)
    with pytest.raises(DDWError, match="not a CTF file this plugin reads"):
        read_ctf_file(CTF.parent / "imod" / "TS_01.tlt")


def test_the_simulator_writes_every_format_and_each_reads_back(tmp_path):
    from napari_deepdewedge.core.evaluate.ctf_phantom import (
        view_defoci,
        write_ctffind_txt,
        write_imod_defocus,
        write_relion_star,
        write_warp_xml,
    )
    from napari_deepdewedge.core.ctf import ViewCTF

    d = view_defoci(21, 5.0, 0.3, seed=1)
    ctf = ViewCTF(d + 0.02, d - 0.02, np.full(21, 12.0), np.zeros(21))
    paths = [write_ctffind_txt(tmp_path / "TS_ctffind4.txt", ctf, 5.0),
             write_imod_defocus(tmp_path / "TS.defocus", ctf, ANGLES, version=3),
             write_imod_defocus(tmp_path / "TS_v2.defocus", ctf, ANGLES, version=2),
             write_warp_xml(tmp_path / "TS.xml", ctf, ANGLES, 5.0),
             write_relion_star(tmp_path / "relion", "TS", ctf, ANGLES, 5.0)]
    for path in paths:
        meta = resolve_tilt_metadata(ANGLES, 21, ctf=path)
        # file precision: IMOD v2 whole nm (ctfplotter's %6.0f), v3 0.1 nm (%7.1f), Warp float32,
        # CTFFIND/RELION 1e-6 Å
        atol = {"TS_v2.defocus": 5.1e-4, "TS.defocus": 5.1e-5}.get(path.name, 1e-5)
        np.testing.assert_allclose(meta.ctf.defocus, d, atol=atol, err_msg=path.name)
        if path.name != "TS_v2.defocus":
            np.testing.assert_allclose(meta.ctf.defocus_u - meta.ctf.defocus_v, 0.04, atol=2e-4,
                                       err_msg=path.name)
