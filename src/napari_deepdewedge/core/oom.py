"""Out of memory on the device during refinement (issue 12): smaller batches, then smaller tiles.

:class:`BatchRunner` wraps the model call of :func:`core.refine.predict_tiled`: a batch that
does not fit is split in halves (the smaller size sticks), down to one cube;
:func:`core.refine.refine_tomogram` then restarts the half with tiles of half the edge
(:func:`smaller_tile`). Every decision is reported (a callback, by default a ``DDWWarning``).
CPU tests inject ``torch.OutOfMemoryError`` (tests/test_faults.py).
"""
from __future__ import annotations

from typing import Callable


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (``torch.OutOfMemoryError``) or MPS ("MPS backend out of memory") allocation failure."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_device_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def warn_user(message: str) -> None:
    import warnings

    from .errors import DDWWarning

    warnings.warn(message, DDWWarning, stacklevel=3)


class BatchRunner:
    """Run one batch of cubes through ``run``; on an out-of-memory error split it into halves
    (and keep the smaller size for the following batches), down to one cube. An error with one
    cube is re-raised: :func:`refine_tomogram` then halves the tile. ``report(message)`` is told
    every time the batch shrinks."""

    def __init__(self, run, batch_size: int, device, report: Callable[[str], None]):
        self.run, self.limit, self.device, self.report = run, int(batch_size), device, report

    def __call__(self, x):
        import torch

        outputs, i = [], 0
        while i < x.shape[0]:
            n = min(self.limit, x.shape[0] - i)
            try:
                outputs.append(self.run(x[i:i + n]))
                i += n
            except Exception as exc:
                if not is_out_of_memory(exc) or n == 1:
                    raise
                release_device_memory(self.device)
                self.limit = max(1, n // 2)
                self.report(f"out of memory on {self.device} with a batch of {n} cubes; continuing with batches "
                            f"of {self.limit}")
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def smaller_tile(model, s: int) -> int | None:
    """Half the tile edge, rounded down to what the network accepts (``2**depth``), or None."""
    m = 2 ** int(getattr(model, "depth", 1))
    half = (s // 2) // m * m
    return half if half >= max(m, 2) else None
