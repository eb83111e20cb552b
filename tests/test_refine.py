"""Refinement: tiling, blending and masking are exact (known answers with simple models)."""
import numpy as np
import pytest
import torch

from napari_deepdewedge.core.refine import tiles as rf
from napari_deepdewedge.core.refine import tomogram
from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.fourier import observed_mask


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


class AddOne(torch.nn.Module):
    def forward(self, x):
        return x + 1.0


class Recorder(torch.nn.Module):
    """Identity that records batch sizes and the device of its inputs."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape))
        return x


def _wedge_masked(v, tmin, tmax):
    m = observed_mask(v.shape, tmin, tmax, rfft=True).numpy().astype(np.float64)
    return np.fft.irfftn(np.fft.rfftn(v.astype(np.float64)) * m, s=v.shape, axes=(0, 1, 2))


@pytest.mark.parametrize(
    "shape,s,overlap",
    [((20, 37, 29), 16, None), ((33, 40, 50), 16, 0), ((33, 40, 50), 16, 7), ((33, 40, 50), 16, 11),
     ((10, 5, 70), 8, 3), ((16, 16, 16), 16, None)],
)
def test_identity_model_reproduces_wedge_masked_tomogram(shape, s, overlap):
    rng = np.random.default_rng(sum(shape))
    v = (rng.standard_normal(shape) * 3e-3 + 5e-3).astype(np.float32)  # low-variance input
    out = tomogram.refine_tomogram(Identity(), v, -54, 62, subtomo_size=s, overlap=overlap, batch_size=3,
                            match_resampling=False)
    ref = _wedge_masked(v, -54, 62)
    assert out.shape == v.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    # the mask did something (the test would catch a missing mask)
    assert np.abs(ref - v).max() > 1e-2 * np.abs(v - v.mean()).max()


def test_blend_weights_sum_to_one_and_standardization_is_undone():
    """A model that adds 1 in standardized units adds exactly one std to every voxel."""
    rng = np.random.default_rng(3)
    v = (rng.standard_normal((21, 30, 26)) * 4 + 7).astype(np.float32)
    mean, std = float(v.astype(np.float64).mean()), float(v.astype(np.float64).std())
    out = tomogram.refine_tomogram(AddOne(), v, -60, 60, subtomo_size=8, overlap=3, match_resampling=False)
    ref = _wedge_masked(v, -60, 60) + std
    np.testing.assert_allclose(out, ref, atol=2e-5 * np.abs(ref).max())
    # without standardization the +1 is in raw units
    out_raw = tomogram.refine_tomogram(AddOne(), v, -60, 60, subtomo_size=8, overlap=3, standardize=False,
                                 match_resampling=False)
    np.testing.assert_allclose(out_raw, _wedge_masked(v, -60, 60) + 1.0, atol=2e-5 * np.abs(ref).max())
    # explicit stats
    out_st = tomogram.refine_tomogram(AddOne(), v, -60, 60, subtomo_size=8, overlap=3, standardize=(mean, 2.0),
                                match_resampling=False)
    np.testing.assert_allclose(out_st, _wedge_masked(v, -60, 60) + 2.0, atol=2e-5 * np.abs(ref).max())


def test_tiles_cover_and_ramps_normalize():
    for n, s, ov in [(37, 16, 6), (16, 16, 5), (5, 16, 5), (100, 48, 16)]:
        starts, weights = rf.axis_weights(n, s, ov)
        assert starts[0] == 0 and starts[-1] + s >= n
        total = np.zeros(starts[-1] + s)
        for s0, w in zip(starts, weights):
            assert (w > 0).all()
            total[s0:s0 + s] += w
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert rf.tile_starts(100, 48, 16) == [0, 32, 64]
    assert rf.default_overlap(48) == 16 and rf.default_overlap(32) == 11
    np.testing.assert_array_equal(rf.reflect_index(4, 9), [0, 1, 2, 3, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(np.pad(np.arange(5), (0, 6), mode="reflect"), rf.reflect_index(5, 11))


def test_progress_batches_and_bounded_batches():
    v = np.random.default_rng(0).standard_normal((20, 40, 40)).astype(np.float32)
    calls = []
    rec = Recorder()
    tomogram.refine_tomogram(rec, v, -60, 60, subtomo_size=16, overlap=6, batch_size=4, tile_size=16,
                       progress=lambda d, t: calls.append((d, t)))
    n = rf.n_tiles(v.shape, 16, 6, tile_size=16)
    assert n == 2 * 4 * 4
    assert calls == [(i + 1, 8) for i in range(8)]
    assert all(sz[0] <= 4 and sz[1:] == (1, 16, 16, 16) for sz in rec.sizes)


def test_refine_halves_average_and_difference():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((18, 24, 20)).astype(np.float32)
    b = (2 * a + rng.standard_normal(a.shape)).astype(np.float32)
    calls = []
    res = tomogram.refine_halves(Identity(), a, b, subtomo_size=8, tilt_min=-60, tilt_max=60, keep_halves=True,
                           standardize=False, match_resampling=False, progress=lambda d, t: calls.append((d, t)))
    ra, rb = _wedge_masked(a, -60, 60), _wedge_masked(b, -60, 60)
    np.testing.assert_allclose(res.half0, ra, atol=1e-5)
    np.testing.assert_allclose(res.half1, rb, atol=1e-5)
    np.testing.assert_allclose(res.refined, (ra + rb) / 2, atol=1e-5)
    np.testing.assert_allclose(res.difference, ra - rb, atol=1e-5)
    assert calls[-1][0] == calls[-1][1] and len(calls) == calls[-1][1]
    res2 = tomogram.refine_halves(Identity(), a, b, subtomo_size=8, tilt_min=-60, tilt_max=60, standardize=False,
                            match_resampling=False)
    assert res2.half0 is None and res2.difference is None
    np.testing.assert_allclose(res2.refined, res.refined, atol=1e-6)


def test_refine_halves_from_checkpoint(tmp_path):
    from napari_deepdewedge.core.model import checkpoint as ckpt
    from napari_deepdewedge.core.model.unet import UNet3D

    torch.manual_seed(0)
    model = UNet3D(channels=4, depth=2)
    torch.nn.init.zeros_(model.final.weight)  # residual + zero last layer = identity
    torch.nn.init.zeros_(model.final.bias)
    payload = dict(format=ckpt.FORMAT_TAG, version=ckpt.FORMAT_VERSION, arch=model.arch_dict(),
                   state_dict=model.state_dict(), subtomo_size=16, tilt_min=-50.0, tilt_max=60.0,
                   standardization=[[0.0, 1.0], [0.0, 1.0]])
    path = ckpt.save_checkpoint(tmp_path / "m.pt", payload)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((16, 20, 24)).astype(np.float32)
    b = rng.standard_normal((16, 20, 24)).astype(np.float32)
    res = tomogram.refine_halves(path, a, b, device="cpu", keep_halves=True, match_resampling=False)
    np.testing.assert_allclose(res.half0, _wedge_masked(a, -50, 60), atol=1e-4)
    np.testing.assert_allclose(res.half1, _wedge_masked(b, -50, 60), atol=1e-4)


def test_bad_input_names_the_fix():
    v = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(DDWError, match="constant"):
        tomogram.refine_tomogram(Identity(), v, -60, 60, subtomo_size=8)
    v = np.random.default_rng(0).standard_normal((8, 8, 8)).astype(np.float32)
    with pytest.raises(DDWError, match="overlap 8 is invalid"):
        tomogram.refine_tomogram(Identity(), v, -60, 60, subtomo_size=8, overlap=8)
    with pytest.raises(DDWError, match="needs subtomo_size"):
        tomogram.refine_halves(Identity(), v, v, tilt_min=-60, tilt_max=60)
    with pytest.raises(DDWError, match="different shapes"):
        tomogram.refine_halves(Identity(), v, v[:4], subtomo_size=8, tilt_min=-60, tilt_max=60)


def test_chunked_masking_and_z_range_match_whole_volume():
    rng = np.random.default_rng(11)
    v = rng.standard_normal((14, 23, 18)).astype(np.float32)
    whole = rf.prepare_half(v, -45, 58, (0.5, 2.0))
    chunked = rf.prepare_half(v, -45, 58, (0.5, 2.0), chunk_y=4)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    np.testing.assert_allclose(whole, _wedge_masked((v - 0.5) / 2.0, -45, 58), atol=1e-5)
    slab = rf.prepare_half(v, -45, 58, (0.5, 2.0), z_range=(3, 9), chunk_y=5)
    np.testing.assert_allclose(slab, whole[3:9], atol=1e-6)
    with pytest.raises(DDWError, match="outside"):
        rf.prepare_half(v, -45, 58, None, z_range=(10, 20))


def test_tile_shape_known_answers():
    # default tiles: larger than the fitting cube, shrunk to equal tiles per axis, multiples of 8
    assert rf.DEFAULT_TILE == 160
    assert rf.tile_shape((64, 160, 160), 48, 16, None, 8) == (64, 160, 160)  # one tile
    assert rf.tile_shape((128, 512, 512), 48, 16, None, 8) == (128, 144, 144)  # Z in one tile
    assert rf.tile_shape((128, 512, 512), 48, 16, 128, 8) == (128, 120, 120)
    assert rf.tile_shape((128, 512, 512), 48, 16, 96, 8) == (72, 88, 88)  # the default before
    assert rf.tile_shape((128, 512, 512), 48, 16, 48, 8) == (48, 48, 48)  # today's tiling
    assert rf.tile_shape((20, 50, 50), 48, 16, None, 8) == (48, 56, 56)  # never below the cube
    for shape in [(37, 101, 64), (300, 1000, 1000)]:
        tile = rf.tile_shape(shape, 32, 11, None, 8)
        assert all(t % 8 == 0 and 32 <= t <= rf.DEFAULT_TILE for t in tile)
    assert rf.n_tiles((128, 512, 512), 48, 16, multiple=8) == 1 * 4 * 4
    assert rf.n_tiles((128, 512, 512), 48, 16, tile_size=48) == 4 * 16 * 16


def test_tile_batch_size_by_memory():
    tile = (96, 96, 96)
    per_tile = 24 * 4 * 16 * 96**3
    assert rf.tile_activation_bytes(tile, 16) == per_tile
    assert rf.tile_batch_size(tile, 16, 4, None) == 4
    assert rf.tile_batch_size(tile, 16, 4, 10 * per_tile) == 4
    assert rf.tile_batch_size(tile, 16, 4, 3 * per_tile) == 1
    assert rf.tile_batch_size(tile, 16, 4, per_tile // 10) == 1


def test_default_tiles_cover_short_axes_in_one_tile():
    v = np.random.default_rng(0).standard_normal((20, 40, 40)).astype(np.float32)
    rec = Recorder()
    out = tomogram.refine_tomogram(rec, v, -60, 60, subtomo_size=16, overlap=6, batch_size=4, standardize=False,
                             match_resampling=False)
    assert [sz[1:] for sz in rec.sizes] == [(1, 20, 40, 40)]
    np.testing.assert_allclose(out, _wedge_masked(v, -60, 60), atol=1e-5)


def test_unet_tiles_blend_close_to_whole_volume():
    # a U-Net's instance norm sees the tile: big tiles (default) stay close to one whole-volume pass
    from napari_deepdewedge.core.model.unet import UNet3D

    torch.manual_seed(0)
    net = UNet3D(channels=4, depth=2).eval()
    v = np.random.default_rng(3).standard_normal((16, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        whole = net(torch.from_numpy(v)[None, None]).numpy()[0, 0]
    big = rf.predict_tiled(net, v, 16, overlap=6, tile_size=48)
    small = rf.predict_tiled(net, v, 16, overlap=6, tile_size=16)
    err_big, err_small = (float(np.abs(x - whole).mean()) for x in (big, small))
    assert err_big < err_small


def test_tile_edge_is_lowered_until_one_tile_fits_in_memory():
    shape, s, ov, m = (128, 512, 512), 48, 16, 8
    fits = 2 * rf.tile_activation_bytes((128, 144, 144), 16)  # the default tile needs half of this
    assert rf.tile_edge_for_memory(shape, s, ov, None, m, 16, None) == rf.DEFAULT_TILE  # unknown memory
    assert rf.tile_edge_for_memory(shape, s, ov, None, m, 16, fits) == 160
    # one byte short: edges 152 and 144 still give (128, 144, 144) tiles; 136 gives (128, 120, 120)
    assert rf.tile_edge_for_memory(shape, s, ov, None, m, 16, fits - 1) == 136
    assert rf.tile_shape(shape, s, ov, 136, m) == (128, 120, 120)
    assert rf.tile_edge_for_memory(shape, s, ov, None, m, 64, fits) == 96  # 4× the channels: smaller
    assert rf.tile_shape(shape, s, ov, 96, m) == (72, 88, 88)
    assert rf.tile_edge_for_memory(shape, s, ov, None, m, 16, 1000) == s  # never below the fitting cube
    assert rf.tile_edge_for_memory(shape, s, ov, 64, m, 16, None) == 64  # an explicit edge is kept


def test_tiles_shrink_to_the_memory_bound_and_the_result_is_unchanged(monkeypatch):
    v = np.random.default_rng(2).standard_normal((20, 40, 40)).astype(np.float32)
    budget = 2 * rf.tile_activation_bytes((20, 24, 24), 16)  # Recorder: no channels attribute → 16
    monkeypatch.setattr(rf, "_free_memory", lambda dev: budget)
    rec = Recorder()
    out = tomogram.refine_tomogram(rec, v, -60, 60, subtomo_size=8, overlap=3, batch_size=8, standardize=False,
                             match_resampling=False)
    # edge 39 is the first that fits: Y and X in two tiles of 22 (22 + 22 − 3 ≥ 40), Z whole
    assert {sz[1:] for sz in rec.sizes} == {(1, 20, 22, 22)}
    assert sum(sz[0] for sz in rec.sizes) == 4
    np.testing.assert_allclose(out, _wedge_masked(v, -60, 60), atol=1e-5)


@pytest.mark.parametrize("tile_size", [16, 24, 40, 160])
def test_identity_and_add_one_are_exact_whatever_the_tile_size(tile_size):
    """The blend weights sum to one for every tile size: an identity model gives the
    wedge-masked tomogram, a model adding 1 (standardized units) adds one std everywhere."""
    rng = np.random.default_rng(tile_size)
    v = (rng.standard_normal((24, 70, 52)) * 2 + 3).astype(np.float32)
    ref = _wedge_masked(v, -58, 60)
    out = tomogram.refine_tomogram(Identity(), v, -58, 60, subtomo_size=16, overlap=5, tile_size=tile_size,
                             match_resampling=False)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    std = float(v.astype(np.float64).std())
    plus = tomogram.refine_tomogram(AddOne(), v, -58, 60, subtomo_size=16, overlap=5, tile_size=tile_size,
                              match_resampling=False)
    np.testing.assert_allclose(plus, ref + std, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert rf.n_tiles(v.shape, 16, 5, tile_size) == {16: 60, 24: 12, 40: 4, 160: 1}[tile_size]
