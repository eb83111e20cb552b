"""Device choice: CUDA if present, else Apple MPS, else CPU; the user can override."""
from __future__ import annotations

from .errors import DDWError


def available_devices() -> list[str]:
    """Names of the devices this machine can run on, best first (always ends with ``"cpu"``)."""
    import torch

    names = []
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    names.append("cpu")
    return names


def pick_device(name=None):
    """Return a ``torch.device``: ``None``/``"auto"`` picks cuda → mps → cpu."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name is None or str(name).lower() in ("", "auto"):
        return torch.device(available_devices()[0])
    name = str(name).lower()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DDWError(
            f"device '{name}' was requested but CUDA is not available on this machine; "
            "use --device cpu (or auto)"
        )
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DDWError("device 'mps' was requested but Apple MPS is not available; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DDWError(f"unknown device '{name}'; choose auto, cpu, cuda, cuda:N or mps") from exc
