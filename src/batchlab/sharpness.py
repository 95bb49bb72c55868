"""The sharpness of a minimum: the Hessian's top eigenvalue and epsilon-sharpness.

A training run measures the minimum it reached, so this sits below `train`.

References:
  Keskar, Mudigere, Nocedal et al. 2017, arXiv:1609.04836 (epsilon-sharpness, section 2.2.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from batchlab.core.data import DeviceData
from batchlab.errors import bad
from batchlab.workload import Workload

Hvp = Callable[[list[torch.Tensor]], list[torch.Tensor]]


@dataclass(frozen=True, kw_only=True)
class Sharpness:
    top_eigenvalue: float
    iterations: int
    converged: bool
    method: str  # "autograd" (double backward) or "finite-difference"
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _batches(
    workload: Workload, device: torch.device, limit: int | None, chunk: int
) -> Iterator[tuple[Any, Any]]:
    yield from DeviceData(workload.train_data, device).in_order(chunk, limit)


def mean_gradient(
    model: nn.Module, workload: Workload, batches: list[tuple[Any, Any]], create_graph: bool
) -> list[torch.Tensor]:
    """Gradient of the mean loss over all the batches (weighted by size)."""
    params = _params(model)
    total = sum(len(y) for _, y in batches)
    grads: list[torch.Tensor] | None = None
    for x, y in batches:
        loss = workload.loss(model(x), y) * (len(y) / total)
        g = torch.autograd.grad(loss, params, create_graph=create_graph)
        grads = list(g) if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
    assert grads is not None
    return grads


def autograd_hvp(model: nn.Module, workload: Workload, batches: list[tuple[Any, Any]]) -> Hvp:
    """Hessian-vector products by double backward through the mean loss over `batches`."""
    params = _params(model)

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [torch.zeros_like(p) for p in params]
        total = sum(len(y) for _, y in batches)
        for x, y in batches:  # per chunk, so the double-backward graph of only one chunk is alive
            loss = workload.loss(model(x), y) * (len(y) / total)
            g = torch.autograd.grad(loss, params, create_graph=True)
            dot = torch.stack([(gi * vi).sum() for gi, vi in zip(g, v, strict=True)]).sum()
            hv = torch.autograd.grad(dot, params)
            out = [o + h.detach() for o, h in zip(out, hv, strict=True)]
        return out

    return hvp


def finite_difference_hvp(
    model: nn.Module, workload: Workload, batches: list[tuple[Any, Any]], step: float = 1e-3
) -> Hvp:
    """H v ~ (g(w + h v) - g(w - h v)) / 2h, for models whose operations lack double backward.
    Central differences: error O(h^2) times the third derivative."""
    params = _params(model)

    def gradient_at(shift: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, s in zip(params, shift, strict=True):
                p.add_(s)
        try:
            return [g.detach() for g in mean_gradient(model, workload, batches, create_graph=False)]
        finally:
            with torch.no_grad():
                for p, s in zip(params, shift, strict=True):
                    p.sub_(s)

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        norm = math.sqrt(sum(float((t * t).sum()) for t in v))
        h = step / max(norm, 1e-12)
        plus = gradient_at([h * t for t in v])
        minus = gradient_at([-h * t for t in v])
        return [(a - b) / (2 * h) for a, b in zip(plus, minus, strict=True)]

    return hvp


def top_eigenvalue(
    hvp: Hvp,
    params: Sequence[torch.Tensor],
    *,
    tolerance: float = 1e-4,
    max_iterations: int = 200,
    seed: int = 0,
) -> tuple[float, int, bool]:
    """Power iteration on H: the eigenvalue of largest magnitude, to a relative `tolerance`."""
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator).to(p.device, p.dtype) for p in params]
    value = 0.0
    for iteration in range(1, max_iterations + 1):
        norm = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / norm for t in v]
        hv = hvp(v)
        new = sum(float((a * b).sum()) for a, b in zip(v, hv, strict=True))  # Rayleigh quotient
        if iteration > 1 and abs(new - value) <= tolerance * abs(new):
            return new, iteration, True
        value, v = new, [t.detach() for t in hv]
    return value, max_iterations, False


def sharpness(
    model: nn.Module,
    workload: Workload,
    *,
    method: str = "autograd",
    max_examples: int | None = 4096,
    chunk: int = 512,
    tolerance: float = 1e-4,
    max_iterations: int = 200,
) -> Sharpness:
    """The top Hessian eigenvalue of the training loss over a fixed sample (the whole training set
    when it has at most `max_examples`): one small batch's estimate varies tenfold. The model is
    put in eval mode (batch statistics would make the loss depend on the sample's split). `auto`
    uses double backward where every operation has one, else finite differences."""
    device = next(model.parameters()).device
    model.eval()
    batches = list(_batches(workload, device, max_examples, chunk))
    if method not in ("auto", "autograd", "finite-difference"):
        raise bad("method", method, "'auto', 'autograd' or 'finite-difference'")
    if method == "auto":
        try:  # one product tells whether every operation has a double backward
            autograd_hvp(model, workload, batches)([torch.zeros_like(p) for p in _params(model)])
            method = "autograd"
        except RuntimeError as error:
            if "not implemented" not in str(error) and "not supported" not in str(error):
                raise
            method = "finite-difference"
    make = autograd_hvp if method == "autograd" else finite_difference_hvp
    value, iterations, converged = top_eigenvalue(
        make(model, workload, batches), _params(model), tolerance=tolerance, max_iterations=max_iterations
    )
    return Sharpness(
        top_eigenvalue=value,
        iterations=iterations,
        converged=converged,
        method=method,
        examples=sum(len(y) for _, y in batches),
    )


def epsilon_sharpness(
    model: nn.Module,
    workload: Workload,
    *,
    epsilon: float = 1e-3,
    steps: int = 20,
    max_examples: int | None = 4096,
    chunk: int = 512,
    seed: int = 0,
) -> float:
    """Keskar et al.'s sharpness: 100 (max_{y in C} f(x + y) - f(x)) / (1 + f(x)) over the box
    C = {|y_i| <= epsilon (|x_i| + 1)}, maximized approximately by projected sign-gradient ascent
    (the box's natural steepest ascent) from a random point in the box (at a minimum the gradient
    is zero, and ascent from the centre would not move). The parameters are restored afterwards."""
    device = next(model.parameters()).device
    model.eval()
    batches = list(_batches(workload, device, max_examples, chunk))
    params = _params(model)
    origin = [p.detach().clone() for p in params]
    radius = [epsilon * (o.abs() + 1) for o in origin]

    def loss() -> float:
        with torch.no_grad():
            total = sum(len(y) for _, y in batches)
            return sum(float(workload.loss(model(x), y)) * len(y) / total for x, y in batches)

    base = loss()
    best = base
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for p, r in zip(params, radius, strict=True):
                p.add_((torch.rand(p.shape, generator=generator).to(p.device) - 0.5) * r)
        for _ in range(steps):
            grads = mean_gradient(model, workload, batches, create_graph=False)
            with torch.no_grad():
                for p, g, o, r in zip(params, grads, origin, radius, strict=True):
                    p.add_(g.sign() * r / 4)
                    p.copy_(torch.maximum(torch.minimum(p, o + r), o - r))
            best = max(best, loss())
    finally:
        with torch.no_grad():
            for p, o in zip(params, origin, strict=True):
                p.copy_(o)
    return 100 * (best - base) / (1 + base)


def flat_mean_gradient(
    model: torch.nn.Module, workload: Workload, batches: list[tuple[Any, Any]]
) -> torch.Tensor:
    """The mean-loss gradient over `batches`, flattened into one vector."""
    return torch.cat([g.reshape(-1) for g in mean_gradient(model, workload, batches, create_graph=False)])


SHARPNESS_EXAMPLES = 2048  # the fixed training sample a run's final sharpness is measured on


def minimum_sharpness(model: nn.Module, workload: Workload) -> dict[str, Any]:
    """What a run reports of the minimum it reached: the Hessian's top eigenvalue and epsilon-sharpness."""
    top = sharpness(model, workload, method="auto", max_examples=SHARPNESS_EXAMPLES, tolerance=1e-3)
    return {
        **top.to_dict(),
        "epsilon_sharpness": epsilon_sharpness(model, workload, max_examples=SHARPNESS_EXAMPLES),
    }
