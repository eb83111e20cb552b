"""Speed decisions for fitting and refinement: threads, memory format, autocast, compile.

Every decision is a small pure function of facts (device type, probe outcome, planned steps)
so that CPU tests can exercise the CUDA side of each branch without a GPU. Figures measured on
the 2-core development machine (AMD EPYC, AVX2, no AVX-512/AMX; load average 2–13 from other
jobs; ratios from interleaved runs in one process):

- channels_last_3d memory format with a layout-keeping instance norm
  (:class:`core.model.unet.InstanceNormLeakyReLU`; torch's ``InstanceNorm3d`` copies channels-last
  tensors back to NCDHW): fitting step at s = 32 / 16 channels / batch 4, process CPU time on
  one thread, interleaved in one run (bench/peer_ddw.py --levers, 2026-12-03, load 2–3):
  today 2.09 samples/s → channels-last 2.32 (×1.11) → + group-norm instance norm 2.33 → + the
  fused norm + LeakyReLU with a hand-written backward 2.77 (×1.19; ×1.32 over today; the
  original 1.72; an earlier run: 2.03 → 2.35 → 2.36 → 2.98). On the machine's 2 cores (wall
  time, load 1–2.6) ours 4.75 vs the original's 2.33 samples/s (×2.04; s = 48: ×2.08); the
  final build: ×1.99 and ×2.04. oneDNN's 3D convolution backward is 2–2.5× faster on channels-last tensors
  (its weight gradient: 52 vs 119 ms for 16→16 channels at (4, 16, 32³)); torch's channels-last
  group-norm backward was 3–4× slower than the fused one. KEPT on CPU and CUDA; not on MPS.
  What is left is the convolutions (≈ 80 % of a step; the weight gradient runs as im2col + GEMM,
  ``x64:gemm:jit``, on AVX2 — no direct kernel for 3D channels-last), which the original
  computes with the same layers.
- bf16 autocast on the CPU: OFF unless asked for with ``DDW_CPU_BF16=1``, and then only where
  :func:`probe_bf16_cpu` finds it both supported and faster than fp32 on a small convolution
  (this AVX2 CPU runs it 12–20× SLOWER: 1.5–1.8 s vs 74–155 ms → fp32). It used to be chosen
  by the probe alone, i.e. by a stopwatch: on an AVX-512 EPYC with bf16 kernels the choice
  could differ between processes and runs, and the same fit gave results 2e-3 apart (bf16's
  rounding size) between torchrun ranks and a single process, and between the CLI and the
  pipeline route, while ``ONEDNN_MAX_CPU_ISA=AVX2`` (no bf16 kernels → fp32) made them agree
  (issue 17). A fit's numerics must not depend on a timing, so fp32 is the CPU default.
  CUDA: fp16 autocast with a GradScaler (as before).
- ``torch.compile`` of the U-Net on the CPU: 100 s to compile the first step, then 3 % faster
  (0.234 vs 0.241 s per sample): it would pay for itself after ~14 000 samples, far beyond the
  first epochs → DROPPED on the CPU. On CUDA only when asked for (``FitConfig.compile``) and
  the run is long enough (:func:`decide_compile`); not measured (no GPU here).
- threads: torch's default is the machine's cores; more threads than usable cores
  (``sched_getaffinity``) only oversubscribes, so :func:`limit_cpu_threads` lowers it. On a
  machine shared with other jobs even the cores are too many: at load average 10 on 2 cores a
  fitting step took 25 s wall / 9 s CPU with 2 threads and 4.6 s / 1.8 s with 1 (OpenMP's
  spinning waits; ``OMP_WAIT_POLICY=PASSIVE``: 7.7 s / 2.2 s). Not automated (it depends on
  other people's load): use 1 thread (``torch.set_num_threads(1)``) on a busy shared machine.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass

import torch

#: a bf16 probe must be at least this much faster than fp32 to be used
BF16_MIN_SPEEDUP = 1.15
#: and agree with fp32 to this relative error (bf16 has 8 mantissa bits)
BF16_MAX_REL_ERROR = 0.05
#: CUDA: compile the U-Net only when the planned optimizer steps amortize its compile time
COMPILE_MIN_STEPS = 2000


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_threads(current: int, cores: int, requested: int | None = None) -> int:
    """Threads to use: ``requested`` when given, else ``current`` capped at ``cores``."""
    if requested:
        return max(1, int(requested))
    return max(1, min(int(current), int(cores)))


def limit_cpu_threads(device, requested: int | None = None) -> int:
    """On the CPU, set torch's intra-op threads to :func:`cpu_threads`; returns the count."""
    if torch.device(device).type != "cpu":
        return torch.get_num_threads()
    n = cpu_threads(torch.get_num_threads(), usable_cores(), requested)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------------------------
