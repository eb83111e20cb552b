import numpy as np
import pytest
import torch

from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.fit.cubes import (
    TARGET_CUBES,
    default_strides,
    extract_subtomos,
    extraction_size,
    grid_corners_1d,
)


def _halves(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)


def test_extraction_size():
    assert extraction_size(96) == 136
    assert extraction_size(48) == 68
    assert extraction_size(16) == 24
    assert extraction_size(64) == 92
    for s in range(1, 200):
        e = extraction_size(s)
        assert e % 2 == 0 and e >= np.sqrt(2) * s and e - 2 < np.sqrt(2) * s


def test_grid_corners_flush_with_far_edge():
    assert grid_corners_1d(40, 24, 8) == [0, 8, 16]
    assert grid_corners_1d(50, 24, 10) == [0, 10, 20, 26]
    assert grid_corners_1d(24, 24, 5) == [0]
    assert grid_corners_1d(23, 24, 5) == []


def test_exact_corners_and_contents():
    shape = (40, 50, 60)
    t0, t1 = _halves(shape)
    sub = extract_subtomos(t0, t1, 16, strides=(8, 10, 12), val_fraction=0.1, seed=3)
    assert sub.extraction_size == 24 and sub.strides == (8, 10, 12) and sub.volume_shape == shape
    expected = {(z, y, x) for z in (0, 8, 16) for y in (0, 10, 20, 26) for x in (0, 12, 24, 36)}
    got = [tuple(c) for c in sub.fit_corners.tolist()] + [tuple(c) for c in sub.val_corners.tolist()]
    assert len(got) == 48 and set(got) == expected
    assert sub.n_val == 5 and sub.n_fit == 43  # round(0.1 · 48)
    assert sub.fit0.shape == (43, 1, 24, 24, 24) and sub.fit0.dtype == torch.float32
    assert sub.val1.shape == (5, 1, 24, 24, 24)
    assert sub.fit_pairs.shape == (43, 2, 24, 24, 24)
    assert sub.fit_pairs.is_contiguous(memory_format=torch.channels_last_3d)
    for cubes, corners, src in ((sub.fit0, sub.fit_corners, t0), (sub.fit1, sub.fit_corners, t1),
                                (sub.val0, sub.val_corners, t0), (sub.val1, sub.val_corners, t1)):
        for i in (0, len(corners) - 1):
            z, y, x = corners[i].tolist()
            np.testing.assert_array_equal(cubes[i, 0].numpy(), src[z:z + 24, y:y + 24, x:x + 24])


def test_halves_are_views_of_the_pairs():
    t0, t1 = _halves((24, 24, 40))
    sub = extract_subtomos(t0, t1, 16, strides=8, val_fraction=0.0)
    torch.testing.assert_close(sub.fit1, sub.fit_pairs[:, 1:2])
    sub.fit0[1] = 7.0  # writing a half updates the pair store
    assert bool((sub.fit_pairs[1, 0] == 7.0).all()) and not bool((sub.fit_pairs[1, 1] == 7.0).any())
    np.testing.assert_array_equal(sub.fit1[0, 0].numpy(), t1[:24, :24, :24])


def test_validation_split_is_seeded_with_fixed_rotations():
    t0, t1 = _halves((40, 50, 60))
    a = extract_subtomos(t0, t1, 16, strides=(8, 10, 12), seed=1)
    b = extract_subtomos(t0, t1, 16, strides=(8, 10, 12), seed=1)
    c = extract_subtomos(t0, t1, 16, strides=(8, 10, 12), seed=2)
    assert torch.equal(a.val_corners, b.val_corners) and torch.equal(a.val_rotations, b.val_rotations)
    assert not torch.equal(a.val_corners, c.val_corners)
    R = a.val_rotations.double()
    assert R.shape == (a.n_val, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(R),
                               rtol=0, atol=1e-6)


def test_validation_counts():
    t0, t1 = _halves((24, 24, 48))  # E = 24, stride 24: two cubes along x (corners 0 and 24)
    sub = extract_subtomos(t0, t1, 16, strides=24, val_fraction=0.1)
    assert sub.n_fit + sub.n_val == 2 and sub.n_val == 1
    sub = extract_subtomos(t0, t1, 16, strides=24, val_fraction=0.0)
    assert sub.n_val == 0 and sub.n_fit == 2 and sub.val_rotations.shape == (0, 3, 3)
    one = extract_subtomos(t0[:, :, :24], t1[:, :, :24], 16, val_fraction=0.5)
    assert one.n_fit == 1 and one.n_val == 0
    many = extract_subtomos(t0, t1, 16, strides=1, val_fraction=0.9)
    assert many.n_fit >= 1


