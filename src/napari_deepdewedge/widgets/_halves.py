"""The one even/odd picker of every dock that takes two half-tomograms (Fit, Refine, and the
"two tomograms" mode of Tilt series → halves).

It offers tomograms only (3D images that are not tilt series), starts empty rather than
guessing the first layer twice, finds the partner of a chosen half by name (``X even`` ↔
``X odd``, ``X_EVN`` ↔ ``X_ODD``), warns at once when the two shapes differ, and hands the dock
either the two layers or a ``DDWError`` naming what to fix.
"""
from __future__ import annotations

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QFormLayout

from ._common import LayerCombo, WrapLabel, add_row
from ._names import partner_name

WARNING_STYLE = "color: #e0a040"


class HalvesPicker(QObject):
    """Two tomogram pickers (even, odd) and a shape warning, as rows of the dock's own form
    (so that their labels line up with the dock's other fields).

    ``even``/``odd`` are the two :class:`LayerCombo`; ``changed`` fires when either changes.
    """

    changed = Signal()

    def __init__(self, viewer, form: QFormLayout, *, even_tip: str, odd_tip: str,
                 even_label: str = "Even half", odd_label: str = "Odd half", parent=None):
        super().__init__(parent)
        self._viewer = viewer
        self.even = LayerCombo(viewer, "tomogram", ndim=3, allow_none=True)
        self.odd = LayerCombo(viewer, "tomogram", ndim=3, allow_none=True)
        add_row(form, even_label, self.even, even_tip)
        add_row(form, odd_label, self.odd, odd_tip)
        self.warning = WrapLabel("")
        self.warning.setStyleSheet(WARNING_STYLE)
        self.warning.setVisible(False)
        form.addRow(self.warning)
        self.even.layerChanged.connect(self._on_even)
        self.odd.layerChanged.connect(self._on_odd)
        viewer.layers.events.inserted.connect(self._on_inserted)
        self._on_inserted()

    # ------------------------------------------------------------------ choosing
    def set_pair(self, even: str, odd: str) -> None:
        """Choose both halves by name (names that are not offered are ignored)."""
        if even:
            self.even.set_layer_name(even)
        if odd:
            self.odd.set_layer_name(odd)
        self._check()

    def _on_even(self, name: str) -> None:
        partner = partner_name(name, self.odd.names()) if name else None
        if partner:
            self.odd.set_layer_name(partner)
        self._check()
        self.changed.emit()

    def _on_odd(self, name: str) -> None:
        if name and not self.even.layer_name():
            partner = partner_name(name, self.even.names())
            if partner:
                self.even.set_layer_name(partner)
        self._check()
        self.changed.emit()

    def _on_inserted(self, *_):
        """With nothing chosen yet, take the first complete even/odd pair by name."""
        try:
            if self.even.layer_name() or self.odd.layer_name():
                return
            names = self.even.names()
            for name in names:
                partner = partner_name(name, names)
                if partner and name.lower().endswith(("even", "evn")):
                    self.set_pair(name, partner)
                    return
        except RuntimeError:  # the combo boxes were deleted with the dock
            pass

    # ------------------------------------------------------------------ checking
    def _check(self) -> None:
        """Show the problem with the current pair (different shapes, the same layer) at once."""
        even, odd = self.even.layer(), self.odd.layer()
        text = ""
        if even is not None and odd is not None:
            if even is odd:
                text = "Even and odd are the same layer; choose the other half."
            elif tuple(even.data.shape) != tuple(odd.data.shape):
                text = (f"The halves differ in shape ({_shape(even)} vs {_shape(odd)}); choose "
                        "two tomograms reconstructed alike.")
        self.warning.setText(text)
        self.warning.setVisible(bool(text))

    def layers(self, what: str = "halves"):
        """The chosen (even, odd) layers, or raise DDWError naming the problem and the fix."""
        from ..core.errors import DDWError
        from ..core.reconstruct.halves import check_same_shape

        even, odd = self.even.layer(), self.odd.layer()
        if even is None or odd is None:
            raise DDWError(f"choose the two {what} (even and odd tomograms); make them in step 1 "
                           "'Tilt series → halves'")
        if even.name == odd.name:
            raise DDWError("the even and odd halves must be two different layers")
        check_same_shape(even.data, odd.data, what=what)
        return even, odd


def _shape(layer) -> str:
    return "×".join(str(int(n)) for n in layer.data.shape)
