"""napari dock widgets for DeepDeWedge: only layout, parameter forms, workers and layer updates.

Every computation goes through :mod:`napari_deepdewedge.core`. The widgets share one small
evented state per viewer (:mod:`._state`) instead of calling each other.
"""
from ._batch_refine import BatchRefineWidget
from ._combined import DeepDeWedgeWidget
from ._compare import CompareWidget
from ._fit import FitWidget
from ._inspector import FourierInspectorWidget
from ._refine import RefineWidget
from ._state import DDWState, state_for
from ._tiltseries import TiltSeriesWidget

__all__ = [
    "BatchRefineWidget",
    "CompareWidget",
    "DDWState",
    "DeepDeWedgeWidget",
    "FitWidget",
    "FourierInspectorWidget",
    "RefineWidget",
    "TiltSeriesWidget",
    "state_for",
]
