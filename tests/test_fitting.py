"""The fitting loop: events, files, exact resume, clean stop, DDP equivalence, quality."""
import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deepdewedge.core.model import checkpoint as ckpt
from napari_deepdewedge.core.fit import loop as ft
from napari_deepdewedge.core.fit import steps as fit_steps
from napari_deepdewedge.core.fit.config import FitConfig
from napari_deepdewedge.core.errors import CheckpointError, DDWError

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two cores shared by several jobs: one thread avoids OpenMP spin-wait oversubscription
    (and makes runs bit-reproducible for the exact-resume comparisons)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def halves():
    return worker.tiny_halves()


def _events(gen):
    return list(gen)


def _csv_rows(path):
    with open(path) as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _probe(state_dict, arch):
    """Model output on a fixed input: compares functions, not parameters (conv biases in front
    of InstanceNorm have zero gradient, so Adam moves them by float noise)."""
    from napari_deepdewedge.core.model.unet import UNet3D

    m = UNet3D(**arch)
    m.load_state_dict(state_dict)
    m.eval()
    x = torch.from_numpy(worker.tiny_halves(seed=99)[0][None, None, :16, :16, :16].copy())
    with torch.no_grad():
        return m(x)


# --------------------------------------------------------------------------------------------
def test_amp_only_on_cuda_and_backends():
    # on a CPU: fp32 unless DDW_CPU_BF16=1 (tests/test_perf.py covers that side)
    if os.environ.get("DDW_CPU_BF16") != "1":
        assert ft.amp_enabled("cpu") is False
        assert ft.amp_enabled(torch.device("cpu")) is False
    assert ft.amp_enabled("mps") is False
    assert ft.amp_enabled(torch.device("cuda", 0)) is True
    before = torch.backends.cudnn.benchmark
    ft.configure_backends("cpu")
    assert torch.backends.cudnn.benchmark == before
    assert ft.distributed_info() == (0, 1)
    assert ft.init_distributed_from_env() == (0, 1)  # not launched by torchrun: nothing to join


def test_config_checks_and_presets():
    c = FitConfig.from_preset("fast", epochs=3)
    assert (c.subtomo_size, c.channels, c.depth, c.epochs) == (48, 16, 3, 3)
    assert FitConfig.from_dict(c.to_dict()) == c
    with pytest.raises(DDWError, match="unknown preset"):
        FitConfig.from_preset("huge")
    with pytest.raises(DDWError, match="unknown fitting option"):
        FitConfig.from_preset("fast", epoch=3)
    with pytest.raises(DDWError, match="multiple of 4"):
        FitConfig(subtomo_size=18, depth=2).validate()
    with pytest.raises(DDWError, match="val_fraction"):
        FitConfig(val_fraction=1.0).validate()
    with pytest.raises(DDWError, match="tilt range"):
        FitConfig(tilt_min=30, tilt_max=-30).validate()
    a = np.zeros((24, 40, 40), np.float32)
    with pytest.raises(DDWError, match="different shapes"):
        next(ft.fit_iter(a, a[:20], worker.tiny_config()))


