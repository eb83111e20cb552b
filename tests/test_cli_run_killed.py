"""`deepdewedge run` on one tilt series killed (issue 12): rerunning the same command refuses with
the exact `--resume` command, and that command finishes the job.

Killed after its fit (here: while the refined set is being written) the printed command must
refine without fitting again; killed mid-fit it must continue the fit and end with the same
weights as an uninterrupted run. The kill is injected in-process: an exception no handler of
the command line catches (as SIGKILL, nothing after that point runs).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import PIXEL, TINY_FIT, _stack, _write_tlt  # noqa: E402

from napari_deepdewedge import cli  # noqa: E402
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc  # noqa: E402

REFINED = ("TS_refined.mrc", "TS_refined_half0.mrc", "TS_refined_half1.mrc",
           "TS_refined_consistency.mrc")


class Killed(BaseException):
    """The process dies here: cli.main handles DDWError, OSError and Ctrl-C, not this."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def stack(tmp_path):
    path = write_mrc(tmp_path / "TS.st", _stack(n_tilts=21, ny=32, nx=32, seed=4), PIXEL)
    _write_tlt(tmp_path / "TS.rawtlt", np.arange(-60, 61, 6.0))
    return path


def run_args(stack, out, epochs):
    return ["run", str(stack), "--thickness", "24", "--out", str(out), *TINY_FIT,
            "--epochs", str(epochs)]


def one_error_line(capsys, rc, *fragments) -> str:
    """Exit 2 with exactly one ``error:`` line holding every fragment (not quiet: info lines
    such as the angles read may come before it), and no traceback."""
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def printed_resume_command(capsys, rc, checkpoint) -> list[str]:
    """The arguments of the command a refused rerun prints (``… --resume CHECKPOINT``)."""
    line = one_error_line(capsys, rc, f"--resume {checkpoint}", "--overwrite")
    command = shlex.split(line.split("run: ", 1)[1].split(" ; or", 1)[0])
    assert command[0] == "deepdewedge"
    return command[1:]


def volume(path) -> np.ndarray:
    return np.array(read_mrc(path, mmap=False).data)


def weights(checkpoint):
    import torch

    return torch.load(checkpoint, weights_only=True)["state_dict"]


def test_run_killed_after_its_fit_finishes_with_the_printed_command_without_refitting(
        stack, tmp_path, monkeypatch, capsys):
    from napari_deepdewedge.core.io import mrc as io

    out = tmp_path / "job"
    model = out / "model"
    args = run_args(stack, out, epochs=2)
    real_write = io.write_mrc

    def killed_at_the_main_refined_file(path, *a, **kw):
        if Path(path).name == "TS_refined.mrc":  # written last: the per-half files are there
            raise Killed
        return real_write(path, *a, **kw)

    monkeypatch.setattr(io, "write_mrc", killed_at_the_main_refined_file)
    with pytest.raises(Killed):
        cli.main(args)
    monkeypatch.setattr(io, "write_mrc", real_write)
    assert sorted(p.name for p in out.glob("TS_refined*.mrc")) == sorted(REFINED[1:])
    fit_files = {p.name: p.stat().st_mtime_ns for p in model.iterdir()}
    losses = (model / "losses.csv").read_text()
    halves = {name: volume(out / name) for name in ("TS_even.mrc", "TS_odd.mrc")}
    capsys.readouterr()

    rc = cli.main(args)  # the same command: refused, naming the command that finishes the job
    command = printed_resume_command(capsys, rc, model / "latest.pt")
    assert not (out / "TS_refined.mrc").exists()

    rc = cli.main(command)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"fit already finished (2 epochs): refining with {model / 'best.pt'}" in err
    assert "fit epoch" not in err  # no fitting progress: nothing was fitted
    # not refitted: no checkpoint or loss log written again, and no new files
    assert {p.name: p.stat().st_mtime_ns for p in model.iterdir()} == fit_files
    assert (model / "losses.csv").read_text() == losses
    from napari_deepdewedge.core.model.checkpoint import load_checkpoint

    assert load_checkpoint(model / "latest.pt")["epoch"] == 2
    # the halves were reconstructed again into the same files, to the same voxels
    for name, before in halves.items():
        np.testing.assert_array_equal(volume(out / name), before)
    for name in REFINED:
        assert volume(out / name).shape == (24, 32, 32), name
    # the refined tomogram is best.pt's: the same as `refine` with it
    reference = tmp_path / "reference" / "TS_refined.mrc"
    assert cli.main(["refine", "--even", str(out / "TS_even.mrc"), "--odd", str(out / "TS_odd.mrc"),
                     "--model", str(model / "best.pt"), "--out", str(reference), "--device", "cpu",
                     "-q"]) == 0
    np.testing.assert_allclose(volume(out / "TS_refined.mrc"), volume(reference), rtol=0, atol=1e-6)

    # once finished, the same command refuses (the result exists) ...
    capsys.readouterr()
    one_error_line(capsys, cli.main(args), "TS_refined.mrc", "--overwrite")
    # ... and `fit --resume` of that finished checkpoint stays strict: raise epochs to continue
    rc = cli.main(["fit", "--even", str(out / "TS_even.mrc"), "--odd", str(out / "TS_odd.mrc"),
                   "--tilt-range", "-60", "60", "--out", str(model), *TINY_FIT, "--epochs", "2",
                   "--resume", str(model / "latest.pt")])
    one_error_line(capsys, rc, "already done 2 epochs", "raise epochs")


