"""The Fit dock fits on several tomograms (issue 9 item 6): the picked layer pair plus files from
a glob or a pair list, each with its own tilt range, recorded in the checkpoint; a resume with
other tomograms is refused naming the difference; the dock's request equals the CLI's.

    xvfb-run -a python -m pytest tests/test_widgets_fit_pairs.py -q
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("napari")

pytestmark = pytest.mark.gui
sys.path.insert(0, str(Path(__file__).parent))
from gui_probe import set_tiny_fit  # noqa: E402

WAIT_MS = 300_000
VOXEL = 8.0
SHAPES = {"T0": (24, 32, 32), "T1": (24, 32, 40), "T2": (24, 32, 32)}  # T1: another shape is fine
T2_RANGE = (-50.0, 55.0)  # from T2.tlt beside T2's halves; the others take the dock's range
DOCK_RANGE = (-60.0, 60.0)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """rec/T{0,1,2}_{even,odd}.mrc (8 Å) and rec/T2.tlt."""
    from napari_deepdewedge.core.io.mrc import write_mrc

    folder = tmp_path_factory.mktemp("fitpairs") / "rec"
    rng = np.random.default_rng(4)
    for name, shape in SHAPES.items():
        signal = rng.standard_normal(shape).astype(np.float32)
        for half in ("even", "odd"):
            write_mrc(folder / f"{name}_{half}.mrc",
                      signal + 0.5 * rng.standard_normal(shape).astype(np.float32), VOXEL)
    (folder / "T2.tlt").write_text("".join(f"{a:g}\n" for a in np.linspace(*T2_RANGE, 8)))
    return folder


class Notes:
    """napari notifications of one severity emitted since creation."""

    def __init__(self):
        from napari.utils.notifications import notification_manager

        self.manager = notification_manager
        self.start = len(notification_manager.records)

    def of(self, severity: str) -> list[str]:
        return [str(n.message) for n in self.manager.records[self.start:]
                if str(n.severity).lower().endswith(severity)]


def _fit_dock(make_napari_viewer, rec, out_dir, *, epochs=1):
    """The Fit dock with T0 opened from its files as the picked pair and tiny settings."""
    from napari_deepdewedge.widgets import FitWidget

    viewer = make_napari_viewer()
    for half in ("even", "odd"):
        viewer.open(str(rec / f"T0_{half}.mrc"), plugin="napari-deepdewedge")
    fit = FitWidget(viewer)
    fit.even.set_layer_name("T0_even")
    fit.odd.set_layer_name("T0_odd")
    fit.tilt_min.setValue(DOCK_RANGE[0])
    fit.tilt_max.setValue(DOCK_RANGE[1])
    set_tiny_fit(fit, out_dir, epochs)
    fit.update_every.setValue(0)
    fit.preview_every.setValue(0)
    fit.val_fraction.setValue(0.0)
    return fit


def _record_status(fit) -> list[str]:
    """Every text the status line shows from now on."""
    shown: list[str] = []
    set_text = fit.status.setText

    def record(text):
        shown.append(text)
        set_text(text)

    fit.status.setText = record
    return shown


def test_fits_on_the_layer_pair_and_a_glob_each_with_its_own_tilt_range(make_napari_viewer, qtbot,
                                                                         rec, tmp_path):
    from napari_deepdewedge.core.model.checkpoint import load_checkpoint

    fit = _fit_dock(make_napari_viewer, rec, tmp_path / "run")
    fit.more_pairs.edit.setText(str(rec / "*_even.mrc"))  # matches T0 too: it is the picked pair
    fit.more_pairs.refresh()
    assert fit.more_pairs.found.text() == ("2 more tomograms: T1, T2 (T0, the pair picked above, "
                                           "is fitted once)")
    shown = _record_status(fit)
    notes = Notes()
    assert fit.start()
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    assert not notes.of("error"), notes.of("error")
    assert not notes.of("warning"), notes.of("warning")  # one voxel size throughout
    assert fit.finished is not None and not fit.finished.stopped, fit.status.text()

    inputs = load_checkpoint(tmp_path / "run" / "latest.pt")["inputs"]
    assert [rec_["name"] for rec_ in inputs] == ["T0", "T1", "T2"]
    assert [tuple(rec_["tilt_range"]) for rec_ in inputs] == [DOCK_RANGE, DOCK_RANGE, T2_RANGE]
    assert [tuple(rec_["shape"]) for rec_ in inputs] == [SHAPES["T0"], SHAPES["T1"], SHAPES["T2"]]
    assert inputs[2]["even_path"] == str(rec / "T2_even.mrc")
    assert inputs[2]["odd_path"] == str(rec / "T2_odd.mrc")
    # the status line named the tomograms with the memory estimate, then their cubes
    preparing = [t for t in shown if t.startswith("Preparing sub-tomograms of 3 tomograms")]
    assert len(preparing) == 1 and "(T0, T1, T2)" in preparing[0], shown
    assert "cube memory: ≤" in preparing[0]
    started = [t for t in shown if "training +" in t]
    assert len(started) == 1 and started[0].startswith("3 tomograms (T0, T1, T2): "), shown

    # resume with other tomograms: refused, naming the difference; with the same: continues
    fit.epochs.setValue(2)
    fit.more_pairs.edit.setText(str(rec / "T1_even.mrc"))
    notes = Notes()
    assert fit.resume(str(tmp_path / "run" / "latest.pt"))
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    errors = notes.of("error")
    assert len(errors) == 1, errors
    assert "fitted on 3 half pairs (T0, T1, T2) but this run has 2 (T0, T1)" in errors[0]
    assert fit.finished is None

    fit.more_pairs.edit.setText(str(rec / "*_even.mrc"))
    notes = Notes()
    assert fit.resume(str(tmp_path / "run" / "latest.pt"))
    qtbot.waitUntil(lambda: not fit.busy, timeout=WAIT_MS)
    assert not notes.of("error"), notes.of("error")
    assert fit.finished is not None and fit.finished.epochs_done == 2


def test_resume_with_another_tomogram_of_the_same_shape_is_refused(tmp_path, rec):
    """The engine's check compares names too (T2 given where the checkpoint had T0)."""
    from napari_deepdewedge.core.errors import CheckpointError
    from napari_deepdewedge.core.fit.resume import check_resume_inputs

    def record(name, shape=(24, 32, 32), tilt=(-60.0, 60.0)):
        return {"name": name, "shape": list(shape), "tilt_range": list(tilt)}

    payload = {"inputs": [record("T0"), record("T1", SHAPES["T1"])]}
    check_resume_inputs(payload, [record("T0"), record("T1", SHAPES["T1"])])
    with pytest.raises(CheckpointError, match="pair 1 is T2 but the checkpoint's pair 1 is T0"):
        check_resume_inputs(payload, [record("T2"), record("T1", SHAPES["T1"])])
    with pytest.raises(CheckpointError, match=r"pair 2 \(T1\) has tilt_range"):
        check_resume_inputs(payload, [record("T0"), record("T1", SHAPES["T1"], (-50.0, 55.0))])
    with pytest.raises(CheckpointError, match=r"pair 2 \(T1\) has shape"):
        check_resume_inputs(payload, [record("T0"), record("T1")])
    check_resume_inputs({"inputs": [record("")]}, [record("T0")])  # no name recorded: not compared


