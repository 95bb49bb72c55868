"""Ghost batch norm: batch-norm statistics from virtual batches, whatever the real batch.

References:
  Hoffer, Hubara, Soudry 2017, "Train longer, generalize better", arXiv:1705.08741.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from batchlab.errors import bad


class GhostBatchNorm(nn.Module):
    """Batch norm whose training statistics come from virtual batches of `virtual_batch_size`.

    A large batch is split into chunks, each normalized with its own mean and variance (and each
    updating the running statistics, as in Hoffer et al.'s implementation). With the virtual batch
    equal to the batch, it is exactly the wrapped BatchNorm. In eval mode it is the wrapped layer.
    """

    def __init__(self, norm: _BatchNorm, virtual_batch_size: int) -> None:
        super().__init__()
        if (
            isinstance(virtual_batch_size, bool)
            or not isinstance(virtual_batch_size, int)
            or virtual_batch_size < 2
        ):
            raise bad("ghost_batch_size", virtual_batch_size, "an integer >= 2", "pass --ghost-batch-size 32")
        self.norm = norm
        self.virtual_batch_size = virtual_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.virtual_batch_size:
            return self.norm(x)
        return torch.cat([self.norm(chunk) for chunk in x.split(self.virtual_batch_size)])


def use_ghost_batch_norm(model: nn.Module, virtual_batch_size: int) -> int:
    """Swap every BatchNorm layer in `model` for a GhostBatchNorm around it; returns how many."""
    swapped = 0
    for name, child in list(model.named_children()):
        if isinstance(child, _BatchNorm):
            setattr(model, name, GhostBatchNorm(child, virtual_batch_size))
            swapped += 1
        elif not isinstance(child, GhostBatchNorm):
            swapped += use_ghost_batch_norm(child, virtual_batch_size)
    return swapped
