"""The model a run starts from."""

from __future__ import annotations

import torch
from torch import nn

from batchlab.core.precision import apply_checkpointing
from batchlab.errors import bad
from batchlab.ghost_bn import use_ghost_batch_norm
from batchlab.workload import Workload


def fresh_model(
    workload: Workload,
    seed: int,
    device: torch.device,
    *,
    checkpoint: bool = False,
    ghost_batch_size: int | None = None,
) -> nn.Module:
    """The workload's model, built under `seed`, on `device`; its blocks checkpointed and its batch
    norm layers made ghost batch norm, if asked."""
    torch.manual_seed(seed)
    model = workload.model().to(device)
    if ghost_batch_size is not None and use_ghost_batch_norm(model, ghost_batch_size) == 0:
        raise bad(
            "ghost_batch_size",
            ghost_batch_size,
            "used with a model that has BatchNorm layers",
            f"leave it out: {workload.name}'s model has none",
        )
    return apply_checkpointing(model) if checkpoint else model
