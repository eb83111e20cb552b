"""Loss logging of a fit: the running sums of an epoch, the record of a finished one, and the
``losses.csv`` file (``epoch,fit_loss,val_loss,seconds``). No torch import.

Checkpoints store these as plain lists (``history`` rows ``[epoch, fit_loss, val_loss or None,
seconds]``, ``partial`` = ``[loss·samples, samples, seconds]``); ``as_list``/``from_list``
convert, so the checkpoint format is unchanged.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

CSV_HEADER = ("epoch", "fit_loss", "val_loss", "seconds")


@dataclass
class EpochTally:
    """Running sums of the epoch in progress (what a mid-epoch checkpoint keeps)."""

    loss_sum: float = 0.0   # batch loss × batch samples
    samples: float = 0.0
    seconds: float = 0.0

    def add(self, batch_loss: float, n: int) -> None:
        self.loss_sum += batch_loss * n
        self.samples += n

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    def as_list(self) -> list[float]:
        return [float(self.loss_sum), float(self.samples), float(self.seconds)]

    @classmethod
    def from_list(cls, values) -> "EpochTally":
        loss_sum, samples, seconds = (float(v) for v in (values or (0.0, 0.0, 0.0)))
        return cls(loss_sum, samples, seconds)


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: a row of the history and of ``losses.csv``."""

    epoch: int
    fit_loss: float
    val_loss: float | None
    seconds: float

    def as_list(self) -> list:
        return [self.epoch, self.fit_loss, self.val_loss, self.seconds]

    @classmethod
    def from_list(cls, row) -> "EpochRecord":
        epoch, fit_loss, val_loss, seconds = row
        return cls(epoch, fit_loss, val_loss, seconds)

    def csv_row(self) -> list:
        return [int(self.epoch), repr(float(self.fit_loss)),
                "" if self.val_loss is None else repr(float(self.val_loss)), f"{self.seconds:.3f}"]


class LossLog:
    """``losses.csv`` in a fit's folder: rewritten from the history when a fit (re)starts,
    one row appended per finished epoch."""

    def __init__(self, path: Path, history: list[EpochRecord]):
        from ..io.storage import atomic_write

        self.path = Path(path)

        def write(tmp):
            with open(tmp, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(CSV_HEADER)
                for record in history:
                    writer.writerow(record.csv_row())

        atomic_write(self.path, write, what="loss log")  # a full disk: one WriteError, old file kept

    def append(self, record: EpochRecord) -> None:
        from ..io.storage import append_line

        append_line(self.path, ",".join(str(v) for v in record.csv_row()) + "\r\n", what="loss log")
