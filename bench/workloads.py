"""Workloads of kinds the built-ins do not cover, written as a user would write their own.

They live here, not among the built-ins: batchlab must be right on workloads it was not tuned on,
and these are the stand-ins for them (`--workload bench/workloads.py:tabular_adam`).

- `digits_tanh`: a 64-32-10 tanh MLP with plain SGD (no momentum), target on `train_loss`: the
  setup on which mini-batch-judged targets went wrong (issue 13).
- `tabular_adam`: AdamW on 20,000 synthetic tabular rows (so the training set does not cap the
  batch), a 3-layer MLP, target on eval loss.
- `digits_bn_accuracy`: a convolutional model with batch norm, SGD with Nesterov momentum, target
  on eval accuracy (a "max" target on a metric, not a loss).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from batchlab import Target, Workload
from batchlab.workloads.digits import _tensors as digits_tensors
from batchlab.workloads.digits import accuracy


def digits_tanh() -> Workload:
    x_train, y_train, x_eval, y_eval = digits_tensors()
    return Workload(
        name="digits-tanh",
        description="64-32-10 tanh MLP, plain SGD, target train_loss <= 0.3",
        model=lambda: nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)),
        train_data=TensorDataset(x_train, y_train),
        eval_data=TensorDataset(x_eval, y_eval),
        loss=F.cross_entropy,
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        batch_size=16,
        lr=0.4,
        target=Target(metric="train_loss", value=0.3, mode="min"),
        metrics=accuracy,
    )


TABULAR_ROWS = 20_000
TABULAR_EVAL = 2_000
TABULAR_FEATURES = 24


@lru_cache(maxsize=1)
def _tabular() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of correlated features; the label is a noisy nonlinear function of them (5 classes), so
    a model can fit it well but not perfectly."""
    g = torch.Generator().manual_seed(1)
    n = TABULAR_ROWS + TABULAR_EVAL
    mix = torch.randn(TABULAR_FEATURES, TABULAR_FEATURES, generator=g) / TABULAR_FEATURES**0.5
    x = torch.randn(n, TABULAR_FEATURES, generator=g) @ (torch.eye(TABULAR_FEATURES) + mix)
    w1 = torch.randn(TABULAR_FEATURES, 16, generator=g)
    w2 = torch.randn(16, 5, generator=g)
    logits = torch.tanh(x @ w1 / TABULAR_FEATURES**0.5) @ w2 * 1.5
    noise = torch.rand(n, 5, generator=g).clamp_min(1e-9).log().neg().log().neg()  # Gumbel
    y = (logits + noise).argmax(dim=1)
    return x[:TABULAR_ROWS], y[:TABULAR_ROWS], x[TABULAR_ROWS:], y[TABULAR_ROWS:]


def tabular_adam() -> Workload:
    x_train, y_train, x_eval, y_eval = _tabular()
    return Workload(
        name="tabular-adam",
        description="24-64-64-5 MLP on 20,000 synthetic rows, AdamW",
        model=lambda: nn.Sequential(
            nn.Linear(TABULAR_FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
        ),
        train_data=TensorDataset(x_train, y_train),
        eval_data=TensorDataset(x_eval, y_eval),
        loss=F.cross_entropy,
        optimizer=lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.01),
        batch_size=32,
        lr=1e-3,
        target=Target(metric="eval_loss", value=0.66, mode="min"),
        metrics=accuracy,
    )


class SmallBNNet(nn.Module):
    """conv(16)-BN-ReLU, conv(32)-BN-ReLU-pool, linear: digits as (B, 1, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)).flatten(1))  # (B, 10)


def digits_bn_accuracy() -> Workload:
    x_train, y_train, x_eval, y_eval = digits_tensors()
    return Workload(
        name="digits-bn-accuracy",
        description="conv-BN net on digits, Nesterov SGD, target eval accuracy >= 0.985",
        model=SmallBNNet,
        train_data=TensorDataset(x_train, y_train),
        eval_data=TensorDataset(x_eval, y_eval),
        loss=F.cross_entropy,
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
        batch_size=32,
        lr=0.02,
        target=Target(metric="eval_accuracy", value=0.985, mode="max"),
        metrics=accuracy,
    )


def digits_adam_cautious() -> Workload:
    """A recipe tuned elsewhere, as published recipes are: AdamW at 2e-4, a rate far below this
    model's best at its own batch (the advice_quality row's oracle sweeps the rate up to 64x it)."""
    x_train, y_train, x_eval, y_eval = digits_tensors()
    return Workload(
        name="digits-adam-cautious",
        description="64-64-10 ReLU MLP, AdamW at a cautious 2e-4, target eval_loss <= 0.25",
        model=lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)),
        train_data=TensorDataset(x_train, y_train),
        eval_data=TensorDataset(x_eval, y_eval),
        loss=F.cross_entropy,
        optimizer=lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.01),
        batch_size=32,
        lr=2e-4,
        target=Target(metric="eval_loss", value=0.25, mode="min"),
        metrics=accuracy,
    )
