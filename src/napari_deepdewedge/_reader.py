"""npe2 reader: MRC-family files → image layers with voxel scale (thin over core.io)."""
from __future__ import annotations

from pathlib import Path

from .core.io import MRC_SUFFIXES


def get_reader(path):
    """Return a reader for a single MRC-family path, or ``None`` to let other readers try."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if Path(path).suffix.lower() not in MRC_SUFFIXES:
        return None
    return read_mrc_layers


def layer_data_for(path, voxel_size=None):
    """The layer-data tuple for one file: data, kwargs (scale, translate, metadata), "image".

    Scale in Å with units; a tilt series' angles come from the one resolving function
    (:func:`core.tilt_metadata.resolve_tilt_metadata`) with whatever angle or metadata file
    sits beside the stack: ``metadata["tilt_angles"]`` (one per projection of the layer),
    ``"excluded_views"`` (1-based views the layer still holds that are to be left out),
    ``"angle_file"`` and ``"tilt_metadata"`` (kind, source, count, range, excluded views and
    their angles, tilt axis, a one-line summary). A metadata file that does not fit the stack
    leaves ``"tilt_metadata_error"`` (the dock shows it) instead of failing the open.
    """
    import numpy as np

    from .core.errors import DDWError
    from .core.io import read_mrc
    from .core.tilt_metadata import find_metadata_file, resolve_tilt_metadata

    path = Path(path)
    volume = read_mrc(path, voxel_size=voxel_size)
    data = volume.data
    metadata = {"source_path": str(path), "voxel_size": volume.voxel_size}
    if volume.header_notes:
        metadata["mrc_header_notes"] = list(volume.header_notes)
    if find_metadata_file(path) is not None:
        try:
            found = resolve_tilt_metadata(None, int(data.shape[0]), path,
                                          frame_shape=tuple(data.shape[1:]))
            metadata.update(found.to_layer_metadata())
        except DDWError as exc:
            metadata["tilt_metadata_error"] = str(exc)
    if data.dtype == np.float16:  # the display cannot take half floats
        data = np.asarray(data, dtype=np.float32)
    finite = np.asarray(data[data.shape[0] // 2], dtype=np.float32)
    low, high = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
    kwargs = {
        "name": path.stem,
        "scale": volume.voxel_size,
        "translate": volume.origin,
        "metadata": metadata,
        "units": ("angstrom",) * 3,
        "axis_labels": ("tilt" if "tilt_angles" in metadata else "z", "y", "x"),
    }
    if high > low:
        kwargs["contrast_limits"] = (float(low), float(high))
    return data, kwargs, "image"


def read_mrc_layers(path):
    """Read one file (napari passes a str or a one-element list); errors become DDWError."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return [layer_data_for(path)]
