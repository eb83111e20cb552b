"""The Fit dock's "Also fit on" row: more tomograms, given as files, to fit on beside the
picked layer pair (issue 9), and the request of a fit on all of them.

The row takes a glob of even halves (``rec/*_even.mrc``; each odd partner found by its stem) or
a pair list (``.txt``: ``EVEN [ODD [ANGLES | MIN,MAX]]`` per line) — the rules of
``pipeline.batch.find_pairs_in``, as in the Refine-many dock — and says under it what it found.
Each extra pair's tilt range: its list column, else an angle file beside it
(``pipeline.fit_inputs.listed_or_beside_tilt_range``, as ``deepdewedge fit``), else the
dock's tilt range. The GUI thread only lists files and reads angle files; the volumes are
memory-mapped by the job (:func:`fit_request`, worker thread only).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from qtpy.QtCore import QTimer

from ._common import WrapLabel, add_row, path_field, read_array
from ._names import layer_stem

ALSO_FIT_TIP = ("More tomograms to fit the same model on, as files: a glob of even halves "
                "(rec/*_even.mrc; each odd partner is found by its name: _even → _odd, _EVN → "
                "_ODD) or a pair list (.txt, lines 'EVEN [ODD [ANGLES | MIN,MAX]]'). Each keeps "
                "its own tilt range: its list column, else a .tlt beside it, else the tilt range "
                "above. Leave empty to fit on the picked pair only.")
#: names listed in the row's summary before "…"
SHOWN_NAMES = 6


@dataclass
class FitPairs:
    """The job's message before the cubes are cut: the tomograms of the fit, the memory
    model's estimate (``pipeline.fit_inputs.memory_line``) and voxel-size warnings."""

    names: list
    memory: str | None
    warnings: list
    masks: list = field(default_factory=list)  # what the masks keep (pipeline.masks)


class MorePairsRow:
    """The "Also fit on" field and the line under it that lists what it found (or the error)."""

    def __init__(self, form, picked_name):
        """``picked_name()``: the name of the pair picked as layers (a file of that name is
        not fitted on twice)."""
        row, self.edit = path_field("rec/*_even.mrc or pairs.txt (optional)", ALSO_FIT_TIP,
                                    filters="Pair lists (*.txt *.lst);;All files (*)")
        self.found = WrapLabel("")
        add_row(form, "Also fit on", row, ALSO_FIT_TIP)
        add_row(form, "", self.found, ALSO_FIT_TIP)
        self._picked_name = picked_name
        self._timer = QTimer(self.found)  # list the files once typing pauses
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.refresh)
        self.edit.textChanged.connect(lambda *_: self._timer.start())

    def pairs(self, default_tilt) -> list:
        """The extra pairs (``pipeline.RefinePair`` with each one's tilt range), without the
        picked pair; ``DDWError`` naming what is wrong (a glob matching nothing, a missing
        partner, a bad angle file)."""
        from ..pipeline.batch import find_pairs_in
        from ..pipeline.fit_inputs import listed_or_beside_tilt_range

        spec = self.edit.text().strip()
        if not spec:
            return []
        picked = self._picked_name()
        return [replace(p, tilt_range=listed_or_beside_tilt_range(p.even_path, p.odd_path, p.tilt_range)
                        or tuple(float(v) for v in default_tilt))
                for p in find_pairs_in(spec) if p.name != picked]

    def _names_the_picked_pair(self) -> bool:
        from ..pipeline.batch import find_pairs_in

        picked = self._picked_name()
        return bool(picked) and any(p.name == picked for p in find_pairs_in(self.edit.text()))

    def refresh(self) -> None:
        """Say what the field names: "3 more tomograms: TS_02, TS_03, TS_04" or the error."""
        from ..core.errors import DDWError

        self._timer.stop()
        if not self.edit.text().strip():
            self.found.setText("")
            return
        try:
            pairs = self.pairs((0.0, 0.0))
        except DDWError as exc:
            self.found.setText(f"⚠ {exc}")
            return
        names = [p.name for p in pairs[:SHOWN_NAMES]] + (["…"] if len(pairs) > SHOWN_NAMES else [])
        count = f"{len(pairs)} more tomogram{'' if len(pairs) == 1 else 's'}"
        text = f"{count}: {', '.join(names)}" if pairs else "no more tomograms"
        if self._names_the_picked_pair():
            text += f" ({self._picked_name()}, the pair picked above, is fitted once)"
        self.found.setText(text)


def pair_source(even, odd) -> dict:
    """What the checkpoint records of the halves: their stem (the name the CLI records) and
    their files when the layers were opened from files."""
    def path_of(layer):
        path = getattr(getattr(layer, "source", None), "path", None)
        return str(path) if path else None

    name = str((even.metadata or {}).get("ddw_source") or layer_stem(even.name))
    return {"name": name, "even_path": path_of(even), "odd_path": path_of(odd)}


def fit_request(tomo0, tomo1, mask, config, resume, source=None, extra=(), *, mask_name=None,
                mask_origin=None, extra_auto=False):
    """The ``FitRequest`` of the dock: the picked layer pair (with the form's tilt range), then
    the ``extra`` pairs (``MorePairsRow.pairs``) memory-mapped. Worker thread only: reads the
    layers and opens the files. ``mask``: the mask layer's data (any label > 0 is inside;
    checked by ``pipeline.masks.apply_mask``), recorded as that layer (``mask_name``; with
    ``mask_origin``, the settings of the Auto that made it); ``extra_auto``: the extra pairs get
    automatic masks. What the masks did is in ``request.mask_notes`` (lines; warnings start
    with ``"warning: "``)."""
    from ..pipeline import FitRequest
    from ..pipeline.fit_inputs import open_half_pair
    from ..pipeline.fitting import HalfPair
    from ..pipeline.masks import AUTO, apply_mask

    tomo0, tomo1 = read_array(tomo0), read_array(tomo1)
    first = HalfPair(even=tomo0, odd=tomo1, tilt_range=config.tilt_range,
                     voxel_size=tuple(config.voxel_size), **(source or {}))
    notes = []
    if mask is not None:
        notes += apply_mask(first, read_array(mask) > 0, name=mask_name or "mask")
        if mask_origin:
            first.mask_source = dict(first.mask_source, auto=dict(mask_origin))
    pairs = [first] + [open_half_pair(p.even_path, p.odd_path, p.tilt_range) for p in extra]
    if extra_auto:
        for pair in pairs[1:]:
            notes += apply_mask(pair, AUTO)
    request = FitRequest(pairs=pairs, config=config, resume=resume or None,
                         given=frozenset() if resume else None)
    request.mask_notes = notes
    return request


def pairs_message(request, config) -> FitPairs:
    """What the dock shows of the request before the cubes are cut (``config``: the planned
    settings, the checkpoint's for a resume)."""
    from ..pipeline.fit_inputs import memory_line, voxel_size_warnings

    from ..pipeline.masks import cube_lines

    pairs = request.pairs
    notes = list(getattr(request, "mask_notes", []))
    warnings = [n[len("warning: "):] for n in notes if n.startswith("warning: ")]
    masks = [n for n in notes if not n.startswith("warning: ")] + cube_lines(pairs, config)
    return FitPairs(names=[p.name for p in pairs], memory=memory_line(pairs, config),
                    warnings=voxel_size_warnings(pairs) + warnings, masks=masks)
