"""What a run returns: its curve points and its result, plain JSON both."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from batchlab.core.json_safe import json_safe
from batchlab.core.monitor import NoiseReading

# What a curve point means. A stored run of another version is trained again, never reused
# (version 1 judged train_loss on the mini-batches; version 2 scored every point of a run to the
# target, see CHECK_RESOLUTION). Within version 3 the training sample of an eval target shrank to the
# evaluation set's size where that is under DIVERGENCE_SAMPLE: steps to the target and the divergence
# rule mean what they meant, only the train curve's precision follows the eval curve's, so no new version.
CURVE_VERSION = 3


@dataclass(frozen=True, kw_only=True)
class CurvePoint:
    """One evaluation: where training stood and how good the model was."""

    step: int
    examples: int
    seconds: float  # training time so far, evaluation excluded, device synchronized
    lr: float
    batch_size: int
    train_loss: float | None  # on the fixed training sample (see TRAIN_SAMPLE), at this point
    eval_loss: float | None
    metrics: dict[str, float] = field(default_factory=dict)  # "eval_<name>" and "train_<name>"
    b_simple: float | None = None  # gradient noise scale so far, when tracked
    # The mean loss of the mini-batches trained on since the previous point: what the optimizer saw,
    # drawn in the curve but never judged against the target.
    batch_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurvePoint:
        return cls(**data)

    def value(self, metric: str) -> float | None:
        if metric == "train_loss":
            return self.train_loss
        if metric == "eval_loss":
            return self.eval_loss
        return self.metrics.get(metric)


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """A whole run: its settings, its curve, and when (if) it reached the target."""

    workload: str
    batch_size: int
    micro_batch_size: int
    accumulation: int
    lr: float
    lr_rule: str
    warmup_steps: int
    seed: int
    device: str
    target: dict[str, Any]
    steps: int
    examples: int
    seconds: float
    reached_target: bool
    steps_to_target: int | None
    examples_to_target: int | None
    seconds_to_target: float | None
    diverged: bool
    final_train_loss: float | None
    final_eval_loss: float | None
    final_metrics: dict[str, float]
    curve: tuple[CurvePoint, ...]
    noise: dict[str, float] | None = None
    precision: str = "fp32"
    checkpoint: bool = False
    ghost_batch_size: int | None = None
    world_size: int = 1  # data-parallel ranks: batch_size = per-device batch x world_size
    batch_schedule: dict[str, Any] | None = None  # phases, when the batch size changed during the run
    sharpness: dict[str, Any] | None = None  # of the final model, when asked for
    checkpoints: tuple[dict[str, Any], ...] = ()  # {step, examples, path} of each one saved
    resumed_from: dict[str, Any] | None = None  # {step, examples, path} of the checkpoint it began at
    clipped_fraction: float | None = None  # of the steps this process ran, with the workload's clip
    data_order: str | None = None  # a stream's: how the run's seed ordered it (see core.stream)
    tokens_per_example: int | None = None  # the workload's: tokens = examples x this
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("curve", "model")}
        out["curve"] = [p.to_dict() for p in self.curve]
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """Rebuild a result read back from JSON or the store (without its model)."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "model"}
        fields["curve"] = tuple(CurvePoint.from_dict(p) for p in data["curve"])
        fields["checkpoints"] = tuple(data.get("checkpoints", ()))
        return cls(**fields)


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def noise_summary(reading: NoiseReading | None) -> dict[str, float] | None:
    """A run's tracked noise scale, as `TrainResult.noise` keeps it."""
    if reading is None:
        return None
    return {
        "b_simple": reading.b_simple,
        "b_simple_stderr": reading.b_simple_stderr,
        "grad_sq": reading.grad_sq,
        "trace_sigma": reading.trace_sigma,
        "updates": reading.measurements,
    }
