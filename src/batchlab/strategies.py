"""What each memory strategy buys in batch size and costs in speed, measured on the user's model.

For each strategy that applies (fp32; bf16 autocast; fp16 autocast with loss scaling on CUDA;
activation checkpointing; checkpointing + bf16) the memory probe finds the largest batch and the
per-sample bytes, and the throughput profile times a step at one common batch size, so that the
speeds compare like with like. Gradient accumulation reaches an effective batch of (largest fp32
micro-batch) x K at the per-sample speed of its micro-batches; it is timed at the common batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from . import _dist
from ._device import resolve_device
from ._errors import ConfigError
from ._json import json_safe
from ._precision import Precision
from .memory import MemoryTrial, probe_memory
from .throughput import profile_throughput
from .train import fresh_model
from .workload import Workload, load_workload

TIMED_BATCH_CEILING = 64  # a step of the common batch stays affordable under bf16 emulation on a CPU


@dataclass(frozen=True, kw_only=True)
class StrategyRow:
    strategy: str
    precision: str = "fp32"
    checkpoint: bool = False
    accumulation: int = 1
    max_batch_size: int | None = None  # for accumulation: the effective batch reached
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
    progress: Callable[[str], None] | None = None,
    on_trial: Callable[[MemoryTrial], None] | None = None,
) -> StrategyReport:
    """Probe memory and time a step under each strategy that applies to this model and device.
    Under torchrun the batch sizes are per device (the probe's answer on every rank) and the speeds
    are data-parallel samples/s at that per-device batch on all ranks."""
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
            progress=on_trial,
        )
    answers = [p.max_batch_size for p in profiles.values() if p.max_batch_size]
    common = min([*answers, max(workload.batch_size, TIMED_BATCH_CEILING)]) if answers else None
    rows = []
    for name, precision, checkpoint in plan:
        profile = profiles[name]
        speed = None
        if common is not None and common * world <= workload.train_size:
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
                per_sample_bytes=profile.per_sample_bytes,
                samples_per_second=speed,
                timed_batch_size=common,
                note="the whole training set fits" if profile.capped_by_dataset else "",
            )
        )
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


def _accumulation_row(
    workload: Workload,
    micro: int | None,
    common: int | None,
    k: int,
    dev: torch.device,
    say: Callable[[str], None],
    world: int = 1,
) -> StrategyRow:
    name = f"fp32 + accumulation x{k}"
    if micro is None or common is None:
        return StrategyRow(strategy=name, accumulation=k, note="no fp32 batch fits")
    reach = micro * k * world  # the global batch: micro-batch x steps x ranks
    effective = min(reach, workload.train_size)
    note = "" if reach <= workload.train_size else "capped by the training set"
    speed = None
    if common * k * world <= workload.train_size:
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
