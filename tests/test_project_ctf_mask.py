"""A project run (``deepdewedge run DIR``) with the CTF and the sample masks (issues 19, 20):
each stack phase flipped with the defocus file found beside it, as a single ``reconstruct``
finds it; ``--no-ctf``/``--invert``; the settings kept by a continued project; ``--mask auto``
computing each fitted tomogram's mask from its own halves."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from napari_deepdewedge import cli
from napari_deepdewedge.core.evaluate.ctf_phantom import (
    make_ctf_sample,
    write_ctffind_txt,
    write_imod_defocus,
)
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc

PIXEL = 5.0
SHAPE = (32, 64, 64)
TINY = ["--subtomo-size", "16", "--channels", "4", "--depth", "2", "--batch-size", "2",
        "--strides", "16", "16", "16", "--epochs", "1", "--device", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def ctf_project(tmp_path_factory):
    """Three stacks of one CTF sample (41 views, 5 ± 0.3 µm): TS_A with a CTFFIND .txt beside
    it, TS_B with an IMOD .defocus (v3), TS_C with none."""
    folder = tmp_path_factory.mktemp("ctf") / "ts"
    folder.mkdir()
    sample = make_ctf_sample(SHAPE, (-60, 60, 3), pixel_size=PIXEL, snr=1.0, seed=3)
    for stem in ("TS_A", "TS_B", "TS_C"):
        write_mrc(folder / f"{stem}.mrc", sample.tilt_series, voxel_size=PIXEL)
        (folder / f"{stem}.tlt").write_text("\n".join(f"{a:.2f}" for a in sample.angles) + "\n")
    write_ctffind_txt(folder / "TS_A_ctffind4.txt", sample.ctf, PIXEL, stack_name="TS_A.mrc")
    write_imod_defocus(folder / "TS_B.defocus", sample.ctf, sample.angles, version=3)
    return folder


def _reconstruct(stack, out, *extra):
    assert cli.main(["reconstruct", str(stack), "--thickness", str(SHAPE[0]), "--device", "cpu",
                     "--out", str(out), *map(str, extra)]) == 0
    return read_mrc(Path(out) / f"{Path(stack).stem}_even.mrc").data


def test_each_stack_is_flipped_with_its_own_file(ctf_project, tmp_path, capsys):
    out = tmp_path / "proj"
    rc = cli.main(["run", str(ctf_project), "--out", str(out), "--thickness", str(SHAPE[0]),
                   "--fit-on", "TS_A", *TINY])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "TS_A: CTF: 41 defoci from TS_A_ctffind4.txt, " in err
    assert "TS_B: CTF: 41 defoci from TS_B.defocus, " in err
    assert "TS_C: CTF: not corrected (no defocus file found beside the stack" in err
    assert "not corrected in a project run" not in err
    # known answer: each project half is the single reconstruction with that stack's file (the
    # same kernels on the same tensors: bit-identical), flipped (≠ --no-ctf) where a file is
    for stem, ctf_file in (("TS_A", "TS_A_ctffind4.txt"), ("TS_B", "TS_B.defocus")):
        project_even = read_mrc(out / f"{stem}_even.mrc").data
        single = _reconstruct(ctf_project / f"{stem}.mrc", tmp_path / stem, "--ctf",
                              ctf_project / ctf_file)
        plain = _reconstruct(ctf_project / f"{stem}.mrc", tmp_path / f"{stem}_plain", "--no-ctf")
        np.testing.assert_array_equal(project_even, single)
        assert not np.allclose(project_even, plain, atol=1e-3 * np.abs(plain).max())
    plain_c = _reconstruct(ctf_project / "TS_C.mrc", tmp_path / "C", "--no-ctf")
    np.testing.assert_array_equal(read_mrc(out / "TS_C_even.mrc").data, plain_c)
    job = json.loads((out / "job.json").read_text())
    assert job["settings"]["ctf"] is True and job["settings"]["invert"] is False
    tomograms = job["tomograms"]
    assert Path(tomograms["TS_A"]["ctf"]["file"]).name == "TS_A_ctffind4.txt"
    assert Path(tomograms["TS_B"]["ctf"]["file"]).name == "TS_B.defocus"
    assert tomograms["TS_C"]["ctf"]["file"] is None
    assert tomograms["TS_A"]["ctf"]["summary"].startswith("CTF: 41 defoci from TS_A_ctffind4.txt")

    # continued with other CTF settings: refused, nothing changed
    before = (out / "job.json").read_text()
    for flags, fragment in ((["--no-ctf"], "ctf was phase flipped with each stack's defocus "
                             "file when its halves were reconstructed, now not CTF corrected"),
                            (["--invert"], "invert was not inverted when its halves were "
                             "reconstructed, now inverted (--invert)")):
        rc = cli.main(["run", str(ctf_project), "--out", str(out), "--thickness",
                       str(SHAPE[0]), "--fit-on", "TS_A", *TINY, *flags])
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and lines[-1].startswith("error: ") and fragment in lines[-1], lines
        assert "rerun with the same" in lines[-1]
    assert (out / "job.json").read_text() == before
    # the same command again: everything kept
    rc = cli.main(["run", str(ctf_project), "--out", str(out), "--thickness", str(SHAPE[0]),
                   "--fit-on", "TS_A", *TINY])
    err = capsys.readouterr().err
    assert rc == 0 and err.count("kept (done earlier)") == 3, err
    assert err.count("kept (finished earlier)") == 3, err
    assert "TS_B: CTF: 41 defoci from TS_B.defocus, " in err and "(halves kept)" in err
    # a defocus file put beside TS_C after its halves were made: kept as they are, and said so
    import shutil

    shutil.copy(ctf_project / "TS_B.defocus", ctf_project / "TS_C.defocus")
    try:
        rc = cli.main(["run", str(ctf_project), "--out", str(out), "--thickness", str(SHAPE[0]),
                       "--fit-on", "TS_A", *TINY])
        err = capsys.readouterr().err
        assert rc == 0 and ("warning: TS_C: TS_C.defocus is beside the stack now, but its halves "
                            "were reconstructed without a defocus file and are kept") in err, err
        np.testing.assert_array_equal(read_mrc(out / "TS_C_even.mrc").data, plain_c)
    finally:
        (ctf_project / "TS_C.defocus").unlink()


def test_no_ctf_and_invert_in_a_project(ctf_project, tmp_path, capsys):
    out = tmp_path / "proj"
    rc = cli.main(["run", str(ctf_project), "--out", str(out), "--thickness", str(SHAPE[0]),
                   "--fit-on", "TS_A", "--no-ctf", "--invert", *TINY])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.count("CTF: not corrected (--no-ctf); contrast inverted (--invert)") == 3, err
    plain = _reconstruct(ctf_project / "TS_A.mrc", tmp_path / "A", "--no-ctf")
    np.testing.assert_array_equal(read_mrc(out / "TS_A_even.mrc").data, -plain)
    job = json.loads((out / "job.json").read_text())
    assert job["settings"]["ctf"] is False and job["settings"]["invert"] is True
    assert all(t["ctf"]["file"] is None for t in job["tomograms"].values())


@pytest.mark.parametrize("flags, fragment", [
    (["--ctf", "TS_A_ctffind4.txt"], "a project finds each stack's defocus file beside it"),
    (["--mask", "roi.mrc"], "a mask file is for one tomogram; a project takes --mask auto"),
])
def test_one_file_for_a_project_is_refused(ctf_project, tmp_path, capsys, flags, fragment):
    out = tmp_path / "proj"
    rc = cli.main(["run", str(ctf_project), "--out", str(out), "--thickness", "32", *TINY, *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and lines[-1].startswith("error: ") and fragment in lines[-1], lines
    assert not out.exists()


def test_a_job_file_from_before_the_settings_was_not_ctf_corrected(tmp_path):
    """A job file without ``settings`` was reconstructed without the CTF: continuing it with the
    CTF on is refused; with --no-ctf it continues (its recorded settings filled in)."""
    from napari_deepdewedge.core.errors import DDWError
    from napari_deepdewedge.pipeline.project import JobFile, LEGACY_SETTINGS

    job = JobFile(tmp_path)
    job.load_or_start({"A": "a.mrc"}, ["A"])
    job.state["tomograms"]["A"]["reconstructed"] = True
    job.save()
    on = dict(LEGACY_SETTINGS, ctf=True)
    with pytest.raises(DDWError, match="ctf was not CTF corrected"):
        JobFile(tmp_path).load_or_start({"A": "a.mrc"}, ["A"], on)
    state = JobFile(tmp_path).load_or_start({"A": "a.mrc"}, ["A"], dict(LEGACY_SETTINGS))
    assert state["settings"] == LEGACY_SETTINGS
    # the mask may change while the fit is pending, not once it started
    assert JobFile(tmp_path).load_or_start({"A": "a.mrc"}, ["A"], dict(
        LEGACY_SETTINGS, mask="auto", mask_params={"bin": 0}))["settings"]["mask"] == "auto"
    job = JobFile(tmp_path)
    job.load_or_start({"A": "a.mrc"}, ["A"])
    job.state["fit"]["state"] = "stopped"
    job.save()
    with pytest.raises(DDWError, match="mask was automatic masks .* when its fit was started, now "
                                       "no masks"):
        JobFile(tmp_path).load_or_start({"A": "a.mrc"}, ["A"], dict(LEGACY_SETTINGS))


# ------------------------------------------------------------------------------------- masks

MASK_SHAPE = (64, 64, 64)


def _slab_stack(folder: Path, stem: str, kind: str, seed: int):
    """A tilt series of a mask phantom (core.evaluate.mask_phantoms: a slab filling a third of
    Z, flat or tilted 10° about the tilt axis) and its specimen label, with its .tlt beside it."""
    from napari_deepdewedge.core.evaluate.mask_phantoms import make_mask_phantom
    from napari_deepdewedge.core.evaluate.phantom import simulate_tilt_series
    from napari_deepdewedge.core.io.angles import angles_from_range

    z, _, x = MASK_SHAPE
    angles = angles_from_range(-60.0, 60.0, 3.0)
    pad = int(math.ceil(z / 2 * math.tan(math.radians(60)))) + 2
    vol, label = make_mask_phantom(MASK_SHAPE, kind, seed, pad_x=pad)
    proj = simulate_tilt_series(vol, angles, snr=0.3, seed=seed + 1, device="cpu",
                                infinite_slab=False)
    write_mrc(folder / f"{stem}.mrc", np.ascontiguousarray(proj[:, :, pad:pad + x]), 10.0)
    (folder / f"{stem}.tlt").write_text("\n".join(f"{a:.2f}" for a in angles) + "\n")
    return label[:, :, pad:pad + x]


def test_mask_auto_gives_every_fitted_tomogram_its_own_mask(tmp_path, capsys):
    from napari_deepdewedge.core.fit.sample_mask import auto_mask
    from napari_deepdewedge.core.model.checkpoint import load_checkpoint

    folder = tmp_path / "ts"
    folder.mkdir()
    labels = {"TS_flat": _slab_stack(folder, "TS_flat", "thin", 0),
              "TS_tilt": _slab_stack(folder, "TS_tilt", "tilted", 1)}
    _slab_stack(folder, "TS_other", "thin", 2)  # refined, not fitted: no mask
    out = tmp_path / "proj"
    command = ["run", str(folder), "--out", str(out), "--thickness", str(MASK_SHAPE[0]),
               "--fit-on", "TS_flat,TS_tilt", "--mask", "auto", *TINY]
    rc = cli.main(command)
    err = capsys.readouterr().err
    assert rc == 0, err
    job = json.loads((out / "job.json").read_text())
    assert job["settings"]["mask"] == "auto"
    inputs = {i["name"]: i for i in load_checkpoint(out / "model" / "best.pt")["inputs"]}
    for stem, specimen in labels.items():
        assert f"{stem}: automatic mask: " in err
        assert f"{stem}: the mask keeps " in err  # its cube counts at the fit's cube size
        mask = read_mrc(out / f"{stem}_mask.mrc").data != 0
        # the engine's mask of the project's own halves, voxel for voxel
        expected = auto_mask(read_mrc(out / f"{stem}_even.mrc").data,
                             read_mrc(out / f"{stem}_odd.mrc").data).mask
        np.testing.assert_array_equal(mask, expected)
        kept_specimen, kept_empty = mask[specimen].mean(), mask[~specimen].mean()
        # the slab is found: ≥ 90 % of the specimen kept, and most of the empty space dropped.
        # Issue 20's ≤ 25 % empty is tested on 96³ phantoms (tests/test_sample_mask.py): here Z
        # is only 64, so the fixed 12-voxel margin on each surface is a larger share of the
        # empty space. Measured (these seeds): flat 100 % / 34.9 %, tilted 100 % / 36.4 %
        assert kept_specimen >= 0.9 and kept_empty <= 0.45, (stem, kept_specimen, kept_empty)
        record = job["tomograms"][stem]["mask"]
        assert record["file"] == f"{stem}_mask.mrc"
        assert record["fraction"] == pytest.approx(mask.mean(), abs=1e-4)
        assert inputs[stem]["mask"]["kind"] == "auto"  # the checkpoint records the source
    assert "mask" not in job["tomograms"]["TS_other"] and not (out / "TS_other_mask.mrc").exists()
    # each mask follows its own tomogram: the tilted slab's differs from the flat one's
    assert not np.array_equal(read_mrc(out / "TS_flat_mask.mrc").data,
                              read_mrc(out / "TS_tilt_mask.mrc").data)
    # the masks are not taken for tilt series when the folder is the project's
    assert (out / "TS_flat_mask.mrc").exists()

    # a continued project keeps its masks: without --mask auto once the fit has started
    rc = cli.main([c for c in command if c not in ("--mask", "auto")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "mask was automatic masks (--mask auto) when its fit was started, now no "\
        "masks" in lines[-1], lines
    # killed after the fit's last checkpoint, before job.json said so: the fit is taken as
    # finished, its masks read back from the files (not computed again)
    job["stage"] = "fit"
    job["fit"].update(state="running", checkpoint=None)
    (out / "job.json").write_text(json.dumps(job))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.mrc")}
    assert cli.main(command) == 0
    err = capsys.readouterr().err
    assert "TS_flat: automatic mask kept from TS_flat_mask.mrc" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.mrc")} == stamps