def test_run_resume_refuses_a_finished_checkpoint_of_other_tomograms(stack, tmp_path, capsys):
    """Skipping the fit never takes another job's model silently."""
    out = tmp_path / "job"
    assert cli.main(run_args(stack, out, epochs=1) + ["-q"]) == 0
    other = write_mrc(tmp_path / "other" / "TS.st", _stack(n_tilts=21, ny=32, nx=40, seed=5), PIXEL)
    _write_tlt(other.with_suffix(".rawtlt"), np.arange(-60, 61, 6.0))
    capsys.readouterr()
    rc = cli.main(run_args(other, tmp_path / "job2", epochs=1)
                  + ["--resume", str(out / "model" / "latest.pt")])
    one_error_line(capsys, rc, "shape", "same tomograms")
    assert not (tmp_path / "job2" / "TS_refined.mrc").exists()


def test_run_killed_mid_fit_continues_with_the_printed_command_to_the_same_weights(
        stack, tmp_path, monkeypatch, capsys):
    from napari_deepdewedge.core.fit import loop as fitting

    reference = tmp_path / "reference"
    assert cli.main(run_args(stack, reference, epochs=3) + ["-q"]) == 0

    real_fit_iter = fitting.fit_iter

    def killed_after_epoch_1(*a, **kw):
        for event in real_fit_iter(*a, **kw):
            yield event
            if type(event).__name__ == "CheckpointSaved" and event.kind == "latest":
                raise Killed  # latest.pt of epoch 1 is on disk, epoch 2 is under way

    out = tmp_path / "job"
    args = run_args(stack, out, epochs=3)
    monkeypatch.setattr(fitting, "fit_iter", killed_after_epoch_1)
    with pytest.raises(Killed):
        cli.main(args)
    monkeypatch.setattr(fitting, "fit_iter", real_fit_iter)
    assert not list(out.glob("TS_refined*.mrc"))
    capsys.readouterr()

    rc = cli.main(args)
    command = printed_resume_command(capsys, rc, out / "model" / "latest.pt")
    rc = cli.main(command)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("fit epoch")] == \
        ["fit epoch 2/3", "fit epoch 3/3"]  # continued, not restarted
    epochs = [row.split(",")[0] for row in (out / "model" / "losses.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]
    for name, tensor in weights(reference / "model" / "latest.pt").items():
        assert (weights(out / "model" / "latest.pt")[name] == tensor).all(), name
    np.testing.assert_array_equal(volume(out / "TS_refined.mrc"), volume(reference / "TS_refined.mrc"))
