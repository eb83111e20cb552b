"""Speed decisions (core.perf): each CPU-only / CUDA-only branch checked through its decision
function, and the U-Net's fused instance norm + LeakyReLU against torch's in float64."""
import math

import pytest
import torch

from napari_deepdewedge.core import perf
from napari_deepdewedge.core.model.unet import Conv3d, InstanceNormLeakyReLU, PointwiseConv3d, UNet3D, conv_route

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


def test_cpu_bf16_only_when_asked_never_by_the_stopwatch_alone(monkeypatch):
    """fp32 on the CPU by default, even where the probe would find bf16 faster (a timing must
    not choose a fit's numerics); with DDW_CPU_BF16=1 the probe decides."""
    from napari_deepdewedge.core.fit.loop import amp_enabled

    fast = perf.Bf16Probe(supported=True, fp32_seconds=1.0, bf16_seconds=0.1, rel_error=0.01)
    slow = perf.Bf16Probe(supported=True, fp32_seconds=1.0, bf16_seconds=2.0, rel_error=0.01)
    monkeypatch.delenv(perf.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(perf, "probe_bf16_cpu", lambda *a, **k: fast)
    assert perf.pick_autocast("cpu") is None and amp_enabled("cpu") is False
    monkeypatch.setenv(perf.CPU_BF16_ENV, "1")
    assert perf.pick_autocast("cpu") is torch.bfloat16 and amp_enabled("cpu") is True
    monkeypatch.setattr(perf, "probe_bf16_cpu", lambda *a, **k: slow)
    assert perf.pick_autocast("cpu") is None
    assert perf.pick_autocast("cuda") is torch.float16  # CUDA is unaffected


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


def _reference_norm_act(x, weight, bias, slope):
    """float64 nn.InstanceNorm3d(affine) + LeakyReLU: what every kernel must compute."""
    y = torch.nn.functional.instance_norm(x.double(), weight=weight.double(), bias=bias.double(), eps=1e-5)
    return torch.nn.functional.leaky_relu(y, slope)


@pytest.mark.parametrize("kernel", ["fused", "group_norm", "torch"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_norm_act_matches_float64_instance_norm(kernel, channels_last, monkeypatch):
    """Outputs and gradients (input, γ, β) of every kernel against float64 autograd, on inputs
    with a channel offset (mean 2, std 3), as convolutions produce."""
    monkeypatch.setattr(InstanceNormLeakyReLU, "kernel", kernel)
    torch.manual_seed(0)
    m = InstanceNormLeakyReLU(5, negative_slope=0.05)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 2.0, 5))
        m.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    x = 3 * torch.randn(2, 5, 6, 7, 8) + 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    xa = x.clone().requires_grad_(True)
    xr = x.double().requires_grad_(True)
    wr, br = m.weight.detach().double().requires_grad_(True), m.bias.detach().double().requires_grad_(True)
    ya, yr = m(xa), _reference_norm_act(xr, wr, br, 0.05)
    torch.testing.assert_close(ya.double(), yr, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yr.backward(g.double())
    for ours, ref in ((xa.grad, xr.grad), (m.weight.grad, wr.grad), (m.bias.grad, br.grad)):
        assert float((ours.double() - ref).norm() / ref.norm()) < 1e-4
    if channels_last and kernel != "torch":
        assert ya.is_contiguous(memory_format=torch.channels_last_3d)
        assert xa.grad.is_contiguous(memory_format=torch.channels_last_3d)
    ref_module = torch.nn.InstanceNorm3d(5, affine=True)
    assert set(m.state_dict()) == set(ref_module.state_dict())


def test_norm_act_kernel_decision():
    """Fused only for float32 channels-last CPU tensors outside autocast; CUDA/MPS and autocast
    take group_norm (the CUDA side checked through the decision, not by running CUDA)."""
    pick = InstanceNormLeakyReLU.kernel_for
    assert pick("cpu", True, torch.float32, False) == "fused"
    assert pick("cpu", False, torch.float32, False) == "group_norm"
    assert pick("cpu", True, torch.float32, True) == "group_norm"
    assert pick("cpu", True, torch.bfloat16, False) == "group_norm"
    assert pick("cuda", True, torch.float32, False) == "group_norm"
    assert pick("mps", True, torch.float32, False) == "group_norm"


def test_unet_uses_the_fused_kernel_on_cpu_channels_last():
    """The default U-Net on a channels-last CPU batch runs every norm through the fused
    function (its backward node in the graph), and not under autocast."""
    net = perf.to_channels_last(UNet3D(channels=4, depth=2), "cpu")
    block = net.encoders[0][0]
    x = perf.as_input(torch.randn(2, 1, 8, 8, 8), "cpu")
    assert type(block(x).grad_fn).__name__ == "_InstanceNormLeakyReLUFnBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "InstanceNormLeakyReLU" not in type(block(x).grad_fn).__name__
    with torch.inference_mode():
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_old_checkpoint_layout_loads():
    """A state dict saved from Sequential(conv, nn.InstanceNorm3d, nn.LeakyReLU) blocks (the
    layout before the fused module, whose up-sampling was transposed: issue 17) loads into
    today's U-Net and gives the same output."""
    torch.manual_seed(3)
    new = UNet3D(channels=4, depth=2, upsample="transposed").eval()
    old = UNet3D(channels=4, depth=2, upsample="transposed").eval()

    def unfuse(seq):
        conv, norm = seq[0], seq[1]
        ref = torch.nn.InstanceNorm3d(norm.num_features, affine=True)
        return torch.nn.Sequential(conv, ref, torch.nn.LeakyReLU(0.05))

    for stacks in (old.encoders, old.decoders, [old.bottleneck]):
        for stack in stacks:
            for i, blk in enumerate(stack):
                stack[i] = unfuse(blk)
    for i, down in enumerate(old.downs):
        old.downs[i] = unfuse(down)
    for i, up in enumerate(old.ups):
        old.ups[i] = unfuse(up)
    with torch.no_grad():
        for p in old.parameters():
            p.uniform_(-0.5, 0.5)
    new.load_state_dict(old.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(new(x), old(x), atol=1e-4, rtol=1e-4)


def test_unet_channels_last_same_result():
    torch.manual_seed(1)
    net = UNet3D(channels=4, depth=2).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.inference_mode():
        a = net(x)
        b = perf.to_channels_last(net, "cpu")(perf.as_input(x, "cpu"))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_conv_route_decision():
    """oneDNN directly only for the ambiguous one-volume one-channel float32 CPU batch."""
    assert conv_route("cpu", 1, 1, torch.float32, False, True) == "mkldnn"
    assert conv_route("cpu", 2, 1, torch.float32, False, True) == "default"
    assert conv_route("cpu", 1, 16, torch.float32, False, True) == "default"
    assert conv_route("cpu", 1, 1, torch.float32, True, True) == "default"
    assert conv_route("cpu", 1, 1, torch.float32, False, False) == "default"
    assert conv_route("cuda", 1, 1, torch.float32, False, True) == "default"
    assert conv_route("mps", 1, 1, torch.float32, False, True) == "default"


def test_first_conv_one_volume_matches_torch_and_is_channels_last():
    torch.manual_seed(0)
    ours = perf.to_channels_last(Conv3d(1, 4, 3, padding=1), "cpu")
    ref = torch.nn.Conv3d(1, 4, 3, padding=1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 1, 6, 7, 8)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    if torch.backends.mkldnn.is_available():
        assert ya.is_contiguous(memory_format=torch.channels_last_3d)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [True, False])
def test_pointwise_conv_matches_torch(channels_last):
    torch.manual_seed(1)
    ours = PointwiseConv3d(5, 2)
    ref = torch.nn.Conv3d(5, 2, 1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 4, 6, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), ref(xb)
    assert ya.shape == yb.shape
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-4)
