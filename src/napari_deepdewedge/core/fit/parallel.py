"""Where a fit runs: device choice, mixed precision (CUDA only) and several processes.

``init_distributed_from_env`` joins the process group torchrun describes; ``fit_iter`` then
wraps the model in DistributedDataParallel and sums losses/flags across ranks with
``all_reduce_sum``. Every helper is a no-op on one process and on CPU/MPS.
"""
from __future__ import annotations

import contextlib
import os

import torch

from ..errors import DDWError


def amp_enabled(device) -> bool:
    """Mixed precision: fp16 autocast + GradScaler on CUDA, bf16 autocast on a CPU only when
    asked (``DDW_CPU_BF16=1``) and its quick probe finds it faster (``core.perf.pick_autocast``),
    fp32 otherwise."""
    from ..perf import pick_autocast

    return pick_autocast(device) is not None


def configure_backends(device) -> None:
    """cuDNN autotuning on CUDA (fixed cube sizes make it pay off); nothing elsewhere."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` unless ``torch.distributed`` is initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Returns ``(rank, world_size)``.

    Does nothing (returns ``(0, 1)``) when not launched by torchrun. Backend: NCCL with CUDA
    (each process takes GPU ``LOCAL_RANK``), gloo otherwise.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend=backend)
        except Exception as exc:  # bad rendezvous settings are a user problem
            raise DDWError(
                f"could not join the torch.distributed process group ({exc}); launch with "
                "`torchrun --nproc-per-node N -m napari_deepdewedge.cli fit ...`"
            ) from None
    return dist.get_rank(), dist.get_world_size()


def fit_device(name, world: int):
    """``pick_device(name)``; with several CUDA processes, GPU ``LOCAL_RANK``."""
    from ..device import pick_device

    dev = pick_device(name)
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def all_reduce_sum(values: list[float], device, world: int) -> list[float]:
    """The element-wise sum over all ranks (the values themselves on one process)."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def autocast(device, enabled: bool):
    """The autocast ``core.perf.pick_autocast`` chooses (fp16 on CUDA, bf16 on a CPU that the
    probe finds faster with it) when enabled; a no-op context otherwise."""
    from ..perf import autocast as perf_autocast, pick_autocast

    return perf_autocast(device, pick_autocast(device)) if enabled else contextlib.nullcontext()


def data_device(device, nbytes: int):
    """Keep the cubes on the fitting device when they take at most 40 % of its free memory."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except Exception:
            return torch.device("cpu")
        return device if nbytes <= 0.4 * free else torch.device("cpu")
    return device