def test_events_files_wedge_update_and_preview(halves, tmp_path):
    t0, t1 = halves
    cfg = worker.tiny_config(tmp_path, epochs=2, update_every=2, checkpoint_every=1, preview_every=2, signal_every=1)
    events = _events(ft.fit_iter(t0, t1, cfg, preview_slab=lambda: (4, 12)))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "FitStarted" and kinds[-1] == "FitFinished"
    start = events[0]
    assert (start.n_fit_cubes, start.n_val_cubes, start.steps_per_epoch, start.device) == (7, 2, 3, "cpu")
    steps = [e for e in events if isinstance(e, ft.StepDone)]
    assert [(e.epoch, e.step) for e in steps] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    epochs = [e for e in events if isinstance(e, ft.EpochDone)]
    assert [e.epoch for e in epochs] == [1, 2] and all(e.val_loss is not None for e in epochs)
    assert [e.epoch for e in events if isinstance(e, ft.WedgesUpdated)] == [2]
    saved = [(e.epoch, e.kind, e.path.name) for e in events if isinstance(e, ft.CheckpointSaved)]
    assert (1, "latest", "latest.pt") in saved and (2, "periodic", "epoch_0002.pt") in saved
    assert any(k == "best" for _, k, _ in saved)
    previews = [e for e in events if isinstance(e, ft.PreviewReady)]
    assert len(previews) == 1 and (previews[0].z_start, previews[0].z_stop) == (4, 12)
    assert previews[0].volume.shape == (8, 40, 40) and np.isfinite(previews[0].volume).all()
    fin = events[-1]
    assert fin.epochs_done == 2 and not fin.stopped
    assert fin.latest_path == tmp_path / "latest.pt" and fin.best_path == tmp_path / "best.pt"

    header, rows = _csv_rows(tmp_path / "losses.csv")
    signals = ["fsc_area", "fsc_143", "wedge_fsc", "consistency", "val_wedge"]  # core.fit.signals
    assert header == ["epoch", "fit_loss", "val_loss", "seconds", *signals]
    assert [int(r[0]) for r in rows] == [1, 2]
    np.testing.assert_allclose([float(r[1]) for r in rows], [e.fit_loss for e in epochs])
    # the signals (here measured every epoch) are the events' and in their ranges
    for row, ev in zip(rows, epochs):
        assert sorted(ev.signals) == sorted(signals)
        np.testing.assert_allclose([float(v) for v in row[4:]], [ev.signals[k] for k in signals])
        assert 0 < ev.signals["fsc_area"] <= 1 and -1 <= ev.signals["wedge_fsc"] <= 1
        assert ev.signals["fsc_143"] >= 2.0 and 0 < ev.signals["consistency"] < 2 and ev.signals["val_wedge"] > 0
    # epoch fit loss = sample-weighted mean of the step losses (3 + 3 + 1 cubes)
    w = np.array([3, 3, 1])
    np.testing.assert_allclose(epochs[0].fit_loss, (np.array([s.loss for s in steps[:3]]) * w).sum() / 7)

    # wedge update: observed frequencies of every fitting cube0 unchanged, unobserved ones changed
    from napari_deepdewedge.core.fourier import observed_mask
    from napari_deepdewedge.core.fit.cubes import extract_subtomos

    p = ckpt.load_checkpoint(tmp_path / "latest.pt", require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS)
    st = p["standardization"]
    orig = extract_subtomos((t0 - st[0][0]) / st[0][1], (t1 - st[1][0]) / st[1][1], 16, strides=(8, 8, 8),
                            val_fraction=0.2, seed=3, depth=2).fit0
    m = observed_mask((24, 24, 24), -60, 60, rfft=True)
    # the wedge-updated cubes live in the fitting-state file the checkpoint names
    from napari_deepdewedge.core.fit.state import resume_cubes

    assert p["fit_state"] == "fit_state_0002.pt" and "fit0" not in p
    assert sorted(q.name for q in tmp_path.glob("fit_state_*.pt")) == ["fit_state_0002.pt"]
    fit0 = resume_cubes(p, tmp_path)
    f_new, f_old = torch.fft.rfftn(fit0, dim=(-3, -2, -1)), torch.fft.rfftn(orig, dim=(-3, -2, -1))
    scale = f_old.abs().max()
    assert float(((f_new - f_old) * m).abs().max()) < 1e-4 * scale
    assert float(((f_new - f_old) * (1 - m)).abs().max()) > 1e-2 * scale
    # the stored normalization is that of the model inputs after the update
    loc, sc = fit_steps.input_normalization(fit0, observed_mask((16, 16, 16), -60, 60, rfft=True), 16, "cpu")
    assert abs(float(p["state_dict"]["loc"]) - loc) < 1e-6 and abs(float(p["state_dict"]["scale"]) - sc) < 1e-6
    model, meta = ckpt.load_model(tmp_path / "best.pt", device="cpu")
    assert meta["subtomo_size"] == 16 and meta["tilt_min"] == -60.0 and not model.training


