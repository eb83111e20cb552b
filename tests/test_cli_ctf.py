"""Issue 19's acceptance: ``deepdewedge reconstruct TS.mrc --angles TS.tlt --ctf FILE --full`` on a
simulated series with the CTF (5 Å pixels, 5 ± 0.3 µm per view, the gradient across the tilted
specimen) gives a full FBP whose FSC against the truth comes close to an ideal phase flip's;
the log line; --no-ctf, --invert, the file found beside the stack; bad input → one error line,
nothing written."""
from pathlib import Path

import numpy as np
import pytest

from napari_deepdewedge import cli
from napari_deepdewedge.core.ctf import PhaseFlip
from napari_deepdewedge.core.evaluate.ctf_phantom import (
    make_ctf_sample,
    write_ctffind_txt,
    write_imod_defocus,
)
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc
from napari_deepdewedge.core.evaluate.metrics import fsc, fsc_crossing
from napari_deepdewedge.core.reconstruct.fbp import fbp

PIXEL = 5.0
SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def sample():
    # 41 views, ±60°; one layer (the thickness' defocus spread, 0.016 µm, is negligible here)
    return make_ctf_sample(SHAPE, (-60, 60, 3), pixel_size=PIXEL, snr=1.0, seed=3)


def _files(folder: Path, sample, ctf_files=True) -> Path:
    folder.mkdir(exist_ok=True)
    stack = write_mrc(folder / "TS.mrc", sample.tilt_series, voxel_size=PIXEL)
    (folder / "TS.tlt").write_text("\n".join(f"{a:.2f}" for a in sample.angles) + "\n")
    if ctf_files:
        write_ctffind_txt(folder / "TS_ctffind4.txt", sample.ctf, PIXEL)
        write_imod_defocus(folder / "TS_v3.defocus", sample.ctf, sample.angles, version=3)
        write_imod_defocus(folder / "TS_v2.defocus", sample.ctf, sample.angles, version=2)
    return stack


def _run(*args):
    return cli.main(["reconstruct", *map(str, args), "--thickness", str(SHAPE[0]), "--device",
                     "cpu"])


def _resolution_px(volume, truth):
    freqs, curve = fsc(volume, truth, PIXEL)
    return fsc_crossing(freqs, curve) / PIXEL


@pytest.mark.parametrize("ctf_file", ["TS_ctffind4.txt", "TS_v3.defocus", "TS_v2.defocus"])
def test_phase_flipped_fbp_comes_close_to_an_ideal_flip(tmp_path, sample, capsys, ctf_file):
    stack = _files(tmp_path / "in", sample)
    out = tmp_path / "out"
    rc = _run(stack, "--angles", tmp_path / "in" / "TS.tlt", "--ctf", tmp_path / "in" / ctf_file,
              "--full", "--invert", "--out", out)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"CTF: 41 defoci from {ctf_file}, " in err and "phase flipped" in err
    assert "contrast inverted (--invert): dense material bright for raw micrographs" in err
    flipped = _resolution_px(read_mrc(out / "TS_full.mrc").data, sample.ground_truth)
    # the ideal: the true defoci, every detector column its own defocus (1-px strips)
    ideal_flip = PhaseFlip(sample.ctf, sample.angles, PIXEL, strip_width=1)
    ideal = _resolution_px(-fbp(sample.tilt_series, sample.angles, SHAPE[0],
                                phase_flip=ideal_flip), sample.ground_truth)
    uncorrected = _resolution_px(-fbp(sample.tilt_series, sample.angles, SHAPE[0]),
                                 sample.ground_truth)
    # measured (seed 3): uncorrected 6.43 px, ideal 3.49 px, from each of the three files 3.50 px
    assert flipped <= ideal * 1.05 + 0.1, (flipped, ideal)
    assert uncorrected >= flipped + 1.5, (uncorrected, flipped)


def test_beside_the_stack_no_ctf_and_invert(tmp_path, sample, capsys):
    stack = _files(tmp_path / "in", sample, ctf_files=False)
    write_ctffind_txt(tmp_path / "in" / "TS_ctffind4.txt", sample.ctf, PIXEL)
    assert _run(stack, "--out", tmp_path / "auto") == 0  # TS.tlt and TS_ctffind4.txt found
    err = capsys.readouterr().err
    assert "CTF: 41 defoci from TS_ctffind4.txt" in err
    assert ("contrast as in the images: dense material dark for raw micrographs (--invert for "
            "bright)") in err
    assert _run(stack, "--ctf", tmp_path / "in" / "TS_ctffind4.txt", "--out",
                tmp_path / "named") == 0
    auto = read_mrc(tmp_path / "auto" / "TS_even.mrc").data
    np.testing.assert_array_equal(auto, read_mrc(tmp_path / "named" / "TS_even.mrc").data)
    assert _run(stack, "--no-ctf", "--out", tmp_path / "plain") == 0
    assert _run(stack, "--no-ctf", "--invert", "--out", tmp_path / "inv") == 0
    err = capsys.readouterr().err
    assert "CTF: not corrected (--no-ctf)" in err
    plain = read_mrc(tmp_path / "plain" / "TS_even.mrc").data
    assert not np.allclose(plain, auto, atol=1e-3 * np.abs(plain).max())  # the flip did work
    np.testing.assert_array_equal(read_mrc(tmp_path / "inv" / "TS_even.mrc").data, -plain)


def test_nothing_found_says_how_to_give_one(tmp_path, sample, capsys):
    stack = _files(tmp_path / "in", sample, ctf_files=False)
    assert _run(stack, "--out", tmp_path / "out") == 0
    assert "CTF: not corrected (no defocus file found beside the stack, such as " \
           "TS_ctffind4.txt or TS.defocus; give --ctf FILE" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda text: "\n".join(text.splitlines()[:-2]) + "\n",
     "error: TS_ctffind4.txt gives 39 defoci but the stack's metadata lists 41 views"),
    (lambda text: text.rsplit("\n", 2)[0] + "\n41.000000 -100.0 -100.0 0 0 0.05 12.5\n",
     "zero or negative defoci"),
    (lambda text: "\n".join(line if line.startswith("#") else " ".join(
        [line.split()[0], "5.0", "5.0"] + line.split()[3:]) for line in text.splitlines()) + "\n",
     "read as Å (CTFFIND writes defocus 1/2 in Å"),
    (lambda text: text.replace("Pixel size: 5.000", "Pixel size: 1.370"),
     "estimated at 1.37 Å/pixel but the stack has 5 Å/pixel"),
])
def test_bad_ctf_files_are_one_error_line_and_nothing_is_written(tmp_path, sample, capsys, edit,
                                                                  message):
    stack = _files(tmp_path / "in", sample, ctf_files=False)
    path = write_ctffind_txt(tmp_path / "in" / "TS_ctffind4.txt", sample.ctf, PIXEL)
    path.write_text(edit(path.read_text()))
    out = tmp_path / "out"
    rc = _run(stack, "--ctf", path, "--out", out)
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and lines[-1].startswith("error: ") and message in lines[-1], lines
    assert not out.exists() or not any(out.iterdir())