def test_bad_glob_is_one_notification_and_starts_nothing(make_napari_viewer, rec, tmp_path):
    fit = _fit_dock(make_napari_viewer, rec, tmp_path / "run")
    fit.more_pairs.edit.setText(str(rec / "*_none.mrc"))
    fit.more_pairs.refresh()
    assert fit.more_pairs.found.text().startswith("⚠ no file matches")
    notes = Notes()
    assert fit.start() is False
    errors = notes.of("error")
    assert len(errors) == 1 and "no file matches" in errors[0], errors
    assert not fit.busy and not fit._jobs
    assert not (tmp_path / "run").exists()


def test_a_missing_partner_is_named_in_the_row(make_napari_viewer, rec, tmp_path):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "T9_even.mrc").write_bytes((rec / "T0_even.mrc").read_bytes())
    fit = _fit_dock(make_napari_viewer, rec, tmp_path / "run")
    fit.more_pairs.edit.setText(str(lonely / "*_even.mrc"))
    fit.more_pairs.refresh()
    assert "T9_even.mrc: no odd partner found" in fit.more_pairs.found.text()
    fit.more_pairs.edit.setText(str(rec / "T1_even.mrc"))
    fit.more_pairs.refresh()
    assert fit.more_pairs.found.text() == "1 more tomogram: T1"
    fit.more_pairs.edit.setText("")
    fit.more_pairs.refresh()
    assert fit.more_pairs.found.text() == ""


