"""Loss logging of a fit: the running sums of an epoch, the record of a finished one, and the
``losses.csv`` file (``epoch,fit_loss,val_loss,seconds`` and, when the fit measures them, one
column per signal of core.fit.signals, empty in epochs without a measurement). No torch import.

Checkpoints store these as plain lists (``history`` rows ``[epoch, fit_loss, val_loss or None,
seconds]``, with a fifth element ``{signal: value}`` in epochs that measured signals;
``partial`` = ``[loss·samples, samples, seconds]``); ``as_list``/``from_list`` convert, so
checkpoints written before the signals load unchanged.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
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
    signals: dict = field(default_factory=dict)  # core.fit.signals: name → value (measured epochs)

    def as_list(self) -> list:
        row = [self.epoch, self.fit_loss, self.val_loss, self.seconds]
        return row + [dict(self.signals)] if self.signals else row

    @classmethod
    def from_list(cls, row) -> "EpochRecord":
        epoch, fit_loss, val_loss, seconds = row[:4]
        signals = row[4] if len(row) > 4 and isinstance(row[4], dict) else {}
        return cls(epoch, fit_loss, val_loss, seconds, {str(k): float(v) for k, v in signals.items()})

    def csv_row(self, signals=()) -> list:
        """The row of ``losses.csv``; ``signals``: the names of the signal columns."""
        def cell(v):
            return "" if v is None else repr(float(v))

        return [int(self.epoch), repr(float(self.fit_loss)), cell(self.val_loss), f"{self.seconds:.3f}",
                *(cell(self.signals.get(name)) for name in signals)]


class LossLog:
    """``losses.csv`` in a fit's folder: rewritten from the history when a fit (re)starts,
    one row appended per finished epoch."""

    def __init__(self, path: Path, history: list[EpochRecord], signals=()):
        from ..io.storage import atomic_write

        self.path = Path(path)
        self.signals = tuple(signals)  # the signal columns after CSV_HEADER

        def write(tmp):
            with open(tmp, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(CSV_HEADER + self.signals)
                for record in history:
                    writer.writerow(record.csv_row(self.signals))

        atomic_write(self.path, write, what="loss log")  # a full disk: one WriteError, old file kept

    def append(self, record: EpochRecord) -> None:
        from ..io.storage import append_line

        append_line(self.path, ",".join(str(v) for v in record.csv_row(self.signals)) + "\r\n", what="loss log")
