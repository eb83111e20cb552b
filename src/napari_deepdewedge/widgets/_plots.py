"""Matplotlib pictures inside the docks (``backend_qtagg`` canvas through qtpy), in napari's
colours: the live loss curve and the side-by-side Fourier x–z slices with wedge boundaries."""
from __future__ import annotations

import math
import time

import numpy as np
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

FIT_COLOUR = "#4aa3ff"
VAL_COLOUR = "#ffb14a"
SIGNAL_COLOUR = "#7fe07f"  # a progress signal (core.fit.signals), on its own right-hand axis
WEDGE_COLOUR = "#3ee0ff"  # cyan: stands out on the magma colour map
CTF_COLOUR = "#a8ff60"  # light green, dotted: the CTF zeros, apart from the wedge's cyan


def theme_colours(viewer) -> dict:
    """Background/text colours of the viewer's napari theme (dark if unknown)."""
    from napari.utils.theme import get_theme

    try:
        theme = get_theme(viewer.theme)
    except Exception:
        theme = get_theme("dark")
    return {
        "background": theme.background.as_hex(),
        "panel": theme.foreground.as_hex(),
        "text": theme.text.as_hex(),
        "grid": theme.highlight.as_hex(),
    }


def _style_axes(ax, colours: dict) -> None:
    ax.set_facecolor(colours["background"])
    for spine in ax.spines.values():
        spine.set_color(colours["grid"])
    ax.tick_params(colors=colours["text"], labelsize=7, length=2)
    ax.xaxis.label.set_color(colours["text"])
    ax.yaxis.label.set_color(colours["text"])
    ax.title.set_color(colours["text"])


class _Canvas(QWidget):
    """A matplotlib figure in a QWidget."""

    def __init__(self, viewer, height: int, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.colours = theme_colours(viewer)
        self.figure = Figure(figsize=(3.2, height / 100), dpi=100,
                             facecolor=self.colours["background"])
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.canvas.setMinimumWidth(200)
        self.canvas.setFixedHeight(height)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)

    def set_height(self, height: int) -> None:
        self.canvas.setFixedHeight(height)

    def draw(self) -> None:
        self.canvas.draw_idle()


