"""Labels for a narrow dock: :class:`WrapLabel` (word-wrapped, breaks long file names, never
widens its dock), :func:`breakable` and :func:`elide`. Re-exported by :mod:`._common`."""
from __future__ import annotations

import re

from qtpy.QtCore import QSize
from qtpy.QtWidgets import QLabel

ZWSP = "\u200b"  # zero-width space: a place where Qt may break a line
LONG_WORD = 20  # characters: longer words (file names, paths) get break points


def breakable(text: str) -> str:
    """``text`` with a zero-width space after every ``/ \\ _ . -`` of words longer than
    ``LONG_WORD`` characters (outside HTML tags), so that a word-wrapped label can break a long
    file name instead of widening its dock."""
    def split_word(match):
        return re.sub(r"([/\\_.\-])", "\\1" + ZWSP, match.group(0))

    parts = re.split(r"(<[^>]*>)", str(text))
    return "".join(part if part.startswith("<") else
                    re.sub(r"[^\s<]{%d,}" % (LONG_WORD + 1), split_word, part) for part in parts)


class WrapLabel(QLabel):
    """A word-wrapped label that never makes its dock wider than the dock is: long words break
    (:func:`breakable`; :meth:`text` returns the text as given) and its minimum width is small,
    so a word that still does not fit is cut at the label's edge, not the whole panel at the
    dock's."""

    MIN_WIDTH = 60

    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        super().setText(breakable(text))

    def text(self) -> str:
        return super().text().replace(ZWSP, "")

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        hint = super().minimumSizeHint()
        return QSize(min(hint.width(), self.MIN_WIDTH), hint.height())


def elide(text: str, n: int = 32) -> str:
    """``text`` cut to ``n`` characters in its middle (``TS_0…ffind4.txt``); show the whole in
    a tooltip."""
    text = str(text)
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head] + "…" + text[len(text) - (n - 1 - head):]
