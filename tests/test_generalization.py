"""Ghost batch norm and sharpness, checked against exact values."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchlab import Target, Workload, load_workload, train
from batchlab.ghost_bn import GhostBatchNorm, use_ghost_batch_norm
from batchlab.sharpness import epsilon_sharpness, sharpness


def test_ghost_batch_norm_with_the_whole_batch_is_batch_norm() -> None:
    """Virtual batch = batch: outputs, gradients and running statistics equal BatchNorm's exactly."""
    torch.manual_seed(0)
    x = torch.randn(32, 6, 5, 5, requires_grad=True)
    plain, wrapped = nn.BatchNorm2d(6), GhostBatchNorm(nn.BatchNorm2d(6), 32)
    out_plain, out_ghost = plain(x), wrapped(x)
    assert torch.equal(out_plain, out_ghost)
    (g_plain,) = torch.autograd.grad(out_plain.square().sum(), x)
    (g_ghost,) = torch.autograd.grad(out_ghost.square().sum(), x)
    assert torch.equal(g_plain, g_ghost)
    assert torch.equal(plain.running_mean, wrapped.norm.running_mean)
    assert torch.equal(plain.running_var, wrapped.norm.running_var)


def test_ghost_batch_norm_normalizes_each_virtual_batch() -> None:
    """With virtual batches of 8, each chunk of 8 has mean 0 and variance 1 per channel."""
    x = torch.randn(32, 3) * 5 + torch.arange(32.0)[:, None]  # each chunk has a different mean
    out = GhostBatchNorm(nn.BatchNorm1d(3, affine=False), 8)(x)
    for chunk in out.split(8):
        assert chunk.mean(dim=0).abs().max() < 1e-5
        assert (chunk.var(dim=0, unbiased=False) - 1).abs().max() < 1e-3


def test_swapping_counts_the_layers() -> None:
    model = load_workload("digits-cnn").model()
    assert use_ghost_batch_norm(model, 16) == 2
    assert sum(isinstance(m, GhostBatchNorm) for m in model.modules()) == 2


def _quadratic(h: torch.Tensor) -> tuple[nn.Module, Workload]:
    """f(w) = 1/2 sum_i h_i (w_i - 1)^2 exactly: a loss whose Hessian is diag(h) everywhere."""

    class Quadratic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(len(h)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * (h * (self.w - 1) ** 2).sum() * torch.ones(len(x))

    data = TensorDataset(torch.zeros(16, 1), torch.zeros(16))
    workload = Workload(
        name="quadratic",
        model=Quadratic,
        train_data=data,
        eval_data=None,
        loss=lambda out, y: out.mean(),
        optimizer=lambda p, lr: torch.optim.SGD(p, lr=lr),
        batch_size=4,
        lr=0.1,
        target=Target(metric="train_loss", value=0.0),
    )
    return Quadratic(), workload


@pytest.mark.parametrize("method", ["autograd", "finite-difference"])
def test_top_eigenvalue_of_a_known_hessian(method: str) -> None:
    """Hessian diag(0.5, 1, 2, 7.5, 9): the top eigenvalue 9 within 1% (the gap 9/7.5 makes power
    iteration converge geometrically at (7.5/9)^2 per step)."""
    model, workload = _quadratic(torch.tensor([0.5, 1.0, 2.0, 7.5, 9.0]))
    result = sharpness(model, workload, method=method, tolerance=1e-7, max_iterations=500)
    assert result.top_eigenvalue == pytest.approx(9.0, rel=0.01)
    assert result.converged


def test_both_hvps_agree_on_digits_mlp() -> None:
    """On a trained digits-mlp, over the whole training set, autograd and finite differences give the
    same top eigenvalue within 5%."""
    run = train("digits-mlp", batch_size=32, max_steps=200, keep_model=True, device="cpu")
    assert run.model is not None
    workload = load_workload("digits-mlp")
    exact = sharpness(run.model, workload, method="autograd", tolerance=1e-4)
    approx = sharpness(run.model, workload, method="finite-difference", tolerance=1e-4)
    assert exact.examples == workload.train_size
    assert approx.top_eigenvalue == pytest.approx(exact.top_eigenvalue, rel=0.05)


def test_epsilon_sharpness_of_a_quadratic() -> None:
    """At the minimum w = 1 with c = 0: phi = 100 * 1/2 sum h_i eps^2 (|w_i| + 1)^2 (science.md)."""
    h = torch.tensor([1.0, 4.0, 9.0])
    model, workload = _quadratic(h)
    with torch.no_grad():
        model.w.fill_(1.0)
    eps = 1e-2
    expected = 100 * 0.5 * float((h * (eps * 2) ** 2).sum())
    assert epsilon_sharpness(model, workload, epsilon=eps, steps=10) == pytest.approx(expected, rel=1e-3)
    assert torch.equal(model.w.detach(), torch.ones(3))
