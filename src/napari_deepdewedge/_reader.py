"""npe2 reader: MRC-family files and OME-Zarr folders → image layers with voxel scale in Å
(thin over core.io and core.io.omezarr; an OME-Zarr pyramid opens as one multiscale layer).

Opening never reads the volume: the layer's data is the memory map (a half-float file becomes
a lazy float32 dask view), and the contrast limits come from a sample of about a million voxels in ten blocks of rows
(:func:`contrast_sample`), so a 2 GB tomogram opens in about the time its header takes
(bench/viewer_load.py gives the figures)."""
from __future__ import annotations

from pathlib import Path

from .core.io.mrc import MRC_SUFFIXES


def get_reader(path):
    """Return a reader for a single MRC-family path, or ``None`` to let other readers try."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    from .core.io.omezarr import is_zarr_path

    if is_zarr_path(path):
        return read_omezarr_layers
    if Path(path).suffix.lower() not in MRC_SUFFIXES:
        return None
    return read_mrc_layers


def layer_data_for(path, voxel_size=None):
    """The layer-data tuple for one file: data, kwargs (scale, translate, metadata), "image".

    Scale in Å with units; a tilt series' angles come from the one resolving function
    (:func:`core.io.tilt_metadata.resolve_tilt_metadata`) with whatever angle or metadata file
    sits beside the stack: ``metadata["tilt_angles"]`` (one per projection of the layer),
    ``"excluded_views"`` (1-based views the layer still holds that are to be left out),
    ``"angle_file"`` and ``"tilt_metadata"`` (kind, source, count, range, excluded views and
    their angles, tilt axis, a one-line summary). A metadata file that does not fit the stack
    leaves ``"tilt_metadata_error"`` (the dock shows it) instead of failing the open.
    """
    import numpy as np

    from .core.errors import DDWError
    from .core.io.mrc import read_mrc
    from .core.io.tilt_metadata import find_metadata_file, resolve_tilt_metadata

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
    if data.dtype == np.float16:  # the display cannot take half floats: convert lazily
        import dask.array as da

        data = da.from_array(data, chunks=(1, *data.shape[1:])).astype(np.float32)
    low, high = sample_limits(contrast_sample(data))
    kwargs = {
        "name": path.stem,
        "scale": volume.voxel_size,
        "translate": volume.origin,
        "metadata": metadata,
        "units": ("angstrom",) * 3,
        "axis_labels": ("tilt" if "tilt_angles" in metadata else "z", "y", "x"),
        "contrast_limits": (low, high),  # given, so napari computes no range of its own
    }
    return data, kwargs, "image"


def contrast_sample(data, planes: int = 5, blocks: int = 2, budget: int = 1_000_000):
    """About ``budget`` voxels of ``data`` (Z, Y, X) for contrast limits: ``blocks`` runs of
    whole rows spread over Y in each of ``planes`` planes spread over Z. Contiguous rows, not a
    strided grid: a memory map pages in whole pages, and this kernel maps large folios (about
    1 MiB per fault was measured), so a strided sample would touch every page of the planes it
    visits; ten blocks touch about 10-20 MiB of any file (tests/test_viewer_load.py)."""
    import numpy as np

    n, ny, nx = (int(v) for v in data.shape[-3:])
    z_count, y_count = max(1, min(planes, n)), max(1, min(blocks, ny))
    rows = max(1, min(ny // y_count, budget // (z_count * y_count * max(nx, 1))))
    parts = []
    for i in range(z_count):
        z = (2 * i + 1) * n // (2 * z_count)
        for j in range(y_count):
            y0 = min(ny - rows, (2 * j + 1) * ny // (2 * y_count) - rows // 2)
            parts.append(np.asarray(data[z, max(0, y0):max(0, y0) + rows], dtype=np.float32)
                         .ravel())
    return np.concatenate(parts)


def sample_limits(sample, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Percentile contrast limits of a sample (finite values only), widened when flat."""
    import numpy as np

    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, (low, high)))
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def read_mrc_layers(path):
    """Read one file (napari passes a str or a one-element list); errors become DDWError."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return [layer_data_for(path)]


def read_omezarr_layers(path):
    """One OME-Zarr image folder → one layer: multiscale (every level a dask array over its
    zarr array, nothing read but the coarsest level's contrast sample), scale in Å from level
    0's coordinateTransformations and units, origin as translate (:mod:`core.io.omezarr`)."""
    import dask.array as da

    from .core.io.omezarr import omezarr_levels

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(str(path).rstrip("/\\"))
    pyramid = omezarr_levels(path)
    levels = [da.from_zarr(level) for level in pyramid["levels"]]
    levels = [d.astype("float32") if d.dtype == "float16" else d for d in levels]  # as for MRC
    low, high = sample_limits(contrast_sample(levels[-1]))
    kwargs = {
        "name": path.name[:-len(path.suffix)] if path.suffix else path.name,
        "scale": pyramid["voxel_size"],
        "translate": pyramid["origin"],
        "metadata": {"source_path": str(path), "voxel_size": pyramid["voxel_size"],
                     "ome_zarr_version": pyramid["version"]},
        "units": ("angstrom",) * 3,
        "axis_labels": ("z", "y", "x"),
        "contrast_limits": (low, high),
        "multiscale": len(levels) > 1,
    }
    return [(levels if len(levels) > 1 else levels[0], kwargs, "image")]
