"""The recipe at each step: the rate (the peak, the batch phase's factor, warm-up in steps, the
workload's schedule in examples) and the clip on the whole step's gradient."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from batchlab.core.precision import Amp
from batchlab.core.step import clip_step
from batchlab.lr import warmup_factor
from batchlab.recipe import LrSchedule


@dataclass
class StepRecipe:
    """`peak` is the run's rate; `horizon` the run's length in examples, over which `schedule`
    decays (unless it states its own). `clip` bounds the norm of the whole step's gradient, after
    accumulation and the ranks' all-reduce, once a step."""

    peak: float
    warmup_steps: int = 0
    schedule: LrSchedule | None = None
    horizon: int = 1
    clip: float | None = None
    clip_steps: int = 0
    # Steps whose gradient norm exceeded `clip`, counted on the device: no host sync per step.
    _clipped: torch.Tensor | None = field(default=None, repr=False)

    def moves(self, step: int) -> bool:
        """Whether the rate may differ from the last step's (else it is left as it is)."""
        return step <= self.warmup_steps or self.schedule is not None

    def rate(self, step: int, examples: int, batch_size: int, phase_factor: float = 1.0) -> float:
        """The rate of the step after `step` steps and `examples` examples, at `batch_size`."""
        lr = self.peak * phase_factor * warmup_factor(step, self.warmup_steps)
        if self.schedule is not None:
            lr *= self.schedule.factor(examples, self.horizon)
        return lr

    def clip_gradients(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp: Amp | None) -> None:
        """Clip the step's gradient (unscaled first under fp16) to `clip`, and count it if it was over."""
        if self.clip is None:
            return
        norm = clip_step(model, optimizer, amp, self.clip)
        assert norm is not None
        over = (norm > self.clip).to(torch.int64)
        self._clipped = over if self._clipped is None else self._clipped + over
        self.clip_steps += 1

    @property
    def clipped_fraction(self) -> float | None:
        """The fraction of this process's steps that clipped (None without a clip or a step)."""
        if self._clipped is None or not self.clip_steps:
            return None
        return int(self._clipped) / self.clip_steps
