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
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from batchlab.core import dist as _dist
from batchlab.core.device import resolve_device
from batchlab.core.json_safe import json_safe
from batchlab.core.precision import as_precision
from batchlab.errors import bad, check_int
from batchlab.measure.memory_search import Pace, fit_memory_model, search_max_batch
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
STREAM_CAP = 1 << 24  # a stream has no size: the search doubles until memory (or max_batch_size) stops it


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
    budget = limit - reserve_bytes
    began = time.perf_counter()
    amp = as_precision(precision, dev)
    if checkpoint:  # fail here, in the caller, if the model has no blocks to wrap
        fresh_model(workload, 0, torch.device("cpu"), checkpoint=True)

    # Each trial rebuilds the workload from its spec in a child process, and runs until its peak
    # stops growing (a confirmation at the edge, CONFIRM_FACTOR times longer).
    plan = TrialPlan(
        _spec(workload), 0, str(dev), budget, include_eval, MIN_STEPS, MAX_STEPS, amp.value, checkpoint
    )

    def trial(batch_size: int, confirmation: bool) -> MemoryTrial:
        longer = CONFIRM_FACTOR if confirmation else 1
        this = replace(
            plan, batch_size=batch_size, min_steps=MIN_STEPS * longer, max_steps=MAX_STEPS * longer
        )
        outcome = _agree(server.run(this, confirmation=confirmation))
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


def _spec(workload: Workload) -> str:
    """What a trial's child process rebuilds the workload from."""
    if workload.spec is None:
        raise bad(
            "workload",
            workload.name,
            "loadable by name, so that each trial's child process can rebuild it",
            "pass a built-in name, 'package.module:function' or 'file.py:function'",
        )
    return workload.spec


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
    check_int("limit_bytes", limit, expected="a whole number >= 1", fix="pass --memory-limit 2GiB")
    if not isinstance(reserve_bytes, int) or not 0 <= reserve_bytes < limit:
        raise bad(
            "reserve_bytes", reserve_bytes, f"a whole number of bytes from 0 to below the limit ({limit})"
        )
    check_int("granularity", granularity, expected="a whole number >= 1", fix="pass --granularity 8, say")
    check_int("min_batch_size", min_batch_size, expected="a whole number >= 1", fix="pass --min-batch-size 1")
    # A global batch is at most the data; a stream's is bounded by memory alone (and max_batch_size).
    per_device_data = STREAM_CAP if workload.stream else workload.train_size // _dist.world_size()
    cap = per_device_data if max_batch_size is None else min(max_batch_size, per_device_data)
    check_int("max_batch_size", cap, expected="a whole number >= 1", fix="pass --max-batch-size 1024, say")
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
