"""Fitting on several tomograms (issue 9): per-cube wedges, inputs, fine-tuning, the split
checkpoint, and the command line's ways of giving pairs."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ddp_worker as worker  # noqa: E402

from napari_deepdewedge.core.model import checkpoint as ckpt  # noqa: E402
from napari_deepdewedge.core.fit import loop as ft  # noqa: E402
from napari_deepdewedge.core.errors import DDWError  # noqa: E402
from napari_deepdewedge.pipeline.fitting import FitRequest, HalfPair, fit_events  # noqa: E402

RANGES = ((-60.0, 60.0), (-48.0, 64.0))


def _two_pairs():
    a0, a1 = worker.tiny_halves(7)
    b0, b1 = worker.tiny_halves(8)
    return [HalfPair(even=a0, odd=a1, tilt_range=RANGES[0], name="a"),
            HalfPair(even=b0, odd=b1, tilt_range=RANGES[1], name="b")]


@pytest.fixture(scope="module")
def two_pair_fit(tmp_path_factory):
    """A 2-epoch fit on two pairs with different tilt ranges, recording every step's cubes,
    rotations and the masks handed to the loss."""
    out = tmp_path_factory.mktemp("two")
    from napari_deepdewedge.core.fit import loss, steps
    from napari_deepdewedge.core.model import rotation

    seen = {"steps": [], "rot": [], "loss": [], "in_step": False}
    real_step, real_rot, real_loss = steps.fit_step, rotation.random_rotations, loss.masked_fourier_loss

    def step(model, opt, scaler, cubes, masks, idx, *a, **kw):
        seen["steps"].append(cubes.fit_index[idx].clone())
        seen["in_step"] = True
        try:
            return real_step(model, opt, scaler, cubes, masks, idx, *a, **kw)
        finally:
            seen["in_step"] = False

    def rot(*a, **kw):
        r = real_rot(*a, **kw)
        if seen["in_step"]:
            seen["rot"].append(r.clone())
        return r

    def masked_loss(pred, target, mask, rotated, **kw):
        if seen["in_step"]:  # the fitting steps' calls, not validation's
            seen["loss"].append((mask.detach().cpu().clone(), rotated.detach().cpu().clone()))
        return real_loss(pred, target, mask, rotated, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(steps, "fit_step", step)
    mp.setattr(rotation, "random_rotations", rot)
    mp.setattr(loss, "masked_fourier_loss", masked_loss)
    try:
        events = list(fit_events(FitRequest(config=worker.tiny_config(out, epochs=2), pairs=_two_pairs())))
    finally:
        mp.undo()
    return out, events, seen


def test_each_cube_is_masked_with_its_own_pairs_wedge(two_pair_fit):
    from napari_deepdewedge.core.fourier import observed_mask, rotated_observed_masks

    out, events, seen = two_pair_fit
    start = events[0]
    assert (start.n_fit_cubes, start.n_val_cubes) == (14, 4)  # 7 + 2 cubes of each pair
    crops = [observed_mask((16, 16, 16), lo, hi, rfft=True) for lo, hi in RANGES]
    assert not torch.equal(crops[0], crops[1])  # the two wedges differ, so a mix-up would show
    assert len(seen["steps"]) == len(seen["rot"]) == len(seen["loss"]) == 2 * 5  # 14 cubes, batch 3
    checked = {0: 0, 1: 0}
    for pairs_of, rotations, (mask, rotated) in zip(seen["steps"], seen["rot"], seen["loss"]):
        for i, k in enumerate(pairs_of.tolist()):
            lo, hi = RANGES[k]
            assert torch.equal(mask[i, 0], crops[k]), f"cube {i} of pair {k}: M of another wedge"
            want = rotated_observed_masks((16, 16, 16), lo, hi, rotations[i], rfft=True)[0]
            assert torch.equal(rotated[i], want), f"cube {i} of pair {k}: M_R of another wedge"
            checked[k] += 1
    assert checked == {0: 14, 1: 14}  # every cube of both pairs, each epoch (pooled)
    mixed = [set(p.tolist()) for p in seen["steps"]]
    assert any(len(m) == 2 for m in mixed)  # shuffled together: batches mix the pairs


def test_wedge_update_keeps_each_pairs_own_observed_frequencies(two_pair_fit):
    from napari_deepdewedge.core.fit.state import resume_cubes
    from napari_deepdewedge.core.fourier import observed_mask
    from napari_deepdewedge.core.fit.cubes import extract_subtomos

    out, _, _ = two_pair_fit
    payload = ckpt.load_checkpoint(out / "latest.pt", require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS)
    cubes = resume_cubes(payload, out)
    inputs = payload["inputs"]
    assert [rec["name"] for rec in inputs] == ["a", "b"]
    assert [rec["tilt_range"] for rec in inputs] == [list(r) for r in RANGES]
    assert all(rec["shape"] == [24, 40, 40] for rec in inputs)
    at = 0
    for k, (pair, rec) in enumerate(zip(_two_pairs(), inputs)):
        st = rec["standardization"]
        orig = extract_subtomos((pair.even - st[0][0]) / st[0][1], (pair.odd - st[1][0]) / st[1][1], 16,
                                strides=(8, 8, 8), val_fraction=0.2, seed=3 + k, depth=2).fit0
        new = cubes[at:at + orig.shape[0]]
        at += orig.shape[0]
        f_new, f_old = torch.fft.rfftn(new, dim=(-3, -2, -1)), torch.fft.rfftn(orig, dim=(-3, -2, -1))
        scale = f_old.abs().max()
        own = observed_mask((24, 24, 24), *RANGES[k], rfft=True)
        other = observed_mask((24, 24, 24), *RANGES[1 - k], rfft=True)
        assert float(((f_new - f_old) * own).abs().max()) < 1e-4 * scale  # its own observed part kept
        # where only the other pair's wedge counts as observed, this pair's cubes were filled in
        assert float(((f_new - f_old) * other * (1 - own)).abs().max()) > 1e-2 * scale
    assert at == cubes.shape[0] == 14


def test_model_file_does_not_grow_with_the_cubes(two_pair_fit, tmp_path):
    two_dir, _, _ = two_pair_fit
    a0, a1 = worker.tiny_halves(7)
    list(ft.fit_iter(a0, a1, worker.tiny_config(tmp_path, epochs=1)))  # 7 fitting cubes instead of 14
    small, large = tmp_path / "latest.pt", two_dir / "latest.pt"
    # the model files differ only by the second pair's record (names, shapes, ranges: < 2 kB) …
    assert abs(large.stat().st_size - small.stat().st_size) < 2048
    # … while the fitting state holds the cubes: twice as many cubes, about twice the bytes
    state_small = (tmp_path / "fit_state_0001.pt").stat().st_size
    state_large = (two_dir / "fit_state_0002.pt").stat().st_size
    assert 1.8 < state_large / state_small < 2.2
    assert state_small > 7 * 24**3 * 4  # the 7 cube0s of 24³ float32


def test_init_from_loads_weights_and_refuses_another_architecture(two_pair_fit, tmp_path):
    two_dir, _, _ = two_pair_fit
    source = two_dir / "latest.pt"
    a0, a1 = worker.tiny_halves(9)
    with pytest.raises(DDWError, match=r"channels=4 there, 8 here"):
        next(ft.fit_iter(a0, a1, worker.tiny_config(None, channels=8), init_from=source))
    with pytest.raises(DDWError, match=r"depth=2 there, 3 here"):
        next(ft.fit_iter(a0, a1, worker.tiny_config(None, depth=3, subtomo_size=16), init_from=source))
    # same U-Net, a negligible learning rate: after one epoch the weights are still the source's
    list(ft.fit_iter(a0, a1, worker.tiny_config(tmp_path, epochs=1, lr=1e-12, update_every=0), init_from=source))
    got = ckpt.load_checkpoint(tmp_path / "latest.pt")
    src = ckpt.load_checkpoint(source)
    for k, v in src["state_dict"].items():
        if k in ("loc", "scale"):  # normalization: recomputed from the new data
            continue
        torch.testing.assert_close(got["state_dict"][k], v, rtol=0, atol=1e-8)
    assert got["epoch"] == 1 and len(got["history"]) == 1  # a new run: fresh schedule and history
    assert not torch.equal(got["state_dict"]["loc"], src["state_dict"]["loc"])


def _write_pair(folder: Path, stem: str, seed: int, tilt_range):
    from napari_deepdewedge.core.io.mrc import write_mrc

    t0, t1 = worker.tiny_halves(seed)
    write_mrc(folder / f"{stem}_even.mrc", t0, voxel_size=(4.0, 4.0, 4.0))
    write_mrc(folder / f"{stem}_odd.mrc", t1, voxel_size=(4.0, 4.0, 4.0))
    lo, hi = tilt_range
    (folder / f"{stem}.tlt").write_text("\n".join(f"{a:g}" for a in np.linspace(lo, hi, 9)) + "\n")


def _request(argv, tmp_path):
    from napari_deepdewedge import cli
    from napari_deepdewedge.cli.commands import fit_request

    args = cli.build_parser().parse_args(argv)
    args.argv = argv
    cli.apply_config(args)
    return fit_request(args, tmp_path / "out")


def _same_request(a, b):
    assert a.config == b.config
    assert [p.record() for p in a.pairs] == [p.record() for p in b.pairs]
    for p, q in zip(a.pairs, b.pairs):
        assert np.array_equal(p.even, q.even) and np.array_equal(p.odd, q.odd)


def test_original_yaml_with_file_lists_equals_the_flags(tmp_path):
    _write_pair(tmp_path, "ts01", 7, (-60, 60))
    _write_pair(tmp_path, "ts02", 8, (-48, 64))
    common = ["--subtomo-size", "16", "--channels", "4", "--depth", "2", "--epochs", "3", "--device", "cpu",
              "--out", str(tmp_path / "out")]
    flags = _request(["fit", "--even", str(tmp_path / "ts01_even.mrc"), "--odd", str(tmp_path / "ts01_odd.mrc"),
                      "--even", str(tmp_path / "ts02_even.mrc"), "--odd", str(tmp_path / "ts02_odd.mrc"),
                      *common], tmp_path)
    assert [p.tilt_range for p in flags.pairs] == [RANGES[0], RANGES[1]]  # each from its own .tlt
    assert [p.name for p in flags.pairs] == ["ts01", "ts02"] and flags.pairs[1].voxel_size == (4.0, 4.0, 4.0)
    assert (flags.config.tilt_min, flags.config.tilt_max) == RANGES[0]
    ddw = tmp_path / "ddw.yaml"
    ddw.write_text(f"""shared:
  tomo0_files: [{tmp_path / 'ts01_even.mrc'}, {tmp_path / 'ts02_even.mrc'}]
  tomo1_files: [{tmp_path / 'ts01_odd.mrc'}, {tmp_path / 'ts02_odd.mrc'}]
  subtomo_size: 16
  gpu: null
