"""A training recipe's learning-rate schedule, in examples, so that it carries across batch sizes.

People write warm-up and decay in steps (nanoGPT's `warmup_iters`, Hugging Face's `warmup_steps`).
At another batch a step holds other examples: 100 warm-up steps at 4x the batch cover 4x the
examples, and a decay horizon fixed in steps ends at another point of the run. batchlab keeps
both in examples (or tokens, `Workload.tokens_per_example`), so that changing the batch changes
the steps, not the examples the schedule covers. Warm-up length measured so is one of the causes
Porian et al. 2024 ("Resolving Discrepancies in Compute-Optimal Scaling of Language Models")
found behind the Kaplan/Chinchilla disagreement: a warm-up fixed in steps is too long for small
runs.

The workload's `lr` is the peak rate; `LrSchedule.factor` is the fraction of it at a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from batchlab.errors import bad


class Decay(str, Enum):
    CONSTANT = "constant"
    COSINE = "cosine"  # half a cosine from the peak down to final_fraction of it
    LINEAR = "linear"  # a straight line down to final_fraction of the peak
    WSD = "wsd"  # warmup-stable-decay: the peak, then linear over the last decay_fraction of the run


@dataclass(frozen=True, kw_only=True)
class LrSchedule:
    """Warm-up over `warmup_examples` (or `warmup_fraction` of the horizon), then `decay` down to
    `final_fraction` of the peak at the horizon: the run's length in examples, `horizon_examples`
    where it is stated, else the run's limit. A run to the target has no length of its own (its
    limit is a cap): it decays only over a stated `horizon_examples`, and otherwise holds the peak
    after the warm-up (`train.config.run_schedule`)."""

    decay: Decay | str = Decay.CONSTANT
    warmup_examples: int = 0
    warmup_fraction: float = 0.0
    final_fraction: float = 0.0
    decay_fraction: float = 0.2  # WSD only
    horizon_examples: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "decay", Decay(self.decay))
        except ValueError:
            choices = ", ".join(d.value for d in Decay)
            raise bad("schedule.decay", self.decay, f"one of {choices}", "pass --schedule cosine") from None
        if (
            isinstance(self.warmup_examples, bool)
            or not isinstance(self.warmup_examples, int)
            or self.warmup_examples < 0
        ):
            raise bad(
                "schedule.warmup_examples",
                self.warmup_examples,
                "an integer >= 0",
                "pass --warmup-examples 0",
            )
        for name in ("warmup_fraction", "final_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise bad(f"schedule.{name}", value, "a number in [0, 1)")
        if self.warmup_examples and self.warmup_fraction:
            raise bad(
                "schedule.warmup_fraction",
                self.warmup_fraction,
                "0 when warmup_examples is given",
                "give the warm-up one way: in examples or as a fraction of the run",
            )
        if not isinstance(self.decay_fraction, (int, float)) or not 0 < self.decay_fraction <= 1:
            raise bad("schedule.decay_fraction", self.decay_fraction, "a number in (0, 1]")
        if self.horizon_examples is not None and (
            isinstance(self.horizon_examples, bool)
            or not isinstance(self.horizon_examples, int)
            or self.horizon_examples < 1
        ):
            raise bad(
                "schedule.horizon_examples",
                self.horizon_examples,
                "an integer >= 1, or None for the run's own",
            )

    def warmup(self, horizon: int) -> int:
        """The warm-up's examples in a run of `horizon` examples (`horizon_examples` where stated)."""
        return self.warmup_examples or round(self.warmup_fraction * (self.horizon_examples or horizon))

    def factor(self, examples: int, horizon: int) -> float:
        """The fraction of the peak rate for the step that starts after `examples`, in a run of
        `horizon` examples (`horizon_examples` where stated). The batch enters only through where
        the run's steps fall: a step at batch B starts after a multiple of B examples.

        Warm-up is e / W, a function of the examples seen alone (so the same at any batch), which
        in steps is Hugging Face's and PyTorch-Lightning users' s / W: the first step runs at 0 and
        settings emitted for those trainers give these rates step for step. The decay then runs
        over the examples from the warm-up's end to the horizon (at its start, the peak; at the
        horizon, final_fraction), and holds there.

        >>> s = LrSchedule(decay="cosine", warmup_examples=64, final_fraction=0.1)
        >>> [round(s.factor(e, 320), 4) for e in (0, 32, 64, 192, 320)]
        [0.0, 0.5, 1.0, 0.55, 0.1]
        """
        warmup = self.warmup(horizon)
        horizon = self.horizon_examples or horizon
        if examples < warmup:
            return examples / warmup
        floor = self.final_fraction
        if self.decay is Decay.CONSTANT:
            return 1.0
        if self.decay is Decay.WSD:
            start = self._wsd_start(horizon, horizon)
            if examples < start:
                return 1.0
            return floor + (1 - floor) * (1 - _progress(examples, start, horizon))
        q = _progress(examples, warmup, horizon)
        if self.decay is Decay.COSINE:
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * q))
        return floor + (1 - floor) * (1 - q)

    def _wsd_start(self, examples: int, horizon: int) -> int:
        """Where WSD's decay starts in a run whose schedule spans `examples`."""
        return max(self.warmup(horizon), examples - round(self.decay_fraction * examples))

    def in_steps(self, batch_size: int, horizon: int) -> StepSchedule:
        """This schedule in the steps of `batch_size`, in a run of `horizon` examples
        (`horizon_examples` where stated): what a trainer that counts steps takes. The warm-up
        takes ceil(W / B) steps, as many as a run at that batch spends under the peak; the other
        lengths round to whole steps. The rates are this schedule's exactly where the lengths divide
        by the batch."""
        examples = self.horizon_examples or horizon
        total = max(1, round(examples / batch_size))
        warmup = min(total, math.ceil(self.warmup(horizon) / batch_size))
        start = warmup
        if self.decay is Decay.WSD:
            start = min(total, max(warmup, round(self._wsd_start(examples, horizon) / batch_size)))
        return StepSchedule(
            decay=Decay(self.decay).value,
            warmup_steps=warmup,
            total_steps=total,
            decay_steps=total - start,
            final_fraction=self.final_fraction,
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "decay": Decay(self.decay).value,
            "warmup_examples": self.warmup_examples,
            "warmup_fraction": self.warmup_fraction,
            "final_fraction": self.final_fraction,
            "decay_fraction": self.decay_fraction,
            "horizon_examples": self.horizon_examples,
        }