def test_resume_and_stop_continue_exactly(halves, tmp_path):
    t0, t1 = halves
    kw = dict(epochs=4, update_every=2, signal_every=1)
    ref_events = _events(ft.fit_iter(t0, t1, worker.tiny_config(tmp_path / "ref", **kw)))
    ref = [(e.fit_loss, e.val_loss) for e in ref_events if isinstance(e, ft.EpochDone)]
    ref_payload = ckpt.load_checkpoint(tmp_path / "ref" / "latest.pt")
    ref_state, arch = ref_payload["state_dict"], ref_payload["arch"]
    assert arch["residual"] is False  # FitConfig's default

    # (a) 2 epochs, then resume from latest.pt to 4
    _events(ft.fit_iter(t0, t1, worker.tiny_config(tmp_path / "a", **dict(kw, epochs=2))))
    ev_a = _events(ft.fit_iter(t0, t1, worker.tiny_config(tmp_path / "a", **kw), resume=tmp_path / "a" / "latest.pt"))
    got_a = [(e.fit_loss, e.val_loss) for e in ev_a if isinstance(e, ft.EpochDone)]
    assert [e.epoch for e in ev_a if isinstance(e, ft.EpochDone)] == [3, 4]
    np.testing.assert_allclose(got_a, ref[2:], rtol=1e-5)
    state_a = ckpt.load_checkpoint(tmp_path / "a" / "latest.pt")["state_dict"]
    for k in ref_state:
        torch.testing.assert_close(state_a[k], ref_state[k], rtol=1e-5, atol=1e-6)

    # (b) stop after 4 steps (inside epoch 2), then resume the stopped checkpoint
    n = {"calls": 0}

    def stop():
        n["calls"] += 1
        return n["calls"] > 4

    ev_b = _events(ft.fit_iter(t0, t1, worker.tiny_config(tmp_path / "b", **kw), should_stop=stop))
    fin = ev_b[-1]
    assert isinstance(fin, ft.FitFinished) and fin.stopped and fin.epochs_done == 1
    assert fin.latest_path == tmp_path / "b" / "stopped.pt"
    assert len([e for e in ev_b if isinstance(e, ft.StepDone)]) == 4
    assert [e.kind for e in ev_b if isinstance(e, ft.CheckpointSaved)][-1] == "stopped"
    model, meta = ckpt.load_model(fin.latest_path, device="cpu")  # loadable
    assert meta["epoch"] == 1 and meta["step"] == 1
    ev_c = _events(ft.fit_iter(t0, t1, worker.tiny_config(tmp_path / "b", **kw), resume=fin.latest_path))
    steps_c = [(e.epoch, e.step) for e in ev_c if isinstance(e, ft.StepDone)]
    assert steps_c[0] == (2, 2) and len(steps_c) == 2 + 3 + 3
    got_c = [(e.fit_loss, e.val_loss) for e in ev_c if isinstance(e, ft.EpochDone)]
    np.testing.assert_allclose(got_c, ref[1:], rtol=1e-5)
    state_c = ckpt.load_checkpoint(tmp_path / "b" / "latest.pt")["state_dict"]
    torch.testing.assert_close(_probe(state_c, arch), _probe(ref_state, arch), rtol=1e-5, atol=1e-5)
    for k in ref_state:
        torch.testing.assert_close(state_c[k], ref_state[k], rtol=1e-5, atol=1e-6)

    # losses.csv rebuilt on resume: same epochs and losses as the straight run
    _, rows_ref = _csv_rows(tmp_path / "ref" / "losses.csv")
    for other in ("a", "b"):
        _, rows = _csv_rows(tmp_path / other / "losses.csv")
        assert [r[0] for r in rows] == ["1", "2", "3", "4"]
        np.testing.assert_allclose([float(r[1]) for r in rows], [float(r[1]) for r in rows_ref], rtol=1e-5)
        # the signal columns too (epoch 1 of "b" comes from the stopped checkpoint's history)
        np.testing.assert_allclose([[float(v) for v in r[4:]] for r in rows],
                                   [[float(v) for v in r[4:]] for r in rows_ref], rtol=1e-4)

    # resume refuses an incompatible run or one that is already complete
    with pytest.raises(CheckpointError, match="channels"):
        next(ft.fit_iter(t0, t1, worker.tiny_config(None, **dict(kw, channels=8)), resume=tmp_path / "a" / "latest.pt"))
    with pytest.raises(CheckpointError, match="raise epochs above 4"):
        next(ft.fit_iter(t0, t1, worker.tiny_config(None, **kw), resume=tmp_path / "a" / "latest.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        next(ft.fit_iter(t0, t1, worker.tiny_config(None, **kw), resume=tmp_path / "nope.pt"))


def test_stop_before_first_step_without_out_dir(halves):
    t0, t1 = halves
    events = []
    rng_before = torch.get_rng_state()
    fin = ft.fit(t0, t1, worker.tiny_config(None), on_event=events.append, should_stop=lambda: True)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is left alone
    assert [type(e).__name__ for e in events] == ["FitStarted", "FitFinished"]
    assert fin is events[-1] and fin.stopped and fin.epochs_done == 0 and fin.latest_path is None


def test_ddp_two_ranks_match_one_process(tmp_path):
    """torchrun, gloo, 2 CPU processes: global batch split 2/1, 2/1, 1/0 ≡ one process doing the
    same work (``emulate_ranks=2``: each rank's share as its own forward and backward, the
    gradients averaged as DDP averages them, validation and wedge updates in the ranks'
    batches) — bit for bit, on any CPU, since the same kernels run on the same tensors. The
    plain one-process run (batches of 3, not 2 + 1) is the same computation up to float
    rounding; a rank share weighted wrongly changes the second step's loss by ~5e-4 and fails
    the exact comparison."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "result.pt", weights_only=True)
    assert got["world"] == 2
    # only rank 0 wrote files; fitting-state files only while a checkpoint refers to them
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert [n for n in names if not n.startswith("fit_state_")] == ["best.pt", "latest.prev.pt", "latest.pt",
                                                                   "losses.csv"]
    refs = {torch.load(tmp_path / "run" / n, weights_only=True)["fit_state"]
            for n in ("best.pt", "latest.pt", "latest.prev.pt")}
    assert {n for n in names if n.startswith("fit_state_")} == refs and "fit_state_0002.pt" in refs
    # gradients were synchronized: both ranks hold bit-identical weights, and rank 0 saved them
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        assert torch.equal(r0[k], got["state_dict"][k]), k

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run (a thread count can change a kernel's summation order)
    try:
        epochs, steps = worker.run(out_dir=tmp_path / "emulated", emulate_ranks=2)
        _, plain_steps = worker.run()
    finally:
        torch.set_num_threads(threads)
    assert got["steps"] == steps and len(steps) == 6  # 3 steps × 2 epochs
    assert got["epochs"] == epochs
    emulated = torch.load(tmp_path / "emulated" / "latest.pt", weights_only=True)["state_dict"]
    for k, v in got["state_dict"].items():
        assert torch.equal(v, emulated[k]), k
    # the plain run: the same computation up to rounding, which Adam amplifies step by step.
    # Measured (plain vs 2 ranks, relative, steps 1–3 / all 6 steps / epoch losses): AVX2
    # 1.4e-7, 1.6e-7, 3.9e-7 / 9.7e-5 / 1.2e-4; ONEDNN_MAX_CPU_ISA=SSE41 1.4e-7, 0, 3.5e-6 /
    # 1.7e-3 / 3.8e-4 (bench/ddp_split.py, 2026-12-05). So only the first three
    # steps are compared, at 1e-4 (×28 the largest figure; a wrongly weighted rank share moves
    # step 2 by ~5e-4); the later steps are compared exactly above, against the emulated run.
    np.testing.assert_allclose(plain_steps[:3], steps[:3], rtol=1e-4)


def test_quality_beats_fbp_on_held_out_phantom(tmp_path):
    """Fit + refine on a small phantom never used for tuning (seed 7; tuning used 1 and 100):
    the validation loss falls, and the refined tomogram beats the even/odd FBP average against
    the ground truth, overall and inside the missing wedge, by a clear margin."""
    from napari_deepdewedge.core.reconstruct.halves import split_even_odd
    from napari_deepdewedge.core.io.mrc import TiltSeries
    from napari_deepdewedge.core.evaluate.metrics import cc, wedge_correlation
    from napari_deepdewedge.core.evaluate.phantom import make_sample
    from napari_deepdewedge.core.reconstruct.fbp import fbp
    from napari_deepdewedge.core.refine.tomogram import refine_halves

    sample = make_sample((32, 96, 96), (-60, 60, 2), snr=0.3, seed=7)
    even, odd = split_even_odd(TiltSeries(sample.tilt_series, sample.angles))
    tomo0, tomo1 = fbp(even.data, even.angles, 32), fbp(odd.data, odd.angles, 32)
    cfg = FitConfig(subtomo_size=16, channels=8, depth=2, epochs=12, batch_size=8, strides=(8, 12, 12),
                       update_every=5, device="cpu", out_dir=str(tmp_path))
    events = _events(ft.fit_iter(tomo0, tomo1, cfg))
    val = [e.val_loss for e in events if isinstance(e, ft.EpochDone)]
    assert val[-1] < 0.85 * val[0], val
    refined = refine_halves(events[-1].best_path, tomo0, tomo1, device="cpu", batch_size=8).refined
    truth, avg = sample.ground_truth, 0.5 * (tomo0 + tomo1)
    cc_fbp, cc_ref = cc(avg, truth), cc(refined, truth)
    w_fbp, w_ref = wedge_correlation(avg, truth, -60, 60), wedge_correlation(refined, truth, -60, 60)
    print(f"CC FBP {cc_fbp:.3f} → refined {cc_ref:.3f}; wedge correlation {w_fbp:.3f} → {w_ref:.3f}")
    assert cc_ref > cc_fbp + 0.06
    assert w_ref > w_fbp + 0.15


def _standardized_val0(t0, t1, payload):
    from napari_deepdewedge.core.fit.cubes import extract_subtomos

    st = payload["standardization"]
    return extract_subtomos((t0 - st[0][0]) / st[0][1], (t1 - st[1][0]) / st[1][1], 16, strides=(8, 8, 8),
                            val_fraction=0.2, seed=3, depth=2).val0


@pytest.mark.parametrize("update_val", [True, False])
def test_validation_cubes_get_the_wedge_updates(halves, tmp_path, update_val):
    """As in the original, a wedge update also fills the validation cube0s' wedges (observed
    frequencies kept); with update_val_wedges=False they stay as extracted."""
    from napari_deepdewedge.core.fit.state import resume_state
    from napari_deepdewedge.core.fourier import observed_mask

    t0, t1 = halves
    cfg = worker.tiny_config(tmp_path, epochs=1, update_every=1, update_val_wedges=update_val)
    _events(ft.fit_iter(t0, t1, cfg))
    p = ckpt.load_checkpoint(tmp_path / "latest.pt", require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS)
    orig = _standardized_val0(t0, t1, p)
    val0 = resume_state(p, tmp_path)["val0"]  # in the fitting-state file the checkpoint names
    assert val0.shape == orig.shape == (2, 1, 24, 24, 24)
    m = observed_mask((24, 24, 24), -60, 60, rfft=True)
    f_new, f_old = torch.fft.rfftn(val0, dim=(-3, -2, -1)), torch.fft.rfftn(orig, dim=(-3, -2, -1))
    scale = f_old.abs().max()
    assert float(((f_new - f_old) * m).abs().max()) < 1e-4 * scale
    changed = float(((f_new - f_old) * (1 - m)).abs().max())
    assert (changed > 1e-2 * scale) if update_val else (changed < 1e-6 * scale)


@pytest.mark.parametrize("kind,filt", [("trilinear", "trilinear-3tap"), ("bspline3", "bspline3-9tap")])
def test_checkpoint_records_resampling_and_refinement_checks_it(halves, tmp_path, kind, filt):
    from napari_deepdewedge.core.refine.tomogram import refine_halves

    t0, t1 = halves
    _events(ft.fit_iter(t0, t1, worker.tiny_config(tmp_path, epochs=1, resampling=kind)))
    p = ckpt.load_checkpoint(tmp_path / "best.pt")
    assert (p["resampling"], p["matching_filter"]) == (kind, filt)
    other = "bspline3" if kind == "trilinear" else "trilinear"
    with pytest.raises(DDWError, match=f"'{kind}'.*'{other}'"):
        refine_halves(tmp_path / "best.pt", t0, t1, device="cpu", resampling=other)
    # adapts by default: the same result as asking for the checkpoint's kind explicitly
    a = refine_halves(tmp_path / "best.pt", t0, t1, device="cpu").refined
    b = refine_halves(tmp_path / "best.pt", t0, t1, device="cpu", resampling=kind).refined
    c = refine_halves(tmp_path / "best.pt", t0, t1, device="cpu", match_resampling=False).refined
    assert np.array_equal(a, b) and not np.allclose(a, c)
    if kind == "trilinear":  # a checkpoint from before the key existed reads as trilinear
        old = {k: v for k, v in p.items() if k not in ("resampling", "matching_filter")}
        assert np.array_equal(refine_halves(old, t0, t1, device="cpu").refined, a)
        with pytest.raises(DDWError, match="'trilinear'.*'bspline3'"):
            refine_halves(old, t0, t1, device="cpu", resampling="bspline3")


def test_unknown_resampling_is_refused():
    with pytest.raises(DDWError, match="unknown resampling 'cubic'"):
        FitConfig(resampling="cubic").validate()
