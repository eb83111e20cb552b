"""The napari sample: a tilt series whose angles ride in metadata, plus its ground truth."""
import numpy as np
import pytest

from napari_deepdewedge._sample_data import sample_layers


def test_sample_layers_carry_angles_scale_and_truth():
    (series, series_kw, kind1), (truth, truth_kw, kind2) = sample_layers(
        shape=(16, 32, 32), tilt_range=(-60.0, 60.0, 6.0), snr=1.0, seed=3
    )
    assert kind1 == kind2 == "image"
    angles = series_kw["metadata"]["tilt_angles"]
    assert len(angles) == series.shape[0] == 21
    assert angles[0] == pytest.approx(-60.0) and angles[-1] == pytest.approx(60.0)
    assert series.shape[1:] == truth.shape[1:] == (32, 32)
    assert truth.shape[0] == 16 == series_kw["metadata"]["thickness"]
    pixel = series_kw["metadata"]["pixel_size"]
    assert tuple(truth_kw["scale"]) == (pixel, pixel, pixel)
    assert tuple(series_kw["scale"]) == (pixel, pixel, pixel)
    assert series_kw["units"] == truth_kw["units"] == ("angstrom",) * 3
    lo, hi = series_kw["contrast_limits"]
    assert lo < hi
    assert np.isfinite(series).all() and truth.std() > 0


def test_sample_opens_through_napari_plugin_system(ddw_plugin):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    viewer.open_sample("napari-deepdewedge", "tilt_series")
    names = [layer.name for layer in viewer.layers]
    assert names == ["phantom tilt series", "phantom ground truth"]
    series = viewer.layers["phantom tilt series"]
    assert len(series.metadata["tilt_angles"]) == series.data.shape[0]
