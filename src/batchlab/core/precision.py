"""Mixed precision and activation checkpointing: the two ways to fit a bigger batch in the same memory.

Mixed precision runs the forward pass under torch.autocast (bf16, or fp16 with loss scaling on
CUDA); the weights and the optimizer stay fp32. Activation checkpointing keeps only the inputs of
each top-level block and recomputes the rest in the backward pass. Both are applied to batchlab's
own fresh model, never to a user's live objects.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from enum import Enum
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from batchlab.errors import bad


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


_DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def as_precision(value: str | Precision, device: torch.device) -> Precision:
    try:
        precision = Precision(value)
    except ValueError:
        raise bad("precision", value, "one of fp32, bf16, fp16", "pass --precision bf16") from None
    if precision is Precision.FP16 and device.type != "cuda":
        raise bad(
            "precision",
            value,
            "fp32 or bf16 on this device (fp16 autocast needs CUDA)",
            "pass --precision bf16",
        )
    return precision


class Amp:
    """Autocast for the forward pass; with fp16, a gradient scaler around backward and step."""

    def __init__(self, precision: Precision, device: torch.device) -> None:
        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler(device.type) if precision is Precision.FP16 else None

    def autocast(self) -> AbstractContextManager[Any]:
        dtype = _DTYPES.get(self.precision, torch.float32)
        return torch.autocast(
            device_type=self.device.type, dtype=dtype, enabled=self.precision is not Precision.FP32
        )

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skips the step when the scaled gradients overflowed
        self.scaler.update()


def optimizer_step(optimizer: torch.optim.Optimizer, amp: Amp | None) -> None:
    """The optimizer step, through the fp16 gradient scaler when there is one."""
    if amp is None:
        optimizer.step()
    else:
        amp.step(optimizer)


class Checkpointed(nn.Module):
    """A block whose activations are recomputed in the backward pass instead of kept."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        if self.training and torch.is_grad_enabled():
            return checkpoint(self.inner, *args, use_reentrant=False)
        return self.inner(*args)


def apply_checkpointing(model: nn.Module) -> nn.Module:
    """Wrap each of `model.blocks` (an nn.ModuleList or nn.Sequential) in place."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise bad(
            "checkpoint",
            True,
            f"a model with its top-level blocks in `model.blocks` ({type(model).__name__} has none to wrap)",
            "expose them as an nn.ModuleList named `blocks`, or drop --checkpoint",
        )
    for i in range(len(blocks)):
        blocks[i] = Checkpointed(blocks[i])
    return model
