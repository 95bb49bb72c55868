"""The gradient noise scale of any training loop, measured from what the loop already does.

`NoiseMonitor` needs two batch sizes in the same step, and finds them without an extra backward
pass:

- under gradient accumulation, each micro-batch's gradient is a small batch and the accumulated
  gradient the big one;
- under DDP, each rank's local gradient is a small batch and the all-reduced gradient the big one
  (both at once: each rank's micro-batches are small batches of B / (K x W));
- with neither, `backward` splits an occasional batch in two (the same total gradient, summed in two
  halves) when the loop asks `wants_split`.

How: a hook on every parameter sees each backward pass's gradient as it arrives, before it is added
into `.grad` and before DDP averages it, and keeps the sum of its squares; the hook returns nothing,
so the gradients the optimizer sees are the loop's own. At `step()`, .grad holds the big batch's
gradient. The estimator is McCandlish et al.'s (see _noise_estimator.py), its history an
exponential window of the last `window` fraction of the steps so far.

Losses are taken to be divided by the number of micro-batches (as Lightning, Hugging Face and
`batchlab.train` do): then a micro-batch's own mean-loss gradient is K times what its backward adds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from batchlab.core import noise_estimator as noise_est
from batchlab.core.step import norms, split, sq_norm
from batchlab.errors import bad

# B_simple is read once |G|^2 is this many standard errors above zero: below, the ratio is noise.
RESOLVED_SIGMAS = 2.0
WINDOW = 0.1  # the history averages over the last tenth of the steps so far (an exponential window)
SPLIT_EVERY = 50  # with neither accumulation nor ranks, one step in this many is split in two


@dataclass(frozen=True)
class NoiseReading:
    """The noise scale at a step: B_simple = tr(Sigma) / |G|^2, its parts, and one standard error."""

    step: int
    b_simple: float
    b_simple_stderr: float
    trace_sigma: float
    grad_sq: float
    measurements: int  # the steps folded into it
    grad_sq_stderr: float = math.inf

    @property
    def unresolved_because(self) -> str | None:
        """Why B_simple cannot be read yet (None once it can): its denominator |G|^2, the difference
        of two noisy estimates, is not RESOLVED_SIGMAS standard errors above zero, so the ratio is
        noise (or infinite)."""
        g, se = self.grad_sq, self.grad_sq_stderr
        if (
            math.isfinite(g)
            and math.isfinite(se)
            and g > RESOLVED_SIGMAS * se
            and math.isfinite(self.b_simple)
        ):
            return None
        return (
            f"|G|^2 = {g:.3g} +- {se:.2g} over {self.measurements} measured steps is not "
            f"{RESOLVED_SIGMAS:g} standard errors above zero: the gradient's signal is not yet told "
            "from its noise (more steps, or a larger batch, resolve it)"
        )

    def metrics(self) -> dict[str, float]:
        """What a trainer's logger takes, every value finite: tr(Sigma), |G|^2 and the steps measured
        always; B_simple and its standard error once resolved (`b_simple_resolved` says which)."""
        figures = {
            "trace_sigma": self.trace_sigma,
            "grad_sq": self.grad_sq,
            "noise_steps_measured": float(self.measurements),
            "b_simple_resolved": 0.0 if self.unresolved_because else 1.0,
        }
        if not self.unresolved_because:
            figures["b_simple"] = self.b_simple
            if math.isfinite(self.b_simple_stderr):
                figures["b_simple_stderr"] = self.b_simple_stderr
        return {name: value for name, value in figures.items() if math.isfinite(value)}

    def to_dict(self) -> dict[str, float]:
        return {
            "step": self.step,
            "b_simple": self.b_simple,
            "b_simple_stderr": self.b_simple_stderr,
            "trace_sigma": self.trace_sigma,
            "grad_sq": self.grad_sq,
            "grad_sq_stderr": self.grad_sq_stderr,
            "measurements": self.measurements,
        }


class NoiseMonitor:
    """Attach to a model (the module inside DDP, or the DDP module itself); call `step(batch_size)`
    once per optimizer step, after the backward passes and before `optimizer.zero_grad()`.

    >>> monitor = NoiseMonitor(model)
    >>> for step, micro_batches in enumerate(loader):
    ...     for x, y in micro_batches:                       # K micro-batches (1 is fine)
    ...         (loss_fn(model(x), y) / K).backward()
    ...     monitor.step(batch_size=B)                       # B: examples in the step, all ranks
    ...     optimizer.step(); optimizer.zero_grad()
    >>> monitor.reading().b_simple
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        window: float = WINDOW,
        split_every: int = SPLIT_EVERY,
        population: int | None = None,
    ) -> None:
        if not 0 < window <= 1:
            raise bad("window", window, "a fraction of the steps in (0, 1]")
        if split_every < 1:
            raise bad("split_every", split_every, "an integer >= 1")
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.params = [p for p in inner.parameters() if p.requires_grad]
        if not self.params:
            raise bad("model", type(model).__name__, "a model with trainable parameters")
        self.window, self.split_every, self.population = window, split_every, population
        self.active = True  # while False (an evaluation's or a Hessian's backward), the hooks skip
        self.state = noise_est.init()
        self.steps = 0  # optimizer steps seen
        self.last_measured = 0
        self.history: list[NoiseReading] = []
        self._small: torch.Tensor | None = None  # sum over backward passes of |their gradient|^2
        self._micro = 0  # backward passes since the last step
        self._last_micro = 0  # backward passes in the last step (more than 1: no split needed)
        self.clipped_steps = 0  # steps left out because the loop had clipped before step()
        # The last measured step's (mean |g_small|^2, |g_big|^2, b_small, b_big).
        self.last_measurement: tuple[float, float, float, float] | None = None
        # Each parameter's hook only collects its gradient (the least Python a hook can do); the
        # first one of a backward pass queues `_on_backward` for the pass's end, which norms them
        # all in one fused call. The gradients are held until then (one copy at most).
        self._arrived: list[torch.Tensor] = []
        self._handles = [p.register_hook(self._collect) for p in self.params]

    def _collect(self, grad: torch.Tensor) -> None:
        if not self.active:
            return
        if not self._arrived:
            torch.autograd.Variable._execution_engine.queue_callback(self._on_backward)
        self._arrived.append(grad)

    def _on_backward(self) -> None:
        arrived, self._arrived = self._arrived, []
        if not arrived:
            return
        with torch.no_grad():  # (a double-backward's gradients carry a graph: not ours to extend)
            square = torch.stack(norms(arrived)).float().pow(2).sum()
        self._small = square if self._small is None else self._small + square
        self._micro += 1

    # The loop's side --------------------------------------------------------------------------------

    @property
    def wants_split(self) -> bool:
        """Whether this step should go through `backward(..., parts=2)`: only where the loop gives
        one batch size (no accumulation, one rank), one step in `split_every`."""
        return _world() == 1 and self._last_micro <= 1 and self.steps % self.split_every == 0

    def backward(self, losses: Callable[[int, int], torch.Tensor], parts: int = 2) -> torch.Tensor:
        """Run the step's backward as `parts` equal pieces: `losses(i, parts)` returns piece i's
        mean loss (its slice of the batch); each is divided by `parts`, so the summed gradient is the
        whole batch's. Returns the whole batch's mean loss."""
        total = torch.zeros(())
        for i in range(parts):
            loss = losses(i, parts) / parts
            loss.backward()
            total = total + loss.detach().cpu()
        return total

    def step(
        self, batch_size: int, *, grad_scale: float = 1.0, clip_norm: float | None = None
    ) -> NoiseReading | None:
        """Fold this step in: `batch_size` examples in all (micro-batches x ranks x each's size).
        `grad_scale`: a loss scaler's factor, when the gradients are scaled (fp16). `clip_norm`:
        the loop's gradient-clipping norm, when it clips before calling this (Hugging Face's
        Trainer does): a step whose gradient was clipped is left out (`clipped_steps`), its own
        norm being gone. Returns the reading when this step gave two batch sizes, else None."""
        self.steps += 1
        small, micro = self._small, self._micro
        # (gradients a failed backward pass left uncounted are dropped with the step)
        self._small, self._micro, self._arrived = None, 0, []
        if small is None or not self.active:
            return None
        self._last_micro = micro
        small_parts = micro * _world()
        if small_parts < 2:
            return None
        small_sq = _mean_over_ranks(small) * micro / grad_scale**2  # mean |g_micro|^2 (K^2 |.|^2 / K)
        big_sq = _sq_norm(self.params) / grad_scale**2
        if clip_norm is not None and float(big_sq) ** 0.5 >= clip_norm * (1 - 1e-3):  # (clipped unscaled)
            self.clipped_steps += 1  # clipped: the step's own gradient is gone
            return None
        self.last_measurement = (float(small_sq), float(big_sq), batch_size / small_parts, batch_size)
        gap = self.steps - self.last_measured
        self.last_measured = self.steps
        beta = math.exp(-gap / max(1.0, self.window * self.steps))
        self.state = noise_est.update(
            self.state,
            beta=beta,
            small_sq=float(small_sq),
            big_sq=float(big_sq),
            b_small=batch_size / small_parts,
            b_big=batch_size,
            population=self.population,
        )
        reading = self.reading()
        assert reading is not None
        self.history.append(reading)
        return reading

    def reading(self) -> NoiseReading | None:
        """The noise scale so far (None before a step gave two batch sizes)."""
        if not self.state.updates:
            return None
        r = noise_est.read(self.state)
        return NoiseReading(
            step=self.steps,
            b_simple=r.b_simple,
            b_simple_stderr=r.b_simple_stderr,
            trace_sigma=r.trace_sigma,
            grad_sq=r.grad_sq,
            measurements=self.state.updates,
            grad_sq_stderr=r.grad_sq_stderr,
        )

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Backward passes inside are not the training step's (a Hessian product, say)."""
        previous, self.active = self.active, False
        try:
            yield
        finally:
            self.active = previous

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> NoiseMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if _world() == 1:
        return value
    value = value.clone()
    torch.distributed.all_reduce(value)
    return value / _world()


def _sq_norm(params: Sequence[nn.Parameter]) -> torch.Tensor:
    return sq_norm([p.grad for p in params if p.grad is not None])


def split_loss(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], x: Any, y: Any):  # type: ignore[no-untyped-def]
    """For `NoiseMonitor.backward`: piece i of `parts` of the batch (x, y), its mean loss."""

    def losses(i: int, parts: int) -> torch.Tensor:
        px, py = split((x, y), parts)[i]
        return loss_fn(model(px), py)

    return losses
