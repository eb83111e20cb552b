"""The command line with real-format metadata: --exclude, --voxel-size, the angles info line."""
import shutil
from pathlib import Path

import numpy as np

from mrc_fixtures import SERIALEM_LABELS, write_old_style_mrc
from napari_deepdewedge import cli
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc

DATA = Path(__file__).parent / "data"


def _stack(path: Path, n: int, pixel=2.675) -> Path:
    data = np.random.default_rng(0).normal(size=(n, 6, 8)).astype(np.float32)
    return write_mrc(path, data, voxel_size=pixel)


def _reconstruct(*args):
    return cli.main(["reconstruct", *map(str, args), "--thickness", "4", "--device", "cpu"])


def test_exclude_drops_views_and_the_info_line_says_so(tmp_path, capsys):
    shutil.copytree(DATA / "imod", tmp_path / "imod")
    (tmp_path / "imod" / "tilt.com").unlink()
    stack = _stack(tmp_path / "imod" / "TS_01.st", 21)
    rc = _reconstruct(stack, "--angles", tmp_path / "imod" / "TS_01.rawtlt", "--exclude",
                      "1,2,21", "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert ("angles: 18 angles from TS_01.rawtlt (rawtlt), -48.0° … +54.0°; views 1,2,21 "
            "excluded (dropped from the stack)") in err
    assert (tmp_path / "out" / "TS_01_even.mrc").exists()


def test_metadata_found_beside_the_stack_is_reported(tmp_path, capsys):
    shutil.copytree(DATA / "aretomo", tmp_path / "a")
    stack = _stack(tmp_path / "a" / "TS_01.mrc", 19)
    assert _reconstruct(stack, "--out", tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "angles: 19 angles from TS_01.aln (aln), -54.0° … +54.0°; views 1,21 excluded " \
           "(not in the stack); tilt axis 85.3°" in err


def test_count_mismatch_is_one_error_line_with_the_fix(tmp_path, capsys):
    shutil.copytree(DATA / "imod", tmp_path / "imod")
    (tmp_path / "imod" / "tilt.com").unlink()
    stack = _stack(tmp_path / "imod" / "TS_01.st", 19)
    rc = _reconstruct(stack, "--angles", tmp_path / "imod" / "TS_01.rawtlt", "--out",
                      tmp_path / "out")
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith("error: TS_01.rawtlt gives 21 tilt angles but the stack has 19 "
                               "projections") and "--exclude 1,2,40" in lines[0]


def test_old_header_warns_once_and_voxel_size_overrides(tmp_path, capsys):
    data = np.random.default_rng(1).normal(size=(5, 6, 8)).astype(np.float32)
    stack = write_old_style_mrc(tmp_path / "old.st", data, pixel=1.0, labels=SERIALEM_LABELS)
    rc = _reconstruct(stack, "--tilt-range", "-60", "60", "30", "--voxel-size", "3.5",
                      "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "unusual MRC header" in warnings[0]
    assert read_mrc(tmp_path / "out" / "old_even.mrc").voxel_size == (3.5, 3.5, 3.5)


def test_fit_wedge_range_from_an_aln_is_that_of_the_kept_views():
    aln = DATA / "aretomo" / "TS_01.aln"
    args = cli.build_parser().parse_args(
        ["fit", "--even", "e.mrc", "--odd", "o.mrc", "--angles", str(aln), "--out", "m"])
    assert cli.tilt_range_for_fit(args) == (-54.0, 54.0)
