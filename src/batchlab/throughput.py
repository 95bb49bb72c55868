"""Step time and samples/s across batch sizes, and the knee where doubling the batch stops paying.

A step is the whole training step: fetching the batch, forward, backward, optimizer step. Warm-up
steps are run and discarded (allocator, kernel selection, lazy imports); then `repeats` blocks of
steps are timed, the device synchronized before each clock read, and the median block kept.
Timing follows nanoGPT's bench.py: warm up, synchronize, then measure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from . import _dist
from ._data import DeviceData
from ._device import clock, resolve_device
from ._errors import bad
from ._json import json_safe
from ._precision import Amp, Precision, as_precision, optimizer_step
from ._step import backward
from .memory import is_out_of_memory
from .train import fresh_model
from .workload import Workload, check_batch_size, load_workload

KNEE_GAIN = 0.10  # doubling the batch must raise samples/s by at least 10% to "pay"
MIN_BLOCK_SECONDS = 0.05  # each timed block lasts at least this long, so the clock's grain is noise


@dataclass(frozen=True, kw_only=True)
class ThroughputPoint:
    batch_size: int
    step_seconds: float | None  # median over repeats; None when the batch did not fit
    step_seconds_min: float | None
    step_seconds_max: float | None
    samples_per_second: float | None
    steps_per_repeat: int
    fits: bool = True
    # Under torchrun: samples/s of one rank alone at the per-device batch, and how much of W times
    # that the W ranks together reach (1.0 = perfect data-parallel scaling).
    single_rank_samples_per_second: float | None = None
    scaling_efficiency: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class ThroughputProfile:
    workload: str
    device: str
    points: tuple[ThroughputPoint, ...]
    knee_batch_size: int | None
    knee_gain: float
    warmup_steps: int
    repeats: int
    world_size: int = 1  # batch sizes are global: per-device batch x world size

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["points"] = [p.to_dict() for p in self.points]
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThroughputProfile:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["points"] = tuple(ThroughputPoint(**p) for p in data["points"])
        return cls(**fields)

    def step_seconds(self, batch_size: int) -> float | None:
        """Step time at any batch size, interpolated linearly between measured points (a step's
        cost is close to t0 + c B), extrapolated along the last segment beyond them."""
        measured = [(p.batch_size, p.step_seconds) for p in self.points if p.step_seconds is not None]
        if not measured:
            return None
        for b, s in measured:
            if b == batch_size:
                return s
        if len(measured) == 1:
            return measured[0][1] * batch_size / measured[0][0]
        below = [m for m in measured if m[0] < batch_size]
        above = [m for m in measured if m[0] > batch_size]
        (b0, s0), (b1, s1) = (
            (below[-1], above[0])
            if below and above
            else (measured[-2], measured[-1])
            if below
            else (measured[0], measured[1])
        )
        return max(s0 + (s1 - s0) * (batch_size - b0) / (b1 - b0), 1e-9)


def default_batch_sizes(cap: int) -> list[int]:
    """Powers of two up to the cap, and the cap itself."""
    sizes = [1 << k for k in range(int(math.log2(cap)) + 1)]
    return sizes if sizes[-1] == cap else [*sizes, cap]


def find_knee(points: list[ThroughputPoint], gain: float = KNEE_GAIN) -> int | None:
    """The smallest measured batch past which doubling raises samples/s by less than `gain`.

    Precisely: the smallest B such that no larger measured batch B' reaches
    samples/s(B) * (1 + gain) ** log2(B'/B), i.e. from B on, no doubling pays `gain` on average.
    A single dip (a noisy point) followed by real gains does not make a knee. When every doubling
    pays, the knee is the largest batch measured.
    """
    ok = [p for p in points if p.samples_per_second]
    for i, p0 in enumerate(ok):
        assert p0.samples_per_second
        if all(_gain_per_doubling(p0, p1) < gain for p1 in ok[i + 1 :]):
            return p0.batch_size
    return None


def _gain_per_doubling(p0: ThroughputPoint, p1: ThroughputPoint) -> float:
    assert p0.samples_per_second and p1.samples_per_second
    ratio = p1.samples_per_second / p0.samples_per_second
    return ratio ** (1 / math.log2(p1.batch_size / p0.batch_size)) - 1


def _stopped_paying(points: list[ThroughputPoint], gain: float) -> bool:
    ok = [p for p in points if p.samples_per_second]
    return len(ok) >= 3 and all(
        _gain_per_doubling(a, b) < gain for a, b in zip(ok[-3:], ok[-2:], strict=False)
    )


def _time_batch(
    workload: Workload,
    data: DeviceData,
    device: torch.device,
    batch_size: int,
    *,
    warmup_steps: int,
    steps: int | None,
    repeats: int,
    precision: Precision = Precision.FP32,
    checkpoint: bool = False,
    accumulation: int = 1,
    data_parallel: bool = False,
) -> ThroughputPoint:
    """Time whole steps at `batch_size`. With `data_parallel` (under torchrun), the batch is global:
    each rank steps on its shard through DDP, and rank 0's timings are everyone's."""
    world = _dist.world_size() if data_parallel else 1
    model = fresh_model(workload, 0, device, checkpoint=checkpoint)
    net: torch.nn.Module = model
    no_sync = None
    if world > 1:
        ddp = _dist.data_parallel(model, device)
        net, no_sync = ddp, ddp.no_sync
    optimizer = workload.optimizer(model.parameters(), workload.lr)
    batches = data.shuffled(
        batch_size, torch.Generator().manual_seed(0), shard=(_dist.rank() if world > 1 else 0, world)
    )
    amp = None if precision is Precision.FP32 else Amp(precision, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        backward(net, workload.loss, next(batches), micro_batches=accumulation, amp=amp, no_sync=no_sync)
        optimizer_step(optimizer, amp)

    start = clock(device)
    for _ in range(warmup_steps):
        step()
    warm = (clock(device) - start) / max(warmup_steps, 1)
    per_block = steps or max(2, min(200, math.ceil(MIN_BLOCK_SECONDS / max(warm, 1e-6))))
    if world > 1:
        per_block = _dist.broadcast(per_block)  # every rank must run the same number of steps
    blocks = []
    for _ in range(repeats):
        start = clock(device)
        for _ in range(per_block):
            step()
        blocks.append((clock(device) - start) / per_block)
    if world > 1:
        blocks = _dist.broadcast(blocks)
    median = statistics.median(blocks)
    return ThroughputPoint(
        batch_size=batch_size,
        step_seconds=median,
        step_seconds_min=min(blocks),
        step_seconds_max=max(blocks),
        samples_per_second=batch_size / median,
        steps_per_repeat=per_block,
    )


def profile_throughput(
    workload: Workload | str,
    *,
    batch_sizes: list[int] | None = None,
    max_batch_size: int | None = None,
    warmup_steps: int = 3,
    steps: int | None = None,
    repeats: int = 3,
    knee_gain: float = KNEE_GAIN,
    device: str | torch.device = "auto",
    stop_after_knee: bool = True,
    precision: str | Precision = Precision.FP32,
    checkpoint: bool = False,
    accumulation: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> ThroughputProfile:
    """Median step seconds and samples/s at each batch size, and the knee.

    With `precision`, `checkpoint` or `accumulation` (the batch split into that many micro-batches),
    the step is timed under that memory strategy.

    `steps=None` sizes each timed block to last at least 50 ms. A batch that runs out of memory is
    recorded as not fitting, and larger ones are not tried. With `stop_after_knee`, the sweep ends
    once two doublings in a row have each raised samples/s by less than `knee_gain`: larger
    batches would cost the most time and tell nothing new.
    """
    workload = load_workload(workload)
    _dist.init_from_env()
    world = _dist.world_size()
    dev = resolve_device(device)
    cap = (
        workload.train_size
        if max_batch_size is None
        else check_batch_size(max_batch_size, workload.train_size, field="max_batch_size")
    )
    sizes = default_batch_sizes(cap) if batch_sizes is None else sorted(set(batch_sizes))
    unit = world * accumulation
    if world > 1 and batch_sizes is None:
        sizes = [b for b in sizes if b % unit == 0]
    for b in sizes:
        check_batch_size(b, workload.train_size, field="batch_sizes")
        if b % unit:
            raise bad(
                "batch_sizes",
                b,
                f"a multiple of world size {world} x accumulation {accumulation} = {unit} "
                "(batch sizes are global)",
                f"pass --batch-sizes {unit},{2 * unit},{4 * unit}",
            )
    if repeats < 1 or warmup_steps < 0:
        raise bad("repeats", repeats, "an integer >= 1 (and warmup_steps >= 0)")
    amp = as_precision(precision, dev)
    data = DeviceData(workload.train_data, dev)
    points: list[ThroughputPoint] = []
    for i, b in enumerate(sizes):
        timing = dict(
            warmup_steps=warmup_steps,
            steps=steps,
            repeats=repeats,
            precision=amp,
            checkpoint=checkpoint,
            accumulation=accumulation,
        )
        try:
            point = _time_batch(workload, data, dev, b, data_parallel=True, **timing)  # type: ignore[arg-type]
            if world > 1:
                # The one-rank baseline at the per-device batch, timed on every rank at once (each on
                # its own device), reported from rank 0.
                alone = _time_batch(workload, data, dev, b // world, **timing)  # type: ignore[arg-type]
                single = _dist.broadcast(alone.samples_per_second)
                point = replace(
                    point,
                    single_rank_samples_per_second=single,
                    scaling_efficiency=(point.samples_per_second or 0) / (world * single) if single else None,
                )
            points.append(point)
        except Exception as error:  # only an out-of-memory error ends the curve; others propagate
            if world > 1 or not is_out_of_memory(error):  # one rank's OOM cannot end the others' curve
                raise
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            points.append(
                ThroughputPoint(
                    batch_size=b,
                    step_seconds=None,
                    step_seconds_min=None,
                    step_seconds_max=None,
                    samples_per_second=None,
                    steps_per_repeat=0,
                    fits=False,
                )
            )
            break
        if progress:
            progress(i + 1, len(sizes))
        if stop_after_knee and _stopped_paying(points, knee_gain):
            break
    return ThroughputProfile(
        workload=workload.name,
        device=str(dev),
        points=tuple(points),
        knee_batch_size=find_knee(points, knee_gain),
        knee_gain=knee_gain,
        warmup_steps=warmup_steps,
        repeats=repeats,
        world_size=world,
    )