fit_model:
  unet_params_dict: {{chans: 4, num_downsample_layers: 2}}
  num_epochs: 3
""")
    from_yaml = _request(["fit", "--config", str(ddw), "--out", str(tmp_path / "out")], tmp_path)
    _same_request(flags, from_yaml)
    # the same file-list keys written flat (no sections), beside our own flat option names
    flat = tmp_path / "flat.yaml"
    flat.write_text(f"""tomo0_files: [{tmp_path / 'ts01_even.mrc'}, {tmp_path / 'ts02_even.mrc'}]
tomo1_files: [{tmp_path / 'ts01_odd.mrc'}, {tmp_path / 'ts02_odd.mrc'}]
subtomo_size: 16
channels: 4
depth: 2
epochs: 3
device: cpu
""")
    _same_request(flags, _request(["fit", "--config", str(flat), "--out", str(tmp_path / "out")], tmp_path))
    # a pair list with its own tilt columns: the same request
    (tmp_path / "pairs.txt").write_text("# even odd range\nts01_even.mrc ts01_odd.mrc ts01.tlt\n"
                                        "ts02_even.mrc ts02_odd.mrc -48,64\n")
    listed = _request(["fit", "--pairs", str(tmp_path / "pairs.txt"), *common], tmp_path)
    _same_request(flags, listed)
    # --tilt-range applies to every pair
    forced = _request(["fit", "--even", str(tmp_path / "ts01_even.mrc"), "--odd", str(tmp_path / "ts01_odd.mrc"),
                       "--even", str(tmp_path / "ts02_even.mrc"), "--odd", str(tmp_path / "ts02_odd.mrc"),
                       "--tilt-range", "-50", "50", *common], tmp_path)
    assert [p.tilt_range for p in forced.pairs] == [(-50.0, 50.0)] * 2


def test_cli_pair_errors_are_one_line(tmp_path, capsys):
    from napari_deepdewedge import cli

    _write_pair(tmp_path, "ts01", 7, (-60, 60))
    (tmp_path / "bad.txt").write_text("ts01_even.mrc ts01_odd.mrc -60,60 extra\n")
    rc = cli.main(["fit", "--pairs", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bad.txt line 1" in err[0]
    (tmp_path / "ts01.tlt").unlink()
    rc = cli.main(["fit", "--even", str(tmp_path / "ts01_even.mrc"), "--odd", str(tmp_path / "ts01_odd.mrc"),
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no tilt range for ts01_even.mrc" in err[0]


def test_memory_model_known_answer():
    from napari_deepdewedge.core.fit.pairs import cube_pair_bytes, memory_estimate

    assert cube_pair_bytes(32) == 2 * 46**3 * 4  # E = ceil_even(√2·32) = 46
    est = memory_estimate([(64, 160, 160), (24, 40, 40)], 16, strides=(8, 8, 8))
    # 24×40×40 with E = 24, stride 8: 1·3·3 cubes (the tiny fits above cut 9)
    assert est["cubes"][1] == 9 and est["bytes"][1] == 9 * 2 * 24**3 * 4
    assert est["total_bytes"] == sum(est["bytes"])


def test_host_resident_cubes_fit_like_device_resident(monkeypatch):
    """The host-store path (cubes gathered per batch by CubeFeeder; the CPU side of the CUDA
    prefetch) gives the losses of the in-place path."""
    from napari_deepdewedge.core.fit import setup
    from napari_deepdewedge.core.fit.data import CubeFeeder

    store = torch.arange(4 * 2 * 8**3, dtype=torch.float32).reshape(4, 2, 8, 8, 8)
    feeder = CubeFeeder(store, "cpu")
    idx = torch.tensor([2, 0])
    feeder.prefetch(idx)  # a no-op without CUDA
    assert not feeder.cuda and torch.equal(feeder.take(idx), store[idx])

    t0, t1 = worker.tiny_halves()
    cfg = worker.tiny_config(None, epochs=1)
    ref = [e.fit_loss for e in ft.fit_iter(t0, t1, cfg) if isinstance(e, ft.EpochDone)]
    taken = []
    real_take = CubeFeeder.take

    def take(self, index):
        taken.append(len(index))
        return real_take(self, index)

    monkeypatch.setattr(CubeFeeder, "take", take)
    monkeypatch.setattr(setup, "data_device", lambda device, nbytes: torch.device("cpu", 0))  # "not the device"
    host = [e.fit_loss for e in ft.fit_iter(t0, t1, cfg) if isinstance(e, ft.EpochDone)]
    assert sum(taken) >= 7  # every fitting cube went through the feeder
    np.testing.assert_allclose(host, ref, rtol=1e-5)
