"""Knowing when a fit is done (issue 22): the signals reach the loop's decisions (best.pt, early
stop), the CLI and the skip-the-fit decision; driven by scripted signal sequences so each test
can fail."""
import csv
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deepdewedge.core.model import checkpoint as ckpt
from napari_deepdewedge.core.fit import signals as fs
from napari_deepdewedge.core.fit import loop as ft
from napari_deepdewedge.core.errors import DDWError

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def scripted(monkeypatch):
    """The crop signals follow a script (one dict per measurement), the rest of the loop is real."""
    script: list[float] = []
    calls = []

    def fake(self, net):
        value = script[len(calls)]
        calls.append(value)
        return {"fsc_area": value, "fsc_143": 20.0, "wedge_fsc": value, "consistency": 1 - value}

    monkeypatch.setattr(fs.SignalProbe, "__call__", fake)
    return script, calls


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_rule_stops_a_fit_whose_signal_plateaued_and_keeps_its_best(scripted, tmp_path):
    script, calls = scripted
    # rises to epoch 3, then flat below it: patience 2 → stops after epoch 5, best.pt = epoch 3
    script += [0.3, 0.5, 0.7, 0.69, 0.7, 0.9, 0.9, 0.9]
    cfg = worker.tiny_config(tmp_path, epochs=8, update_every=0, best_by="fsc_area", early_stop_patience=2,
                             signal_every=1)
    events = list(ft.fit_iter(*worker.tiny_halves(), cfg))
    fin = events[-1]
    assert isinstance(fin, ft.FitFinished) and not fin.stopped and fin.epochs_done == 5
    assert "has not improved for 2 epochs" in fin.reason and "epoch 3" in fin.reason
    assert len(calls) == 5
    best = [e.epoch for e in events if isinstance(e, ft.CheckpointSaved) and e.kind == "best"]
    assert best == [1, 2, 3]
    assert ckpt.load_checkpoint(tmp_path / "best.pt")["epoch"] == 3
    rows = _rows(tmp_path / "losses.csv")
    assert [float(r["fsc_area"]) for r in rows] == script[:5]
    assert all(float(r["val_wedge"]) > 0 for r in rows)  # the real validation-pass signal beside them


def test_lower_is_better_signals_and_no_stop_while_improving(scripted, tmp_path):
    script, calls = scripted
    script += [0.3, 0.5, 0.7, 0.8]  # consistency 0.7, 0.5, 0.3, 0.2: improving every epoch
    cfg = worker.tiny_config(tmp_path, epochs=4, update_every=0, best_by="consistency", early_stop_patience=1,
                             signal_every=1)
    events = list(ft.fit_iter(*worker.tiny_halves(), cfg))
    assert events[-1].epochs_done == 4 and events[-1].reason == ""
    assert [e.epoch for e in events if isinstance(e, ft.CheckpointSaved) and e.kind == "best"] == [1, 2, 3, 4]


def test_signal_every_skips_epochs_and_the_csv_leaves_them_empty(scripted, tmp_path):
    script, calls = scripted
    script += [0.4, 0.6, 0.5]
    cfg = worker.tiny_config(tmp_path, epochs=5, update_every=0, signal_every=2)
    events = list(ft.fit_iter(*worker.tiny_halves(), cfg))
    signals = [e.signals for e in events if isinstance(e, ft.EpochDone)]
    assert [bool(s) for s in signals] == [False, True, False, True, True] and len(calls) == 3  # and the last
    rows = _rows(tmp_path / "losses.csv")
    assert [r["fsc_area"] for r in rows] == ["", "0.4", "", "0.6", "0.5"]
    # signal_every 0: no probe, no signal columns
    list(ft.fit_iter(*worker.tiny_halves(), worker.tiny_config(tmp_path / "off", epochs=1, signal_every=0)))
    with open(tmp_path / "off" / "losses.csv") as fh:
        assert fh.readline().strip() == "epoch,fit_loss,val_loss,seconds"


