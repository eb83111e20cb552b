"""The value of a fit setting's widget and its inverse, shared by the Fit dock (:mod:`._fit`)
and its event view (:mod:`._fit_view`), which must not import the dock."""
from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox


def field_value(widget):
    """The value a setting's widget shows (combo: its text; check box: bool; spin box: number)."""
    if isinstance(widget, QComboBox):
        return widget.currentText()
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QDoubleSpinBox):
        return float(widget.value())
    return int(widget.value())


def set_field(widget, value) -> None:
    """Show ``value`` in a setting's widget (the inverse of :func:`field_value`)."""
    if isinstance(widget, QComboBox):
        widget.setCurrentText(value)
    elif isinstance(widget, QCheckBox):
        widget.setChecked(bool(value))
    else:
        widget.setValue(value)