def test_roi_mask_keeps_cubes_by_fraction():
    shape = (40, 50, 60)
    t0, t1 = _halves(shape)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[:, :, :30] = 1
    # x corners 0, 12, 24, 36 → inside fractions 1, 18/24, 6/24, 0 → keep x ∈ {0, 12} at 0.3
    sub = extract_subtomos(t0, t1, 16, strides=(8, 10, 12), mask=mask, val_fraction=0.0)
    xs = sorted({c[2] for c in sub.fit_corners.tolist()})
    assert xs == [0, 12] and sub.n_fit == 3 * 4 * 2
    sub = extract_subtomos(t0, t1, 16, strides=(8, 10, 12), mask=mask, min_mask_fraction=0.2, val_fraction=0.0)
    assert sorted({c[2] for c in sub.fit_corners.tolist()}) == [0, 12, 24]
    sub = extract_subtomos(t0, t1, 16, strides=(8, 10, 12), mask=torch.from_numpy(mask).bool(),
                           min_mask_fraction=1.0, val_fraction=0.0)
    assert sorted({c[2] for c in sub.fit_corners.tolist()}) == [0]


def test_default_strides():
    for shape, s in [((200, 700, 700), 96), ((180, 464, 464), 96), ((96, 256, 256), 48), ((68, 68, 68), 48)]:
        t = default_strides(shape, s)
        assert t[0] == t[1] == t[2] and np.ceil(s / 2) <= t[0] <= s
        e = extraction_size(s)

        def count(tt):
            return np.prod([len(grid_corners_1d(n, e, tt)) for n in shape])

        if count(t[0]) >= TARGET_CUBES:
            assert t[0] == s or count(t[0] + 1) < TARGET_CUBES  # the largest stride that suffices
        else:
            assert t[0] == int(np.ceil(s / 2))  # densest allowed
    assert default_strides((180, 464, 464), 96) == (48, 48, 48)
    assert default_strides((300, 1000, 1000), 96) == (96, 96, 96)
    t0, t1 = _halves((40, 50, 60))
    assert extract_subtomos(t0, t1, 16).strides == default_strides((40, 50, 60), 16)


def test_accepts_torch_and_device():
    t0, t1 = _halves((24, 24, 24))
    sub = extract_subtomos(torch.from_numpy(t0), torch.from_numpy(t1), 16, device="cpu")
    assert sub.fit0.device.type == "cpu" and sub.n_fit == 1
    assert sub.to("cpu").fit0.shape == sub.fit0.shape


def test_errors():
    t0, t1 = _halves((40, 50, 60))
    with pytest.raises(DDWError, match=r"different shapes"):
        extract_subtomos(t0, t1[:, :, :50], 16)
    with pytest.raises(DDWError, match=r"size 20 .*multiple of 8.*use 16 or 24"):
        extract_subtomos(t0, t1, 20)
    with pytest.raises(DDWError, match=r"size 8 .*use 16"):
        extract_subtomos(t0, t1, 8)
    with pytest.raises(DDWError, match=r"multiple of 4.*use 20 or 24"):
        extract_subtomos(t0, t1, 22, depth=2)
    with pytest.raises(DDWError, match=r"\(40, 50, 60\).*edge 46.*axis Z.*at most 24"):
        extract_subtomos(t0, t1, 32)
    small0, small1 = _halves((20, 60, 60))
    with pytest.raises(DDWError, match=r"edge 24.*too small"):
        extract_subtomos(small0, small1, 16)
    bad = t0.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(DDWError, match="half 0 contains 1 NaN/inf"):
        extract_subtomos(bad, t1, 16)
    bad[1, 2, 3] = np.inf
    with pytest.raises(DDWError, match="NaN/inf"):
        extract_subtomos(t0, bad, 16)
    with pytest.raises(DDWError, match="constant"):
        extract_subtomos(np.full_like(t0, 3.0), t1, 16)
    with pytest.raises(DDWError, match="mask shape"):
        extract_subtomos(t0, t1, 16, mask=np.ones((40, 50, 59)))
    with pytest.raises(DDWError, match="no sub-tomogram is at least 30% inside the mask"):
        extract_subtomos(t0, t1, 16, mask=np.zeros((40, 50, 60)))
    with pytest.raises(DDWError, match="val_fraction"):
        extract_subtomos(t0, t1, 16, val_fraction=1.0)
    with pytest.raises(DDWError, match="strides"):
        extract_subtomos(t0, t1, 16, strides=(0, 4, 4))
    with pytest.raises(DDWError, match="3D"):
        extract_subtomos(t0[0], t1[0], 16)
