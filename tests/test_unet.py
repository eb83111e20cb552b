import pytest
import torch

from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.fit.settings import PRESETS
from napari_deepdewedge.core.model.unet import UNet3D, required_multiple


def _zero_final(model):
    with torch.no_grad():
        model.final.weight.zero_()
        model.final.bias.zero_()
    return model


def test_output_shape_equals_input():
    torch.manual_seed(0)
    model = UNet3D(channels=4, depth=2)
    x = torch.randn(2, 1, 8, 12, 16)
    assert model(x).shape == x.shape


def test_depth3_output_shape():
    torch.manual_seed(0)
    model = UNet3D(channels=2, depth=3)
    x = torch.randn(1, 1, 16, 16, 16)
    assert model(x).shape == x.shape


def test_residual_with_zero_final_conv_is_identity():
    torch.manual_seed(1)
    model = _zero_final(UNet3D(channels=4, depth=2))
    x = torch.randn(2, 1, 8, 8, 8) * 3 + 1
    torch.testing.assert_close(model(x), x)
    # ... also with a normalization set
    model.set_normalization(5.0, 0.25)
    torch.testing.assert_close(model(x), x, rtol=1e-5, atol=1e-5)


def test_non_residual_is_not_identity():
    torch.manual_seed(1)
    model = _zero_final(UNet3D(channels=4, depth=2, residual=False))
    x = torch.randn(1, 1, 8, 8, 8)
    torch.testing.assert_close(model(x), torch.zeros_like(x))


def test_normalization_equivariance():
    """f(a·x + b) with (loc, scale) = (b, a) equals a·f(x) + b for a non-trivial model."""
    torch.manual_seed(2)
    model = UNet3D(channels=4, depth=2).double().eval()
    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    fx = model(x)
    assert (fx - x).abs().max() > 1e-2  # the model is not the identity
    a, b = 3.5, -2.0
    model.set_normalization(b, a)
    torch.testing.assert_close(model(a * x + b), a * fx + b, rtol=1e-9, atol=1e-9)
    # without matching normalization the result is different
    model.set_normalization(0.0, 1.0)
    assert (model(a * x + b) - (a * fx + b)).abs().max() > 1e-3


def test_state_dict_carries_normalization():
    model = UNet3D(channels=2, depth=1)
    model.set_normalization(1.5, 2.5)
    sd = model.state_dict()
    assert float(sd["loc"]) == 1.5 and float(sd["scale"]) == 2.5
    other = UNet3D(**model.arch_dict())
    other.load_state_dict(sd)
    assert float(other.loc) == 1.5 and float(other.scale) == 2.5
    assert model.arch_dict() == dict(channels=2, depth=1, residual=True, in_channels=1)


def test_bad_size_raises():
    model = UNet3D(channels=2, depth=3)
    assert required_multiple(3) == 8
    with pytest.raises(DDWError, match=r"20.*multiple of 8"):
        model(torch.zeros(1, 1, 16, 16, 20))
    with pytest.raises(DDWError, match="single voxel"):
        model(torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(DDWError, match="shape"):
        model(torch.zeros(1, 16, 16, 16))


def test_bad_normalization_raises():
    model = UNet3D(channels=2, depth=1)
    with pytest.raises(DDWError):
        model.set_normalization(0.0, 0.0)
    with pytest.raises(DDWError):
        model.set_normalization(float("nan"), 1.0)


def test_presets_build():
    for name in ("fast", "default"):
        p = PRESETS[name]
        assert p["subtomo_size"] % required_multiple(p["depth"]) == 0
    assert PRESETS["fast"] == dict(subtomo_size=48, channels=16, depth=3)


def test_gradient_flows():
    torch.manual_seed(3)
    model = UNet3D(channels=2, depth=2)
    x = torch.randn(1, 1, 8, 8, 8)
    model(x).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
