"""Step time and samples/s across batch sizes, and the knee where doubling the batch stops paying.

A step is the whole training step: fetching the batch, forward, backward, optimizer step. Warm-up
steps are run and discarded (allocator, kernel selection, lazy imports); then `repeats` blocks of
steps are timed, the device synchronized before each clock read, and the median block kept.
Timing follows nanoGPT's bench.py: warm up, synchronize, then measure. The first block of every
batch size is timed on the way up (it decides where the curve stops); the other blocks are timed in
rounds over all of them, so that the ratios between batch sizes, which the advice uses, are not the
ratios between two moments of a shared machine.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from batchlab.core import dist as _dist
from batchlab.core.data import Batch, DeviceData
from batchlab.core.device import clock, is_out_of_memory, resolve_device
from batchlab.core.json_safe import json_safe
from batchlab.core.precision import Amp, Precision, as_precision, optimizer_step
from batchlab.core.progress import Steps
from batchlab.core.step import backward, clip_step
from batchlab.core.stream import StreamData, placed
from batchlab.errors import bad
from batchlab.train.model import fresh_model
from batchlab.workload import Workload, check_batch_size
from batchlab.workloads import load_workload

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
    # Why the curve ended before the knee, memory or the batch sizes asked for (the caller's reason).
    stopped_because: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["points"] = [p.to_dict() for p in self.points]
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThroughputProfile:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["points"] = tuple(ThroughputPoint(**p) for p in data["points"])
        return cls(**fields)

    @property
    def largest_timed(self) -> int | None:
        """The largest batch that ran whole steps here (None: none did)."""
        return max((p.batch_size for p in self.points if p.step_seconds is not None), default=None)

    def step_seconds(self, batch_size: int, *, monotone: bool = False) -> float | None:
        """Step time at any batch size, interpolated linearly between measured points (a step's
        cost is close to t0 + c B), extrapolated along the last segment beyond them. `monotone`:
        from the measured medians' `lower_envelope` (no step time above a larger batch's)."""
        measured = [(p.batch_size, p.step_seconds) for p in self.points if p.step_seconds is not None]
        if not measured:
            return None
        if monotone:
            measured = list(
                zip([b for b, _ in measured], lower_envelope([s for _, s in measured]), strict=True)
            )
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


def lower_envelope(values: list[float]) -> list[float]:
    """Each value capped by every later one (a suffix minimum): non-decreasing, and never above a
    value measured. Step times in batch order: a larger batch does at least the work of a smaller
    one, and a machine's noise only slows a timing down, so a step time above a larger batch's is
    noise, bounded by the larger one (pooling it with its neighbours instead, as a least-squares
    fit does, would spread one slow spell over every larger batch).

    >>> lower_envelope([1.0, 3.0, 2.0, 4.0])
    [1.0, 2.0, 2.0, 4.0]
    """
    out = list(values)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


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


class _Stepper:
    """Whole training steps at any batch size, on one model and optimizer: a step's cost does not
    depend on which batch trained the weights, and one model (not one per batch size) keeps the
    device's memory for the batch. Each batch size draws from its own shuffled stream."""

    def __init__(
        self,
        workload: Workload,
        data: DeviceData | StreamData,
        device: torch.device,
        *,
        precision: Precision,
        checkpoint: bool,
        accumulation: int,
        data_parallel: bool,
    ) -> None:
        self.world = _dist.world_size() if data_parallel else 1
        self.device, self.data, self.loss, self.accumulation = device, data, workload.loss, accumulation
        self.clip = workload.clip_grad_norm
        self.model = model = fresh_model(workload, 0, device, checkpoint=checkpoint)
        self.net: torch.nn.Module = model
        self.no_sync = None
        if self.world > 1:
            ddp = _dist.data_parallel(model, device)
            self.net, self.no_sync = ddp, ddp.no_sync
        self.optimizer = workload.optimizer(model.parameters(), workload.lr)
        self.amp = None if precision is Precision.FP32 else Amp(precision, device)
        self.streams: dict[int, Iterator[Batch]] = {}

    def step(self, batch_size: int) -> None:
        if batch_size not in self.streams:
            shard = (_dist.rank() if self.world > 1 else 0, self.world)
            self.streams[batch_size] = self.data.shuffled(
                batch_size, torch.Generator().manual_seed(0), shard=shard
            )
        self.optimizer.zero_grad(set_to_none=True)
        backward(
            self.net,
            self.loss,
            next(self.streams[batch_size]),
            micro_batches=self.accumulation,
            amp=self.amp,
            no_sync=self.no_sync,
        )
        clip_step(self.model, self.optimizer, self.amp, self.clip)
        optimizer_step(self.optimizer, self.amp)

    def seconds_per_step(self, batch_size: int, steps: int) -> float:
        """Mean seconds of `steps` steps, the device synchronized at both ends; rank 0's under torchrun."""
        start = clock(self.device)
        for _ in range(steps):
            self.step(batch_size)
        seconds = (clock(self.device) - start) / max(steps, 1)
        return float(_dist.broadcast(seconds)) if self.world > 1 else seconds

    def block_steps(self, batch_size: int, warmup_steps: int, steps: int | None) -> int:
        """Run the warm-up steps (allocator, kernel selection, lazy imports) and size a timed block
        from them: at least MIN_BLOCK_SECONDS long, so that the clock's grain is noise."""
        warm = self.seconds_per_step(batch_size, warmup_steps) if warmup_steps else 0.0
        per_block = steps or max(2, min(200, math.ceil(MIN_BLOCK_SECONDS / max(warm, 1e-6))))
        return int(_dist.broadcast(per_block)) if self.world > 1 else per_block


