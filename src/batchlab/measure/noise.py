"""The gradient noise scale of a workload, measured while it trains (McCandlish et al. 2018).

B_simple = tr(Sigma) / |G|^2 is the batch size past which a bigger batch buys little per step.
Each step's batch is split into k micro-batches: each micro-batch's gradient is a |G_small|^2 sample
(B_small = B/k), their mean the |G_big|^2 sample (B_big = B); the estimator in
`_noise_estimator` turns them into unbiased |G|^2 and tr(Sigma). No extra backward pass is needed:
the micro-batch gradients are the same work as the whole batch's.

References:
  McCandlish, Kaplan, Amodei et al. 2018, arXiv:1812.06162, section 2.2 and Appendix A.1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch

from batchlab.core.data import DeviceData
from batchlab.core.json_safe import json_safe
from batchlab.core.noise_estimator import inverse_batch, one_step
from batchlab.core.progress import Steps
from batchlab.core.step import grad_list, sq_norm
from batchlab.core.stream import placed
from batchlab.errors import bad, check_int
from batchlab.train.result import CurvePoint
from batchlab.train.run import train
from batchlab.workload import Workload
from batchlab.workloads import load_workload


@dataclass(frozen=True, kw_only=True)
class NoisePoint:
    step: int
    examples: int
    train_loss: float | None
    eval_loss: float | None
    b_simple: float | None

    @classmethod
    def of(cls, point: CurvePoint) -> NoisePoint:
        return cls(
            step=point.step,
            examples=point.examples,
            train_loss=point.train_loss,
            eval_loss=point.eval_loss,
            b_simple=point.b_simple,
        )


@dataclass(frozen=True, kw_only=True)
class NoiseEstimate:
    """B_simple at the end of a short run, its parts and uncertainty, and its history."""

    workload: str
    batch_size: int
    micro_batches: int
    lr: float  # the noise scale is measured relative to the learning rate ("temperature")
    steps: int
    b_simple: float
    b_simple_stderr: float
    grad_sq: float  # |G|^2
    trace_sigma: float  # tr(Sigma)
    measured_examples: int  # examples in the final pass at fixed parameters
    final_train_loss: float | None
    history: tuple[NoisePoint, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["history"] = [asdict(p) for p in self.history]
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseEstimate:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["history"] = tuple(NoisePoint(**p) for p in data["history"])
        return cls(**fields)


def measure_noise(
    workload: Workload | str,
    *,
    batch_size: int | None = None,
    micro_batches: int = 4,
    steps: int | None = None,
    lr: float | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    max_examples: int | None = None,
    progress: Steps | None = None,
    keep_model: bool = False,
) -> tuple[NoiseEstimate, torch.nn.Module | None]:
    """Train from scratch for `steps` at `batch_size` (default: the workload's reference point),
    tracking B_simple at every step from `micro_batches` equal parts of each batch (the history);
    then measure it precisely at the final parameters with one pass over the training set (up to
    `max_examples`) in micro-batches of the same size (the reported value).

    `steps` defaults to two epochs' worth, at least 200; a stream's final pass reads as many
    examples as its training did, unless `max_examples` says otherwise. Returns the estimate, and the trained
    model when `keep_model` (to compare with an exact computation at the same parameters).

    Under torchrun the batch is global and split over ranks x `micro_batches`; the history then
    takes its small batch from the ranks (B / world), and every rank makes the final pass.
    """
    workload = load_workload(workload)
    size = workload.batch_size if batch_size is None else batch_size
    _check_split(size, micro_batches)
    if steps is None:  # a stream has no epochs: 200 steps
        steps = max(200, 2 * (workload.train_len or 0) // max(size, 1))
    result = train(
        workload,
        batch_size=size,
        lr=lr,
        lr_rule="linear",
        accumulation=micro_batches,
        max_steps=steps,
        track_noise=True,
        device=device,
        seed=seed,
        keep_model=True,
        progress=progress,
    )
    assert result.noise is not None and result.model is not None
    final = noise_at_parameters(
        result.model,
        workload,
        micro_batch=size // micro_batches,
        device=next(result.model.parameters()).device,
        max_examples=max_examples if max_examples is not None or not workload.stream else result.examples,
        seed=seed,
    )
    estimate = NoiseEstimate(
        workload=workload.name,
        batch_size=size,
        micro_batches=micro_batches,
        lr=result.lr,
        steps=result.steps,
        b_simple=final.b_simple,
        b_simple_stderr=final.b_simple_stderr,
        grad_sq=final.grad_sq,
        trace_sigma=final.trace_sigma,
        measured_examples=final.micro_batches * size // micro_batches,
        final_train_loss=result.final_train_loss,
        history=tuple(NoisePoint.of(p) for p in result.curve if p.step > 0),
    )
    return estimate, result.model if keep_model else None


def _check_split(size: int, micro_batches: int) -> None:
    """Two batch sizes are needed: the batch splits into `micro_batches` >= 2 equal parts."""
    check_int(
        "micro_batches",
        micro_batches,
        minimum=2,
        expected="an integer >= 2 (two batch sizes are needed)",
        fix="pass --micro-batches 4",
    )
    if isinstance(size, int) and size % micro_batches:
        raise bad(
            "batch_size",
            size,
            f"a multiple of micro_batches ({micro_batches})",
            f"pass --batch-size {micro_batches * max(1, size // micro_batches)}",
        )


class PassReading(NamedTuple):
    grad_sq: float
    trace_sigma: float
    b_simple: float
    b_simple_stderr: float
    micro_batches: int


# An early-stopped pass (`rel_error`) reads at least EARLY_STOP_MIN micro-batches, so that the spread
# of their |G_small|^2 is itself measured, and a big batch of at least EARLY_STOP_BIG_OVER_B_SIMPLE
# B_simple examples: |G_big|^2 = |G|^2 + tr(Sigma) / B_big is one sample, whose own noise the standard
# error leaves out; at B_big >= 8 B_simple the noise term is at most an eighth of the signal.
EARLY_STOP_MIN = 64
EARLY_STOP_BIG_OVER_B_SIMPLE = 8


def noise_at_parameters(
    model: torch.nn.Module,
    workload: Workload,
    *,
    micro_batch: int,
    device: torch.device,
    max_examples: int | None = None,
    seed: int = 0,
    rel_error: float | None = None,
) -> PassReading:
    """B_simple at the model's current parameters, from one shuffled pass over the training set.

    Each micro-batch of `micro_batch` examples gives a |G_small|^2 sample; the mean of all M of their
    gradients is the big batch (B_big = M * micro_batch, up to the whole set, where the
    finite-population correction makes |G|^2 nearly exact). tr(Sigma) then averages over M samples.
    No parameter changes. The standard error comes from the spread of the micro-batch samples.

    With `rel_error`, the pass stops early, at a doubling of M from EARLY_STOP_MIN micro-batches, once
    the standard error is within `rel_error` of B_simple and the big batch holds at least
    EARLY_STOP_BIG_OVER_B_SIMPLE times B_simple examples (see there).
    """

    n = workload.train_len  # None for a stream: an infinite population, no correction
    if n is None and max_examples is None:
        raise bad("max_examples", None, "given for a stream (a pass over it has no end)", "pass 65536, say")
    count = min(n or math.inf, max_examples or math.inf) // micro_batch
    count = int(count)
    if count < 2:
        measured = n if max_examples is None else min(n or max_examples, max_examples)
        raise bad("micro_batch", micro_batch, f"at most half the examples measured ({measured})")
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    small: list[float] = []
    batches = placed(workload.train_data, device).shuffled(
        micro_batch, torch.Generator().manual_seed(seed)
    )
    model.train()
    check = EARLY_STOP_MIN
    for done in range(1, count + 1):
        model.zero_grad(set_to_none=True)
        x, y = next(batches)
        workload.loss(model(x), y).backward()
        grads = grad_list(params)
        small.append(float(sq_norm(grads)))
        torch._foreach_add_(total, grads)
        if rel_error is not None and done == check and done < count:
            check *= 2
            reading = _pass_reading(small, total, micro_batch, n)
            big_enough = done * micro_batch >= EARLY_STOP_BIG_OVER_B_SIMPLE * reading.b_simple
            if big_enough and reading.b_simple_stderr <= rel_error * abs(reading.b_simple):
                break
    model.zero_grad(set_to_none=True)
    return _pass_reading(small, total, micro_batch, n)


def _pass_reading(
    small: list[float], total: list[torch.Tensor], micro_batch: int, n: int | None
) -> PassReading:
    """B_simple and its standard error from the micro-batches' |G_small|^2 and their summed gradient."""
    count = len(small)
    big_sq = float(sq_norm([t / count for t in total]))
    small_sq = sum(small) / count
    b_big = count * micro_batch
    grad_sq, trace = one_step(
        small_sq=small_sq, big_sq=big_sq, b_small=micro_batch, b_big=b_big, population=n
    )
    # Delta method: tr(Sigma) moves with the mean of the small samples; |G|^2 = big - c_big tr(Sigma).
    spread = (sum((v - small_sq) ** 2 for v in small) / (count - 1)) ** 0.5 / count**0.5
    c_small, c_big = inverse_batch(micro_batch, n), inverse_batch(b_big, n)
    se_trace = spread / (c_small - c_big)
    se_grad = c_big * se_trace
    b_simple = trace / grad_sq if grad_sq > 0 else float("inf")
    rel = (
        ((se_trace / trace) ** 2 + (se_grad / grad_sq) ** 2) ** 0.5
        if grad_sq > 0 and trace > 0
        else float("inf")
    )
    return PassReading(grad_sq, trace, b_simple, abs(b_simple) * rel, count)


def exact_noise_scale(workload: Workload, model: torch.nn.Module, *, chunk: int = 512) -> dict[str, float]:
    """|G|^2, tr(Sigma) and B_simple over the whole training set at the model's parameters, from
    per-example gradients (torch.func), in float64. The ground truth for the estimator."""
    from torch.func import functional_call, grad, vmap

    model = model.double().eval()  # eval: per-example gradients need no batch statistics
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return workload.loss(functional_call(model, p, (x[None],)), y[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    device = next(model.parameters()).device
    total = None
    total_sq = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for x, y in DeviceData(workload.train_data, device).in_order(chunk):
        x = x.double() if x.is_floating_point() else x
        y = y.double() if y.is_floating_point() else y
        g = torch.cat([v.reshape(len(x), -1) for v in per_example(params, x, y).values()], dim=1)  # (n, P)
        total = g.sum(dim=0) if total is None else total + g.sum(dim=0)
        total_sq += g.pow(2).sum()
        n += len(x)
    assert total is not None
    mean = total / n
    grad_sq = float(mean @ mean)
    trace = float(total_sq / n - mean @ mean)  # E|g|^2 - |E g|^2, the population covariance's trace
    return {"grad_sq": grad_sq, "trace_sigma": trace, "b_simple": trace / grad_sq}