class LossPlot(_Canvas):
    """Fitting and validation loss per epoch, log y axis; and one progress signal measured
    without ground truth (core.fit.signals, ``signal_name``) on a linear right-hand axis.

    A redraw (clearing the axes, plotting, ``tight_layout``) costs tens of milliseconds of the
    GUI thread; it is done at most once per ``min_redraw_s``: a point that arrives sooner is
    drawn, with any others, by one redraw when that time is up (short epochs, or a resumed
    fit's whole history, then cost one redraw, not one each). The data lists are always
    current."""

    min_redraw_s = 0.3

    def __init__(self, viewer, parent=None):
        super().__init__(viewer, 190, parent)
        from qtpy.QtCore import QTimer

        self._last_redraw = -math.inf  # time.monotonic() of the last redraw
        self._pending = QTimer(self)  # the one later redraw, when points came too soon
        self._pending.setSingleShot(True)
        self._pending.timeout.connect(self._redraw_now)
        self.epochs: list[int] = []
        self.fit_losses: list[float] = []
        self.val_epochs: list[int] = []
        self.val_losses: list[float] = []
        self.signal_name = "fsc_area"  # which of EpochDone.signals is drawn
        self.signal_epochs: list[int] = []
        self.signal_values: list[float] = []
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        self._fit_line = None
        self._val_line = None
        self.clear()

    def clear(self) -> None:
        self.epochs.clear()
        self.fit_losses.clear()
        self.val_epochs.clear()
        self.val_losses.clear()
        self.signal_epochs.clear()
        self.signal_values.clear()
        self._redraw()

    def set_signal(self, name: str) -> None:
        """Draw the signal ``name`` (a key of ``EpochDone.signals``) from now on."""
        if name != self.signal_name:
            self.signal_name = name
            self.signal_epochs.clear()
            self.signal_values.clear()
            self._redraw()

    def truncate_from(self, epoch: int) -> None:
        """Forget points at ``epoch`` and later (a resumed fit redoes them)."""
        keep = [i for i, e in enumerate(self.epochs) if e < epoch]
        self.epochs[:] = [self.epochs[i] for i in keep]
        self.fit_losses[:] = [self.fit_losses[i] for i in keep]
        keep = [i for i, e in enumerate(self.val_epochs) if e < epoch]
        self.val_epochs[:] = [self.val_epochs[i] for i in keep]
        self.val_losses[:] = [self.val_losses[i] for i in keep]
        keep = [i for i, e in enumerate(self.signal_epochs) if e < epoch]
        self.signal_epochs[:] = [self.signal_epochs[i] for i in keep]
        self.signal_values[:] = [self.signal_values[i] for i in keep]
        self._redraw()

    def add_epoch(self, epoch: int, fit_loss: float, val_loss: float | None = None,
                  signals: dict | None = None) -> None:
        self.epochs.append(int(epoch))
        self.fit_losses.append(float(fit_loss))
        if val_loss is not None and math.isfinite(float(val_loss)):
            self.val_epochs.append(int(epoch))
            self.val_losses.append(float(val_loss))
        value = (signals or {}).get(self.signal_name)
        if value is not None and math.isfinite(float(value)):
            self.signal_epochs.append(int(epoch))
            self.signal_values.append(float(value))
        self._redraw()

    def _redraw(self) -> None:
        """Redraw now, or once later if the last redraw was under ``min_redraw_s`` ago."""
        if self._pending.isActive():
            return
        wait = self._last_redraw + self.min_redraw_s - time.monotonic()
        if wait <= 0:
            self._redraw_now()
        else:
            self._pending.start(int(1000 * wait) + 1)

    def flush(self) -> None:
        """Draw a pending redraw now (the end of a fit shows its last point at once)."""
        if self._pending.isActive():
            self._redraw_now()

    def _redraw_now(self) -> None:
        self._pending.stop()
        self._last_redraw = time.monotonic()
        ax = self.ax
        ax.clear()
        self.ax2.clear()
        _style_axes(ax, self.colours)
        _style_axes(self.ax2, self.colours)
        self.ax2.set_visible(bool(self.signal_epochs))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        positive = [v for v in self.fit_losses + self.val_losses if v > 0]
        if positive:
            from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _pos: f"{v:.2g}")
            ax.yaxis.set_major_formatter(plain)
            if max(positive) / min(positive) < 10:  # within a decade: a few plain ticks
                ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
                ax.yaxis.set_minor_locator(NullLocator())
            else:
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
        ax.grid(True, which="major", color=self.colours["grid"], linewidth=0.5, alpha=0.6)
        if self.epochs:
            ax.plot(self.epochs, self.fit_losses, "-o", color=FIT_COLOUR, markersize=2.5,
                    linewidth=1.2, label="fitting")
        if self.val_epochs:
            ax.plot(self.val_epochs, self.val_losses, "-s", color=VAL_COLOUR, markersize=2.5,
                    linewidth=1.2, label="validation")
        if self.signal_epochs:
            self.ax2.plot(self.signal_epochs, self.signal_values, "-^", color=SIGNAL_COLOUR, markersize=2.5,
                          linewidth=1.0, label=self.signal_name)
            self.ax2.set_ylabel(self.signal_name, fontsize=8, color=SIGNAL_COLOUR)
        if self.epochs or self.val_epochs:
            handles, labels = ax.get_legend_handles_labels()
            more = self.ax2.get_legend_handles_labels() if self.signal_epochs else ([], [])
            legend = ax.legend(handles + more[0], labels + more[1], fontsize=7, loc="upper right", frameon=False)
            for text in legend.get_texts():
                text.set_color(self.colours["text"])
            last = max(self.epochs + self.val_epochs)
            ax.set_xlim(0.5, max(last, 2) + 0.5)
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        else:
            ax.text(0.5, 0.5, "loss per epoch appears here", ha="center", va="center",
                    transform=ax.transAxes, color=self.colours["text"], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        try:
            self.figure.tight_layout(pad=0.4)
        except Exception:  # tight_layout can fail on degenerate sizes; the plot still shows
            pass
        self.draw()


class SpectraPanel(_Canvas):
    """Central x–z slices of log power spectra side by side (two per row), wedge edges and the
    CTF zeros on top."""

    def __init__(self, viewer, parent=None):
        super().__init__(viewer, 150, parent)
        self.titles: list[str] = []
        self.set_spectra([])

    def set_spectra(self, items, lines=None, rings=None) -> None:
        """``items``: list of (title, image (Z, X)); ``lines``: per item a (2, 2, 2) array of
        wedge-boundary segments in pixel (row, col) coordinates, or ``None``; ``rings``: per
        item the CTF zeros as ``(n, 2)`` ellipse semi-axes (rows, cols) in pixels about the
        centre ``(Z // 2, X // 2)`` (``core.ctf.xz_zero_radii``), or ``None``."""
        fig = self.figure
        fig.clear()
        self.titles = [title for title, _ in items]
        self.rings_drawn = [0] * len(items)  # how many CTF zeros each picture shows
        if not items:
            ax = fig.add_subplot(111)
            _style_axes(ax, self.colours)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "choose volumes above to see\ntheir x–z power spectra",
                    ha="center", va="center", color=self.colours["text"], fontsize=8,
                    transform=ax.transAxes)
            self.set_height(110)
            self.draw()
            return
        ncols = min(len(items), 2)
        nrows = math.ceil(len(items) / ncols)
        # height from the images' aspect ratio so nothing is squashed
        z, x = items[0][1].shape
        cell_w = 320 / ncols
        cell_h = max(60.0, min(cell_w * z / max(x, 1), 220.0)) + 26
        self.set_height(int(nrows * cell_h) + 8)
        for i, (title, image) in enumerate(items):
            ax = fig.add_subplot(nrows, ncols, i + 1)
            _style_axes(ax, self.colours)
            image = np.asarray(image)
            lo, hi = np.percentile(image, (1.0, 99.8))
            ax.imshow(image, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest",
                      aspect="auto")
            if lines is not None and lines[i] is not None:
                for seg in np.asarray(lines[i]):
                    ax.plot(seg[:, 1], seg[:, 0], color=WEDGE_COLOUR, linewidth=1.3, dashes=(4, 2))
            if rings is not None and rings[i] is not None and len(rings[i]):
                centre_z, centre_x = image.shape[0] // 2, image.shape[1] // 2
                turn = np.linspace(0.0, 2 * np.pi, 181)
                for rz, rx in np.asarray(rings[i]):
                    ax.plot(centre_x + rx * np.cos(turn), centre_z + rz * np.sin(turn),
                            color=CTF_COLOUR, linewidth=0.9, dashes=(1.2, 1.8), alpha=0.9)
                self.rings_drawn[i] = len(rings[i])
            ax.set_xlim(-0.5, image.shape[1] - 0.5)
            ax.set_ylim(image.shape[0] - 0.5, -0.5)
            ax.set_title(_shorten(title), fontsize=7.5, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("kx", fontsize=7, labelpad=1)
            ax.set_ylabel("kz", fontsize=7, labelpad=1)
        fig.subplots_adjust(left=0.06, right=0.99, top=1 - 18 / (nrows * cell_h),
                            bottom=12 / (nrows * cell_h), wspace=0.12, hspace=0.35)
        self.draw()


def _shorten(text: str, n: int = 26) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]
