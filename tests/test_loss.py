import pytest
import torch

from napari_deepdewedge.core.errors import DDWError
from napari_deepdewedge.core.fit.loss import masked_fourier_loss, model_input


def _mirror(m: torch.Tensor) -> torch.Tensor:
    """m[..., -i mod Z, -j mod Y, -k mod X]."""
    for d in (-3, -2, -1):
        n = m.shape[d]
        idx = (-torch.arange(n)) % n
        m = m.index_select(d, idx)
    return m


def _sym_mask(shape, seed, p=0.6):
    """Random binary mask with M[i] = M[-i mod N] (as the core.fourier masks satisfy)."""
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(shape, generator=g) < p).double()
    return m * _mirror(m)


def _explicit(pred, target, M, MR, w):
    """Real-space form: mean|F⁻¹(M_R M F r)|² + w·mean|F⁻¹(M_R (1−M) F r)|², per-batch mean."""
    r = (target - pred).double()
    fr = torch.fft.fftn(r, dim=(-3, -2, -1))
    MR = MR[:, None]
    a = torch.fft.ifftn(MR * M * fr, dim=(-3, -2, -1))
    b = torch.fft.ifftn(MR * (1 - M) * fr, dim=(-3, -2, -1))
    return (a.abs() ** 2).mean() + w * (b.abs() ** 2).mean()


@pytest.mark.parametrize("shape", [(8, 6, 10), (7, 6, 9)])
def test_loss_equals_real_space_form(shape):
    g = torch.Generator().manual_seed(0)
    B = 3
    pred = torch.randn(B, 1, *shape, generator=g, dtype=torch.float64)
    target = torch.randn(B, 1, *shape, generator=g, dtype=torch.float64)
    # arbitrary (non-symmetric) masks: the full-grid version is exact Parseval for any mask
    M = (torch.rand(shape, generator=g) < 0.6).double()
    MR = (torch.rand(B, *shape, generator=g) < 0.7).double()
    got = masked_fourier_loss(pred, target, M, MR, wedge_weight=2.0)
    torch.testing.assert_close(got, _explicit(pred, target, M, MR, 2.0), rtol=1e-10, atol=0)
    # the weight matters: w=0 keeps only the first term
    got0 = masked_fourier_loss(pred, target, M, MR, wedge_weight=0.0)
    torch.testing.assert_close(got0, _explicit(pred, target, M, MR, 0.0), rtol=1e-10, atol=0)
    assert float(got) > float(got0) * 1.05


@pytest.mark.parametrize("shape", [(8, 6, 10), (7, 6, 9)])
def test_rfft_loss_equals_full_loss(shape):
    g = torch.Generator().manual_seed(1)
    B = 2
    pred = torch.randn(B, 2, *shape, generator=g, dtype=torch.float64)
    target = torch.randn(B, 2, *shape, generator=g, dtype=torch.float64)
    M = _sym_mask(shape, 2)
    MR = torch.stack([_sym_mask(shape, 3), _sym_mask(shape, 4)])
    X = shape[-1]
    full = masked_fourier_loss(pred, target, M, MR, reduction="none")
    half = masked_fourier_loss(pred, target, M[..., : X // 2 + 1], MR[..., : X // 2 + 1], reduction="none")
    assert full.shape == (B,)
    torch.testing.assert_close(half, full, rtol=1e-10, atol=0)
    torch.testing.assert_close(masked_fourier_loss(pred, target, M, MR), full.mean())


def test_with_fourier_masks():
    fourier = pytest.importorskip("napari_deepdewedge.core.fourier")
    from napari_deepdewedge.core.model.rotation import random_rotations

    s = (8, 8, 8)
    g = torch.Generator().manual_seed(5)
    R = random_rotations(2, generator=g)
    M = fourier.observed_mask(s, -50, 60).double()
    MR = fourier.rotated_observed_masks(s, -50, 60, R).double()
    Mh = fourier.observed_mask(s, -50, 60, rfft=True).double()
    MRh = fourier.rotated_observed_masks(s, -50, 60, R, rfft=True).double()
    pred = torch.randn(2, 1, *s, generator=g, dtype=torch.float64)
    target = torch.randn(2, 1, *s, generator=g, dtype=torch.float64)
    full = masked_fourier_loss(pred, target, M, MR)
    torch.testing.assert_close(full, _explicit(pred, target, M, MR, 2.0), rtol=1e-10, atol=0)
    torch.testing.assert_close(masked_fourier_loss(pred, target, Mh, MRh), full, rtol=1e-10, atol=0)
    x = torch.randn(2, 1, *s, generator=g, dtype=torch.float64)
    torch.testing.assert_close(model_input(x, Mh), model_input(x, M), rtol=0, atol=1e-12)


def test_zero_when_equal_and_gradient_flows():
    g = torch.Generator().manual_seed(6)
    shape = (8, 8, 8)
    M = _sym_mask(shape, 7)
    MR = _sym_mask((2, *shape), 8)
    target = torch.randn(2, 1, *shape, generator=g)
    assert float(masked_fourier_loss(target.clone(), target, M, MR)) == 0.0
    pred = torch.randn(2, 1, *shape, generator=g, requires_grad=True)
    loss = masked_fourier_loss(pred, target, M[..., :5], MR[..., :5])
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert loss.dtype == torch.float32


def test_all_observed_is_mse():
    """With M = M_R = 1 the loss is the plain mean squared error (Parseval)."""
    g = torch.Generator().manual_seed(9)
    pred = torch.randn(2, 1, 6, 6, 6, generator=g, dtype=torch.float64)
    target = torch.randn(2, 1, 6, 6, 6, generator=g, dtype=torch.float64)
    ones = torch.ones(6, 6, 6, dtype=torch.float64)
    got = masked_fourier_loss(pred, target, ones, ones.expand(2, 6, 6, 6))
    torch.testing.assert_close(got, ((pred - target) ** 2).mean(), rtol=1e-12, atol=0)


def test_model_input_known_answers():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 1, 6, 8, 10, generator=g, dtype=torch.float64)
    ones = torch.ones(6, 8, 10, dtype=torch.float64)
    torch.testing.assert_close(model_input(x, ones), x, rtol=0, atol=1e-12)
    dc = torch.zeros(6, 8, 10, dtype=torch.float64)
    dc[0, 0, 0] = 1
    mean = x.mean(dim=(-3, -2, -1), keepdim=True).expand_as(x)
    torch.testing.assert_close(model_input(x, dc), mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(model_input(x, dc[..., :6]), mean, rtol=0, atol=1e-12)
    M = _sym_mask((6, 8, 10), 11)
    torch.testing.assert_close(model_input(x, M[..., :6]), model_input(x, M), rtol=0, atol=1e-12)
    assert model_input(x.float(), M.float()).dtype == torch.float32


def test_bad_masks_raise():
    x = torch.zeros(1, 1, 8, 8, 8)
    with pytest.raises(DDWError, match="does not fit"):
        model_input(x, torch.ones(8, 8, 7))
    with pytest.raises(DDWError, match="different Fourier grids"):
        masked_fourier_loss(x, x, torch.ones(8, 8, 8), torch.ones(1, 8, 8, 5))
    with pytest.raises(DDWError, match="differs"):
        masked_fourier_loss(x, torch.zeros(1, 1, 8, 8, 4), torch.ones(8, 8, 8), torch.ones(1, 8, 8, 8))
