"""The pipeline layer: jobs between the engine (``core``) and the front ends (``cli``, ``widgets``).

Typed requests in, typed results and progress events out. Imports ``core`` only — never Qt,
napari or argparse — and no torch at import time. See docs/architecture.md.
"""
from .fitting import FinishedFit, FitRequest, FitResumed, finished_fit, fit_events, plan_fit
from .fit_size import FitSizeChosen, fitting_size, with_fitting_size
from .halves import Halves, HalvesRequest, halves_paths, reconstruct_halves, write_halves
from .names import common_stem, stem_of
from .outputs import OutputExists, earlier_checkpoints, refuse_earlier_fit, refuse_existing
from .refining import RefineRequest, refine, refined_paths, write_refined
from .batch import BatchRefineRequest, RefinePair, find_pairs, refine_batch
from .project import ProjectRequest, run_project

__all__ = [
    "BatchRefineRequest", "ProjectRequest", "RefinePair", "find_pairs", "refine_batch",
    "run_project",
    "FinishedFit", "FitRequest", "FitResumed", "Halves", "HalvesRequest", "OutputExists", "RefineRequest",
    "FitSizeChosen", "fitting_size", "with_fitting_size",
    "common_stem", "earlier_checkpoints", "finished_fit", "fit_events", "halves_paths", "plan_fit",
    "reconstruct_halves", "refine", "refined_paths", "refuse_earlier_fit",
    "refuse_existing", "stem_of", "write_halves", "write_refined",
]
