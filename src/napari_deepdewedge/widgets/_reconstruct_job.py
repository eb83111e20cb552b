"""The worker side of step 1 (Tilt series → halves): read the stacks, run the pipeline."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import percentile_limits, read_array
from ._workers import Progress, run_with_progress


@dataclass
class Reconstructed:
    """What the job hands the dock: the pipeline's ``Halves`` and the contrast limits of each
    volume (``"even"``, ``"odd"``, ``"FBP"``), computed on the worker so that showing them
    reads nothing in the GUI thread."""

    halves: object
    limits: dict
    ctf: dict | None = None  # core.ctf.mean_ctf_record of the views' defocus, None: unknown


def pixel_size_of(layer) -> float:
    """Projection pixel size in Å: layer metadata if given, else the layer's X scale."""
    try:
        value = float((layer.metadata or {}).get("pixel_size", 0.0))
    except (TypeError, ValueError):
        value = 0.0
    return value if value > 0 else float(layer.scale[-1])


def read_stacks(inputs) -> list[np.ndarray]:
    """The stack(s) the job reconstructs: read, the excluded views dropped, the tilt axis on Y."""
    stacks = [read_array(inputs["data"])]
    if inputs["data_odd"] is not None:
        stacks.append(read_array(inputs["data_odd"]))
    if inputs.get("keep") is not None:  # views the tilt metadata excludes but the stack holds
        stacks = [stack[inputs["keep"]] for stack in stacks]
    if inputs["axis_x"]:
        stacks = [np.swapaxes(stack, 1, 2) for stack in stacks]
    return stacks


def reconstruct_job(job, inputs, params):
    """Worker generator: read the stack(s) here, then the pipeline's reconstruct_halves (the
    same call as `deepdewedge reconstruct`)."""
    from ..core.io.mrc import TiltSeries
    from ..pipeline import HalvesRequest, reconstruct_halves

    stacks = read_stacks(inputs)  # here, on the worker thread: the GUI never waits
    # the views' CTF (core.ctf.ViewCTF, None when none was found) when the dock asked for it
    meta = {"ctf": inputs["ctf"]} if params.get("ctf") and "ctf" in inputs else {}
    series = [TiltSeries(data=stack, angles=inputs["angles"], pixel_size=inputs["pixel_size"],
                         origin=inputs["origin"], name=name, meta=dict(meta))
              for stack, name in zip(stacks, inputs["names"])]
    if len(series) == 1:
        request = HalvesRequest(series=series[0], **params)
    else:
        request = HalvesRequest(frame_halves=(series[0], series[1]), **params)
    yield Progress("Back-projecting", 0, 1)
    halves = yield from run_with_progress(reconstruct_halves, job.stop, "Back-projecting",
                                          request)
    volumes = (("even", halves.even), ("odd", halves.odd), ("FBP", halves.full))
    # the mean defocus (phase flipped or not) goes onto the layers: the inspector's CTF zeros
    return Reconstructed(halves, {key: percentile_limits(data) for key, data in volumes
                                  if data is not None}, inputs.get("ctf_record"))