class _Curve:
    """The timed blocks of a profile: one per batch size on the way up, the rest in rounds."""

    def __init__(
        self, stepper: _Stepper, alone: _Stepper | None, *, warmup_steps: int, steps: int | None, repeats: int
    ) -> None:
        self.stepper, self.alone = stepper, alone
        self.warmup_steps, self.steps, self.repeats = warmup_steps, steps, repeats
        self.blocks: dict[int, list[float]] = {}  # batch size -> seconds per step of each timed block
        self.per_block: dict[int, int] = {}
        # Under torchrun: one rank alone, samples/s at the per-device batch.
        self.single: dict[int, float] = {}
        self.stopped_because: str | None = None

    def climb(
        self,
        sizes: list[int],
        *,
        stop: float | None,
        stop_when: Callable[[list[ThroughputPoint]], str | None] | None,
        progress: Steps | None,
        catch_oom: bool,
    ) -> int | None:
        """One timed block per batch size, up to where two doublings in a row each gained less than
        `stop` (None: every size), `stop_when` gave a reason to stop (`self.stopped_because`), or
        memory ended; returns the batch that ran out of memory, if any. Only an out-of-memory error
        ends the curve, and only with `catch_oom` (under torchrun, one rank's failure cannot end the
        others' curve); others propagate."""
        points: list[ThroughputPoint] = []
        for i, b in enumerate(sizes):
            try:
                self.per_block[b] = self.stepper.block_steps(b, self.warmup_steps, self.steps)
                self.blocks[b] = [self.stepper.seconds_per_step(b, self.per_block[b])]
                if self.alone is not None:
                    self.single[b] = self._alone(b // self.stepper.world)
            except Exception as error:
                if not catch_oom or not is_out_of_memory(error):
                    raise
                self.blocks.pop(b, None)
                return b
            points.append(_point(b, self.blocks[b], self.per_block[b]))
            if progress:
                progress(i + 1, len(sizes))
            if stop is not None and _stopped_paying(points, stop):
                break
            # Every rank holds rank 0's step times, so every rank stops at the same batch. At the last
            # size there is nothing left to cut.
            if stop_when is not None and i < len(sizes) - 1 and (reason := stop_when(points)):
                self.stopped_because = reason
                break
        return None

    def _alone(self, batch_size: int) -> float:
        """The one-rank baseline at the per-device batch, timed on every rank at once (each on its
        own device): rank 0's samples/s."""
        assert self.alone is not None
        n = self.alone.block_steps(batch_size, self.warmup_steps, self.steps)
        seconds = statistics.median(self.alone.seconds_per_step(batch_size, n) for _ in range(self.repeats))
        return float(_dist.broadcast(batch_size / seconds))

    def rounds(self) -> None:
        """The other repeats, interleaved: every batch size once per round, so that a slow spell of
        the machine lands on all of them alike instead of on one stretch of the curve
        (docs/measurements.md#side-by-side)."""
        for _ in range(self.repeats - 1):
            for b in self.blocks:
                self.stepper.step(b)  # back at this shape: one untimed step
                self.blocks[b].append(self.stepper.seconds_per_step(b, self.per_block[b]))

    def points(self, world: int) -> list[ThroughputPoint]:
        points = [_point(b, self.blocks[b], self.per_block[b]) for b in self.blocks]
        if not self.single:
            return points
        return [
            replace(
                p,
                single_rank_samples_per_second=self.single[p.batch_size],
                scaling_efficiency=(p.samples_per_second or 0) / (world * self.single[p.batch_size]),
            )
            for p in points
        ]


def _point(batch_size: int, blocks: list[float], per_block: int) -> ThroughputPoint:
    median = statistics.median(blocks)
    return ThroughputPoint(
        batch_size=batch_size,
        step_seconds=median,
        step_seconds_min=min(blocks),
        step_seconds_max=max(blocks),
        samples_per_second=batch_size / median,
        steps_per_repeat=per_block,
    )


def _did_not_fit(batch_size: int) -> ThroughputPoint:
    return ThroughputPoint(
        batch_size=batch_size,
        step_seconds=None,
        step_seconds_min=None,
        step_seconds_max=None,
        samples_per_second=None,
        steps_per_repeat=0,
        fits=False,
    )


def _sizes(
    workload: Workload, batch_sizes: list[int] | None, max_batch_size: int | None, accumulation: int
) -> list[int]:
    """The batches to time, each checked: global batches that split over the ranks and the
    micro-batches; by default the powers of two up to the cap."""
    world = _dist.world_size()
    unit = world * accumulation
    if max_batch_size is not None:
        cap = check_batch_size(max_batch_size, workload.train_len, field="max_batch_size")
    elif workload.stream and batch_sizes is None:
        raise bad(
            "max_batch_size",
            None,
            "given for a stream (no size caps its batch)",
            "pass --max-batch-size 1024",
        )
    else:
        cap = workload.train_len or 0
    sizes = default_batch_sizes(cap) if batch_sizes is None else sorted(set(batch_sizes))
    if world > 1 and batch_sizes is None:
        sizes = [b for b in sizes if b % unit == 0]
    for b in sizes:
        check_batch_size(b, workload.train_len, field="batch_sizes")
        if b % unit:
            raise bad(
                "batch_sizes",
                b,
                f"a multiple of world size {world} x accumulation {accumulation} = {unit} "
                "(batch sizes are global)",
                f"pass --batch-sizes {unit},{2 * unit},{4 * unit}",
            )
    return sizes


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
    progress: Steps | None = None,
    stop_when: Callable[[list[ThroughputPoint]], str | None] | None = None,
) -> ThroughputProfile:
    """Median step seconds and samples/s at each batch size, and the knee.

    With `precision`, `checkpoint` or `accumulation` (the batch split into that many micro-batches),
    the step is timed under that memory strategy.

    `steps=None` sizes each timed block to last at least 50 ms. A batch that runs out of memory is
    recorded as not fitting, and larger ones are not tried. With `stop_after_knee`, the sweep ends
    once two doublings in a row have each raised samples/s by less than `knee_gain`: larger
    batches would cost the most time and tell nothing new. `stop_when`, called with the points
    timed so far (one block each) after each batch size, ends the sweep where it returns a reason,
    kept as `stopped_because`; the knee is then unknown unless it was already plain.
    """
    workload = load_workload(workload)
    _dist.init_from_env()
    world = _dist.world_size()
    dev = resolve_device(device)
    sizes = _sizes(workload, batch_sizes, max_batch_size, accumulation)
    if repeats < 1 or warmup_steps < 0:
        raise bad("repeats", repeats, "an integer >= 1 (and warmup_steps >= 0)")
    amp = as_precision(precision, dev)
    data = placed(workload.train_data, dev)

    def stepper(data_parallel: bool) -> _Stepper:
        return _Stepper(
            workload,
            data,
            dev,
            precision=amp,
            checkpoint=checkpoint,
            accumulation=accumulation,
            data_parallel=data_parallel,
        )

    alone = stepper(data_parallel=False) if world > 1 else None  # one rank by itself, for the scaling
    curve = _Curve(
        stepper(data_parallel=True), alone, warmup_steps=warmup_steps, steps=steps, repeats=repeats
    )
    out_of_memory = curve.climb(
        sizes,
        stop=knee_gain if stop_after_knee else None,
        stop_when=stop_when,
        progress=progress,
        catch_oom=world == 1,
    )
    if out_of_memory is not None and dev.type == "cuda":
        torch.cuda.empty_cache()
    curve.rounds()
    points = curve.points(world)
    if out_of_memory is not None:
        points.append(_did_not_fit(out_of_memory))
    # Cut short by the caller, the curve shows a knee only where its last doublings stopped paying;
    # otherwise "every doubling pays" would name the last batch timed.
    cut_short = curve.stopped_because is not None and not _stopped_paying(points, knee_gain)
    return ThroughputProfile(
        workload=workload.name,
        device=str(dev),
        points=tuple(points),
        knee_batch_size=None if cut_short else find_knee(points, knee_gain),
        stopped_because=curve.stopped_because,
        knee_gain=knee_gain,
        warmup_steps=warmup_steps,
        repeats=repeats,
        world_size=world,
    )
