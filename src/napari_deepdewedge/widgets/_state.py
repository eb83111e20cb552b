"""Small evented state shared by the DeepDeWedge dock widgets of one viewer.

The sub-widgets never call each other: step 1 writes the halves it produced here, the Fit
widget writes the checkpoint it saved, the Refine widget writes the refined layer name; the
others observe the ``*_version`` counters (``state.events.halves_version.connect``) and
preselect accordingly.
One state object exists per viewer, so separately docked widgets share it too.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

from psygnal import evented


@evented
@dataclass
class DDWState:
    """What the user has produced so far in this viewer (layer *names*, not layer objects)."""

    source: str = ""  # base name used for output layers, e.g. "phantom"
    even: str = ""  # layer name of the even-half tomogram
    odd: str = ""  # layer name of the odd-half tomogram
    fbp: str = ""  # layer name of the full-series reconstruction, if any
    tilt_min: float = -60.0  # tilt range of the halves (degrees)
    tilt_max: float = 60.0
    out_dir: str = ""  # folder of the current fit (checkpoints, losses.csv)
    checkpoint: str = ""  # the model just fitted (latest or best checkpoint path)
    refined: str = ""  # layer name of the refined tomogram
    fitting: bool = False  # a fit is running (Refine refuses to start meanwhile)
    # counters bumped whenever a step (re)produces its result, even under the same names
    halves_version: int = 0
    model_version: int = 0
    refined_version: int = 0


_STATES: "weakref.WeakKeyDictionary[object, DDWState]" = weakref.WeakKeyDictionary()


def _unwrap(obj):
    """napari hands plugins a proxy of the viewer; key the state by the real object."""
    return getattr(obj, "__wrapped__", obj)


def state_for(viewer) -> DDWState:
    """The one :class:`DDWState` of ``viewer`` (created on first use)."""
    key = _unwrap(viewer)
    state = _STATES.get(key)
    if state is None:
        state = DDWState()
        _STATES[key] = state
    return state
