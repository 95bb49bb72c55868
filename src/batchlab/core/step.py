"""One training step (forward, backward over micro-batches, optimizer step), shared by every measurement.

The training loop, the memory probe and the throughput profile all run this same code, so that what
is measured is what is trained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from batchlab.core.data import Batch
from batchlab.core.precision import Amp

LossFn = Callable[[Any, Any], torch.Tensor]  # (model output, targets) -> mean loss over the batch


def split(batch: Batch, parts: int) -> list[Batch]:
    """Split a batch into `parts` equal micro-batches along the first dimension."""
    if parts == 1:
        return [batch]
    x, y = batch
    return list(zip(_chunk(x, parts), _chunk(y, parts), strict=True))


def _chunk(value: Any, parts: int) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return list(value.chunk(parts))
    if isinstance(value, (list, tuple)):
        columns = [_chunk(v, parts) for v in value]
        return [type(value)(col[i] for col in columns) for i in range(parts)]
    if isinstance(value, dict):
        columns_d = {k: _chunk(v, parts) for k, v in value.items()}
        return [{k: col[i] for k, col in columns_d.items()} for i in range(parts)]
    raise TypeError(f"cannot split a {type(value).__name__} into micro-batches")


def grad_list(params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    """Each parameter's gradient, zeros where it has none."""
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def norms(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's 2-norm, in one fused call where torch has it."""
    foreach = getattr(torch, "_foreach_norm", None)
    if foreach is not None:
        try:
            return list(foreach(list(tensors)))
        except RuntimeError:  # mixed devices or dtypes it does not take
            pass
    return [torch.linalg.vector_norm(t) for t in tensors]


def sq_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The squared 2-norm of all the tensors together, in float32 (0 for none)."""
    if not tensors:
        return torch.zeros(())
    with torch.no_grad():
        return torch.stack(norms(tensors)).float().pow(2).sum()


class StepOutput:
    """The mean loss of the step."""

    __slots__ = ("loss",)

    def __init__(self, loss: torch.Tensor):
        self.loss = loss


def backward(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    *,
    micro_batches: int,
    amp: Amp | None = None,
    no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
) -> StepOutput:
    """Accumulate the batch's mean-loss gradient over `micro_batches` equal parts.

    Each micro-batch's loss is divided by the number of parts, so the accumulated gradient equals the
    gradient of the mean loss over the whole batch (a NoiseMonitor's hooks see each part's share).
    `no_sync` (DDP's) keeps every part but the last from all-reducing its gradients.
    """
    quiet = no_sync if no_sync is not None else contextlib.nullcontext
    if amp is not None:
        return _backward_amp(model, loss_fn, batch, micro_batches, amp, quiet)
    if micro_batches == 1:  # the common case: nothing to split or divide
        x, y = batch
        loss = loss_fn(model(x), y)
        loss.backward()
        return StepOutput(loss.detach())
    total = None
    for i, (x, y) in enumerate(split(batch, micro_batches)):
        with quiet() if i < micro_batches - 1 else contextlib.nullcontext():
            loss = loss_fn(model(x), y) / micro_batches
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    assert total is not None
    return StepOutput(total)


def _backward_amp(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    micro_batches: int,
    amp: Amp,
    quiet: Callable[[], AbstractContextManager[Any]],
) -> StepOutput:
    """The same accumulation, with the forward pass under autocast and the loss scaled for fp16."""
    total = None
    for i, (x, y) in enumerate(split(batch, micro_batches)):
        with quiet() if i < micro_batches - 1 else contextlib.nullcontext():
            with amp.autocast():
                loss = loss_fn(model(x), y) / micro_batches
            amp.backward(loss)
        total = loss.detach().float() if total is None else total + loss.detach().float()
    assert total is not None
    return StepOutput(total)


def clip_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, amp: Amp | None, max_norm: float | None
) -> torch.Tensor | None:
    """Clip the step's whole gradient to `max_norm` (unscaled first under fp16); its norm before the
    clip, on the device (None without a clip). Every path that takes a training step calls it, so
    that the clip's pass over the gradients is trained, timed and held in memory alike."""
    if max_norm is None:
        return None
    if amp is not None and amp.scaler is not None:
        amp.scaler.unscale_(optimizer)
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
