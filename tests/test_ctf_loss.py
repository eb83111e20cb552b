"""The CTF-aware fit (issue 19, item 3): the envelope against the formula, the loss with it, the
route of the defoci (reconstruct writes <stem>_ctf.json, fit reads it, the checkpoint records
it, resume keeps it) and the error when the defoci are missing."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deepdewedge import cli
from napari_deepdewedge.core.ctf import ViewCTF, constant_ctf, ctf_from_record, ctf_record, \
    tilt_averaged_abs_ctf
from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.fit.ctf_envelope import envelope_grid
from napari_deepdewedge.core.fit.loss import masked_fourier_loss
from napari_deepdewedge.core.fourier import observed_mask, rotated_observed_masks


def _formula_ctf(defocus_um, k, voltage=300.0, cs_mm=2.7, a=0.07):
    """CTF(k) = −(√(1−A²) sin χ + A cos χ), χ = πλΔf k² − ½πCsλ³k⁴ (written out here)."""
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    v = voltage * 1e3
    lam = h / math.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c))) * 1e10
    df, cs = defocus_um * 1e4, cs_mm * 1e7
    chi = math.pi * lam * df * k**2 - 0.5 * math.pi * cs * lam**3 * k**4
    return -(math.sqrt(1 - a * a) * np.sin(chi) + a * np.cos(chi))


K = np.array([0.0, 0.004, 0.013, 0.031, 0.05, 0.077, 0.1])  # 1/Å: DC … Nyquist of 5 Å voxels


def test_envelope_is_the_mean_abs_ctf_over_the_views():
    defoci = np.array([2.3, 2.5, 2.8, 4.9, 5.2])
    ctf = ViewCTF(defoci, defoci.copy(), np.zeros(5), np.zeros(5))
    expected = np.mean([np.abs(_formula_ctf(d, K)) for d in defoci], axis=0)
    got = tilt_averaged_abs_ctf(ctf, K)
    # torch-ctf in float32 on a 4096-sample grid, interpolated: measured ≤ 3e-5 here
    np.testing.assert_allclose(got, expected, atol=2e-4)
    assert got[0] == pytest.approx(0.07, abs=1e-4)  # |CTF(0)| = A


def test_astigmatic_views_are_averaged_over_the_directions():
    ctf = ViewCTF(np.array([5.3]), np.array([4.7]), np.array([30.0]), np.zeros(1))
    phis = (np.arange(8) + 0.5) * np.pi / 8
    d = 5.0 + 0.3 * np.cos(2 * (phis - np.radians(30.0)))
    expected = np.mean([np.abs(_formula_ctf(x, K)) for x in d], axis=0)
    np.testing.assert_allclose(tilt_averaged_abs_ctf(ctf, K), expected, atol=2e-4)
    # and it is not the mean defocus' |CTF| (the test can tell them apart at high k)
    assert np.abs(expected - np.abs(_formula_ctf(5.0, K))).max() > 0.05


def test_envelope_grid_is_radial_in_3d():
    ctf = constant_ctf(3, 5.0)
    n, voxel = 16, 5.0
    g = envelope_grid(ctf, voxel, n, dtype=torch.float64).numpy()
    assert g.shape == (n, n, n // 2 + 1)
    for index in [(0, 0, 0), (0, 0, 3), (3, 0, 0), (0, 3, 0), (5, 11, 4), (8, 8, 8), (2, 14, 7)]:
        k = np.sqrt(sum((np.fft.fftfreq(n)[i] if ax < 2 else np.fft.rfftfreq(n)[i]) ** 2
                        for ax, i in enumerate(index))) / voxel
        # profile sampled at 2048 radii, linear between: measured ≤ 1e-4 at these voxels
        assert g[index] == pytest.approx(abs(_formula_ctf(5.0, k)), abs=5e-4), index
    # a rotation permuting the axes keeps |k|: the envelope is the same at (a, b, c) and (b, c, a)
    assert g[5, 11, 4] == pytest.approx(g[11, 4, 5], abs=1e-12)


def _batch(seed=0, n=12, b=3):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn((b, 1, n, n, n), generator=gen, dtype=torch.float64)
    target = torch.randn((b, 1, n, n, n), generator=gen, dtype=torch.float64)
    m = observed_mask((n, n, n), -60, 60, rfft=True).double()
    from napari_deepdewedge.core.model.rotation import random_rotations

    mr = rotated_observed_masks((n, n, n), -60, 60, random_rotations(b, generator=gen), rfft=True).double()
    return pred, target, m, mr


def test_loss_with_a_unit_envelope_is_the_plain_loss():
    pred, target, m, mr = _batch()
    plain = masked_fourier_loss(pred, target, m, mr, reduction="none")
    ones = masked_fourier_loss(pred, target, m, mr, reduction="none", envelope=torch.ones_like(m))
    # float64; the residual's FFT split in two (F(y) − F(p) instead of F(y − p)): rounding only
    torch.testing.assert_close(ones, plain, rtol=1e-12, atol=0)


def test_loss_vanishes_for_the_ctf_free_prediction():
    """With target = F⁻¹(g·F(v)), the prediction v has zero loss, and the target itself does not."""
    pred, _, m, mr = _batch(1)
    n = pred.shape[-1]
    g = envelope_grid(constant_ctf(2, 2.5), 5.0, n, dtype=torch.float64)
    target = torch.fft.irfftn(g * torch.fft.rfftn(pred, dim=(-3, -2, -1)), s=(n, n, n), dim=(-3, -2, -1))
    assert float(masked_fourier_loss(pred, target, m, mr, envelope=g)) < 1e-25
    assert float(masked_fourier_loss(target, target, m, mr, envelope=g)) > 1e-2


def test_record_round_trip_and_bad_records():
    ctf = ViewCTF(np.array([2.0, 3.0]), np.array([2.1, 3.2]), np.array([10.0, 20.0]), np.zeros(2),
                  voltage=200.0, cs=2.0, amplitude_contrast=0.1)
    back = ctf_from_record(json.loads(json.dumps(ctf_record(ctf))))
    np.testing.assert_allclose(back.defocus_v, [2.1, 3.2])
    assert (back.voltage, back.cs, back.amplitude_contrast) == (200.0, 2.0, 0.1)
    with pytest.raises(DDWError, match="defocus_u_um"):
        ctf_from_record({"defocus": [1.0]})
    with pytest.raises(DDWError, match=r"\(0, 20\] µm"):
        ctf_from_record({"defocus_u_um": [25000.0]})  # Å given as µm


# ------------------------------------------------------------------------------ the command line
PIXEL = 10.0
SHAPE = (16, 48, 48)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from napari_deepdewedge.core.evaluate.ctf_phantom import make_ctf_sample, write_ctffind_txt
    from napari_deepdewedge.core.io.mrc import write_mrc

    folder = tmp_path_factory.mktemp("ctf_loss_in")
    s = make_ctf_sample(SHAPE, (-60, 60, 6), pixel_size=PIXEL, defocus_um=3.0, snr=1.0, seed=3,
                        layer_voxels=16)
    write_mrc(folder / "TS.mrc", s.tilt_series, voxel_size=PIXEL)
    (folder / "TS.tlt").write_text("\n".join(f"{a:.2f}" for a in s.angles) + "\n")
    write_ctffind_txt(folder / "TS_ctffind4.txt", s.ctf, PIXEL)
    return folder / "TS.mrc", s


def _reconstruct(stack_path, out, *extra):
    return cli.main(["reconstruct", str(stack_path), "--thickness", str(SHAPE[0]), "--device", "cpu",
                     "--out", str(out), *map(str, extra)])


FIT = ["--subtomo-size", "8", "--channels", "4", "--depth", "1", "--batch-size", "4",
       "--signal-every", "0", "--val-fraction", "0.2", "--device", "cpu", "--tilt-range", "-60", "60"]


def _fit(halves: Path, out: Path, *extra):
    return cli.main(["fit", "--even", str(halves / "TS_even.mrc"), "--odd", str(halves / "TS_odd.mrc"),
                     "--out", str(out), *FIT, *map(str, extra)])


def test_fit_with_the_ctf_loss_end_to_end_and_its_checkpoint(tmp_path, stack, capsys):
    stack_path, sample = stack
    assert _reconstruct(stack_path, tmp_path / "h") == 0
    sidecar = json.loads((tmp_path / "h" / "TS_ctf.json").read_text())
    assert sidecar["phase_flipped"] is True and sidecar["pixel_size"] == PIXEL
    odd = np.asarray(sidecar["odd"]["defocus_u_um"])
    assert odd.size + len(sidecar["even"]["defocus_u_um"]) == sample.angles.size
    # the odd views (parity of the angle-sorted index) and their true defoci
    np.testing.assert_allclose(np.sort(odd), np.sort(sample.ctf.defocus_u[1::2]), atol=1e-4)
    assert _fit(tmp_path / "h", tmp_path / "m", "--epochs", "2", "--ctf-loss") == 0, capsys.readouterr().err
    payload = torch.load(tmp_path / "m" / "latest.pt", weights_only=True)
    assert payload["config"]["ctf_loss"] is True
    assert payload["inputs"][0]["ctf"]["odd"]["defocus_u_um"] == sidecar["odd"]["defocus_u_um"]
    # resume keeps the loss: asking for the plain loss is refused, continuing works
    capsys.readouterr()
    assert _fit(tmp_path / "h", tmp_path / "m", "--epochs", "3", "--no-ctf-loss",
                "--resume", tmp_path / "m" / "latest.pt") == 2
    assert "ctf_loss=True" in capsys.readouterr().err
    assert _fit(tmp_path / "h", tmp_path / "m", "--epochs", "3", "--resume", tmp_path / "m" / "latest.pt") == 0
    assert torch.load(tmp_path / "m" / "latest.pt", weights_only=True)["config"]["ctf_loss"] is True


def test_ctf_loss_without_defoci_is_one_error_line(tmp_path, stack, capsys):
    stack_path, _ = stack
    assert _reconstruct(stack_path, tmp_path / "h", "--no-ctf") == 0
    assert not (tmp_path / "h" / "TS_ctf.json").exists()  # not phase flipped: no record
    capsys.readouterr()
    assert _fit(tmp_path / "h", tmp_path / "m", "--epochs", "1", "--ctf-loss") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--ctf-loss" in err and "reconstruct TS.mrc --ctf FILE" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()  # refused before the fit's folder is made


def test_a_ctf_record_of_other_halves_is_refused(tmp_path, stack, capsys):
    stack_path, _ = stack
    assert _reconstruct(stack_path, tmp_path / "h") == 0
    record = json.loads((tmp_path / "h" / "TS_ctf.json").read_text())
    record["pixel_size"] = 2 * PIXEL
    (tmp_path / "h" / "TS_ctf.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert _fit(tmp_path / "h", tmp_path / "m", "--epochs", "1", "--ctf-loss") == 2
    err = capsys.readouterr().err
    assert "belongs to other halves" in err and "20 Å" in err


def test_run_with_the_ctf_loss_needs_the_defoci(tmp_path, stack, capsys):
    from napari_deepdewedge.core.io.mrc import write_mrc

    stack_path, sample = stack
    bare = tmp_path / "bare"  # a stack without a defocus file beside it
    bare.mkdir()
    write_mrc(bare / "TS.mrc", sample.tilt_series, voxel_size=PIXEL)
    fit = [a for a in FIT if a not in ("--tilt-range", "-60", "60")]
    for stack_file, extra, expected in ((stack_path, ["--no-ctf"], "drop --no-ctf"),
                                        (bare / "TS.mrc", [], "give --ctf FILE")):
        capsys.readouterr()
        rc = cli.main(["run", str(stack_file), "--angles", str(stack_path.with_suffix(".tlt")),
                       "--thickness", str(SHAPE[0]), "--out", str(tmp_path / "o"), *fit,
                       "--epochs", "1", "--ctf-loss", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.splitlines()[-1].startswith("error: ") and expected in err, err
        assert not (tmp_path / "o").exists()  # refused before anything is written


def test_a_project_fits_with_the_ctf_loss_from_each_stacks_record(tmp_path, stack, capsys):
    import shutil

    from napari_deepdewedge.core.io.mrc import write_mrc

    stack_path, sample = stack
    project_in = tmp_path / "in"
    project_in.mkdir()
    for f in stack_path.parent.iterdir():  # TS: its angles and its CTFFIND file beside it
        shutil.copy(f, project_in / f.name)
    fit = [a for a in FIT if a not in ("--tilt-range", "-60", "60")]
    run = ["run", str(project_in), "--thickness", str(SHAPE[0]), "--out", str(tmp_path / "p"),
           *fit, "--epochs", "1", "--ctf-loss"]
    assert cli.main(run) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "p" / "TS_ctf.json").read_text())
    payload = torch.load(tmp_path / "p" / "model" / "latest.pt", weights_only=True)
    assert payload["config"]["ctf_loss"] is True
    assert payload["inputs"][0]["ctf"]["odd"]["defocus_u_um"] == record["odd"]["defocus_u_um"]
    np.testing.assert_allclose(np.sort(record["odd"]["defocus_u_um"]),
                               np.sort(sample.ctf.defocus_u[1::2]), atol=1e-4)
    # a second stack without a defocus file: the fit names it, after its halves are kept
    write_mrc(project_in / "TS2.mrc", sample.tilt_series, voxel_size=PIXEL)
    shutil.copy(stack_path.with_suffix(".tlt"), project_in / "TS2.tlt")
    capsys.readouterr()
    rc = cli.main(run[:4] + ["--out", str(tmp_path / "q")] + run[6:])
    err = capsys.readouterr().err
    assert rc == 2 and err.splitlines()[-1].startswith("error: ") and "TS2 was reconstructed" in err, err
    assert "Traceback" not in err
    # and --no-ctf with --ctf-loss is refused before anything is written
    rc = cli.main(run[:4] + ["--out", str(tmp_path / "r")] + run[6:] + ["--no-ctf"])
    assert rc == 2 and "drop --no-ctf" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
