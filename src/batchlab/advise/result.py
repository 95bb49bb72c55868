"""What the advice returns: the batch size and rate, the predictions behind them, and the evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from batchlab.core.json_safe import json_safe
from batchlab.measure.lr_search import Measured


@dataclass(frozen=True, kw_only=True)
class Prediction:
    batch_size: int
    lr: float
    steps_to_target: float
    step_seconds: float
    seconds_to_target: float


@dataclass(frozen=True, kw_only=True)
class Advice:
    workload: str
    device: str
    target: dict[str, Any]
    batch_size: int
    lr: float
    lr_rule: str
    lr_from_rule: float  # the rule's rate, before the doubling search at the chosen batch
    lr_stopped_because: str | None  # why that search stopped where it did (None: no search ran)
    # Steps at the chosen batch: measured by the tuning runs when they reached the target, else the
    # model's; seconds = steps x the profiled step time. The speedup is over the reference as run.
    predicted_steps_to_target: float | None
    predicted_seconds_to_target: float | None
    predicted_speedup: float | None
    # The speedup at the seeds' extremes (see Forecast.speedup_range); None with one seed a point.
    predicted_speedup_range: tuple[float, float] | None
    model_steps_to_target: float | None  # S_min (1 + B_noise / B) at the chosen batch
    max_batch_size: int | None
    # True when memory was probed only up to the largest batch the prediction could choose, and
    # that fitted: the edge lies somewhere above (`full_memory` finds it).
    max_batch_size_is_lower_bound: bool
    memory_probed_to: int | None  # that bound; None when probed to the edge
    b_noise: float | None
    b_noise_stderr: float | None
    knee_batch_size: int | None
    reference: dict[str, Any]
    predictions: tuple[Prediction, ...]  # at the batches that fit (under the cap)
    rationale: tuple[str, ...]
    limitations: tuple[str, ...]
    lr_checks: tuple[Measured, ...] = ()
    measured: tuple[Measured, ...] = ()
    measured_speedup: float | None = None
    memory: dict[str, Any] | None = field(default=None, repr=False)
    throughput: dict[str, Any] | None = field(default=None, repr=False)
    noise: dict[str, Any] | None = field(default=None, repr=False)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    world_size: int = 1  # under torchrun: batch sizes (and max_batch_size) are global
    # The prediction past the cap (batches timed by the throughput profile that do not fit, or that
    # the bounded probe did not reach): where the time to target turns up, drawn beside the advice.
    predictions_past_cap: tuple[Prediction, ...] = ()
    # The chosen batch and the reference batch timed again side by side (SIDE_BY_SIDE_REPEATS blocks
    # each, interleaved): the step times of the predicted seconds and the speedup.
    step_timing: dict[str, Any] | None = field(default=None, repr=False)
    # With `schedule`: the batch ramp offered from the advised point, or why none is.
    schedule: dict[str, Any] | None = None
    # The advice as a trainer's settings over `devices` (per-device batch, accumulation, rate), and
    # with `emit` those settings pasted as that trainer's code; None where they cannot be made.
    trainer_settings: dict[str, Any] | None = None
    emitted: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))
