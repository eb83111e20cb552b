"""Output files: nothing is overwritten by surprise."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import DDWError


class OutputExists(DDWError):
    """An output file (or a fit's checkpoint folder) already exists and overwriting was not asked.

    ``paths``: the existing files; ``resume_from``: for a checkpoint folder, the checkpoint a
    front end can offer to continue from (else ``None``).
    """

    def __init__(self, message: str, paths, resume_from: Path | None = None):
        super().__init__(message)
        self.paths = [Path(p) for p in paths]
        self.resume_from = resume_from


def refuse_existing(paths, *, overwrite: bool = False) -> list[Path]:
    """Raise :class:`OutputExists` if any of ``paths`` exists (unless ``overwrite``).

    All paths are checked before anything is written, so a refused job writes nothing.
    Returns the paths (as ``Path``).
    """
    paths = [Path(p) for p in paths]
    if overwrite:
        return paths
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more of the outputs)" if len(existing) > 1 else ""
        raise OutputExists(
            f"{existing[0]} already exists{more}; choose another output name or folder, or "
            "replace it on purpose (command line: --overwrite)",
            existing,
        )
    return paths


#: checkpoint files a fit writes into its folder (core.fit.loop)
CHECKPOINT_PATTERNS = ("latest.pt", "best.pt", "stopped.pt", "epoch_*.pt")


def earlier_checkpoints(out_dir) -> list[Path]:
    """Checkpoints of an earlier fit in ``out_dir`` (empty when there are none)."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    found = []
    for pattern in CHECKPOINT_PATTERNS:
        found.extend(sorted(folder.glob(pattern)))
    return found


def resume_point(out_dir) -> Path | None:
    """The checkpoint an interrupted fit in ``out_dir`` continues from: ``stopped.pt`` when it
    is newer than ``latest.pt`` (an interrupted fit continues exactly from it), else
    ``latest.pt``; ``None`` when there is neither."""
    folder = Path(out_dir)
    candidates = [folder / n for n in ("latest.pt", "stopped.pt") if (folder / n).exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def refuse_earlier_fit(out_dir, *, resume=None, overwrite: bool = False) -> None:
    """A new fit (no ``resume``) into a folder holding an earlier fit's checkpoints is refused
    unless ``overwrite``: its checkpoints would be replaced epoch by epoch.

    The error's ``resume_from`` is the checkpoint to continue from: ``stopped.pt`` when it is
    newer than ``latest.pt`` (an interrupted fit continues exactly from it), else ``latest.pt``.
    """
    if resume is not None or overwrite:
        return
    found = earlier_checkpoints(out_dir)
    if not found:
        return
    folder = Path(out_dir)
    resume_from = resume_point(folder) or found[0]
    raise OutputExists(
        f"{folder} already holds checkpoints of an earlier fit ({', '.join(p.name for p in found[:3])}"
        f"{', …' if len(found) > 3 else ''}); continue it by resuming from {resume_from}, or start "
        "afresh in another folder or by overwriting on purpose (command line: --overwrite)",
        found, resume_from=resume_from,
    )
