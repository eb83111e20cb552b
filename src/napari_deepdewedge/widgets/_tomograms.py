"""Step 1's "two tomograms (already made)" mode: take two existing half-tomograms as the
halves, with the one even/odd picker. A mixin of :class:`._tiltseries.TiltSeriesWidget`."""
from __future__ import annotations

from qtpy.QtWidgets import QWidget

from ._common import add_row, form_layout, hbox, notify_error, notify_info
from ._halves import HalvesPicker
from ._names import layer_stem


class TomogramsMode:
    """The page of the "two tomograms" mode and its *Use as halves* action."""

    def _build_tomo_page(self) -> QWidget:
        page = QWidget()
        form = form_layout()
        page.setLayout(form)
        self.halves = HalvesPicker(
            self.viewer, form, parent=self,
            even_tip="Tomogram reconstructed from the even projections (or even frames).",
            odd_tip="Tomogram reconstructed from the odd projections (or odd frames); same size.")
        self.tomo_even, self.tomo_odd = self.halves.even, self.halves.odd
        self.tomo_min = self._angle_box(-60.0, "Most negative tilt angle of the data, degrees.")
        self.tomo_max = self._angle_box(60.0, "Most positive tilt angle of the data, degrees.")
        add_row(form, "Tilt range", hbox(self.tomo_min, self.tomo_max),
                "The tilt range the tomograms were reconstructed from; it defines the missing "
                "wedge.")
        self.tomo_even.layerChanged.connect(self._on_tomo_changed)
        return page

    def _on_tomo_changed(self, name: str):
        layer = self.tomo_even.layer()
        if layer is None:
            return
        meta = layer.metadata or {}
        if "tilt_min" in meta and "tilt_max" in meta:
            self.tomo_min.setValue(float(meta["tilt_min"]))
            self.tomo_max.setValue(float(meta["tilt_max"]))

    def use_tomograms(self) -> bool:
        """Mode 'two tomograms': take the chosen layers as halves (no worker needed)."""
        from ..core.errors import DDWError

        try:
            even, odd = self.halves.layers()
            if not self.tomo_min.value() < self.tomo_max.value():
                raise DDWError("the tilt range minimum must be below its maximum")
        except DDWError as exc:
            notify_error(str(exc))
            return False
        for layer in (even, odd):
            layer.metadata["tilt_min"] = self.tomo_min.value()
            layer.metadata["tilt_max"] = self.tomo_max.value()
        state = self.state
        state.source = layer_stem(even.name)
        state.tilt_min, state.tilt_max = self.tomo_min.value(), self.tomo_max.value()
        state.even, state.odd = even.name, odd.name
        state.halves_version += 1
        notify_info(f"Halves set: '{even.name}' and '{odd.name}'.")
        return True