def test_best_by_checks():
    with pytest.raises(DDWError, match="best_by must be one of"):
        worker.tiny_config(best_by="psnr").validate()
    with pytest.raises(DDWError, match="needs the signals"):
        worker.tiny_config(best_by="fsc_area", signal_every=0).validate()
    with pytest.raises(DDWError, match="needs validation cubes"):
        next(ft.fit_iter(*worker.tiny_halves(), worker.tiny_config(best_by="val_wedge", val_fraction=0.0)))
    text = fs.rule_text(worker.tiny_config(best_by="fsc_area", early_stop_patience=10, epochs=200))
    assert text == ("best.pt: the epoch with the highest half-map FSC (mean to ½ Nyquist); stops when it has "
                    "not improved for 10 epochs (at most 200)")
    assert "runs all 2 epochs" in fs.rule_text(worker.tiny_config())


def test_cli_flags_and_yaml_reach_fit_config(tmp_path):
    from napari_deepdewedge import cli

    def config(yaml_text, extra=()):
        path = tmp_path / "cfg.yaml"
        path.write_text("even: e.mrc\nodd: o.mrc\ntilt_range: [-60, 60]\n" + yaml_text)
        args = cli.build_parser().parse_args(["fit", "--config", str(path), "--out", str(tmp_path / "o"), *extra])
        cli.apply_config(args)
        return cli.fit_config(args, tilt_range=cli.tilt_range_for_fit(args), out_dir=None, voxel_size=(1, 1, 1))

    cfg = config("", ["--best-by", "wedge_fsc", "--signal-every", "3", "--early-stop", "7"])
    assert (cfg.best_by, cfg.signal_every, cfg.early_stop_patience) == ("wedge_fsc", 3, 7)
    cfg = config("best_by: consistency\nsignal_every: 2\n")
    assert (cfg.best_by, cfg.signal_every) == ("consistency", 2)
    cfg = config("")
    assert (cfg.best_by, cfg.signal_every) == (ft.FitConfig.best_by, ft.FitConfig.signal_every)


def test_finished_fit_reads_the_chosen_signal(tmp_path):
    """The skip-the-fit decision applies the same rule as the loop."""
    from napari_deepdewedge.core.fit.pairs import HalfPair
    from napari_deepdewedge.pipeline import FitRequest, finished_fit

    even = np.zeros((24, 32, 32), np.float32)
    saved = ft.FitConfig(subtomo_size=16, channels=4, depth=2, epochs=4, voxel_size=(8.0, 8.0, 8.0))
    inputs = [HalfPair(even=even, odd=even, tilt_range=(saved.tilt_min, saved.tilt_max),
                       voxel_size=saved.voxel_size).record()]
    # the validation loss keeps falling; the FSC area peaked at epoch 2
    history = [[1, 1.0, 0.9, 1.0, {"fsc_area": 0.5}], [2, 1.0, 0.8, 1.0, {"fsc_area": 0.7}],
               [3, 1.0, 0.7, 1.0, {"fsc_area": 0.6}], [4, 1.0, 0.6, 1.0, {"fsc_area": 0.6}]]
    payload = {"format": "napari-deepdewedge-checkpoint", "version": 1, "arch": {}, "state_dict": {},
               "subtomo_size": 16, "tilt_min": saved.tilt_min, "tilt_max": saved.tilt_max, "epoch": 4, "step": 0,
               "optimizer": {}, "rng": {}, "config": saved.to_dict(), "history": history, "best_val_loss": 0.6,
               "standardization": None, "inputs": inputs}
    latest = ckpt.save_checkpoint(tmp_path / "latest.pt", payload)

    def request(**change):
        return FitRequest(even=even, odd=even, resume=latest, config=dataclasses.replace(saved, **change))

    assert finished_fit(request(epochs=10, early_stop_patience=2)) is None  # val_loss still improving
    assert finished_fit(request(epochs=10, early_stop_patience=2, best_by="fsc_area")).epochs_done == 4
    assert finished_fit(request(epochs=10, early_stop_patience=3, best_by="fsc_area")) is None
