"""What each memory strategy buys in batch size and costs in speed, measured on the user's model.

For each strategy that applies (fp32; bf16 autocast; fp16 autocast with loss scaling on CUDA;
activation checkpointing; checkpointing + bf16) the memory probe finds the largest batch and the
per-sample bytes, and the throughput profile times a step at one common batch size, so that the
speeds compare like with like. Gradient accumulation reaches an effective batch of (largest fp32
micro-batch) x K at the per-sample speed of its micro-batches; it is timed at the common batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from batchlab.core import dist as _dist
from batchlab.core.device import resolve_device
from batchlab.core.json_safe import json_safe
from batchlab.core.precision import Precision
from batchlab.core.progress import Say
from batchlab.errors import ConfigError
from batchlab.measure.memory import MemoryProfile, probe_memory
from batchlab.measure.memory_search import Pace
from batchlab.measure.memory_trial import MemoryTrial
from batchlab.measure.throughput import profile_throughput
from batchlab.train.model import fresh_model
from batchlab.workload import Workload
from batchlab.workloads import load_workload

TIMED_BATCH_CEILING = 64  # a step of the common batch stays affordable under bf16 emulation on a CPU
STRATEGY_SECONDS = 45.0  # each strategy's memory search: five fit in under 5 minutes on a CPU
STEPS_IN_BUDGET = 20  # no step may take more than a 20th of the budget: a trial is ~6 steps, and
# a search needs a few trials
EMULATED_BELOW = 0.5  # bf16 at under half fp32's speed: no bf16 arithmetic in this CPU's hardware


@dataclass(frozen=True, kw_only=True)
class StrategyRow:
    strategy: str
    precision: str = "fp32"
    checkpoint: bool = False
    accumulation: int = 1
    max_batch_size: int | None = None  # for accumulation: the effective batch reached
    is_lower_bound: bool = False  # the time budget stopped the search: "at least max_batch_size"
    per_sample_bytes: float | None = None
    samples_per_second: float | None = None
    timed_batch_size: int | None = None
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class StrategyReport:
    workload: str
    device: str
    limit_bytes: int
    common_batch_size: int | None
    strategies: tuple[StrategyRow, ...]
    world_size: int = 1  # under torchrun: batch sizes per device; samples/s of all ranks together

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["strategies"] = [asdict(r) for r in self.strategies]
        return json_safe(out)


def _has_blocks(workload: Workload) -> bool:
    try:
        fresh_model(workload, 0, torch.device("cpu"), checkpoint=True)
    except ConfigError:
        return False
    return True


def compare_strategies(
    workload: Workload | str,
    *,
    device: str | torch.device = "auto",
    limit_bytes: int | None = None,
    reserve_bytes: int = 0,
    accumulation: int = 4,
    seconds_per_strategy: float | None = STRATEGY_SECONDS,
    progress: Say | None = None,
    on_trial: Callable[[MemoryTrial], None] | None = None,
    min_batch_size: int = 1,
    max_batch_size: int | None = None,
    granularity: int = 1,
    include_eval: bool = True,
) -> StrategyReport:
    """Probe memory and time a step under each strategy that applies to this model and device.
    Under torchrun the batch sizes are per device (the probe's answer on every rank) and the speeds
    are data-parallel samples/s at that per-device batch on all ranks. Every strategy's search takes
    the same bounds as `probe_memory` (`min_batch_size`, `max_batch_size`, `granularity`,
    `include_eval`).

    Each strategy's search has `seconds_per_strategy` (None: no limit), and no trial whose steps
    would each take more than a STEPS_IN_BUDGET-th of it: where that stops a search first, its row
    says "at least N" and why (a CPU emulating bf16 takes seconds a step at large batches)."""
    workload = load_workload(workload)
    _dist.init_from_env()
    world = _dist.world_size()
    dev = resolve_device(device)
    plan = [("fp32", Precision.FP32, False), ("bf16", Precision.BF16, False)]
    if dev.type == "cuda":
        plan.append(("fp16", Precision.FP16, False))
    blocks = _has_blocks(workload)
    if blocks:
        plan += [("checkpoint", Precision.FP32, True), ("checkpoint+bf16", Precision.BF16, True)]
    say = progress or (lambda _: None)
    profiles = {}
    for name, precision, checkpoint in plan:
        say(f"memory under {name}")
        profiles[name] = probe_memory(
            workload,
            device=dev,
            limit_bytes=limit_bytes,
            reserve_bytes=reserve_bytes,
            precision=precision.value,
            checkpoint=checkpoint,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            granularity=granularity,
            include_eval=include_eval,
            progress=on_trial,
            pace=None
            if seconds_per_strategy is None
            else Pace(seconds_per_strategy, seconds_per_strategy / STEPS_IN_BUDGET),
        )
    answers = [p.max_batch_size for p in profiles.values() if p.max_batch_size]
    common = min([*answers, max(workload.batch_size, TIMED_BATCH_CEILING)]) if answers else None
    rows = _rows(workload, plan, profiles, common, dev, say)
    rows = with_bf16_verdict(rows, native_bf16=cpu_has_bf16() if dev.type == "cpu" else None)
    rows.append(
        _accumulation_row(workload, profiles["fp32"].max_batch_size, common, accumulation, dev, say, world)
    )
    if not blocks:
        rows.append(
            StrategyRow(
                strategy="checkpoint",
                checkpoint=True,
                note="the model has no `blocks` to wrap",
            )
        )
    limit = profiles["fp32"].limit_bytes
    return StrategyReport(
        workload=workload.name,
        device=str(dev),
        limit_bytes=limit,
        common_batch_size=common,
        strategies=tuple(rows),
        world_size=world,
    )


def _rows(
    workload: Workload,
    plan: list[tuple[str, Precision, bool]],
    profiles: dict[str, MemoryProfile],
    common: int | None,
    dev: torch.device,
    say: Say,
) -> list[StrategyRow]:
    """Each strategy's row: its memory answer, and its speed timed at the batch all of them fit."""
    world = _dist.world_size()
    rows = []
    for name, precision, checkpoint in plan:
        profile = profiles[name]
        speed = None
        if common is not None and common * world <= (workload.train_len or math.inf):
            say(f"speed under {name} at batch {common}")
            timed = profile_throughput(
                workload,
                batch_sizes=[common * world],
                precision=precision,
                checkpoint=checkpoint,
                device=dev,
                stop_after_knee=False,
            )
            speed = timed.points[0].samples_per_second
        rows.append(
            StrategyRow(
                strategy=name,
                precision=precision.value,
                checkpoint=checkpoint,
                accumulation=1,
                max_batch_size=profile.max_batch_size,
                is_lower_bound=profile.is_lower_bound,
                per_sample_bytes=profile.per_sample_bytes,
                samples_per_second=speed,
                timed_batch_size=common,
                note=_note(profile),
            )
        )
    return rows


def _note(profile: MemoryProfile) -> str:
    if profile.capped_by_dataset:
        return "the whole training set fits"
    if profile.is_lower_bound:
        return f"stopped: {profile.stopped_because}"
    return ""


def with_bf16_verdict(rows: list[StrategyRow], *, native_bf16: bool | None) -> list[StrategyRow]:
    """Say in the bf16 rows when bf16 is slower than fp32 here: under EMULATED_BELOW of its speed
    (or where `native_bf16` is False: a CPU whose flags show no bf16 instructions), the arithmetic is
    emulated."""
    speed = {r.strategy: r.samples_per_second for r in rows}
    out = []
    for row in rows:
        base_name = "fp32" if row.strategy == "bf16" else "checkpoint"
        base = speed.get(base_name)
        if row.precision != "bf16" or not base or not row.samples_per_second:
            out.append(row)
            continue
        ratio = row.samples_per_second / base
        verdict = ""
        if ratio < EMULATED_BELOW or native_bf16 is False:
            verdict = f"bf16 emulated on this CPU: {1 / ratio:.1f}x slower than {base_name}"
        elif ratio < 1:
            verdict = f"{1 / ratio:.2f}x slower than {base_name} here: saves memory, not time"
        note = "; ".join(n for n in (row.note, verdict) if n)
        out.append(replace(row, note=note))
    return out


def cpu_has_bf16() -> bool | None:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX), from /proc/cpuinfo; None
    where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _accumulation_row(
    workload: Workload,
    micro: int | None,
    common: int | None,
    k: int,
    dev: torch.device,
    say: Say,
    world: int = 1,
) -> StrategyRow:
    name = f"fp32 + accumulation x{k}"
    if micro is None or common is None:
        return StrategyRow(strategy=name, accumulation=k, note="no fp32 batch fits")
    reach = micro * k * world  # the global batch: micro-batch x steps x ranks
    data = workload.train_len or math.inf  # a stream: no cap
    effective = int(min(reach, data))
    note = "" if reach <= data else "capped by the training set"
    speed = None
    if common * k * world <= data:
        say(f"speed under {name} at micro-batch {common}")
        timed = profile_throughput(
            workload, batch_sizes=[common * k * world], accumulation=k, device=dev, stop_after_knee=False
        )
        speed = timed.points[0].samples_per_second
    return StrategyRow(
        strategy=name,
        accumulation=k,
        max_batch_size=effective,
        samples_per_second=speed,
        timed_batch_size=common,
        note=note,
    )
