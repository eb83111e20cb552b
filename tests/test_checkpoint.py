"""Checkpoints: round trip, atomic write, and refusal of anything that is not ours."""
import os
import pickle

import pytest
import torch

from napari_deepdewedge.core.model import checkpoint as ckpt
from napari_deepdewedge.core.errors import CheckpointError, DDWError
from napari_deepdewedge.core.model.unet import UNet3D


def _payload(model=None, **extra):
    torch.manual_seed(1)
    model = model or UNet3D(channels=4, depth=2)
    model.set_normalization(0.25, 1.5)
    p = {
        "format": ckpt.FORMAT_TAG,
        "version": ckpt.FORMAT_VERSION,
        "arch": model.arch_dict(),
        "state_dict": model.state_dict(),
        "subtomo_size": 16,
        "tilt_min": -54.0,
        "tilt_max": 62.0,
        "voxel_size": [3.0, 2.0, 2.0],
        "standardization": [[0.1, 2.0], [0.2, 3.0]],
        "epoch": 3,
        "config": {"subtomo_size": 16, "strides": None},
    }
    p.update(extra)
    return model, p


def test_round_trip_and_load_model(tmp_path):
    model, payload = _payload()
    path = ckpt.save_checkpoint(tmp_path / "sub" / "a.pt", payload)
    assert path.exists()
    assert [f.name for f in path.parent.iterdir()] == ["a.pt"]  # no temporary left behind
    loaded = ckpt.load_checkpoint(path)
    assert loaded["tilt_min"] == -54.0 and loaded["standardization"][1] == [0.2, 3.0]
    m2, meta = ckpt.load_model(path, device="cpu")
    assert not m2.training
    assert float(m2.loc) == 0.25 and float(m2.scale) == 1.5
    assert meta["subtomo_size"] == 16 and meta["voxel_size"] == (3.0, 2.0, 2.0) and meta["epoch"] == 3
    assert "state_dict" not in meta
    x = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), m2(x))
    # from an in-memory payload too
    m3, _ = ckpt.load_model(loaded, device="cpu")
    with torch.no_grad():
        assert torch.equal(m3(x), m2(x))


def test_overwrite_is_atomic_replace(tmp_path):
    _, payload = _payload()
    p = tmp_path / "latest.pt"
    ckpt.save_checkpoint(p, payload)
    payload["epoch"] = 9
    ckpt.save_checkpoint(p, payload)
    assert ckpt.load_checkpoint(p)["epoch"] == 9
    assert sorted(f.name for f in tmp_path.iterdir()) == ["latest.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="folder"):
        ckpt.load_checkpoint(tmp_path)


def test_not_a_torch_file_and_truncated(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        ckpt.load_checkpoint(text)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable"):
        ckpt.load_checkpoint(empty)
    _, payload = _payload()
    good = ckpt.save_checkpoint(tmp_path / "good.pt", payload)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.load_checkpoint(cut)
    assert issubclass(CheckpointError, DDWError)


def test_tampered_file_is_refused_without_running_code(tmp_path):
    _, payload = _payload()
    payload["hook"] = os.system  # an arbitrary global: weights_only must refuse it
    bad = tmp_path / "tampered.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="tampered"):
        ckpt.load_checkpoint(bad)
    # a plain pickle (not a torch zip) is refused as well
    plain = tmp_path / "plain.pt"
    with open(plain, "wb") as fh:
        pickle.dump({"format": ckpt.FORMAT_TAG}, fh)
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(plain)


def test_foreign_format_version_and_missing_keys(tmp_path):
    _, payload = _payload()
    foreign = dict(payload, format="lightning")
    torch.save(foreign, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="not a napari-deepdewedge checkpoint"):
        ckpt.load_checkpoint(tmp_path / "f.pt")
    torch.save({"state_dict": payload["state_dict"]}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="format tag None"):
        ckpt.load_checkpoint(tmp_path / "bare.pt")
    torch.save(dict(payload, version=ckpt.FORMAT_VERSION + 1), tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="update the plugin"):
        ckpt.load_checkpoint(tmp_path / "new.pt")
    incomplete = {k: v for k, v in payload.items() if k not in ("arch", "tilt_max")}
    torch.save(incomplete, tmp_path / "inc.pt")
    with pytest.raises(CheckpointError, match="missing arch, tilt_max"):
        ckpt.load_checkpoint(tmp_path / "inc.pt")
    # fine for the model, but not for resuming
    ckpt.save_checkpoint(tmp_path / "model_only.pt", payload)
    with pytest.raises(CheckpointError, match="missing step, optimizer"):
        ckpt.load_checkpoint(tmp_path / "model_only.pt", require=ckpt.MODEL_KEYS + ckpt.RESUME_KEYS)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        ckpt.load_checkpoint(tmp_path / "list.pt")


def test_weights_that_do_not_fit_the_arch(tmp_path):
    _, payload = _payload()
    payload["arch"] = dict(payload["arch"], channels=8)
    ckpt.save_checkpoint(tmp_path / "x.pt", payload)
    with pytest.raises(CheckpointError, match="do not match"):
        ckpt.load_model(tmp_path / "x.pt", device="cpu")


def test_copy_checkpoint(tmp_path):
    _, payload = _payload()
    src = ckpt.save_checkpoint(tmp_path / "latest.pt", payload)
    dst = ckpt.copy_checkpoint(src, tmp_path / "best.pt")
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["best.pt", "latest.pt"]


def test_checkpoint_of_the_layout_before_issue17_loads_and_computes_the_same(tmp_path):
    """tests/data/checkpoints/pre_issue17_unet.pt was written by the code before issue 17
    (transposed-convolution up-sampling, no ``upsample`` key in its ``arch``) together with a
    probe input and the float64 output that code computed. It must load as that layout and
    give that output (float64 on another CPU's kernels: measured difference 0 here; 1e-10
    relative allows for a different summation order), and fine-tuning from it keeps the layout."""
    from pathlib import Path

    from napari_deepdewedge.core.fit.loop import FitConfig
    from napari_deepdewedge.core.fit.setup import _build_net

    path = Path(__file__).parent / "data" / "checkpoints" / "pre_issue17_unet.pt"
    payload = ckpt.load_checkpoint(path)
    assert "upsample" not in payload["arch"]
    model, _ = ckpt.load_model(path, device="cpu")
    assert model.upsample == "transposed"
    with torch.no_grad():
        y = model.double()(payload["probe_input"])
    scale = float(payload["probe_output"].abs().max())
    torch.testing.assert_close(y, payload["probe_output"], rtol=0, atol=1e-10 * scale)
    # fine-tuning (init_from) and resuming build the checkpoint's layout, not today's default
    cfg = FitConfig(subtomo_size=16, channels=2, depth=2, residual=False, tilt_min=-60.0, tilt_max=60.0,
                    out_dir=str(tmp_path))
    net = _build_net(cfg, "cpu", None, init_from=str(path))
    assert net.upsample == "transposed"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), payload["state_dict"].values()))
    assert _build_net(cfg, "cpu", payload).upsample == "transposed"
    assert _build_net(cfg, "cpu", None).upsample == UNet3D().upsample