def _request_inputs(fit) -> dict:
    """The dock's job inputs as ``fit_request`` takes them: ``size_typed`` is the job's (the
    preset size is fitted in the job), not the request's."""
    inputs = fit.job_inputs()
    inputs.pop("size_typed")
    return inputs


def _cli_request(argv, out):
    from napari_deepdewedge import cli
    from napari_deepdewedge.cli.commands import fit_request

    args = cli.build_parser().parse_args(argv)
    args.argv = argv
    cli.apply_config(args)
    return fit_request(args, out)


@pytest.mark.parametrize("given", ["glob", "list"])
def test_the_docks_request_equals_the_clis(make_napari_viewer, rec, tmp_path, given):
    from napari_deepdewedge.widgets._fit_pairs import fit_request

    pair_list = tmp_path / "pairs.txt"
    pair_list.write_text(f"{rec / 'T0_even.mrc'} {rec / 'T0_odd.mrc'} -60,60\n"
                         f"{rec / 'T1_even.mrc'} {rec / 'T1_odd.mrc'} -60,60\n"
                         f"{rec / 'T2_even.mrc'}   # partner by the stem, range from T2.tlt\n")
    cli = _cli_request(["fit", "--pairs", str(pair_list), "--out", str(tmp_path / "cli"),
                        "--subtomo-size", "16", "--channels", "4", "--depth", "2", "--device",
                        "cpu"], tmp_path / "cli")
    fit = _fit_dock(make_napari_viewer, rec, tmp_path / "dock")
    fit.more_pairs.edit.setText(str(rec / "*_even.mrc") if given == "glob" else str(pair_list))
    dock = fit_request(**_request_inputs(fit))

    def summary(request):
        return [(p.name, tuple(p.tilt_range), tuple(np.shape(p.even)), tuple(np.shape(p.odd)),
                 tuple(p.voxel_size), p.even_path, p.odd_path) for p in request.pairs]

    assert summary(dock) == summary(cli)
    assert [p.name for p in dock.pairs] == ["T0", "T1", "T2"]
    assert dock.pairs[2].tilt_range == T2_RANGE
    for p, q in zip(dock.pairs, cli.pairs):
        assert np.array_equal(p.even, q.even) and np.array_equal(p.odd, q.odd)


def test_a_voxel_size_10_percent_off_is_a_warning_naming_both(make_napari_viewer, rec, tmp_path):
    from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc
    from napari_deepdewedge.widgets._fit_pairs import fit_request, pairs_message

    other = tmp_path / "other"
    for half in ("even", "odd"):
        write_mrc(other / f"B1_{half}.mrc", read_mrc(rec / f"T1_{half}.mrc", mmap=False).data,
                  VOXEL * 1.2)
        write_mrc(other / f"B2_{half}.mrc", read_mrc(rec / f"T2_{half}.mrc", mmap=False).data,
                  VOXEL * 1.05)  # within 10 %: no warning
    fit = _fit_dock(make_napari_viewer, rec, tmp_path / "run")
    fit.more_pairs.edit.setText(str(other / "*_even.mrc"))
    request = fit_request(**_request_inputs(fit))
    notes = Notes()
    fit._on_event(pairs_message(request, request.planned_config()))
    warnings = notes.of("warning")
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("B1: voxel size 9.6×9.6×9.6 Å") and "T0's 8×8×8 Å" in warnings[0]


def _request_inputs(fit) -> dict:
    """The dock's job inputs less what only the job uses (``size_typed``: the job fits a preset's
    sub-tomogram size to the halves before building the request)."""
    inputs = fit.job_inputs()
    inputs.pop("size_typed")
    return inputs
