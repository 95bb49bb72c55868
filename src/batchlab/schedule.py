"""Batch-size schedules: grow the batch where a learning-rate schedule would decay the rate.

SGD's noise scale is g ~ lr N / B (Smith, Kindermans, Ying, Le 2018, arXiv:1711.00489): dividing the
learning rate by k and multiplying the batch by k give the same g, so each learning-rate drop of a
step schedule can be replaced by a batch increase of the same factor, reaching the same accuracy
after the same number of epochs with fewer parameter updates. Once the batch reaches the memory cap,
the rest of each factor is taken as a learning-rate drop, as Smith et al. did past their largest
batch, so that lr / B still falls by the full factor at every milestone.

A schedule is a list of phases, each starting at an epoch with a batch size and a factor on the
learning rate. It drives `train(batch_size=schedule)` and, through `batch_sampler`, a DataLoader.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch
from torch.utils.data import Sampler

from ._errors import bad


class ScheduleMode(str, Enum):
    INCREASE_BATCH = "increase-batch"  # Smith et al.: grow the batch, decay the rate only past the cap
    DECAY_LR = "decay-lr"  # the classic step schedule: fixed batch, the rate divided at each milestone


@dataclass(frozen=True, kw_only=True)
class Phase:
    start_epoch: int
    batch_size: int
    lr_factor: float  # multiplies the run's learning rate during this phase

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(field: str, value: Any, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad(field, value, "an integer >= 1", fix)
    return value


@dataclass(frozen=True)
class BatchSchedule:
    """Phases in epoch order; the first starts at epoch 0."""

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases or self.phases[0].start_epoch != 0:
            raise bad("phases", list(self.phases), "a first phase starting at epoch 0")
        starts = [p.start_epoch for p in self.phases]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            raise bad("milestones", starts[1:], "strictly increasing epochs", "pass --milestones 10,20")
        for p in self.phases:
            _positive_int("batch_size", p.batch_size, "pass --batch-size 32")
            if not math.isfinite(p.lr_factor) or p.lr_factor <= 0:
                raise bad("lr_factor", p.lr_factor, "a number > 0")

    @classmethod
    def multistep(
        cls,
        batch_size: int,
        milestones: Sequence[int],
        factor: float,
        *,
        mode: str | ScheduleMode = ScheduleMode.INCREASE_BATCH,
        max_batch_size: int | None = None,
    ) -> BatchSchedule:
        """At each milestone epoch, lr / B falls by `factor`: by growing the batch (`increase-batch`,
        up to `max_batch_size`, the rest as a learning-rate drop) or by decaying the rate (`decay-lr`)."""
        _positive_int("batch_size", batch_size, "pass --batch-size 32")
        try:
            mode = ScheduleMode(mode)
        except ValueError:
            raise bad(
                "mode", mode, "'increase-batch' or 'decay-lr'", "pass --schedule increase-batch"
            ) from None
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
            raise bad("factor", factor, "a number > 1", "pass --factor 2")
        for m in milestones:
            _positive_int("milestones", m, "pass --milestones 10,20 (epochs)")
        cap = max_batch_size
        if cap is not None:
            _positive_int("max_batch_size", cap, "pass the largest batch that fits, or leave it out")
            if cap < batch_size:
                raise bad("max_batch_size", cap, f"at least the starting batch size {batch_size}", "raise it")
        phases = [Phase(start_epoch=0, batch_size=batch_size, lr_factor=1.0)]
        wanted = float(batch_size)  # the batch the rule asks for, before the cap
        for m in milestones:
            wanted *= factor
            last = phases[-1]
            if mode is ScheduleMode.DECAY_LR:
                phases.append(Phase(start_epoch=m, batch_size=batch_size, lr_factor=last.lr_factor / factor))
                continue
            size = math.floor(wanted + 1e-9)  # never above the rule's batch: the rate never rises
            size = size if cap is None else min(size, cap)
            # lr / B must equal lr_0 / wanted: whatever the batch could not grow, the rate gives up.
            phases.append(Phase(start_epoch=m, batch_size=size, lr_factor=size / wanted))
        return cls(tuple(phases))

    @classmethod
    def constant(cls, batch_size: int) -> BatchSchedule:
        return cls((Phase(start_epoch=0, batch_size=batch_size, lr_factor=1.0),))

    def at(self, epoch: int) -> Phase:
        index = bisect.bisect_right([p.start_epoch for p in self.phases], epoch) - 1
        return self.phases[index]

    def batch_size_at(self, epoch: int) -> int:
        return self.at(epoch).batch_size

    def lr_factor_at(self, epoch: int) -> float:
        return self.at(epoch).lr_factor

    @property
    def initial_batch_size(self) -> int:
        return self.phases[0].batch_size

    @property
    def largest_batch_size(self) -> int:
        return max(p.batch_size for p in self.phases)

    def steps(self, epochs: float, dataset_size: int) -> int:
        """Parameter updates in `epochs` epochs (a fractional last epoch counts its share)."""
        total = 0.0
        whole = math.floor(epochs)
        for epoch in range(whole):
            total += dataset_size // self.batch_size_at(epoch)
        total += (epochs - whole) * (dataset_size // self.batch_size_at(whole))
        return max(1, math.ceil(total - 1e-9))  # 26.4 epochs x 5 is 132, not 132.00000000000003

    def batch_sampler(self, dataset_size: int, *, seed: int = 0) -> ScheduledBatchSampler:
        """A batch sampler for `DataLoader(dataset, batch_sampler=...)`; call `set_epoch` each epoch."""
        return ScheduledBatchSampler(self, dataset_size, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return {"phases": [p.to_dict() for p in self.phases]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchSchedule:
        return cls(tuple(Phase(**p) for p in data["phases"]))


class ScheduledBatchSampler(Sampler[list[int]]):
    """Shuffled index batches whose size follows the schedule, epoch by epoch (the last partial
    batch dropped). Like DistributedSampler, it is told the epoch: `sampler.set_epoch(epoch)`."""

    def __init__(self, schedule: BatchSchedule, dataset_size: int, *, seed: int = 0) -> None:
        _positive_int("dataset_size", dataset_size, "pass len(dataset)")
        if schedule.largest_batch_size > dataset_size:
            raise bad(
                "batch_size",
                schedule.largest_batch_size,
                f"at most the dataset size {dataset_size}",
                "lower the factor or cap the batch with max_batch_size",
            )
        self.schedule, self.dataset_size, self.seed = schedule, dataset_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def batch_size(self) -> int:
        return self.schedule.batch_size_at(self.epoch)

    def __len__(self) -> int:
        return self.dataset_size // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator).tolist()
        size = self.batch_size
        for start in range(0, self.dataset_size - size + 1, size):
            yield order[start : start + size]
