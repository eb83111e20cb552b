"""What the command line prints: info and warning lines on stderr, only from rank 0."""
from __future__ import annotations

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
