"""The workload: everything batchlab needs to train the user's model from scratch, many times.

A workload is the one seam between batchlab and a user's code. Every trial builds fresh objects
from it (a seeded model, a new optimizer); batchlab never mutates a user's trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from batchlab.core.step import LossFn
from batchlab.errors import bad, check_int
from batchlab.recipe import LrSchedule, check_clip

OptimizerFactory = Callable[[Any, float], torch.optim.Optimizer]
MetricsFn = Callable[[Any, Any], Mapping[str, float]]

# Metrics a target may name, beside "eval_<name>" (on the evaluation set) and "train_<name>" (on a
# fixed sample of the training set) for each name the workload's metrics return.
BASE_METRICS = ("train_loss", "eval_loss")


@dataclass(frozen=True, kw_only=True)
class Target:
    """What counts as "trained": `metric` at or below (mode "min") or above (mode "max") `value`."""

    metric: str
    value: float
    mode: str = "min"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise bad("target.metric", self.metric, "a metric name such as 'eval_loss'")
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise bad("target.value", self.value, "a finite number")
        if self.mode not in ("min", "max"):
            raise bad("target.mode", self.mode, "'min' or 'max'")

    def reached(self, value: float) -> bool:
        """True when `value` of the metric counts as trained."""
        return value <= self.value if self.mode == "min" else value >= self.value

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "mode": self.mode}


def _is_dataset(data: object) -> bool:
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _is_stream(data: object) -> bool:
    return isinstance(data, IterableDataset)


@dataclass(frozen=True, kw_only=True)
class Workload:
    """A model, its data, loss and optimizer, a reference point known to train, and a target.

    `model` is called with no arguments for a fresh model; batchlab seeds torch before each call.
    `optimizer(params, lr)` builds the optimizer. `batch_size` and `lr` are the reference point:
    learning-rate rules scale from it. `metrics(outputs, targets)` may return extra batch means
    (such as accuracy), reported as "eval_<name>" on the evaluation set and "train_<name>" on a
    fixed sample of the training set; a target may name either.
    """

    name: str
    model: Callable[[], nn.Module]
    train_data: Dataset[Any]
    eval_data: Dataset[Any] | None
    loss: LossFn
    optimizer: OptimizerFactory
    batch_size: int
    lr: float
    target: Target
    metrics: MetricsFn | None = None
    description: str = ""
    # The recipe beyond the optimizer: the rate's warm-up and decay (`lr` is then the peak), in
    # examples so that they carry across batch sizes, and a clip on the whole step's gradient norm.
    schedule: LrSchedule | None = None
    clip_grad_norm: float | None = None
    # Tokens in one example (a language model's window): lengths may then be given in tokens.
    tokens_per_example: int | None = None
    extras: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # How load_workload found it ("digits-mlp", "pkg.mod:fn"): lets a child process rebuild it.
    spec: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise bad("workload.name", self.name, "a non-empty string")
        for name in ("model", "loss", "optimizer"):
            if not callable(getattr(self, name)):
                raise bad(f"workload.{name}", getattr(self, name), "callable")
        if self.metrics is not None and not callable(self.metrics):
            raise bad("workload.metrics", self.metrics, "callable or None")
        if not _is_stream(self.train_data) and (
            not _is_dataset(self.train_data) or len(self.train_data) == 0  # type: ignore[arg-type]
        ):
            raise bad(
                "workload.train_data",
                type(self.train_data).__name__,
                "a non-empty map-style Dataset, or an IterableDataset (a stream)",
            )
        if self.eval_data is not None and (
            not _is_dataset(self.eval_data) or len(self.eval_data) == 0  # type: ignore[arg-type]
        ):
            raise bad(
                "workload.eval_data", type(self.eval_data).__name__, "a non-empty map-style Dataset or None"
            )
        check_batch_size(self.batch_size, self.train_len, field="workload.batch_size")
        check_lr(self.lr, field="workload.lr")
        if not isinstance(self.target, Target):
            raise bad("workload.target", self.target, "a batchlab.Target")
        if self.eval_data is None and self.target.metric.startswith("eval_"):
            raise bad("workload.target.metric", self.target.metric, "'train_loss' when eval_data is None")
        if self.schedule is not None and not isinstance(self.schedule, LrSchedule):
            raise bad("workload.schedule", self.schedule, "a batchlab.LrSchedule or None")
        object.__setattr__(self, "clip_grad_norm", check_clip(self.clip_grad_norm))
        if self.tokens_per_example is not None:
            check_int("workload.tokens_per_example", self.tokens_per_example, fix="pass 1024, say")

    def examples_in_tokens(self, tokens: int, *, field: str) -> int:
        """The examples that hold `tokens` tokens (rounded up), by the workload's tokens_per_example."""
        if self.tokens_per_example is None:
            raise bad(
                field,
                tokens,
                "used with a workload that states tokens_per_example",
                "give the length in examples, or set Workload(tokens_per_example=...)",
            )
        return -(-tokens // self.tokens_per_example)

    @property
    def stream(self) -> bool:
        """Whether the training data is a stream (an IterableDataset): read in order, no length."""
        return _is_stream(self.train_data)

    @property
    def train_len(self) -> int | None:
        """The training set's size; None for a stream."""
        return None if self.stream else len(self.train_data)  # type: ignore[arg-type]

    @property
    def train_size(self) -> int:
        """The training set's size, for what needs one (epochs, a cap on the batch, a sweep's grid):
        a stream has none, and is refused there with the way it can run."""
        if self.train_len is None:
            raise bad(
                "workload.train_data",
                type(self.train_data).__name__,
                "a map-style Dataset where the training set's size is needed (a stream has none)",
                "train a stream with --max-examples or --max-steps; throughput and memory take "
                "it with --max-batch-size",
            )
        return self.train_len

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "train_size": self.train_len,
            "eval_size": None if self.eval_data is None else len(self.eval_data),  # type: ignore[arg-type]
            "batch_size": self.batch_size,
            "lr": self.lr,
            "target": self.target.to_dict(),
            "schedule": None if self.schedule is None else self.schedule.to_dict(),
            "clip_grad_norm": self.clip_grad_norm,
            "tokens_per_example": self.tokens_per_example,
        }


def check_batch_size(batch_size: object, train_size: int | None, *, field: str = "batch_size") -> int:
    """A batch size is an integer from 1 to the training set's size (a stream's: unbounded)."""
    flag = "--" + field.rsplit(".", 1)[-1].replace("_", "-")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise bad(field, batch_size, "a whole number", f"pass {flag} 32")
    if batch_size < 1:
        raise bad(field, batch_size, "an integer >= 1", f"pass {flag} 1 or larger")
    if train_size is not None and batch_size > train_size:
        raise bad(
            field,
            batch_size,
            f"at most the training set's size, {train_size}",
            f"pass {flag} {train_size} or smaller",
        )
    return batch_size


MAX_LR = 1e30  # past ~3.4e38 an optimizer cannot even form lr x gradient in float32: it raises


def check_lr(lr: object, *, field: str = "lr") -> float:
    """A learning rate is a finite number greater than zero (and at most MAX_LR: a rate that large
    diverges at once, as a result; a larger one makes the optimizer raise instead)."""
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not math.isfinite(lr)
        or not 0 < lr <= MAX_LR
    ):
        raise bad(field, lr, f"a finite number > 0 and <= {MAX_LR:g}", "pass --lr 0.01, say")
    return float(lr)
