"""linreg's exact gradient noise scale against a brute-force per-example computation."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from batchlab import load_workload, train
from batchlab.workloads import linreg


def brute_force(model: torch.nn.Module, workload) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Per-example gradients by autograd (torch.func), then |G|^2 and tr(Sigma) by definition."""
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    x, y = (t.double() for t in workload.train_data.tensors)

    def loss(p, xi, yi):  # type: ignore[no-untyped-def]
        out = functional_call(model.double(), p, (xi[None],))
        return workload.loss(out, yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    g = torch.cat([v.reshape(len(x), -1) for v in per_example.values()], dim=1)  # (N, P)
    mean = g.mean(dim=0)
    trace = ((g - mean) ** 2).sum(dim=1).mean()
    return {
        "grad_sq": float(mean @ mean),
        "trace_sigma": float(trace),
        "b_simple": float(trace / (mean @ mean)),
    }


@pytest.mark.parametrize("steps", [0, 40])
def test_exact_noise_scale_matches_brute_force(steps: int) -> None:
    """The closed form equals per-example autograd to 1e-9, at init and after training."""
    workload = load_workload("linreg")
    model = train(workload, batch_size=32, max_steps=max(steps, 1), keep_model=True, device="cpu").model
    assert model is not None
    exact = linreg.exact_noise_scale(model)
    brute = brute_force(model, workload)
    for key in ("grad_sq", "trace_sigma", "b_simple"):
        assert exact[key] == pytest.approx(brute[key], rel=1e-9)


def test_finite_sample_agrees_with_population_formula() -> None:
    """On 8192 examples, B_simple is near (d+1) + d sigma^2/|delta|^2 (sampling error ~ 1/sqrt(N))."""
    model = train("linreg", batch_size=32, max_steps=30, keep_model=True, device="cpu").model
    assert model is not None
    exact = linreg.exact_noise_scale(model)["b_simple"]
    population = linreg.population_noise_scale(model)
    # Both |G|^2 and tr(Sigma) carry O(1/sqrt(N)) ~ 1% sampling error plus the gap between the
    # training minimizer and w*; 10% is a loose bound for d=16, N=8192.
    assert exact == pytest.approx(population, rel=0.10)
