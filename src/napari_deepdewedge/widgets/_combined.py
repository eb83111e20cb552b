"""The combined "DeepDeWedge" dock: the five steps in order, in collapsible sections."""
from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from ._common import WrapLabel
from ._panel import DDWPanel
from ._compare import CompareWidget
from ._fit import FitWidget
from ._inspector import FourierInspectorWidget
from ._refine import RefineWidget
from ._tiltseries import TiltSeriesWidget

STEPS = (
    ("1  Tilt series → halves", TiltSeriesWidget),
    ("2  Fourier inspector", FourierInspectorWidget),
    ("3  Fit", FitWidget),
    ("4  Refine", RefineWidget),
    ("5  Compare", CompareWidget),
)


class DeepDeWedgeWidget(DDWPanel):
    """All of DeepDeWedge in one dock: each step opens when the one before has a result."""

    title = "DeepDeWedge"

    def __init__(self, napari_viewer, parent=None):
        from superqt import QCollapsible

        super().__init__(napari_viewer, parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        body = QWidget()
        lay = QVBoxLayout(body)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.setSpacing(2)
        intro = WrapLabel("Denoise a tomogram and fill its missing wedge: make two halves, fit "
                          "a network to them, refine. Hover over any field for help.")
        lay.addWidget(intro)
        self.steps = []
        self.sections = []
        for title, cls in STEPS:
            step = cls(self.viewer)
            section = QCollapsible(title)
            section.setDuration(0)
            section.addWidget(step)
            section.content().layout().setContentsMargins(0, 0, 0, 0)
            lay.addWidget(section)
            self.steps.append(step)
            self.sections.append(section)
        lay.addStretch(1)
        scroll.setWidget(body)
        self.tiltseries, self.inspector, self.fit, self.refine, self.compare = self.steps
        self.sections[0].expand(animate=False)
        # bound methods, not lambdas: the shared state must not keep this dock alive
        self.state.events.halves_version.connect(self._on_halves)
        self.state.events.model_version.connect(self._on_model)
        self.state.events.refined_version.connect(self._on_refined)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(300)

    def sizeHint(self):
        return QSize(340, 900)

    def _on_halves(self, *_):
        self._open(1, 2)

    def _on_model(self, *_):
        self._open(3)

    def _on_refined(self, *_):
        self._open(4)

    def _open(self, *indices):
        try:
            for i in indices:
                self.sections[i].expand(animate=False)
        except RuntimeError:  # deleted
            pass

    def shutdown(self, wait: float = 10.0) -> None:
        for step in self.steps:
            step.shutdown(wait=wait)
