"""Workloads for the memory probe's tests, loaded by file path in the probe's child processes."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from batchlab import Target, Workload

OOM_ABOVE = 300


def _data(n: int, dim: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _workload(name: str, model, n: int = 1000, dim: int = 8) -> Workload:  # type: ignore[no-untyped-def]
    return Workload(
        name=name,
        model=model,
        train_data=_data(n, dim),
        eval_data=_data(64, dim),
        loss=F.cross_entropy,
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        batch_size=8,
        lr=0.1,
        target=Target(metric="eval_loss", value=0.3),
    )


class FakeOOM(nn.Module):
    """Raises CUDA's out-of-memory error for batches above OOM_ABOVE, as a full GPU would."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > OOM_ABOVE:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return self.linear(x)


class RankOOM(nn.Module):
    """Under torchrun: rank 1's device runs out above OOM_ABOVE, rank 0's only above 500."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 2)
        self.above = OOM_ABOVE if os.environ.get("RANK") == "1" else 500

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return self.linear(x)


class Broken(nn.Module):
    """Fails for batches above 50 with an error that has nothing to do with memory."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 50:
            raise ValueError("shapes (51, 8) and (7, 2) cannot be multiplied")
        return self.linear(x)


class Wide(nn.Module):
    """Cheap elementwise work on wide activations: about 3 MiB of memory per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 64)
        self.scale = nn.Parameter(torch.ones(64, 4096))
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.proj(x).unsqueeze(-1) * self.scale)  # (B, 64, 4096): 1 MiB a sample
        return self.head(h.mean(dim=-1))


def fake_oom() -> Workload:
    return _workload("fake-oom", FakeOOM)


def rank_oom() -> Workload:
    return _workload("rank-oom", RankOOM)


def broken() -> Workload:
    return _workload("broken", Broken)


def wide() -> Workload:
    return _workload("wide", Wide, n=400)


class WideMLP(nn.Module):
    """Large activations from linear layers (which autocast runs in bf16): 8 -> 65536 -> 2."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 65536)
        self.down = nn.Linear(65536, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))  # (B, 65536) saved twice: ~512 KiB a sample in fp32


def wide_mlp() -> Workload:
    return _workload("wide-mlp", WideMLP, n=400)
