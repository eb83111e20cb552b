"""npe2 sample data: a synthetic cryo-ET tilt series with its angles and ground truth."""
from __future__ import annotations


def sample_layers(shape=(64, 128, 128), tilt_range=(-60.0, 60.0, 2.0), snr=0.3, seed=1):
    """Layer-data tuples for the phantom: the tilt series (angles in metadata) and ground truth."""
    import numpy as np

    from .core.evaluate.phantom import make_sample

    sample = make_sample(shape=shape, tilt_range=tilt_range, snr=snr, seed=seed)
    pixel = float(sample.pixel_size)
    angles = np.asarray(sample.angles, dtype=float)
    series = sample.tilt_series
    low, high = np.percentile(series[len(series) // 2], (0.5, 99.5))
    tilt_kwargs = {
        "name": "phantom tilt series",
        # The tilt axis gets the pixel size too, so the Z slider steps one slice at a time over
        # the tilt series and the tomograms reconstructed from it alike.
        "scale": (pixel, pixel, pixel),
        "units": ("angstrom",) * 3,
        "metadata": {
            "tilt_angles": angles.tolist(),
            "pixel_size": pixel,
            "voxel_size": (pixel, pixel, pixel),
            "thickness": int(shape[0]),
            "synthetic": True,
        },
        "contrast_limits": (float(low), float(high)),
        "axis_labels": ("tilt", "y", "x"),
    }
    truth_kwargs = {
        "name": "phantom ground truth",
        "scale": (pixel, pixel, pixel),
        "metadata": {"voxel_size": (pixel, pixel, pixel), "synthetic": True},
        "visible": False,
        "units": ("angstrom",) * 3,
        "axis_labels": ("z", "y", "x"),
    }
    return [(series, tilt_kwargs, "image"), (sample.ground_truth, truth_kwargs, "image")]


def sample_tilt_series():
    """The napari sample: ``File > Open Sample > DeepDeWedge``."""
    return sample_layers()
