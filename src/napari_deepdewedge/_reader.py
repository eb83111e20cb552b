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


def layer_data_for(path):
    """The layer-data tuple for one file: data, kwargs (scale, translate, metadata), "image"."""
    import numpy as np

    from .core.io import find_angle_file, read_angles, read_mrc

    path = Path(path)
    volume = read_mrc(path)
    metadata = {"source_path": str(path), "voxel_size": volume.voxel_size}
    angle_file = find_angle_file(path)
    if angle_file is not None:
        angles = read_angles(angle_file)
        if angles.size == volume.data.shape[0]:
            metadata["tilt_angles"] = angles.tolist()
            metadata["angle_file"] = str(angle_file)
    data = volume.data
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
