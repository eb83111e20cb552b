"""Refining many tomograms with one model (pipeline.batch, ``deepdewedge refine`` over many
pairs): pairing by stem, resume after an interrupt, voxel-size warnings, two torchrun ranks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_deepdewedge import cli
from napari_deepdewedge.core.refine import tomogram as core_refine
from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc
from napari_deepdewedge.pipeline import batch
from napari_deepdewedge.pipeline.batch import (
    BatchRefineRequest,
    find_pairs,
    is_finished,
    rank_share,
    refine_batch,
)

TINY_FIT = ["--subtomo-size", "16", "--channels", "4", "--depth", "2", "--epochs", "1",
            "--batch-size", "2", "--strides", "8", "16", "16", "--device", "cpu", "--seed", "1"]
NAMES = ("T0", "T1", "T2")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _halves(rng, shape=(24, 32, 32)):
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    signal = np.zeros(shape, np.float32)
    for _ in range(6):
        c = rng.uniform((4, 4, 4), np.array(shape) - 4)
        signal += np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 8.0)
    return (signal + 0.5 * rng.standard_normal(shape), signal + 0.5 * rng.standard_normal(shape))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """rec/T{0,1,2}_even.mrc + _odd.mrc (8 Å) and a tiny model fitted on T0."""
    root = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(5)
    for name in NAMES:
        even, odd = _halves(rng)
        write_mrc(root / "rec" / f"{name}_even.mrc", even, 8.0)
        write_mrc(root / "rec" / f"{name}_odd.mrc", odd, 8.0)
    rc = cli.main(["fit", "--even", str(root / "rec" / "T0_even.mrc"), "--odd",
                   str(root / "rec" / "T0_odd.mrc"), "--tilt-range", "-60", "60",
                   "--out", str(root / "model"), "-q", *TINY_FIT])
    assert rc == 0
    return root


def _request(dataset, out_dir, **kw):
    pairs = find_pairs([str(dataset / "rec" / "*_even.mrc")])
    return BatchRefineRequest(model=str(dataset / "model" / "latest.pt"), pairs=pairs,
                              out_dir=out_dir, device="cpu", keep_halves=True, **kw)


@pytest.fixture(scope="module")
def uninterrupted(dataset):
    out = dataset / "whole"
    result = refine_batch(_request(dataset, out))
    assert result.refined == list(NAMES)
    return out


def _files(folder: Path) -> dict:
    return {p.name: read_mrc(p, mmap=False).data for p in sorted(folder.glob("*.mrc"))}


# ---------------------------------------------------------------------------------------------
# the pairs


def test_glob_finds_partners_by_stem_and_list_file(tmp_path):
    for name in ("a_even.mrc", "a_odd.mrc", "b_EVN.mrc", "b_ODD.mrc"):
        write_mrc(tmp_path / name, np.zeros((2, 2, 2), np.float32))
    pairs = find_pairs([str(tmp_path / "*_even.mrc"), str(tmp_path / "b_EVN.mrc")])
    assert [(p.name, p.odd_path.name) for p in pairs] == [("a", "a_odd.mrc"), ("b", "b_ODD.mrc")]
    listing = tmp_path / "pairs.txt"
    (tmp_path / "b.tlt").write_text("-48\n0\n64\n")
    listing.write_text("# even odd\nb_EVN.mrc b_ODD.mrc b.tlt\n\na_even.mrc   # partner by stem\n")
    pairs = find_pairs(list_file=listing)
    assert [(p.name, p.even_path.name, p.odd_path.name, p.tilt_range) for p in pairs] == [
        ("b", "b_EVN.mrc", "b_ODD.mrc", (-48.0, 64.0)), ("a", "a_even.mrc", "a_odd.mrc", None)]
    # explicit odds given in another order are matched by stem, not by position
    pairs = find_pairs([str(tmp_path / "a_even.mrc"), str(tmp_path / "b_EVN.mrc")],
                       [str(tmp_path / "b_ODD.mrc"), str(tmp_path / "a_odd.mrc")])
    assert [p.odd_path.name for p in pairs] == ["a_odd.mrc", "b_ODD.mrc"]


def test_pairing_errors_name_the_problem(tmp_path):
    write_mrc(tmp_path / "c_even.mrc", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(DDWError, match="no odd partner"):
        find_pairs([str(tmp_path / "c_even.mrc")])
    with pytest.raises(DDWError, match="no file matches"):
        find_pairs([str(tmp_path / "*_nothing.mrc")])
    write_mrc(tmp_path / "c_odd.mrc", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(DDWError, match="stem 'c'"):
        find_pairs([str(tmp_path / "c_even.mrc")] * 2)


def test_rank_share_covers_every_tomogram_once():
    shares = [rank_share(7, r, 3) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(7))
    assert shares[0] == [0, 3, 6]
    with pytest.raises(DDWError):
        rank_share(3, 2, 2)


# ---------------------------------------------------------------------------------------------
# interrupt and resume


def test_interrupted_batch_resumes_without_recomputing(dataset, uninterrupted, tmp_path,
                                                       monkeypatch):
    out = tmp_path / "batch"

    def stop_after_first(event):
        if type(event).__name__ == "TomogramFinished":
            raise KeyboardInterrupt  # what Ctrl-C or a dock's Stop does between tomograms

    with pytest.raises(KeyboardInterrupt):
        refine_batch(_request(dataset, out), report=stop_after_first)
    assert is_finished(out / "T0_refined.mrc", with_halves=True)
    assert not (out / "T1_refined.mrc").exists()
    first_mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("T0_*.mrc")}

    calls = []
    real = core_refine.refine_halves

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(core_refine, "refine_halves", counting)
    events = []
    result = refine_batch(_request(dataset, out), report=events.append)
    assert len(calls) == 2  # T1 and T2 only
    assert result.skipped == ["T0"] and result.refined == ["T1", "T2"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("T0_*.mrc")} == first_mtimes
    finished = [e for e in events if type(e).__name__ == "TomogramFinished"]
    assert [(e.name, e.skipped, e.finished_overall) for e in finished] == [
        ("T0", True, 1), ("T1", False, 2), ("T2", False, 3)]
    whole, resumed = _files(uninterrupted), _files(out)
    assert sorted(whole) == sorted(resumed) and len(whole) == 12
    for name in whole:
        assert np.array_equal(whole[name], resumed[name]), name


def test_output_killed_while_writing_is_redone(dataset, uninterrupted, tmp_path, monkeypatch):
    """The main file is written last: per-half files without it are an unfinished output."""
    from napari_deepdewedge.core.io import mrc as core_io

    out = tmp_path / "crash"
    real_write = core_io.write_mrc

    def crash_on_main(path, *args, **kw):
        if Path(path).name == "T0_refined.mrc":
            raise KeyboardInterrupt  # killed between the per-half files and the main file
        return real_write(path, *args, **kw)

    monkeypatch.setattr(core_io, "write_mrc", crash_on_main)
    with pytest.raises(KeyboardInterrupt):
        refine_batch(_request(dataset, out))
    assert (out / "T0_refined_half0.mrc").exists() and not (out / "T0_refined.mrc").exists()
    assert not is_finished(out / "T0_refined.mrc", with_halves=True)
    monkeypatch.setattr(core_io, "write_mrc", real_write)
    result = refine_batch(_request(dataset, out))
    assert result.refined == list(NAMES)
    whole, redone = _files(uninterrupted), _files(out)
    assert all(np.array_equal(whole[n], redone[n]) for n in whole) and len(redone) == 12


def test_overwrite_redoes_finished_outputs(dataset, uninterrupted, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(uninterrupted, out)
    assert refine_batch(_request(dataset, out)).refined == []
    assert refine_batch(_request(dataset, out, overwrite=True)).refined == list(NAMES)


def test_voxel_size_far_from_the_model_warns_naming_both(dataset, tmp_path):
    for name, voxel in (("near", 8.5), ("far", 10.0)):
        even, odd = _halves(np.random.default_rng(1))
        write_mrc(tmp_path / f"{name}_even.mrc", even, voxel)
        write_mrc(tmp_path / f"{name}_odd.mrc", odd, voxel)
    events = []
    refine_batch(BatchRefineRequest(
        model=str(dataset / "model" / "latest.pt"), pairs=find_pairs([str(tmp_path / "*_even.mrc")]),
        out_dir=tmp_path / "out", device="cpu"), report=events.append)
    warnings = [e for e in events if type(e).__name__ == "VoxelSizeWarning"]
    assert [w.name for w in warnings] == ["far"]  # 8.5 is within 10 % of 8, 10 is not
    assert "10×10×10 Å" in warnings[0].message and "8×8×8 Å" in warnings[0].message


def test_halves_asked_for_an_output_written_without_them_is_refused(dataset, tmp_path):
    out = tmp_path / "nohalves"
    refine_batch(BatchRefineRequest(
        model=str(dataset / "model" / "latest.pt"),
        pairs=find_pairs([str(dataset / "rec" / "T0_even.mrc")]), out_dir=out, device="cpu"))
    with pytest.raises(DDWError, match="--overwrite"):
        refine_batch(_request(dataset, out))


# ---------------------------------------------------------------------------------------------
# the command line, one and two processes


def test_cli_batch_skips_finished_and_reports(dataset, uninterrupted, tmp_path, capsys):
    out = tmp_path / "cli"
    shutil.copytree(uninterrupted, out)
    (out / "T2_refined.mrc").unlink()  # T2 unfinished
    rc = cli.main(["refine", "--even", str(dataset / "rec" / "*_even.mrc"), "--model",
                   str(dataset / "model" / "latest.pt"), "--out", str(out), "--halves",
                   "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "[1/3] T0: kept (finished earlier); 2/3 finished overall" in captured.err
    assert "[3/3] T2: refined in" in captured.err and "3/3 finished overall" in captured.err
    assert captured.out.split() == [str(out / "T2_refined.mrc")]
    assert np.array_equal(read_mrc(out / "T2_refined.mrc", mmap=False).data,
                          read_mrc(uninterrupted / "T2_refined.mrc", mmap=False).data)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_ranks_write_the_files_of_one_process(dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(cli.__file__).parents[2]),
                                           os.environ.get("PYTHONPATH", "")]))
    args = ["refine", "--even", str(dataset / "rec" / "*_even.mrc"), "--model",
            str(dataset / "model" / "latest.pt"), "--halves", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "napari_deepdewedge.cli", *args, "--out",
                          str(tmp_path / "one")], capture_output=True, text=True, timeout=300,
                         env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(["torchrun", "--nproc-per-node", "2", "-m", "napari_deepdewedge.cli",
                          "--", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(two.stdout.split()) == sorted(str(tmp_path / "two" / f"{n}_refined.mrc")
                                                for n in NAMES)
    assert "rank 0: refined 2" in two.stderr  # T0 and T2; rank 1 took T1 (and is silent)
    files_one, files_two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(files_one) == sorted(files_two) and len(files_one) == 12
    for name in files_one:
        assert np.array_equal(files_one[name], files_two[name]), name


def test_cli_batch_needs_an_output_folder(dataset, tmp_path, capsys):
    rc = cli.main(["refine", "--even", str(dataset / "rec" / "*_even.mrc"), "--model",
                   str(dataset / "model" / "latest.pt"), "--out", str(tmp_path / "x.mrc")])
    assert rc == 2
    assert "error: many tomograms need an output folder" in capsys.readouterr().err
    assert not (tmp_path / "x.mrc").exists()
