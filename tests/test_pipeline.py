"""The pipeline layer: one stem function, one thickness meaning, one set of refined names, one
resume rule, no surprise overwrites (known answers, no GUI, no CLI)."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest

from napari_deepdewedge.core.errors import CheckpointError, DDWError
from napari_deepdewedge.core.io.mrc import TiltSeries, read_mrc
from napari_deepdewedge.pipeline import (
    HalvesRequest,
    OutputExists,
    common_stem,
    plan_fit,
    reconstruct_halves,
    refuse_earlier_fit,
    stem_of,
    write_halves,
    write_refined,
)


# --------------------------------------------------------------------------------------------
# names

@pytest.mark.parametrize("name, stem", [
    ("TS_01.mrc", "TS_01"),
    ("/data/run1/TS_01.st", "TS_01"),
    ("TS_01.ALI", "TS_01"),
    ("TS_01_EVN.mrc", "TS_01"),
    ("TS_01_ODD.mrcs", "TS_01"),
    ("TS_01.even.rec", "TS_01"),
    ("TS_01-odd.map", "TS_01"),
    ("TS_01_Even", "TS_01"),
    ("tomo_odd", "tomo"),
    ("tomo.tif", "tomo.tif"),          # not an MRC-family extension: kept
    ("TS_evnt.mrc", "TS_evnt"),        # not a parity tag
    ("phantom tilt series", "phantom tilt series"),
    ("_EVN.mrc", "_EVN"),              # would be empty: only the extension goes
    ("a/b/TS_ODD.ODD.mrc", "TS_ODD"),  # one tag only
])
def test_stem_of_table(name, stem):
    assert stem_of(name) == stem
    assert stem_of(Path(name)) == stem


def test_common_stem():
    assert common_stem("x/TS_01_EVN.mrc", "x/TS_01_ODD.mrc") == "TS_01"
    assert common_stem("TS_01.even.mrc", "TS_01.odd.mrc") == "TS_01"
    assert common_stem("TS_01_a.mrc", "TS_01_b.mrc") == "TS_01"
    assert common_stem("alpha.mrc", "beta.mrc") == "alpha"


# --------------------------------------------------------------------------------------------
# halves

def _series(n=12, ny=16, nx=20, seed=0, name="TS_07.st", pixel=4.0):
    rng = np.random.default_rng(seed)
    return TiltSeries(data=rng.standard_normal((n, ny, nx)).astype(np.float32),
                      angles=np.linspace(-55.0, 55.0, n), pixel_size=pixel, name=name,
                      origin=(0.0, 3.0, 5.0))


def test_thickness_is_in_binned_voxels_and_progress_covers_every_reconstruction():
    calls = []
    halves = reconstruct_halves(
        HalvesRequest(series=_series(), thickness=10, binning=2, want_full=True, device="cpu"),
        progress=lambda done, total: calls.append((done, total)))
    assert halves.even.shape == halves.odd.shape == halves.full.shape == (10, 8, 10)
    assert halves.voxel_size == (8.0, 8.0, 8.0)
    assert halves.origin == (0.0, 3.0, 5.0)
    assert halves.tilt_range == (-55.0, 55.0)
    assert halves.stem == "TS_07"
    assert not np.allclose(halves.even, halves.odd)
    totals = {total for _, total in calls}
    assert totals == {3000}  # three reconstructions in one progress
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == 3000


def test_frame_halves_full_is_the_mean_and_cancel_propagates():
    evn, odd = _series(seed=1, name="TS_02_EVN"), _series(seed=2, name="TS_02_ODD")
    halves = reconstruct_halves(HalvesRequest(frame_halves=(evn, odd), thickness=6,
                                              want_full=True, device="cpu"))
    assert halves.stem == "TS_02"
    assert halves.even.shape == (6, 16, 20)
    np.testing.assert_allclose(halves.full, 0.5 * (halves.even + halves.odd), atol=1e-6)

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        reconstruct_halves(HalvesRequest(series=_series(), thickness=4, device="cpu"), progress=cancel)
    with pytest.raises(DDWError, match="not both or neither"):
        reconstruct_halves(HalvesRequest(thickness=4))
    with pytest.raises(DDWError, match="binned"):
        reconstruct_halves(HalvesRequest(series=_series(), thickness=0))


def test_write_halves_names_and_overwrite_refusal(tmp_path):
    halves = reconstruct_halves(HalvesRequest(series=_series(), thickness=4, device="cpu"))
    paths = write_halves(tmp_path, "TS_07", halves)
    assert [p.name for p in paths] == ["TS_07_even.mrc", "TS_07_odd.mrc"]
    vol = read_mrc(paths[0], mmap=False)
    np.testing.assert_array_equal(vol.data, halves.even)
    assert np.allclose(vol.voxel_size, (4.0, 4.0, 4.0))
    # a second write is refused and names the file; nothing is touched
    before = paths[1].stat().st_mtime_ns
    with pytest.raises(OutputExists, match="TS_07_even.mrc.*--overwrite") as info:
        write_halves(tmp_path, "TS_07", halves)
    assert isinstance(info.value, DDWError)
    assert paths[1].stat().st_mtime_ns == before
    # only the odd file exists: the even one is not written either
    paths[0].unlink()
    with pytest.raises(OutputExists, match="TS_07_odd.mrc"):
        write_halves(tmp_path, "TS_07", halves)
    assert not paths[0].exists()
    assert len(write_halves(tmp_path, "TS_07", halves, overwrite=True)) == 2


# --------------------------------------------------------------------------------------------
# refined outputs

def test_write_refined_names_and_signed_consistency(tmp_path):
    from napari_deepdewedge.core.refine.tomogram import RefineResult

    half0 = np.full((4, 5, 6), 1.0, np.float32)
    half1 = np.full((4, 5, 6), 3.0, np.float32)
    half1[0] = -1.0
    result = RefineResult(refined=(half0 + half1) / 2, half0=half0, half1=half1, difference=half0 - half1)
    paths = write_refined(tmp_path / "out" / "TS_refined.mrc", result, (7.0, 7.0, 7.0))
    assert [p.name for p in paths] == ["TS_refined.mrc", "TS_refined_half0.mrc",
                                       "TS_refined_half1.mrc", "TS_refined_consistency.mrc"]
    consistency = read_mrc(paths[3], mmap=False).data
    assert consistency[1:].max() == consistency[1:].min() == -2.0  # half0 − half1, signed
    assert consistency[0].min() == 2.0
    assert np.allclose(read_mrc(paths[0], mmap=False).voxel_size, 7.0)
    with pytest.raises(OutputExists, match="TS_refined.mrc"):
        write_refined(tmp_path / "out" / "TS_refined.mrc", result, (7.0, 7.0, 7.0))
    # without per-half results only OUT.mrc; a name without .mrc gets it
    only = write_refined(tmp_path / "b" / "tomo", RefineResult(refined=half0), 1.0)
    assert [p.name for p in only] == ["tomo.mrc"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["tomo.mrc"]


# --------------------------------------------------------------------------------------------
# resume rule

def _payload(config, epoch=3):
    return {"format": "napari-deepdewedge-checkpoint", "version": 1, "arch": {}, "state_dict": {},
            "subtomo_size": config.subtomo_size, "tilt_min": config.tilt_min,
            "tilt_max": config.tilt_max, "epoch": epoch, "step": 0, "optimizer": {}, "rng": {},
            "fit0": None, "config": config.to_dict(), "history": [], "best_val_loss": None,
            "standardization": None}


def test_resume_rule_tables_cover_every_fit_setting_once():
    from napari_deepdewedge.core.fit.config import FitConfig
    from napari_deepdewedge.core.fit.resume import RESUME_CHANGEABLE, RESUME_FIXED

    fields = {f.name for f in dataclasses.fields(FitConfig)}
    assert set(RESUME_FIXED) | set(RESUME_CHANGEABLE) == fields
    assert not set(RESUME_FIXED) & set(RESUME_CHANGEABLE)
    assert {"wedge_weight", "voxel_size"} <= set(RESUME_FIXED)


def test_plan_fit_refuses_and_accepts_per_the_rule():
    from napari_deepdewedge.core.fit.config import FitConfig

    saved = FitConfig(subtomo_size=16, channels=4, depth=2, epochs=3, voxel_size=(8.0, 8.0, 8.0),
                      wedge_weight=2.0, lr=1e-3)
    payload = _payload(saved, epoch=3)
    more = dataclasses.replace(saved, epochs=6)
    assert plan_fit(more, None) == more
    # changeable settings: the request's values
    planned = plan_fit(dataclasses.replace(more, lr=5e-4, update_every=2, device="cpu",
                                           out_dir="elsewhere"), payload)
    assert (planned.lr, planned.update_every, planned.device, planned.out_dir) == (5e-4, 2, "cpu", "elsewhere")
    assert planned.epochs == 6
    # fixed settings asked for explicitly (given=None: all) must match
    for change in (dict(channels=8), dict(wedge_weight=3.0), dict(voxel_size=(4.0, 4.0, 4.0)),
                   dict(tilt_min=-50.0), dict(seed=1), dict(batch_size=2)):
        key = next(iter(change))
        with pytest.raises(CheckpointError, match=f"{key}="):
            plan_fit(dataclasses.replace(more, **change), payload)
        # ... and come from the checkpoint when the caller did not ask for them
        planned = plan_fit(dataclasses.replace(more, **change), payload, given={"epochs", "lr"})
        assert getattr(planned, key) == getattr(saved, key)
    # a fixed setting named in given is compared even then
    with pytest.raises(CheckpointError, match="channels=4"):
        plan_fit(dataclasses.replace(more, channels=8), payload, given={"channels"})
    # an older checkpoint without 'residual' in its config: the network's arch tells
    older = dict(payload, config={k: v for k, v in payload["config"].items() if k != "residual"},
                 arch={"residual": True})
    assert plan_fit(more, older, given={"epochs"}).residual is True
    with pytest.raises(CheckpointError, match="residual=True"):
        plan_fit(more, older)
    # epochs must go beyond what the checkpoint has done
    with pytest.raises(CheckpointError, match="raise epochs above 3"):
        plan_fit(saved, payload)


def test_new_fit_into_a_folder_with_checkpoints_is_refused(tmp_path):
    refuse_earlier_fit(tmp_path / "absent")  # nothing there: fine
    (tmp_path / "losses.csv").write_text("epoch\n")
    refuse_earlier_fit(tmp_path)  # a CSV alone is not a fit
    latest = tmp_path / "latest.pt"
    latest.write_bytes(b"x")
    with pytest.raises(OutputExists, match="latest.pt") as info:
        refuse_earlier_fit(tmp_path)
    assert info.value.resume_from == latest
    stopped = tmp_path / "stopped.pt"
    stopped.write_bytes(b"x")
    later = time.time() + 5
    os.utime(stopped, (later, later))
    with pytest.raises(OutputExists) as info:
        refuse_earlier_fit(tmp_path)
    assert info.value.resume_from == stopped  # the interrupted fit continues exactly from it
    refuse_earlier_fit(tmp_path, resume=latest)
    refuse_earlier_fit(tmp_path, overwrite=True)


# --------------------------------------------------------------------------------------------
# fitting and refinement jobs on a tiny pair

_spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).with_name("ddp_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


@pytest.fixture(scope="module")
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_fit_events_resume_inherits_unset_fixed_settings_then_refine(tmp_path, one_thread):
    from napari_deepdewedge.core.fit.loop import EpochDone, FitEvent, FitFinished, FitStarted
    from napari_deepdewedge.pipeline import FitRequest, FitResumed, RefineRequest, fit_events, refine

    t0, t1 = worker.tiny_halves()
    first = worker.tiny_config(tmp_path / "m", epochs=1)
    events = list(fit_events(FitRequest(even=t0, odd=t1, config=first)))
    assert all(isinstance(e, FitEvent) for e in events)
    assert isinstance(events[0], FitStarted) and isinstance(events[-1], FitFinished)
    # a request that leaves channels/seed unset (given = epochs only) continues the checkpoint
    request = FitRequest(even=t0, odd=t1, resume=tmp_path / "m" / "latest.pt", given=frozenset({"epochs"}),
                         config=worker.tiny_config(tmp_path / "m", epochs=2, channels=8, seed=11))
    events = list(fit_events(request))
    assert isinstance(events[0], FitResumed)
    assert (events[0].config.channels, events[0].config.seed, events[0].epoch) == (4, 3, 1)
    assert [record.epoch for record in events[0].history] == [1]
    assert events[0].history[0].fit_loss > 0
    assert [e.epoch for e in events if isinstance(e, EpochDone)] == [2]
    assert events[-1].epochs_done == 2
    with pytest.raises(CheckpointError, match="channels"):
        next(fit_events(dataclasses.replace(request, given=None)))

    result = refine(RefineRequest(model=events[-1].latest_path, even=t0, odd=t1, keep_halves=True,
                                  device="cpu", batch_size=3))
    assert result.refined.shape == t0.shape
    np.testing.assert_allclose(result.difference, result.half0 - result.half1)
    with pytest.raises(DDWError, match="not found"):
        refine(RefineRequest(model=tmp_path / "none.pt", even=t0, odd=t1))


def test_finished_fit_skips_only_a_fit_that_is_over_and_of_these_tomograms(tmp_path):
    """pipeline.finished_fit: the one 'skip the fit, refine' decision (run, project)."""
    from napari_deepdewedge.core.model.checkpoint import save_checkpoint
    from napari_deepdewedge.core.fit.config import FitConfig
    from napari_deepdewedge.core.fit.pairs import HalfPair
    from napari_deepdewedge.pipeline import FitRequest, finished_fit

    even = odd = np.zeros((24, 32, 32), np.float32)
    saved = FitConfig(subtomo_size=16, channels=4, depth=2, epochs=3, voxel_size=(8.0, 8.0, 8.0))
    inputs = [HalfPair(even=even, odd=odd, tilt_range=(saved.tilt_min, saved.tilt_max),
                       voxel_size=saved.voxel_size).record()]
    # validation losses 0.5, 0.6, 0.7: the best epoch is 1, two epochs ago
    history = [[1, 1.0, 0.5, 1.0], [2, 0.9, 0.6, 1.0], [3, 0.8, 0.7, 1.0]]
    latest = save_checkpoint(tmp_path / "model" / "latest.pt",
                             dict(_payload(saved, epoch=3), inputs=inputs, history=history))

    def request(resume=latest, data=even, **change):
        return FitRequest(even=data, odd=data, resume=resume,
                          config=dataclasses.replace(saved, **change))

    assert finished_fit(request(resume=None)) is None
    assert finished_fit(request(epochs=4)) is None  # one more epoch to fit
    done = finished_fit(request())
    assert (done.model, done.epochs_done) == (latest, 3)  # no best.pt beside it: the checkpoint
    best = save_checkpoint(latest.with_name("best.pt"), dict(_payload(saved, epoch=1), inputs=inputs))
    assert finished_fit(request(epochs=2)).model == best
    # stopped early: the request's patience is already met by the checkpoint's history
    assert finished_fit(request(epochs=10, early_stop_patience=2)).epochs_done == 3
    assert finished_fit(request(epochs=10, early_stop_patience=3)) is None
    # never another fit's model: fixed settings asked for, and the tomograms, must match
    with pytest.raises(CheckpointError, match="channels=4"):
        finished_fit(request(channels=8))
    with pytest.raises(CheckpointError, match="shape"):
        finished_fit(request(data=np.zeros((24, 32, 40), np.float32)))
    # continuing a finished checkpoint stays refused (fit --resume)
    with pytest.raises(CheckpointError, match="raise epochs above 3"):
        plan_fit(saved, latest)


def test_fitting_size_lowers_a_presets_cube_to_the_largest_that_fits():
    """Known answers of the rule (issue 17): a size s is cut at ceil_even(√2·s) and must be a
    multiple of 2^depth; 48 → 68, 40 → 58, 96 → 136, 80 → 114."""
    from napari_deepdewedge.core.fit.cubes import extraction_size
    from napari_deepdewedge.pipeline.fit_size import SizeChoice, fitting_size, largest_fitting_size

    sample = fitting_size(48, 3, [(64, 128, 128)])  # the built-in sample's halves
    assert (sample.requested, sample.size) == (48, 40)
    assert sample.note == "cube size 48 → 40: the halves are 64 voxels thick (a 48 cube is cut at 68)"
    assert sample.short == "48 → 40: the halves are 64 voxels thick"  # under the dock's field
    assert fitting_size(96, 3, [(120, 1024, 1024)]).size == 80
    assert fitting_size(96, 3, [(300, 1024, 1024)]) == SizeChoice(96, 96)  # fits: unchanged
    # every pair counts: the thinnest decides, along whichever axis it is thin
    several = fitting_size(48, 3, [(128, 128, 128), (100, 60, 128)])
    assert several.size == 40 and "60 voxels along Y" in several.note and "thinnest" in several.note
    # depth 2: multiples of 4; nothing fits below 2·2^depth → unchanged (the engine says why)
    assert largest_fitting_size(48, 2, [(24, 32, 32)]) == 16
    assert fitting_size(48, 3, [(20, 64, 64)]).size == 48 and fitting_size(48, 3, [(20, 64, 64)]).note is None
    for shape in [(64, 128, 128), (90, 200, 200), (23, 40, 40)]:
        for depth in (2, 3):
            k = largest_fitting_size(96, depth, [shape])
            if k is not None:
                assert k % 2 ** depth == 0 and extraction_size(k) <= min(shape)
                assert extraction_size(k + 2 ** depth) > min(shape) or k == 96


def test_with_fitting_size_leaves_typed_sizes_and_resumes_alone(tmp_path):
    from napari_deepdewedge.core.fit.config import FitConfig
    from napari_deepdewedge.pipeline import FitRequest
    from napari_deepdewedge.pipeline.fit_size import with_fitting_size

    halves = np.zeros((64, 128, 128), np.float32)
    request = FitRequest(config=FitConfig.from_preset("fast"), even=halves, odd=halves)
    chosen, note = with_fitting_size(request, typed=False)
    assert chosen.config.subtomo_size == 40 and "48 → 40" in note
    assert request.config.subtomo_size == 48  # the request itself is not changed
    assert with_fitting_size(request, typed=True) == (request, None)
    resumed = dataclasses.replace(request, resume=tmp_path / "latest.pt")
    assert with_fitting_size(resumed, typed=False) == (resumed, None)


def test_a_projects_fit_lowers_a_presets_cube_and_reports_it():
    """``run`` on a folder: the preset's size (not among the given fields) is fitted to the
    fit subset's halves and reported as one FitSizeChosen event; a given size is kept."""
    from napari_deepdewedge.core.fit.config import FitConfig
    from napari_deepdewedge.pipeline import FitRequest, FitSizeChosen
    from napari_deepdewedge.pipeline.project import ProjectRequest, _fit_size_for_halves

    halves = np.zeros((64, 128, 128), np.float32)
    fit = FitRequest(config=FitConfig.from_preset("fast"), even=halves, odd=halves)
    events = []
    project = ProjectRequest(series=[], out_dir=Path("p"), thickness=64, fit_config=fit.config,
                             given=frozenset({"channels", "depth", "tilt_min", "tilt_max"}))
    assert _fit_size_for_halves(project, fit, events.append).config.subtomo_size == 40
    assert [(type(e), e.size) for e in events] == [(FitSizeChosen, 40)]
    typed = dataclasses.replace(project, given=project.given | {"subtomo_size"})
    assert _fit_size_for_halves(typed, fit, events.append) is fit and len(events) == 1
