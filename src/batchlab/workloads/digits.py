"""scikit-learn's handwritten digits (1,797 8x8 images), with a fixed 80/20 train/eval split."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from batchlab.workload import Target, Workload

EVAL_FRACTION = 0.2


@lru_cache(maxsize=1)
def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # (N, 64), pixels 0..16 -> 0..1
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_eval = int(len(x) * EVAL_FRACTION)
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    return x[train_idx], y[train_idx], x[eval_idx], y[eval_idx]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {"accuracy": (outputs.argmax(dim=-1) == targets).float().mean().item()}


def _sgd(params, lr: float) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def mlp() -> Workload:
    x_train, y_train, x_eval, y_eval = _tensors()
    return Workload(
        name="digits-mlp",
        description="64-128-10 MLP on scikit-learn's digits",
        model=lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)),
        train_data=TensorDataset(x_train, y_train),
        eval_data=TensorDataset(x_eval, y_eval),
        loss=F.cross_entropy,
        optimizer=_sgd,
        batch_size=32,
        lr=0.05,
        target=Target(metric="eval_loss", value=0.15, mode="min"),
        metrics=accuracy,
    )


class DigitsCNN(nn.Module):
    """Two conv blocks with batch norm, then a linear head. Input (B, 64) is viewed as (B, 1, 8, 8)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)
            ),  # (B, width, 4, 4)
        )
        self.head = nn.Linear(width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x.view(-1, 1, 8, 8))
        return self.head(h.flatten(1))


def cnn() -> Workload:
    x_train, y_train, x_eval, y_eval = _tensors()
    return Workload(
        name="digits-cnn",
        description="2-block CNN with batch norm on scikit-learn's digits",
        model=DigitsCNN,
        train_data=TensorDataset(x_train, y_train),
        eval_data=TensorDataset(x_eval, y_eval),
        loss=F.cross_entropy,
        optimizer=_sgd,
        batch_size=32,
        lr=0.05,
        target=Target(metric="eval_loss", value=0.06, mode="min"),
        metrics=accuracy,
    )
