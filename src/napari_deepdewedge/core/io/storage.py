"""Atomic file writes and one clear error when the disk says no (issue 12).

Every file the engine writes (MRC volumes, checkpoints, ``losses.csv``) goes through
:func:`atomic_write`: the bytes go to a temporary file in the target folder
(``.<name>.<random>.tmp``), are flushed to the disk (``fsync``), and only then is the temporary
renamed onto the final name (``os.replace``, atomic on POSIX and Windows). A write interrupted at
any byte — a crash, SIGKILL, a full disk, a failing rename — therefore leaves the previous file
under the final name intact; at worst a stale temporary remains (removed by
:func:`remove_stale_temps` before the next write of the same name).

An ``OSError`` during the write or the rename becomes one :class:`WriteError` (a ``DDWError``)
that names the path, the reason and the free space of its file system, e.g.::

    could not write checkpoint /data/run/latest.pt: No space left on device (12.0 KB free on
    /data/run); free some space (or choose another output folder) and try again — the previous
    latest.pt is unchanged
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import WriteError

TEMP_SUFFIX = ".tmp"


def human_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KB'`` (powers of 1024)."""
    n = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def free_space(folder) -> int | None:
    """Bytes available to this user on the file system holding ``folder`` (None if unknown)."""
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def write_error(path, exc: OSError, what: str = "file") -> WriteError:
    """The one message for a failed write of ``path``: reason, free space, fix, what is kept."""
    path = Path(path)
    free = free_space(path.parent)
    where = f"{human_bytes(free)} free on {path.parent}" if free is not None else f"free space on {path.parent} unknown"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space (or choose another output folder) and try again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write to"
    else:
        fix = "check the disk and the folder, then try again"
    kept = f" — the previous {path.name} is unchanged" if path.exists() else ""
    return WriteError(f"could not write {what} {path}: {reason} ({where}); {fix}{kept}")


def temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temps(path) -> list[Path]:
    """Delete temporaries a killed writer of ``path`` left behind (``.<name>.*.tmp``)."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f"{temp_prefix(path)}*{TEMP_SUFFIX}"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it (Linux); 0o022 where it cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _final_mode(path: Path) -> int:
    """Permissions the written file gets: those of the file it replaces, else 0o666 & ~umask
    (the temporary is created 0o600; a result only its owner can read would surprise)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path, write: Callable[[str], None], *, what: str = "file",
                 before_replace: Callable[[], None] | None = None) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary beside it, which is fsynced
    and renamed onto ``path``. ``before_replace()`` runs between the fsync and the rename (e.g.
    to keep the file being replaced as a backup). An ``OSError`` anywhere → :class:`WriteError`
    (path, reason, free space); any exception removes the temporary and leaves ``path`` as it
    was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc, what) from None
    try:
        write(tmp)
        os.chmod(tmp, _final_mode(path))
        fsync_file(tmp)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(path, exc, what) from None
        raise
    return path


def append_line(path, text: str, *, what: str = "file") -> None:
    """Append one line (a log row); an ``OSError`` → :class:`WriteError`. Not atomic: the
    callers rewrite such logs from their source of truth (e.g. a checkpoint) when resuming."""
    try:
        with open(path, "a", newline="") as fh:
            fh.write(text)
    except OSError as exc:
        raise write_error(path, exc, what) from None
