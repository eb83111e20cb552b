"""Never a torn checkpoint or output (issue 12).

Writes are interrupted at many byte offsets — by a real full disk (a size-limited tmpfs mounted
when the tests run as root; otherwise an injected ``OSError(ENOSPC)`` after the same number of
bytes), by a failing rename, by a failing write — and each time the previous file must be intact
and loadable, the error one ``WriteError`` naming the path and the free space, no temporary left,
and the work must continue once space is free. One corrupt ``latest.pt`` is survivable: loading
falls back to ``latest.prev.pt`` with a warning and the resumed fit ends bit-identical.
"""
from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deepdewedge.core.model import checkpoint as ckpt
from napari_deepdewedge.core.fit import loop as ft
from napari_deepdewedge.core.io import storage
from napari_deepdewedge.core.errors import CheckpointError, DDWWarning, WriteError
from napari_deepdewedge.core.io.mrc import read_mrc, write_mrc

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

FIT = dict(epochs=4, update_every=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible runs for the exact comparisons
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny fit: its final checkpoint payload."""
    out = tmp_path_factory.mktemp("ref")
    t0, t1 = worker.tiny_halves()
    list(ft.fit_iter(t0, t1, worker.tiny_config(out, **FIT)))
    payload = ckpt.load_checkpoint(out / "latest.pt", fallback=False)
    payload["best"] = ckpt.load_checkpoint(out / "best.pt", fallback=False)
    return payload


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------------------------------------
# a small full disk: tmpfs when possible, else an injected ENOSPC


class SmallDisk:
    """A folder on a file system that can be filled: ``fill(leave)`` leaves about ``leave``
    bytes free, ``free_up()`` removes the filler. ``real`` says whether it is a mounted tmpfs;
    otherwise a write that would not fit in ``leave`` bytes fails with an injected ENOSPC
    after ``leave`` bytes (the temporary is cut there, as a real full disk would)."""

    def __init__(self, folder: Path, real: bool, monkeypatch):
        self.folder, self.real, self.monkeypatch = folder, real, monkeypatch
        self.filler = folder / "filler.bin"
        self.leave = None
        if not real:
            original = storage.fsync_file

            def fsync_or_enospc(path):
                if self.leave is not None and os.path.getsize(path) > self.leave:
                    os.truncate(path, self.leave)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                original(path)

            monkeypatch.setattr(storage, "fsync_file", fsync_or_enospc)

    def fill(self, leave: int = 0) -> None:
        self.leave = leave
        if not self.real:
            return
        with open(self.filler, "ab", buffering=0) as fh:
            for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
                try:
                    while fh.write(b"\0" * chunk):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        if leave:
            size = os.path.getsize(self.filler)
            os.truncate(self.filler, max(0, size - leave))

    def free_up(self) -> None:
        self.leave = None
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    folder = tmp_path / "disk"
    folder.mkdir()
    real = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        real = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                              capture_output=True).returncode == 0
    disk = SmallDisk(folder, real, monkeypatch)
    yield disk
    if real:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(storage.TEMP_SUFFIX))


def _payload(epoch: int, size: int = 300_000) -> dict:
    g = torch.Generator().manual_seed(epoch)
    return {"format": ckpt.FORMAT_TAG, "version": ckpt.FORMAT_VERSION, "arch": {}, "state_dict": {},
            "subtomo_size": 16, "tilt_min": -60.0, "tilt_max": 60.0, "epoch": epoch,
            "blob": torch.rand(size // 4, generator=g)}


def test_full_disk_at_any_byte_keeps_previous_checkpoint_and_mrc(small_disk):
    disk = small_disk.folder
    latest = ckpt.save_rotating(disk / "latest.pt", _payload(1))
    volume = write_mrc(disk / "tomo.mrc", np.arange(100_000, dtype=np.float32).reshape(25, 40, 100), 4.0)
    size = latest.stat().st_size
    # the write fails after 0 bytes, inside the zip header, in the middle, just before the end
    for leave in (0, 100, 5_000, size // 2, size - 4096):
        small_disk.fill(leave)
        with pytest.raises(WriteError) as err:
            ckpt.save_rotating(disk / "latest.pt", _payload(2))
        message = str(err.value)
        assert str(disk / "latest.pt") in message and "free on" in message, message
        assert "previous latest.pt is unchanged" in message
        assert ckpt.load_checkpoint(latest, fallback=False)["epoch"] == 1
        with pytest.raises(WriteError, match="tomo.mrc.*free on"):
            write_mrc(volume, np.zeros((25, 40, 100), np.float32))  # 400 KB > the checkpoint
        np.testing.assert_array_equal(read_mrc(volume).data[0, 0, :3], [0, 1, 2])
        assert _temporaries(disk) == [], leave
        small_disk.free_up()
    # space is free again: the next save works and rotates
    ckpt.save_rotating(disk / "latest.pt", _payload(2))
    assert ckpt.load_checkpoint(latest, fallback=False)["epoch"] == 2
    assert ckpt.load_checkpoint(ckpt.previous_path(latest), fallback=False)["epoch"] == 1


def test_error_names_the_free_space(small_disk):
    small_disk.fill(0)
    with pytest.raises(WriteError) as err:
        ckpt.save_checkpoint(small_disk.folder / "x.pt", _payload(1))
    free = storage.human_bytes(storage.free_space(small_disk.folder))
    assert f"({free} free on {small_disk.folder})" in str(err.value)
    assert "free some space" in str(err.value)


def test_fit_on_a_full_disk_stops_with_one_error_and_continues_once_space_is_free(small_disk, reference):
    t0, t1 = worker.tiny_halves()
    out = small_disk.folder / "fit"
    events = ft.fit_iter(t0, t1, worker.tiny_config(out, **FIT))
    with pytest.raises(WriteError) as err:
        for event in events:
            if isinstance(event, ft.CheckpointSaved) and event.kind == "latest" and event.epoch == 2:
                small_disk.fill(0)  # the disk fills up during epoch 3
    assert str(out) in str(err.value) and "free on" in str(err.value)
    assert ckpt.load_checkpoint(out / "latest.pt", fallback=False)["epoch"] == 2  # intact
    small_disk.free_up()
    list(ft.fit_iter(t0, t1, worker.tiny_config(out, **FIT), resume=out / "latest.pt"))
    resumed = ckpt.load_checkpoint(out / "latest.pt", fallback=False)
    assert resumed["epoch"] == 4
    _same_weights(resumed["state_dict"], reference["state_dict"])
    assert [r[0] for r in resumed["history"]] == [1, 2, 3, 4]
    lines = (out / "losses.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4"]


# ---------------------------------------------------------------------------------------------
# failing write, failing rename


def test_failing_write_or_rename_leaves_previous_file(tmp_path, monkeypatch):
    target = ckpt.save_rotating(tmp_path / "latest.pt", _payload(1))
    mrc = write_mrc(tmp_path / "v.mrc", np.ones((4, 5, 6), np.float32))
    real_replace = os.replace

    def failing_rename(src, dst, *a, **kw):
        if Path(dst).name in ("latest.pt", "v.mrc"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", failing_rename)
    with pytest.raises(WriteError, match=r"latest\.pt: Input/output error .*free on"):
        ckpt.save_rotating(target, _payload(2))
    with pytest.raises(WriteError, match=r"v\.mrc: Input/output error"):
        write_mrc(mrc, np.zeros((4, 5, 6), np.float32))
    monkeypatch.setattr(os, "replace", real_replace)
    assert ckpt.load_checkpoint(target, fallback=False)["epoch"] == 1
    assert float(read_mrc(mrc).data.min()) == 1.0
    assert _temporaries(tmp_path) == []

    def torn_save(obj, f, *a, **kw):  # torch.save dies half-way (a crash inside the serializer)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("killed inside torch.save")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(RuntimeError, match="inside torch.save"):
        ckpt.save_rotating(target, _payload(2))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(target, fallback=False)["epoch"] == 1
    assert _temporaries(tmp_path) == []


def test_written_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        mrc = write_mrc(tmp_path / "v.mrc", np.ones((2, 2, 2), np.float32))
        assert mrc.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
        os.chmod(mrc, 0o640)
        write_mrc(mrc, np.zeros((2, 2, 2), np.float32))
        assert mrc.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions
    finally:
        os.umask(old)


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    for name in (".latest.pt.abc123.tmp", ".best.pt.x.tmp", ".epoch_0004.pt.y.tmp", ".latest.prev.pt.link.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / ".notes.txt.tmp").write_bytes(b"someone else's")
    ckpt.save_rotating(tmp_path / "latest.pt", _payload(1))
    assert _temporaries(tmp_path) == [".notes.txt.tmp"]


# ---------------------------------------------------------------------------------------------
# two good checkpoints: a corrupt latest.pt is survivable


def _flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_rotation_keeps_two_checkpoints_and_loading_falls_back(tmp_path):
    latest = tmp_path / "latest.pt"
    for epoch in (1, 2, 3):
        ckpt.save_rotating(latest, _payload(epoch))
    prev = ckpt.previous_path(latest)
    assert prev.name == "latest.prev.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.prev.pt", "latest.pt"]
    assert ckpt.load_checkpoint(prev)["epoch"] == 2

    for damage in ("flip", "truncate", "delete"):
        ckpt.save_rotating(latest, _payload(3))  # latest = 3, prev = 3 or 2
        ckpt.save_rotating(latest, _payload(4))  # latest = 4, prev = 3
        if damage == "flip":  # a flipped byte in the weights: torch would load it silently
            _flip_byte(latest)
        elif damage == "truncate":
            os.truncate(latest, latest.stat().st_size // 3)
        else:
            latest.unlink()
        with pytest.warns(DDWWarning, match=r"latest\.pt cannot be used .*latest\.prev\.pt.*epoch 3"):
            payload = ckpt.load_checkpoint(latest)
        assert payload["epoch"] == 3 and payload["loaded_from"] == str(prev)
        with pytest.raises(CheckpointError):
            ckpt.load_checkpoint(latest, fallback=False)

    _flip_byte(prev, 0.6)  # both damaged: the error about latest.pt, no silent garbage
    with pytest.raises(CheckpointError, match=r"latest\.pt"):
        ckpt.load_checkpoint(latest)


def test_flipped_byte_in_a_single_checkpoint_is_detected(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "best.pt", _payload(1))
    _flip_byte(path, 0.7)
    with pytest.raises(CheckpointError, match="damaged on disk"):
        ckpt.load_checkpoint(path)


def test_corrupt_latest_resumes_from_previous_to_identical_weights(tmp_path, reference):
    t0, t1 = worker.tiny_halves()
    out = tmp_path / "fit"
    list(ft.fit_iter(t0, t1, worker.tiny_config(out, **dict(FIT, epochs=3))))
    _flip_byte(out / "latest.pt")  # epoch 3 damaged on disk; latest.prev.pt holds epoch 2
    with pytest.warns(DDWWarning, match="latest.prev.pt"):
        events = list(ft.fit_iter(t0, t1, worker.tiny_config(out, **FIT), resume=out / "latest.pt"))
    assert [e.epoch for e in events if isinstance(e, ft.EpochDone)] == [3, 4]  # epoch 3 is redone
    resumed = ckpt.load_checkpoint(out / "latest.pt", fallback=False)
    _same_weights(resumed["state_dict"], reference["state_dict"])
    assert [line.split(",")[0] for line in (out / "losses.csv").read_text().splitlines()[1:]] == ["1", "2", "3", "4"]


class _Killed(BaseException):
    """Stands for SIGKILL inside the process (not an Exception: nothing may catch it)."""


def test_kill_between_the_best_and_latest_writes_never_leaves_a_stale_best(tmp_path, reference, monkeypatch):
    t0, t1 = worker.tiny_halves()
    out = tmp_path / "fit"
    armed, writes = [False], []
    real_fsync = storage.fsync_file

    def fsync_then_maybe_die(path):
        real_fsync(path)
        if armed[0]:
            writes.append(path)
            if len(writes) == 2:
                raise _Killed  # the second checkpoint write of epoch 2, before its rename

    monkeypatch.setattr(storage, "fsync_file", fsync_then_maybe_die)
    events = []
    with pytest.raises(_Killed):
        for event in ft.fit_iter(t0, t1, worker.tiny_config(out, **FIT)):
            events.append(event)
            armed[0] = armed[0] or (isinstance(event, ft.EpochDone) and event.epoch == 2)
    monkeypatch.undo()
    assert ft.EpochDone in {type(e) for e in events}
    assert reference["best"]["epoch"] >= 2  # epoch 2 improved in the straight run: both files are written
    best = ckpt.load_checkpoint(out / "best.pt", fallback=False)
    latest = ckpt.load_checkpoint(out / "latest.pt", fallback=False)
    assert best["epoch"] >= latest["epoch"]  # best.pt may be ahead (redone on resume), never behind
    list(ft.fit_iter(t0, t1, worker.tiny_config(out, **FIT), resume=out / "latest.pt"))
    best = ckpt.load_checkpoint(out / "best.pt", fallback=False)
    assert best["epoch"] == reference["best"]["epoch"]
    _same_weights(best["state_dict"], reference["best"]["state_dict"])
    _same_weights(ckpt.load_checkpoint(out / "latest.pt")["state_dict"], reference["state_dict"])
