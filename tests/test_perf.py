"""Speed decisions (core.perf): each CPU-only / CUDA-only branch checked through its decision
function, and the channels-last instance normalization against torch's."""
import math

import pytest
import torch

from napari_deepdewedge.core import perf
from napari_deepdewedge.core.unet import InstanceNorm3d, UNet3D

FAST = perf.Bf16Probe(supported=True, fp32_seconds=1.0, bf16_seconds=0.5, rel_error=0.01)
SLOW = perf.Bf16Probe(supported=True, fp32_seconds=1.0, bf16_seconds=1.2, rel_error=0.01)
WRONG = perf.Bf16Probe(supported=True, fp32_seconds=1.0, bf16_seconds=0.5, rel_error=0.5)
NONE = perf.Bf16Probe(supported=False)


def test_threads_never_exceed_cores_unless_asked():
    assert perf.cpu_threads(current=8, cores=2) == 2
    assert perf.cpu_threads(current=1, cores=2) == 1
    assert perf.cpu_threads(current=8, cores=2, requested=3) == 3
    assert 1 <= perf.usable_cores() <= (torch.get_num_threads() + 1024)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(perf.usable_cores() + 3)
        assert perf.limit_cpu_threads("cpu") == perf.usable_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_autocast_decision_per_device_and_probe():
    assert perf.autocast_dtype("cuda") is torch.float16
    assert perf.autocast_dtype("cuda", NONE) is torch.float16
    assert perf.autocast_dtype("cpu", FAST) is torch.bfloat16
    for probe in (SLOW, WRONG, NONE, None):
        assert perf.autocast_dtype("cpu", probe) is None
    assert perf.autocast_dtype("mps", FAST) is None
    assert perf.needs_grad_scaler(torch.float16)
    assert not perf.needs_grad_scaler(torch.bfloat16) and not perf.needs_grad_scaler(None)


def test_bf16_probe_outcome_drives_cpu_autocast():
    probe = perf.probe_bf16_cpu()
    assert isinstance(probe, perf.Bf16Probe)
    if probe.supported:
        assert probe.fp32_seconds > 0 and math.isfinite(probe.bf16_seconds)
        assert probe.rel_error < 0.1  # bf16 of a 3×3×3 convolution: a few 1e-3
    assert (perf.autocast_dtype("cpu", probe) is torch.bfloat16) == probe.worth_it
    assert (perf.pick_autocast("cpu") is torch.bfloat16) == probe.worth_it
    from napari_deepdewedge.core.fitting import amp_enabled

    assert amp_enabled("cpu") == probe.worth_it


def test_compile_only_on_cuda_when_asked_and_long_enough():
    many = perf.COMPILE_MIN_STEPS
    assert perf.decide_compile("cuda", many, requested=True)
    assert not perf.decide_compile("cuda", many - 1, requested=True)
    assert not perf.decide_compile("cuda", 10 * many, requested=False)
    assert not perf.decide_compile("cpu", 10 * many, requested=True)
    assert not perf.decide_compile("mps", 10 * many, requested=True)
    net = torch.nn.Conv3d(1, 1, 1)
    assert perf.maybe_compile(net, "cpu", 10 * many, requested=True) is net


def test_channels_last_decision_and_conversion():
    assert perf.use_channels_last("cpu") and perf.use_channels_last("cuda")
    assert not perf.use_channels_last("mps")
    net = perf.to_channels_last(UNet3D(channels=4, depth=2), "cpu")
    assert net.encoders[0][0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = perf.as_input(torch.randn(2, 3, 8, 8, 8), "cpu")
    assert x.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_matches_torch_and_keeps_layout(channels_last):
    torch.manual_seed(0)
    ours, ref = InstanceNorm3d(5, affine=True), torch.nn.InstanceNorm3d(5, affine=True)
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 2.0, 5))
            m.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    x = (3 * torch.randn(2, 5, 6, 7, 8) + 2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)
    if channels_last:
        assert ya.is_contiguous(memory_format=torch.channels_last_3d)
    assert set(ours.state_dict()) == set(ref.state_dict())


def test_unet_channels_last_same_result():
    torch.manual_seed(1)
    net = UNet3D(channels=4, depth=2).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.inference_mode():
        a = net(x)
        b = perf.to_channels_last(net, "cpu")(perf.as_input(x, "cpu"))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
