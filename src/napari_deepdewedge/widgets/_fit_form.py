"""Step 3's form: one row per fit setting that has a dock row (``core/fit/settings.py``), the
presets, the cube size fitted to the halves (with the note under it), the halves' tilt range,
and the ``FitConfig`` the form describes. A mixin of :class:`._fit.FitWidget`, which runs the
fit."""
from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox, QDoubleSpinBox, QSpinBox

from ._common import (
    DEVICE_TIP,
    WrapLabel,
    add_row,
    compact,
    device_choices,
    geometry,
    hbox,
    path_field,
    tip,
)
from ._fit_fields import field_value, set_field
from ._names import PREVIEW_NAME


def _spin(lo, hi, value, step=1, suffix=""):
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    return box


class FitForm:
    """The Fit dock's setting rows and what they mean."""

    # ------------------------------------------------------------------ form
    def _setting_rows(self, form) -> dict:
        """One widget per fit setting that has a dock row (core/fit/settings.py), in the
        declared order; a row with ``join`` shares the line before it. Each widget is also the
        attribute of the setting's name (``self.epochs``); the tilt range is ``self.tilt_min``
        and ``self.tilt_max``."""
        from ..core.fit.config import FitConfig
        from ..core.fit.settings import BY_NAME, SETTINGS

        defaults = FitConfig()
        fields, lines = {}, []
        for setting in SETTINGS:
            row = setting.row
            if row is None:
                continue
            widget, shown = self._setting_widget(setting, row, defaults)
            fields[setting.name] = widget
            if setting.name != "tilt_range":
                setattr(self, setting.name, widget)
            # the device row's tip is the one every dock shows; a preview names its layer
            text = (row.tip or DEVICE_TIP).replace("{preview}", PREVIEW_NAME)
            if row.join and lines:
                tip(widget, text)
                lines[-1][2].append(shown)
            else:
                lines.append((row.label, text, [shown]))
        size_label = BY_NAME["subtomo_size"].row.label
        for label, text, widgets in lines:
            if len(widgets) > 1:  # spin boxes sharing a line lose their +/- buttons: they fit
                widgets = [compact(w) if isinstance(w, QAbstractSpinBox) else w for w in widgets]
            add_row(form, label, widgets[0] if len(widgets) == 1 else hbox(*widgets), text)
            if label == size_label:  # the note saying a preset's size was fitted to the halves
                self.size_note = WrapLabel("")
                add_row(form, "", self.size_note, text)
        self._size_typed = False  # the user set the cube size (else it is the preset's)
        self._setting_size = False  # the form itself is changing it
        return fields

    def _setting_widget(self, setting, row, defaults):
        """``(widget, what the form shows)`` of one setting."""
        if setting.name == "tilt_range":
            self.tilt_min, self.tilt_max = QDoubleSpinBox(), QDoubleSpinBox()
            for box, value in ((self.tilt_min, defaults.tilt_min), (self.tilt_max, defaults.tilt_max)):
                box.setRange(row.lo, row.hi)
                box.setDecimals(row.decimals)
                box.setSuffix(row.suffix)
                box.setValue(value)
                compact(box)
            return (self.tilt_min, self.tilt_max), hbox(self.tilt_min, self.tilt_max)
        if setting.name == "device":
            box = QComboBox()
            box.addItems(device_choices())
            return box, box
        if setting.name == "out_dir":
            shown, box = path_field("folder for checkpoints", row.tip, dialog="dir")
            return box, shown
        default = getattr(defaults, setting.name)
        if setting.type is bool:
            box = QCheckBox()
            box.setChecked(default)
        elif setting.choices:
            box = QComboBox()
            box.addItems(list(setting.choices))
            box.setCurrentText(default)
        elif setting.type is float:
            box = QDoubleSpinBox()
            if row.decimals is not None:
                box.setDecimals(row.decimals)
            box.setRange(row.lo, row.hi)
            box.setSingleStep(row.step)
            box.setValue(default)
        else:
            box = _spin(int(row.lo), int(row.hi), int(default), int(row.step or 1), row.suffix)
        return box, box

    def _setting_value(self, name: str):
        return field_value(self.fields[name])

    def apply_preset(self, name: str) -> None:
        values = self._presets.get(name)
        if not values:
            return
        self._size_typed = False  # a preset's cube size is fitted to the halves
        self._preset_size = int(values.get("subtomo_size", self.subtomo_size.value()))
        for setting, value in values.items():
            if setting != "subtomo_size":
                set_field(self.fields[setting], value)
        self._fit_size_to_halves()

    def set_fitted_size(self, size: int, note: str = "") -> None:
        """Show a cube size the form did not get from the user (a fitted preset size, a
        resumed checkpoint's), keeping it a preset's size."""
        self._setting_size = True
        try:
            self.subtomo_size.setValue(int(size))
        finally:
            self._setting_size = False
        self.size_note.setText(note)

    def _on_size_changed(self, *_):
        if not self._setting_size:
            self._size_typed = True
            self.size_note.setText("")

    def _fit_size_to_halves(self) -> None:
        """The preset's cube size, lowered to the largest that fits the picked halves
        (``pipeline.fit_size``, as ``deepdewedge fit`` without ``--subtomo-size``), with a
        note under the field saying so; a typed size is left alone."""
        if self._size_typed or not hasattr(self, "_preset_size"):
            return
        from ..pipeline.fit_size import fitting_size

        try:
            layer = self.even.layer()
        except RuntimeError:  # the viewer is closing
            return
        shapes = [tuple(layer.data.shape)] if layer is not None and layer.data.ndim == 3 else []
        choice = fitting_size(self._preset_size, self.depth.value(), shapes)
        self.set_fitted_size(choice.size, choice.short or "")

    def _on_halves(self, *_):
        state = self.state
        self.halves.set_pair(state.even, state.odd)
        self.tilt_min.setValue(state.tilt_min)
        self.tilt_max.setValue(state.tilt_max)
        if state.source and not self._out_dir_edited:
            self.out_dir.setText(str(Path.home() / "deepdewedge-runs" / state.source.replace(" ", "_")))

    def _on_even_changed(self, name: str):
        layer = self.even.layer()
        if layer is None:
            return
        meta = layer.metadata or {}
        if "tilt_min" in meta and "tilt_max" in meta:
            self.tilt_min.setValue(float(meta["tilt_min"]))
            self.tilt_max.setValue(float(meta["tilt_max"]))
        self._fit_size_to_halves()
        self._update_slab()

    def config(self):
        """The FitConfig of the form (raises DDWError for values the engine refuses)."""
        from ..core.fit.config import FitConfig

        layer = self.even.layer()
        voxel = geometry(layer)[0] if layer is not None else (1.0, 1.0, 1.0)
        out_dir = self.out_dir.text().strip() or None
        special = {"tilt_range", "device", "out_dir"}
        values = {name: self._setting_value(name) for name in self.fields if name not in special}
        cfg = FitConfig(
            **values, tilt_min=float(self.tilt_min.value()), tilt_max=float(self.tilt_max.value()),
            device=self.device.currentText(), out_dir=out_dir,
            voxel_size=tuple(float(v) for v in voxel),
        )
        return cfg.validate()

    def _check_size_fits(self, shape) -> None:
        """DDWError when the cube size does not fit the halves, naming the largest that does
        (the engine's rule: a cube is cut at ceil_even(√2·size) voxels)."""
        from ..core.errors import DDWError
        from ..core.fit.cubes import extraction_size
        from ..pipeline.fit_size import largest_fitting_size

        size, depth = self.subtomo_size.value(), self.depth.value()
        if size % 2 ** depth or extraction_size(size) <= min(shape):
            return  # a size that is no multiple of 2^depth: the config's check says so
        fits = largest_fitting_size(size, depth, [shape])
        fix = (f"choose a cube size of at most {fits}" if fits is not None else
               "these halves are too small to fit on; lower the depth or use larger halves")
        raise DDWError(f"cube size {size} does not fit the halves "
                       f"({'×'.join(map(str, shape))}): a {size} cube is cut at "
                       f"{extraction_size(size)} voxels (√2 × {size}, room for rotations); {fix}")
