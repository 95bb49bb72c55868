"""Batch-size schedules: grow the batch where a learning-rate schedule would decay the rate.

SGD's noise scale is g ~ lr N / B (Smith, Kindermans, Ying, Le 2018, arXiv:1711.00489): dividing the
learning rate by k and multiplying the batch by k give the same g, so each learning-rate drop of a
step schedule can be replaced by a batch increase of the same factor, reaching the same accuracy
after the same number of epochs with fewer parameter updates. Once the batch reaches the memory cap,
the rest of each factor is taken as a learning-rate drop, as Smith et al. did past their largest
batch, so that lr / B still falls by the full factor at every milestone.

A schedule is a list of phases, each starting at an epoch with a batch size and a factor on the
learning rate. It drives `train(batch_size=schedule)` and, through `batch_sampler`, a DataLoader.

A ramp (Merrill et al. 2025, arXiv:2505.23971) starts its phases at counts of examples instead, since
the critical batch it follows is measured at points of training, not at epoch boundaries: the batch
doubles, and the rate moves by the optimizer's rule, once the measured critical batch has passed
twice the batch in use. A ramp's batch may change in the middle of an epoch.
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

from batchlab.core.data import epoch_spans
from batchlab.errors import bad, check_int
from batchlab.lr import LrRule, as_rule, scale_lr


class ScheduleMode(str, Enum):
    INCREASE_BATCH = "increase-batch"  # Smith et al.: grow the batch, decay the rate only past the cap
    DECAY_LR = "decay-lr"  # the classic step schedule: fixed batch, the rate divided at each milestone


@dataclass(frozen=True, kw_only=True)
class Phase:
    start_epoch: int = 0
    batch_size: int
    lr_factor: float  # multiplies the run's learning rate during this phase
    start_examples: int | None = None  # a ramp's phases start at a count of examples instead

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.start_examples is None:  # an epoch schedule keeps the form it was stored in
            del out["start_examples"]
        return out

    def start(self, by_examples: bool) -> int:
        return (self.start_examples or 0) if by_examples else self.start_epoch


@dataclass(frozen=True)
class BatchSchedule:
    """Phases in epoch order; the first starts at epoch 0."""

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases:
            raise bad("phases", [], "at least one phase")
        by_examples = self.by_examples
        if any((p.start_examples is not None) != by_examples for p in self.phases):
            raise bad(
                "phases",
                [p.to_dict() for p in self.phases],
                "phases that all start at an epoch, or all at a count of examples",
            )
        unit = "examples" if by_examples else "epochs"
        if self.phases[0].start(by_examples) != 0:
            raise bad(
                "phases",
                [p.to_dict() for p in self.phases],
                f"a first phase starting at {unit.rstrip('s')} 0",
            )
        starts = [p.start(by_examples) for p in self.phases]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            fix = "build it with BatchSchedule.ramp" if by_examples else "pass --milestones 10,20"
            raise bad(
                "milestones",
                starts[1:],
                f"strictly increasing {'example counts' if by_examples else 'epochs'}",
                fix,
            )
        for p in self.phases:
            check_int("batch_size", p.batch_size, fix="pass --batch-size 32")
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
        check_int("batch_size", batch_size, fix="pass --batch-size 32")
        try:
            mode = ScheduleMode(mode)
        except ValueError:
            raise bad(
                "mode", mode, "'increase-batch' or 'decay-lr'", "pass --schedule increase-batch"
            ) from None
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
            raise bad("factor", factor, "a number > 1", "pass --factor 2")
        for m in milestones:
            check_int("milestones", m, fix="pass --milestones 10,20 (epochs)")
        cap = max_batch_size
        if cap is not None:
            check_int("max_batch_size", cap, fix="pass the largest batch that fits, or leave it out")
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
    def ramp(
        cls,
        points: Sequence[tuple[int, float]],
        *,
        batch_size: int,
        rule: str | LrRule = LrRule.LINEAR,
        max_batch_size: int | None = None,
        factor: int = 2,
    ) -> BatchSchedule:
        """The batch grows by `factor` at each point where the measured critical batch has passed
        `factor` times the batch in use (Merrill et al. 2025: double the batch when it passes 2B),
        once a point, the rate following by `rule` (linear for SGD, sqrt for Adam), never past
        `max_batch_size`. `points` are (examples, critical batch) measured along a run at
        `batch_size`. The batch never shrinks, so it grows at a point only if every later measurement
        allows it too (a critical batch that falls later holds the batch back). Once a point, not up
        to the critical batch at once: a branch sees a window of the run, and a batch taken early is
        kept for the rest of it (docs/measurements.md#ramp-steps)."""
        check_int("batch_size", batch_size, fix="pass --batch-size 32")
        rule = as_rule(rule)
        if rule is LrRule.NOISE:
            raise bad("rule", rule.value, "linear, sqrt or none", "pass the optimizer's rule")
        check_int("factor", factor, minimum=2, fix="pass factor=2")
        cap = max_batch_size
        if cap is not None:
            check_int("max_batch_size", cap, fix="pass the largest batch that fits, or leave it out")
            if cap < batch_size:
                raise bad("max_batch_size", cap, f"at least the starting batch size {batch_size}", "raise it")
        for point in points:
            examples, critical = point
            if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
                raise bad("points", list(points), "(examples >= 0, critical batch) pairs")
            if not isinstance(critical, (int, float)) or not critical > 0:
                raise bad("points", list(points), "critical batches > 0", "pass the study's measurements")

        def lr_factor(size: int) -> float:
            return scale_lr(rule, lr_ref=1.0, batch_ref=batch_size, batch_size=size)

        # A batch taken at a point is kept for the rest of the run, so it must be allowed by every
        # later measurement too: each point counts for the least critical batch measured from it on.
        ordered = sorted(points)
        allowed = [min(c for _, c in ordered[i:]) for i in range(len(ordered))]
        starts: dict[int, int] = {0: batch_size}
        size = batch_size
        for (examples, _), critical in zip(ordered, allowed, strict=True):
            if critical >= factor * size:
                size = factor * size if cap is None else min(factor * size, cap)
            if size != max(starts.values()):
                starts[examples] = size
        return cls(
            tuple(
                Phase(start_examples=start, batch_size=b, lr_factor=lr_factor(b))
                for start, b in sorted(starts.items())
            )
        )

    @classmethod
    def constant(cls, batch_size: int) -> BatchSchedule:
        return cls((Phase(start_epoch=0, batch_size=batch_size, lr_factor=1.0),))

    @property
    def by_examples(self) -> bool:
        """Whether the phases start at counts of examples (a ramp) rather than at epochs."""
        return self.phases[0].start_examples is not None

    def at(self, epoch: int, examples: int = 0) -> Phase:
        """The phase in force at `epoch`, after `examples` examples in all."""
        by_examples = self.by_examples
        key = examples if by_examples else epoch
        index = bisect.bisect_right([p.start(by_examples) for p in self.phases], key) - 1
        return self.phases[index]

    def batch_size_at(self, epoch: int, examples: int = 0) -> int:
        return self.at(epoch, examples).batch_size

    def lr_factor_at(self, epoch: int, examples: int = 0) -> float:
        return self.at(epoch, examples).lr_factor

    def epoch_batches(self, epoch: int, dataset_size: int) -> list[int]:
        """The batch sizes of `epoch`, in order (an epoch ends when the next batch would not fit)."""
        if not self.by_examples:  # one size per epoch: no need to walk the epochs before it
            size = self.batch_size_at(epoch)
            return [size] * (dataset_size // size)
        return next(itertools.islice(self._epochs(dataset_size), epoch, None))

    def _epochs(self, dataset_size: int) -> Iterator[list[int]]:
        """Each epoch's batch sizes, from epoch 0 on."""
        examples, epoch = 0, 0
        last = self.phases[-1].start_examples or 0
        while True:
            if self.by_examples and examples < last:  # a phase may start inside this epoch
                spans = epoch_spans(self.batch_size_at, epoch, examples, dataset_size)
                sizes = [size for _, size in spans]
            else:  # one size for the whole epoch
                size = self.batch_size_at(epoch, examples)
                sizes = [size] * (dataset_size // size)
            examples += sum(sizes)
            yield sizes
            epoch += 1

    @property
    def initial_batch_size(self) -> int:
        return self.phases[0].batch_size

    @property
    def largest_batch_size(self) -> int:
        return max(p.batch_size for p in self.phases)

    def examples_in(self, steps: int, dataset_size: int | None) -> int:
        """The examples the first `steps` steps take."""
        if len(self.phases) == 1:
            return steps * self.initial_batch_size
        assert dataset_size is not None, "phases need the dataset's size"
        total = 0
        for sizes in self._epochs(dataset_size):
            taken = sizes[:steps]
            total, steps = total + sum(taken), steps - len(taken)
            if steps <= 0:
                break
        return total

    def steps_for(self, examples: int, dataset_size: int | None) -> int:
        """The fewest steps (at least 1) that take `examples` examples or more."""
        if len(self.phases) == 1:
            return max(1, math.ceil(examples / self.initial_batch_size))
        assert dataset_size is not None, "phases need the dataset's size"
        steps, total = 0, 0
        for sizes in self._epochs(dataset_size):
            for size in sizes:
                if total >= examples:
                    return max(1, steps)
                steps, total = steps + 1, total + size
        raise AssertionError("unreachable: the epochs never end")  # pragma: no cover

    def steps(self, epochs: float, dataset_size: int) -> int:
        """Parameter updates in `epochs` epochs (a fractional last epoch counts its share)."""
        total = 0.0
        whole = math.floor(epochs)
        if not self.by_examples:  # an epoch's batches have one size: no need to walk them
            for epoch in range(whole):
                total += dataset_size // self.batch_size_at(epoch)
            total += (epochs - whole) * (dataset_size // self.batch_size_at(whole))
        else:
            per_epoch = [len(sizes) for sizes in itertools.islice(self._epochs(dataset_size), whole + 1)]
            total = sum(per_epoch[:whole]) + (epochs - whole) * per_epoch[whole]
        return max(1, math.ceil(total - 1e-9))  # 26.4 epochs x 5 is 132, not 132.00000000000003

    def batch_sampler(self, dataset_size: int, *, seed: int = 0) -> ScheduledBatchSampler:
        """A batch sampler for `DataLoader(dataset, batch_sampler=...)`; call `set_epoch` each epoch."""
        return ScheduledBatchSampler(self, dataset_size, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return {"phases": [p.to_dict() for p in self.phases]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchSchedule:
        """A schedule from its `to_dict` form (as saved by `batchlab study critical-batch`)."""
        phases = data.get("phases") if isinstance(data, dict) else None
        if not isinstance(phases, list) or not phases:
            raise bad("batch_schedule", data, "an object with a list of phases", "pass a saved ramp.json")
        known = set(Phase.__dataclass_fields__)
        for phase in phases:
            if not isinstance(phase, dict) or not set(phase) <= known or "batch_size" not in phase:
                raise bad(
                    "batch_schedule.phases",
                    phase,
                    f"objects with batch_size, lr_factor and start_epoch or start_examples ({sorted(known)})",
                    "pass a saved ramp.json",
                )
        return cls(tuple(Phase(**p) for p in phases))


class ScheduledBatchSampler(Sampler[list[int]]):
    """Shuffled index batches whose size follows the schedule, epoch by epoch (the last partial
    batch dropped). Like DistributedSampler, it is told the epoch: `sampler.set_epoch(epoch)`."""

    def __init__(self, schedule: BatchSchedule, dataset_size: int, *, seed: int = 0) -> None:
        check_int("dataset_size", dataset_size, fix="pass len(dataset)")
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
        """The batch size at the start of this epoch (a ramp may grow it within the epoch)."""
        return self.schedule.epoch_batches(self.epoch, self.dataset_size)[0]

    def __len__(self) -> int:
        return len(self.schedule.epoch_batches(self.epoch, self.dataset_size))

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator).tolist()
        start = 0
        for size in self.schedule.epoch_batches(self.epoch, self.dataset_size):
            yield order[start : start + size]
            start += size
