"""What the command line prints: info and warning lines on stderr, only from rank 0."""
from __future__ import annotations

import contextlib
import os
import sys


def one_line(text) -> str:
    """Any message as one line (the CLI's error contract: exactly one ``error:`` line)."""
    return " ".join(str(text).split())


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def warn(message: str) -> None:
    print(f"warning: {one_line(message)}", file=sys.stderr)


def info(args, message: str) -> None:
    if not getattr(args, "quiet", False) and is_rank_zero():
        print(message, file=sys.stderr)


@contextlib.contextmanager
def engine_warnings_as_lines():
    """The engine's warnings (an unusual MRC header, no voxel size, a fallback to the previous
    checkpoint, an out-of-memory retry) as one ``warning:`` line each."""
    import warnings

    from ..core.errors import DDWWarning
    from ..core.io.mrc import MRCHeaderWarning, VoxelSizeWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (MRCHeaderWarning, VoxelSizeWarning, DDWWarning)):
            warn(str(message))
        else:
            default(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
