"""The Fit dock's Mask row (issue 20): a Labels layer picked as the sample mask, *Auto* (the
automatic mask of the picked halves, computed on a worker and shown as a Labels layer over the
tomogram, which the user can paint or erase before Start: the fit reads the layer as it is
then), and whether the *Also fit on* tomograms get automatic masks too.

The mask is :func:`pipeline.masks.compute_auto_mask` with the default settings, as
``deepdewedge fit --mask auto`` and ``deepdewedge mask`` compute it, so the dock and the CLI
give the same mask for the same halves.
"""
from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QCheckBox, QPushButton

from ._common import LayerCombo, add_row, geometry, hbox, layer_source, read_array, tip

MASK_TIP = ("Optional Labels layer (same size as the halves) marking the specimen: training cubes "
            "are taken only where at least 30 % of the cube is labelled (validation cubes too). "
            "Auto computes one from the two halves — where they agree, noise does not — as a "
            "Labels layer you can paint or erase before Start; the fit uses the layer as it is "
            "then.")
EXTRA_TIP = ("Give the tomograms of 'Also fit on' automatic masks too (computed when the fit "
             "starts; the status line says how much of each they keep).")
#: metadata key of a layer made by Auto: the mask's settings (recorded with the checkpoint)
SOURCE_KEY = "ddw_auto_mask"


def mask_layer_name(even_name: str) -> str:
    return f"{even_name} mask"


def _auto_mask_job(job, even, odd):
    """Worker: the automatic mask of the two halves (read here, not in the GUI thread)."""
    from ..pipeline.masks import compute_auto_mask

    result = compute_auto_mask(read_array(even, np.float32), read_array(odd, np.float32))
    return result
    yield  # a generator, as the panel's jobs are  # pragma: no cover


class MaskRow:
    """The "Mask" row: the layer picker, *Auto* and the *Also fit on* switch."""

    def __init__(self, panel, form):
        self.panel = panel
        self.combo = LayerCombo(panel.viewer, "labels", ndim=3, allow_none=True)
        self.auto_button = tip(QPushButton("Auto"), "Compute a sample mask from the picked halves (on a "
                                                     "worker) and show it as a Labels layer to edit.")
        add_row(form, "Mask", hbox(self.combo, self.auto_button), MASK_TIP)
        self.extra_auto = QCheckBox("auto masks for 'Also fit on'")
        add_row(form, "", self.extra_auto, EXTRA_TIP)
        self.result = None  # the last AutoMask shown
        self.auto_button.clicked.connect(lambda: self.auto())

    def auto(self) -> bool:
        """Start computing the automatic mask of the picked halves; False if refused."""
        from functools import partial

        def prepare():
            even, odd = self.panel.halves.layers()  # DDWError naming a missing half
            self._even = even
            return partial(_auto_mask_job, even=layer_source(even), odd=layer_source(odd))

        return self.panel.launch("mask", prepare, on_done=self._show,
                                 controls=(self.auto_button, self.panel.start_button,
                                           self.panel.resume_button),
                                 busy="A job is running; wait for it before computing a mask.",
                                 failed="The automatic mask failed",
                                 start_text="Computing the automatic mask…")

    def _show(self, result) -> None:
        """A Labels layer over the tomogram (its scale and translation), picked as the mask."""
        from ._common import notify_warning

        self.result = result
        even = self._even
        scale, translate = geometry(even)
        name = mask_layer_name(even.name)
        data = result.mask.astype(np.uint8)
        meta = {SOURCE_KEY: result.source()}
        if name in self.panel.viewer.layers:
            layer = self.panel.viewer.layers[name]
            layer.data = data
            layer.metadata.update(meta)
        else:
            layer = self.panel.viewer.add_labels(data, name=name, scale=scale, translate=translate,
                                                 metadata=meta, opacity=0.3)
        self.combo.set_layer_name(name)
        self.panel.set_status(f"{result.summary()}. Paint or erase in '{name}', then Start.")
        if result.fraction >= 1.0:
            notify_warning("The automatic mask found no region where the halves agree more than "
                           "noise; it keeps every voxel. Check the halves, or paint a mask.")

    def job_inputs(self, even_data) -> dict:
        """The mask arguments of the fit job (GUI thread: nothing is read)."""
        from ..core.reconstruct.halves import check_same_shape

        layer = self.combo.layer()
        out = {"mask": None, "mask_name": None, "mask_origin": None,
               "extra_auto": bool(self.extra_auto.isChecked())}
        if layer is not None:
            check_same_shape(even_data, layer.data, what="halves and mask")
            out.update(mask=layer_source(layer), mask_name=layer.name,
                       mask_origin=(layer.metadata or {}).get(SOURCE_KEY))
        return out