# memory format
# --------------------------------------------------------------------------------------------
def use_channels_last(device_type: str) -> bool:
    """channels_last_3d on CPU and CUDA (measured on CPU, module doc); not on MPS."""
    return device_type in ("cpu", "cuda")


def to_channels_last(model: torch.nn.Module, device) -> torch.nn.Module:
    """Convert ``model``'s 5D parameters to channels_last_3d when :func:`use_channels_last`."""
    if use_channels_last(torch.device(device).type):
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def as_input(x: torch.Tensor, device) -> torch.Tensor:
    """A batch in the memory format the model runs in."""
    if x.ndim == 5 and use_channels_last(torch.device(device).type):
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


# --------------------------------------------------------------------------------------------
# autocast
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bf16Probe:
    """Outcome of :func:`probe_bf16_cpu`."""

    supported: bool
    fp32_seconds: float = float("nan")
    bf16_seconds: float = float("nan")
    rel_error: float = float("nan")

    @property
    def worth_it(self) -> bool:
        return (self.supported and self.rel_error <= BF16_MAX_REL_ERROR
                and self.bf16_seconds * BF16_MIN_SPEEDUP <= self.fp32_seconds)


@functools.lru_cache(maxsize=1)
def probe_bf16_cpu(size: int = 16, channels: int = 16, reps: int = 2) -> Bf16Probe:
    """Time a 3D convolution forward + backward in fp32 and under CPU bf16 autocast (best of
    ``reps``, well under a second) and compare their results. Cached per process. A CPU
    without bf16 kernels either fails or is slower: both give fp32."""
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, size, size, size, generator=g)

    def run(dtype):
        best, out = float("inf"), None
        for _ in range(reps):
            xi = x.clone().requires_grad_(True)
            t = time.perf_counter()
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype is not None else contextlib.nullcontext()
            with ctx:
                y = conv(xi)
            y.float().square().mean().backward()
            best = min(best, time.perf_counter() - t)
            out = y.detach().float()
        return best, out

    try:
        t32, y32 = run(None)
        t16, y16 = run(torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        return Bf16Probe(supported=False)
    err = float((y16 - y32).norm() / y32.norm().clamp_min(1e-12))
    return Bf16Probe(supported=True, fp32_seconds=t32, bf16_seconds=t16, rel_error=err)


def autocast_dtype(device_type: str, bf16_probe: Bf16Probe | None = None) -> torch.dtype | None:
    """Autocast dtype for fitting/refinement: fp16 on CUDA, bf16 on a CPU whose probe says it
    pays, otherwise ``None`` (fp32)."""
    if device_type == "cuda":
        return torch.float16
    if device_type == "cpu" and bf16_probe is not None and bf16_probe.worth_it:
        return torch.bfloat16
    return None


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 needs loss scaling; bf16 (fp32's exponent range) and fp32 do not."""
    return dtype == torch.float16


#: set to 1 to let CPU fits and refinements run under bf16 autocast where the probe finds it faster
CPU_BF16_ENV = "DDW_CPU_BF16"


def cpu_bf16_requested() -> bool:
    """Whether the user asked for bf16 on the CPU (``DDW_CPU_BF16=1``); fp32 otherwise."""
    return os.environ.get(CPU_BF16_ENV, "").strip() == "1"


def pick_autocast(device) -> torch.dtype | None:
    """:func:`autocast_dtype` for ``device``; on a CPU the bf16 probe runs only when
    :func:`cpu_bf16_requested` (otherwise fp32, whatever the CPU)."""
    kind = torch.device(device).type
    probe = probe_bf16_cpu() if kind == "cpu" and cpu_bf16_requested() else None
    return autocast_dtype(kind, probe)


def autocast(device, dtype: torch.dtype | None):
    """The autocast context for ``dtype`` (``None``: a no-op context)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------
def decide_compile(device_type: str, planned_steps: int, requested: bool = False) -> bool:
    """Compile the U-Net? Only when asked for (``FitConfig.compile``), on CUDA, for a run of at
    least :data:`COMPILE_MIN_STEPS` optimizer steps; never on the CPU (measured: it does not
    pay within the first epochs, module doc) nor on MPS."""
    return bool(requested) and device_type == "cuda" and int(planned_steps) >= COMPILE_MIN_STEPS


def maybe_compile(model: torch.nn.Module, device, planned_steps: int, requested: bool = False):
    """``torch.compile(model)`` when :func:`decide_compile` says so, else ``model``."""
    if decide_compile(torch.device(device).type, planned_steps, requested):
        return torch.compile(model)
    return model
