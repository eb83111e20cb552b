"""npe2 writers: an image layer → ``.mrc`` or an OME-Zarr ``.zarr`` folder, with the voxel size
taken from the layer's scale."""
from __future__ import annotations

from pathlib import Path


def write_mrc_layer(path: str, data, attributes: dict) -> list[str]:
    """Write one image layer as MRC; voxel size from ``scale``, origin from ``translate``."""
    import numpy as np

    from .core.errors import DDWError
    from .core.io.mrc import write_mrc

    array = np.asarray(data)
    if array.ndim != 3:
        raise DDWError(
            f"MRC export needs a 3D layer but '{attributes.get('name', 'layer')}' is "
            f"{array.ndim}D; choose a tomogram or tilt-series layer"
        )
    scale = tuple(attributes.get("scale") or (1.0, 1.0, 1.0))[-3:]
    translate = tuple(attributes.get("translate") or (0.0, 0.0, 0.0))[-3:]
    target = Path(path)
    if target.suffix.lower() != ".mrc":
        target = target.with_suffix(".mrc")
    write_mrc(target, array, voxel_size=scale, origin=translate)
    return [str(target)]


def write_omezarr_layer(path: str, data, attributes: dict) -> list[str]:
    """Write one image layer as an OME-Zarr 0.4 folder (a pyramid; :mod:`core.io.omezarr`); voxel
    size from ``scale``, origin from ``translate``; a multiscale layer's finest level."""
    from .core.errors import DDWError
    from .core.io.omezarr_write import provenance_record, write_omezarr

    if isinstance(data, (list, tuple)):
        data = data[0]
    if len(getattr(data, "shape", ())) != 3:
        raise DDWError(
            f"OME-Zarr export needs a 3D layer but '{attributes.get('name', 'layer')}' is "
            f"{len(getattr(data, 'shape', ()))}D; choose a tomogram layer")
    scale = tuple(attributes.get("scale") or (1.0, 1.0, 1.0))[-3:]
    translate = tuple(attributes.get("translate") or (0.0, 0.0, 0.0))[-3:]
    target = Path(str(path).rstrip("/\\"))
    if target.suffix.lower() != ".zarr":
        target = target.with_name(target.name + ".zarr")
    meta = attributes.get("metadata") or {}
    write_omezarr(target, data, voxel_size=scale, origin=translate,
                  provenance=provenance_record(model=meta.get("model"), command="napari: save layer"))
    return [str(target)]
