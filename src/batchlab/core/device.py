"""Which device to run on, reading the clock honestly on it, and knowing its out-of-memory failures."""

from __future__ import annotations

import time

import torch

from batchlab.core.dist import cuda_index
from batchlab.errors import bad


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then the CPU; anything else must name a usable device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():  # under torchrun, each rank its own GPU
            return torch.device("cuda", cuda_index())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise bad("device", device, "auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise bad(
            "device", device, "a device this machine has", "CUDA is not available here; pass --device cpu"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise bad(
            "device", device, "a device this machine has", "MPS is not available here; pass --device cpu"
        )
    return resolved


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that the clock measures work done, not work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def clock(device: torch.device) -> float:
    """Seconds on a monotonic clock, read after the device has finished its queue."""
    synchronize(device)
    return time.perf_counter()


_OutOfMemory: tuple[type[BaseException], ...] = (MemoryError, torch.cuda.OutOfMemoryError)
if hasattr(torch, "OutOfMemoryError"):
    _OutOfMemory += (torch.OutOfMemoryError,)
_OOM_MESSAGES = (
    "DefaultCPUAllocator: can't allocate memory",
    "CUDA out of memory",
    "MPS backend out of memory",
)


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocator's out-of-memory failure (CUDA, CPU, MPS); False for anything else."""
    if isinstance(error, _OutOfMemory):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _OOM_MESSAGES)