@dataclass(frozen=True)
class StepSchedule:
    """An `LrSchedule` in one batch size's steps: `self(s)` is the fraction of the peak rate at
    0-based step `s`, the function `torch.optim.lr_scheduler.LambdaLR` takes. Warm-up is s / W; the
    decay runs over the last `decay_steps` of `total_steps` (for WSD its last fraction, for the
    other shapes everything after the warm-up), then holds `final_fraction`."""

    decay: str
    warmup_steps: int
    total_steps: int
    decay_steps: int
    final_fraction: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        start = self.total_steps - self.decay_steps
        if self.decay == Decay.CONSTANT.value or step < start:
            return 1.0
        q = min(1.0, (step - start) / max(1, self.decay_steps))
        floor = self.final_fraction
        if self.decay == Decay.COSINE.value:
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * q))
        return floor + (1 - floor) * (1 - q)

    def to_dict(self) -> dict[str, object]:
        return {
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay_steps": self.decay_steps,
            "final_fraction": self.final_fraction,
        }


def _progress(examples: int, start: int, end: int) -> float:
    """How far `examples` is from `start` to `end`, in [0, 1]."""
    return min(1.0, max(0.0, (examples - start) / max(1, end - start)))


def check_clip(value: object) -> float | None:
    """A gradient-norm clip: None (no clipping) or a positive finite number."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise bad("clip_grad_norm", value, "a positive number, or None for no clipping", "pass --clip 1.0")
    return float(value)
