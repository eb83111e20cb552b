"""Even/odd split by angle-sorted parity, and the other two half entry points."""
import numpy as np
import pytest

from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.reconstruct.halves import check_same_shape, frame_half_series, split_even_odd
from napari_deepdewedge.core.io.mrc import TiltSeries


def _series(angles):
    angles = np.asarray(angles, float)
    data = np.stack([np.full((2, 3), a, np.float32) for a in angles])  # each projection = its angle
    return TiltSeries(data=data, angles=angles, pixel_size=4.0, name="ts")


def test_split_sorts_by_angle_then_parity():
    # stack order as in a dose-symmetric scheme: 0, 3, -3, 6, -6, 9, -9
    series = _series([0, 3, -3, 6, -6, 9, -9])
    even, odd = split_even_odd(series)
    np.testing.assert_allclose(even.angles, [-9, -3, 3, 9])
    np.testing.assert_allclose(odd.angles, [-6, 0, 6])
    # the projections travel with their angles
    np.testing.assert_allclose(even.data[:, 0, 0], even.angles)
    np.testing.assert_allclose(odd.data[:, 0, 0], odd.angles)
    assert even.pixel_size == odd.pixel_size == 4.0
    assert even.name.endswith("even") and odd.name.endswith("odd")


def test_halves_cover_full_range_with_twice_the_step():
    even, odd = split_even_odd(_series(np.arange(-60, 61, 3)))
    assert even.angles.min() == -60 and even.angles.max() == 60
    assert np.allclose(np.diff(even.angles), 6) and np.allclose(np.diff(odd.angles), 6)
    assert set(even.angles).isdisjoint(odd.angles)


def test_too_few_projections():
    with pytest.raises(DDWError, match="too few"):
        split_even_odd(_series([-3, 0, 3]))


def test_halves_of_different_shapes_are_refused():
    with pytest.raises(DDWError, match=r"different shapes \(4, 5, 6\) and \(4, 5, 7\)"):
        check_same_shape(np.zeros((4, 5, 6)), np.zeros((4, 5, 7)))


def test_frame_half_series_checks_shape_and_angles():
    a, b = _series([-3, 0, 3, 6]), _series([-3, 0, 3, 6])
    assert frame_half_series(a, b) == (a, b)
    with pytest.raises(DDWError, match="different tilt angles"):
        frame_half_series(a, _series([-4, 0, 4, 8]))
    c = _series([-3, 0, 3, 6])
    c.data = c.data[:, :, :2]
    with pytest.raises(DDWError, match="different shapes"):
        frame_half_series(a, c)
