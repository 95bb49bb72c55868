"""The largest batch whose whole training step fits the device, found exactly, in child processes.

A trial runs the whole step at one batch size (forward, backward, the optimizer step so its state
exists, and an evaluation forward at the same batch) in a fresh child process, repeating the step
until the peak stops growing. An out-of-memory error, or a crash, stays in the child; the caller's
memory is the same after the probe as before.

The search is exact and short: grow, jumping straight to the edge that the memory model
`peak = fixed + per_sample * B` (fitted on the trials that fit) predicts; then narrow to the exact
largest batch that fits, trusting the model only while it explains what was seen, else bisecting;
then confirm the answer with a longer run at the edge.

Peaks: on CUDA, the caching allocator's peak reserved bytes (what the device really hands out),
with the limit enforced by the allocator itself. On the CPU, the child's peak resident memory, with
glibc's mmap threshold fixed so that freed tensors go back to the OS and peaks repeat from run to
run (with the default, dynamic threshold, two identical runs were seen 10% apart); a trial past the
limit stops at once, and an address-space cap turns runaway allocations into a clean failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from batchlab.core import dist as _dist
from batchlab.core.device import resolve_device
from batchlab.core.json_safe import json_safe
from batchlab.core.precision import as_precision
from batchlab.errors import bad
from batchlab.measure.memory_trial import (
    MAX_STEPS,
    MIN_STEPS,
    MemoryTrial,
    TrialPlan,
    TrialServer,
    available_cpu_bytes,
)
from batchlab.train.model import fresh_model
from batchlab.workload import Workload
from batchlab.workloads import load_workload

CONFIRM_FACTOR = 3  # the confirmation at the edge runs this many times the steps its trial needed


@dataclass(frozen=True, kw_only=True)
class MemoryProfile:
    """The largest batch that fits, the memory model fitted on the trials, and every trial."""

    workload: str
    device: str
    max_batch_size: int | None  # None when not even the smallest batch fits
    limit_bytes: int
    reserve_bytes: int
    fixed_bytes: float | None
    per_sample_bytes: float | None
    capped_by_dataset: bool  # the answer is the training set's size, not a memory edge
    granularity: int
    include_eval: bool
    trials: tuple[MemoryTrial, ...]
    seconds: float
    world_size: int = 1  # under torchrun: max_batch_size is per device; the global batch is W times it
    # With a time budget: the search stopped at a batch that fits, before finding the edge.
    is_lower_bound: bool = False
    stopped_because: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trials"] = [t.to_dict() for t in self.trials]
        out["trial_count"] = len(self.trials)
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryProfile:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["trials"] = tuple(MemoryTrial(**t) for t in data["trials"])
        return cls(**fields)

    def predicted_peak_bytes(self, batch_size: int) -> float | None:
        if self.fixed_bytes is None or self.per_sample_bytes is None:
            return None
        return self.fixed_bytes + self.per_sample_bytes * batch_size


# The search: a pure function of the trial outcomes -----------------------------------------------

Trial = Callable[[int, bool], MemoryTrial]  # (batch_size, confirmation) -> outcome


def fit_memory_model(trials: list[MemoryTrial], *, from_batch: int = 0) -> tuple[float, float] | None:
    """Least-squares (fixed_bytes, per_sample_bytes) over the trials that fit at batch sizes of at
    least `from_batch`; None with fewer than two distinct sizes."""
    points = [
        (t.batch_size, t.peak_bytes)
        for t in trials
        if t.fits and t.peak_bytes is not None and t.batch_size >= from_batch
    ]
    sizes = {b for b, _ in points}
    if len(sizes) < 2:
        return None
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_p = sum(p for _, p in points) / n
    var = sum((b - mean_b) ** 2 for b, _ in points)
    slope = sum((b - mean_b) * (p - mean_p) for b, p in points) / var
    return mean_p - slope * mean_b, slope


@dataclass
class Pace:
    """A time budget for one search: `seconds` in all, and no trial whose steps are predicted to
    take longer than `max_step_seconds` each. Step time is extrapolated linearly in the batch from
    the last timed trial that fit; at small batches a step is mostly fixed overhead, so this
    over-predicts, and the search stops early rather than late. A search that stops on its pace
    answers "at least N", N a batch that fit, with the reason."""

    seconds: float
    max_step_seconds: float
    started: float = field(default_factory=time.perf_counter)
    trial_steps: int = MIN_STEPS + 2  # what one more trial costs, in steps (and its setup)

    def largest(self, trials: list[MemoryTrial]) -> tuple[int | None, str]:
        """The largest batch the next trial may try (None: no limit known yet), and why."""
        left = self.seconds - (time.perf_counter() - self.started)
        if left <= 0:
            return 0, f"the {self.seconds:g} s budget ran out"
        timed = [t for t in trials if t.fits and t.step_seconds and not t.confirmation]
        if not timed:
            return None, ""
        last = max(timed, key=lambda t: t.batch_size)
        per_sample = last.step_seconds / last.batch_size  # type: ignore[operator]
        by_step = int(self.max_step_seconds / per_sample)
        by_time = int(left / self.trial_steps / per_sample)
        if by_step <= by_time:
            return by_step, (
                f"a step at batch {last.batch_size} took {last.step_seconds:.2f} s "
                f"(limit {self.max_step_seconds:g} s)"
            )
        return by_time, f"a larger batch would overrun the {self.seconds:g} s budget"


class _Search:
    """The state of one search: what fit, what failed, and what to try next."""

    def __init__(
        self, trial: Trial, *, start: int, cap: int, granularity: int, budget: float, pace: Pace | None = None
    ) -> None:
        self.trial, self.cap, self.g, self.budget = trial, cap, granularity, budget
        self.start = start
        self.pace = pace
        self.trials: list[MemoryTrial] = []
        self.best: int | None = None  # largest size that fit
        self.bad: int | None = None  # smallest size that did not
        self.stopped: str | None = None  # why the search stopped at a lower bound, if it did

    def paced(self, size: int, *, shorten: bool) -> int | None:
        """`size` if the pace allows a trial there; with `shorten`, else the largest size it allows,
        if that is still 10% past the best; else None, the search stopping at its best so far with
        the pace's reason in `stopped`."""
        if self.stopped is not None:
            return None
        if self.pace is None:
            return size
        largest, reason = self.pace.largest(self.trials)
        if largest is None or size <= largest:
            return size
        if shorten and self.best is not None and self._floor(largest) >= self.best * 1.1 + self.g:
            return self._floor(largest)
        self.stopped = reason
        return None

    def run(self, batch_size: int, *, confirmation: bool = False) -> MemoryTrial:
        outcome = self.trial(batch_size, confirmation)
        self.trials.append(outcome)
        if confirmation:  # a confirmation's verdict is handled by `confirm`
            return outcome
        if outcome.fits:
            self.best = max(self.best or 0, batch_size)
        else:
            self.bad = batch_size if self.bad is None else min(self.bad, batch_size)
        return outcome

    def local_model(self) -> tuple[float, float] | None:
        """The memory model near the edge: memory is concave at small batches (fixed workspaces
        show up early), so the line is fitted on the trials at a quarter of the best size or more."""
        assert self.best is not None
        return fit_memory_model(self.trials, from_batch=self.best // 4) or fit_memory_model(self.trials)

    def edge(self) -> int | None:
        """The largest multiple of g whose predicted peak is within the budget, if the model is usable."""
        model = self.local_model()
        if model is None or model[1] <= 0:
            return None
        fixed, per_sample = model
        return self._floor(int((self.budget - fixed) // per_sample))

    def model_explains_failure(self) -> bool:
        """Whether the model predicts the failure seen at `bad` (so its edge is worth trying)."""
        model = self.local_model()
        if model is None or self.bad is None or model[1] <= 0:
            return False
        return model[0] + model[1] * self.bad > self.budget

    def _floor(self, b: int) -> int:
        return max(self.start, (b // self.g) * self.g)

    def grow(self) -> None:
        """Up until something fails: the first model-guided jump aims at the predicted edge; if the
        model then still puts the edge higher, later jumps aim 1% past it, so that a failure
        brackets the edge instead of creeping up on it."""
        assert self.best is not None
        jumps = 0
        while self.bad is None and self.best < self.cap:
            edge = self.edge()
            if edge is None:  # one point so far: a long stride, so the model's slope is well measured
                guess = max(self.best * 64, 64)
            elif jumps == 0 or edge <= self.best:  # first jump, or the model says the edge is here
                guess = edge
                jumps += 1
            else:  # the last jump undershot: aim past the edge to bracket it
                guess = edge + max(self.g, edge // 100)
            size = self.paced(min(self.cap, max(self._floor(guess), self.best + self.g)), shorten=True)
            if size is None:
                return
            self.run(size)

    def narrow(self) -> None:
        guided = 2  # trust the model for two trials once it explains the failure; then bisect
        while self.best is not None and self.bad is not None and self.bad - self.best > self.g:
            best, bad = self.best, self.bad
            edge = self.edge() if guided > 0 and self.model_explains_failure() else None
            if edge is not None:
                # When the failure was an overshoot just past the predicted edge, the model runs
                # slightly optimistic: aim 1% below it, to bracket from below.
                guided -= 1
                margin = max(self.g, edge // 100)
                if bad <= edge + 2 * margin:
                    edge = self._floor(edge - margin)
                candidate = edge if best < edge < bad else (best + self.g if edge <= best else bad - self.g)
            elif bad / best > 4:
                candidate = self._floor(int(math.sqrt(best * bad)))
            else:
                candidate = self._floor((best + bad) // 2)
            paced = self.paced(min(max(candidate, best + self.g), bad - self.g), shorten=False)
            if paced is None:
                return
            self.run(paced)

    def confirm(self) -> None:
        """Run the answer again, longer: a peak that creeps past the limit late is caught here.

        When it fails, the creep (the long run's peak less the short trial's) is converted into
        samples with the local slope, and the answer steps down by that much and is confirmed
        again: one trial per failure, rather than a search from scratch.
        """
        while self.best is not None and self.stopped is None:  # (a paced stop is a lower bound as is)
            size = self.best
            outcome = self.run(size, confirmation=True)
            if outcome.fits:
                return
            self.bad = size
            self.best = self._step_down(size, outcome)

    def _step_down(self, size: int, failed: MemoryTrial) -> int | None:
        if size <= self.start:
            return None
        model = self.local_model()
        per_sample = model[1] if model is not None and model[1] > 0 else None
        short = next(
            (
                t.peak_bytes
                for t in reversed(self.trials)
                if t.batch_size == size and t.fits and not t.confirmation and t.peak_bytes
            ),
            None,
        )
        if short is None and model is not None:
            short = int(model[0] + model[1] * size)
        steps = 1
        if per_sample is not None and short is not None:
            creep = max(failed.peak_bytes or self.budget, self.budget) - short
            steps = max(1, math.ceil(creep / per_sample))
        return max(self.start, size - steps * self.g)


def search_max_batch(
    trial: Trial,
    *,
    start: int,
    cap: int,
    granularity: int,
    budget_bytes: float,
    pace: Pace | None = None,
) -> tuple[int | None, list[MemoryTrial], str | None]:
    """The largest multiple of `granularity` (or `start`) up to `cap` whose trial fits, every
    trial, and, when the pace stopped the search first, why (the answer is then a lower bound)."""
    search = _Search(trial, start=start, cap=cap, granularity=granularity, budget=budget_bytes, pace=pace)
    if not search.run(start).fits:
        return None, search.trials, None
    search.grow()
    search.narrow()
    search.confirm()
    return search.best, search.trials, search.stopped


# Trials in child processes --------------------------------------------------------------------


def default_limit_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return available_cpu_bytes()


def probe_memory(
    workload: Workload | str,
    *,
    device: str | torch.device = "auto",
    limit_bytes: int | None = None,
    reserve_bytes: int = 0,
    min_batch_size: int = 1,
    max_batch_size: int | None = None,
    granularity: int = 1,
    include_eval: bool = True,
    precision: str = "fp32",
    checkpoint: bool = False,
    progress: Callable[[MemoryTrial], None] | None = None,
    pace: Pace | None = None,
) -> MemoryProfile:
    """The largest batch whose whole training step fits under `limit_bytes - reserve_bytes`.
    With `pace`, the search stops where its time budget says, answering "at least N" (the
    profile's `is_lower_bound` and `stopped_because`).

    `limit_bytes` defaults to the memory available on the CPU, the device's memory on CUDA.
    The answer is at most `max_batch_size` and the training set's size; with `granularity` G it
    is a multiple of G. Every trial runs in its own child process.

    Under torchrun every rank probes its own device at the per-device batch, and after each trial
    the ranks agree: a batch fits only if it fits on every rank, and its peak is the largest any
    rank saw. So all ranks walk the same search and return the same answer, and a rank whose trial
    fails never leaves the others waiting. DDP's gradient buckets (one more copy of the gradients)
    are added to the reserve.
    """
    workload = load_workload(workload)
    _dist.init_from_env()
    dev = resolve_device(device)
    limit = default_limit_bytes(dev) if limit_bytes is None else limit_bytes
    start, cap, per_device_data, reserve_bytes = _bounds(
        workload,
        limit=limit,
        reserve_bytes=reserve_bytes,
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
        granularity=granularity,
    )
    spec = workload.spec
    if spec is None:
        raise bad(
            "workload",
            workload.name,
            "loadable by name, so that each trial's child process can rebuild it",
            "pass a built-in name, 'package.module:function' or 'file.py:function'",
        )
    budget = limit - reserve_bytes
    began = time.perf_counter()
    amp_precision = as_precision(precision, dev)
    if checkpoint:  # fail here, in the caller, if the model has no blocks to wrap
        fresh_model(workload, 0, torch.device("cpu"), checkpoint=True)

    def trial(batch_size: int, confirmation: bool) -> MemoryTrial:
        longer = CONFIRM_FACTOR if confirmation else 1
        plan = TrialPlan(
            spec,
            batch_size,
            str(dev),
            budget,
            include_eval,
            MIN_STEPS * longer,
            MAX_STEPS * longer,
            amp_precision.value,
            checkpoint,
        )
        outcome = _agree(server.run(plan, confirmation=confirmation))
        if progress:
            progress(outcome)
        return outcome

    if pace is not None:
        pace = replace(pace, started=time.perf_counter())
    with TrialServer() as server:
        best, trials, stopped = search_max_batch(
            trial, start=start, cap=cap, granularity=granularity, budget_bytes=budget, pace=pace
        )
    model = fit_memory_model(trials)
    return MemoryProfile(
        workload=workload.name,
        device=str(dev),
        max_batch_size=best,
        limit_bytes=limit,
        reserve_bytes=reserve_bytes,
        fixed_bytes=None if model is None else model[0],
        per_sample_bytes=None if model is None else model[1],
        capped_by_dataset=best is not None
        and best == cap
        and cap == per_device_data - per_device_data % granularity,
        granularity=granularity,
        include_eval=include_eval,
        trials=tuple(trials),
        seconds=time.perf_counter() - began,
        world_size=_dist.world_size(),
        is_lower_bound=stopped is not None and best is not None,
        stopped_because=stopped,
    )


def _bounds(
    workload: Workload,
    *,
    limit: int,
    reserve_bytes: int,
    min_batch_size: int,
    max_batch_size: int | None,
    granularity: int,
) -> tuple[int, int, int, int]:
    """The search's first batch and its cap (a multiple of the granularity), the data each rank
    holds, and the reserve (with DDP's gradient buckets under torchrun); each checked."""
    _check_positive_int(limit, "limit_bytes", "pass --memory-limit 2GiB")
    if not isinstance(reserve_bytes, int) or not 0 <= reserve_bytes < limit:
        raise bad(
            "reserve_bytes", reserve_bytes, f"a whole number of bytes from 0 to below the limit ({limit})"
        )
    _check_positive_int(granularity, "granularity", "pass --granularity 8, say")
    _check_positive_int(min_batch_size, "min_batch_size", "pass --min-batch-size 1")
    per_device_data = workload.train_size // _dist.world_size()  # a global batch is at most the data
    cap = per_device_data if max_batch_size is None else min(max_batch_size, per_device_data)
    _check_positive_int(cap, "max_batch_size", "pass --max-batch-size 1024, say")
    start = max(min_batch_size, granularity) if granularity > 1 else min_batch_size
    start = math.ceil(start / granularity) * granularity
    if start > cap:
        raise bad("min_batch_size", min_batch_size, f"at most the cap on the batch size, {cap}")
    cap -= cap % granularity  # the answer is a multiple of the granularity, the cap included
    if _dist.active():
        params = workload.model().parameters()
        reserve_bytes += sum(p.numel() * p.element_size() for p in params if p.requires_grad)
        if reserve_bytes >= limit:
            raise bad("memory_limit", limit, "more than the model's gradients that DDP's buckets copy")
    return start, cap, per_device_data, reserve_bytes


def _agree(outcome: MemoryTrial) -> MemoryTrial:
    """Under torchrun: the trial as all ranks together saw it (fits only where it fit on every rank;
    the largest peak), so that every rank's search takes the same next step."""
    if not _dist.active():
        return outcome
    fits = bool(_dist.minimum(1.0 if outcome.fits else 0.0))
    peak = _dist.maximum(float(outcome.peak_bytes if outcome.peak_bytes is not None else -1))
    if fits == outcome.fits and peak == (outcome.peak_bytes or -1):
        return outcome
    return replace(
        outcome,
        fits=fits,
        peak_bytes=None if peak < 0 else int(peak),
        error=outcome.error if not outcome.fits or fits else "another_rank",
    )


def _check_positive_int(value: object, field: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad(field, value, "a whole number >= 1", fix)
