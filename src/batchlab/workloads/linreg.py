"""Synthetic linear regression whose gradient noise scale is known exactly.

x ~ N(0, I_d), y = w*.x + sigma xi, per-example loss 1/2 (w.x - y)^2. On the finite training set
the per-example gradient is g_i = (w.x_i - y_i) x_i, so the exact mean gradient G, the per-example
covariance Sigma and B_simple = tr(Sigma) / |G|^2 follow in closed form from the data (science.md,
"Exact ground truth on linear regression"); `population_noise_scale` gives the infinite-data value
(d + 1) + d sigma^2 / |delta|^2 for comparison.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchlab.workload import Target, Workload

DIM = 16
NOISE_STD = 1.0
TRAIN_SIZE = 8192
EVAL_SIZE = 2048


@lru_cache(maxsize=1)
def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    w_star = torch.randn(DIM, generator=g)
    x = torch.randn(TRAIN_SIZE + EVAL_SIZE, DIM, generator=g)
    y = x @ w_star + NOISE_STD * torch.randn(TRAIN_SIZE + EVAL_SIZE, generator=g)
    return x[:TRAIN_SIZE], y[:TRAIN_SIZE], x[TRAIN_SIZE:], y[TRAIN_SIZE:], w_star


class LinearModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, 1, bias=False)
        nn.init.zeros_(self.linear.weight)  # start at w = 0, so delta = -w* and |delta|^2 ~ d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)  # (B,)


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1/2 (w.x - y)^2."""
    return 0.5 * (outputs - targets).pow(2).mean()


def _sgd(params, lr: float) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    return torch.optim.SGD(params, lr=lr)


def workload() -> Workload:
    x_train, y_train, x_eval, y_eval, w_star = _data()
    return Workload(
        name="linreg",
        description=f"linear regression, d={DIM}, noise std {NOISE_STD}, {TRAIN_SIZE} examples",
        model=LinearModel,
        train_data=TensorDataset(x_train, y_train),
        eval_data=TensorDataset(x_eval, y_eval),
        loss=half_mse,
        optimizer=_sgd,
        batch_size=32,
        lr=0.02,
        # The best achievable eval loss is sigma^2 / 2 = 0.5; 0.52 leaves |delta|^2 ~ 0.04, where
        # B_simple ~ 17 + 16 / 0.04 ~ 400: both regimes of the steps/batch trade-off show in a sweep.
        target=Target(metric="eval_loss", value=0.52, mode="min"),
        extras={"w_star": w_star, "exact_noise_scale": exact_noise_scale},
    )


def weights(model: nn.Module) -> torch.Tensor:
    linear: nn.Linear = model.linear  # type: ignore[assignment]
    return linear.weight.detach().reshape(-1).cpu()


def exact_noise_scale(model: nn.Module) -> dict[str, float]:
    """|G|^2, tr(Sigma) and B_simple over the whole training set at the model's parameters.

    Sigma is the population covariance of the per-example gradients (divide by N), matching the
    estimator's E|G_B|^2 = |G|^2 + tr(Sigma)/B for batches drawn with replacement.
    """
    x, y = _data()[0].double(), _data()[1].double()
    w = weights(model).double()
    residual = x @ w - y  # (N,)
    per_example = residual[:, None] * x  # (N, d): g_i = (w.x_i - y_i) x_i
    mean = per_example.mean(dim=0)
    grad_sq = float(mean @ mean)
    trace_sigma = float((per_example - mean).pow(2).sum(dim=1).mean())
    return {"grad_sq": grad_sq, "trace_sigma": trace_sigma, "b_simple": trace_sigma / grad_sq}


def population_noise_scale(model: nn.Module) -> float:
    """(d + 1) + d sigma^2 / |delta|^2, the infinite-data value for S = I."""
    delta = weights(model).double() - _data()[4].double()
    return (DIM + 1) + DIM * NOISE_STD**2 / float(delta @ delta)
