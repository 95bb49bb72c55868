"""The training loop: train a fresh model from a workload, and record its curve.

`train` builds everything from the workload (a seeded model, a new optimizer), so a run is a pure
function of its arguments: the same seed gives the same curve on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batchlab.core import dist as _dist
from batchlab.core.data import Batch, DeviceData, Position, batch_len
from batchlab.core.device import clock, resolve_device
from batchlab.core.json_safe import json_safe
from batchlab.core.monitor import NoiseMonitor, NoiseReading
from batchlab.core.precision import Amp, Precision, apply_checkpointing, as_precision, optimizer_step
from batchlab.core.step import backward
from batchlab.errors import bad
from batchlab.ghost_bn import use_ghost_batch_norm
from batchlab.lr import LrRule, as_rule, scale_lr, warmup_factor
from batchlab.measure.memory import is_out_of_memory
from batchlab.schedule import BatchSchedule, Phase
from batchlab.sharpness import epsilon_sharpness
from batchlab.sharpness import sharpness as top_hessian_eigenvalue
from batchlab.train.checkpoint import Checkpoint, checkpoint_steps, load_checkpoint
from batchlab.workload import Workload, check_batch_size, check_lr, load_workload

DEFAULT_EPOCHS_UNTIL_TARGET = 100
DEFAULT_EPOCHS = 10
EVAL_RESOLUTION = 16  # automatic evaluation keeps steps-to-target within 1/16 of its value
# ...but scoring the data at every such point can cost more than the training between them (charlm:
# 94 points of 384 windows took 7.1 s of a 12.6 s run at batch 12). So a run to the target keeps the
# weights at each point and scores the data only at checks, CHECK_RESOLUTION to a doubling of the
# steps (gaps <= step/4); the first check that meets the target scores the kept weights since the
# check before, in order, and the first of them to meet it is the target point. Steps-to-target keeps
# its 1/16 resolution at about a third of the evaluations (33 on that run, 9.6 s). What it means
# changes in one case: a dip below the target between two checks that both miss it is not counted;
# the run must still be there at the next check, which makes the count less of a first-passage lottery
# on a noisy evaluation (it is never earlier than the first dip).
CHECK_RESOLUTION = 4
# A target is judged on fixed data at evaluation points, never on the mini-batches just trained on
# (Shallue et al. 2018; at batch 1 a mini-batch's loss has the spread of one example's, so a lucky
# example "meets" any target). Train metrics are measured on a fixed random sample of the training
# set, the same examples in every run. For a train-metric target the sample is TRAIN_SAMPLE examples:
# a cross-entropy whose per-example spread is about the size of the loss itself then has a standard
# error of ~2% of the loss, small against the distance from the starting loss to any target worth
# setting. Otherwise the sample only watches for divergence (a 3x rise, below) and draws the train
# curve, and DIVERGENCE_SAMPLE examples (standard error ~6% of the loss) are plenty for that; nor is
# it larger than the evaluation set, which judges the target itself: a train curve more precise than
# the eval curve beside it buys nothing and is paid at every check (charlm: 256 training windows
# beside 128 evaluation windows were 2/3 of each check's time). At least DIVERGENCE_MIN examples
# (standard error ~12%, still a quarter of the 3x rise).
TRAIN_SAMPLE = 2048
DIVERGENCE_SAMPLE = 256
DIVERGENCE_MIN = 64
FINAL_TRAIN_SAMPLE = TRAIN_SAMPLE  # examples scored at the end, for the train/eval gap
# The data is scored in chunks of max(B, EVAL_CHUNK): fewer, faster passes than at a small training
# batch. Where a chunk does not fit (a forward without backward at 256 can still outgrow a training
# step at 12: a language model's logits), it is halved until it does (`evaluate_within_memory`).
EVAL_CHUNK = 256
SAMPLE_SEED = 0  # the fixed sample's seed: every run of a workload is judged on the same examples
# A run has diverged when its loss is not finite, or when the training-sample loss rises above its
# starting value by more than (DIVERGENCE_FACTOR - 1) times that value (3x a positive start). A run
# that got there is no longer training; an unstable rate grows the loss geometrically, so the exact
# factor changes when it is caught by a step or two, not whether; and a transient rise of less than
# that (Adam's early bumps, momentum's overshoot) still recovers and is let run.
DIVERGENCE_FACTOR = 3.0
# What a curve point means. A stored run of another version is trained again, never reused
# (version 1 judged train_loss on the mini-batches; version 2 scored every point of a run to the
# target, see CHECK_RESOLUTION). Within version 3 the training sample of an eval target shrank to the
# evaluation set's size where that is under DIVERGENCE_SAMPLE: steps to the target and the divergence
# rule mean what they meant, only the train curve's precision follows the eval curve's, so no new version.
CURVE_VERSION = 3
NOISE_EVERY = 50  # without accumulation, track_noise splits one step in this many
# The tracked noise scale averages over an exponential window of the last NOISE_WINDOW of the steps
# so far (counted in steps, whatever the interval between measured steps). |G|^2 falls fast as the
# loss falls, and an average over a window mixes in the larger |G|^2 of earlier steps: a window of
# 20 updates 4 steps apart read B_simple ~54 at the end of digits-mlp's reference run against 160
# measured at its final parameters; a tenth of the steps, measured every step, reads 152 +- 71.
NOISE_WINDOW = 0.1
SHARPNESS_EXAMPLES = 2048  # the fixed training sample the final sharpness is measured on


@dataclass(frozen=True, kw_only=True)
class CurvePoint:
    """One evaluation: where training stood and how good the model was."""

    step: int
    examples: int
    seconds: float  # training time so far, evaluation excluded, device synchronized
    lr: float
    batch_size: int
    train_loss: float | None  # on the fixed training sample (see TRAIN_SAMPLE), at this point
    eval_loss: float | None
    metrics: dict[str, float] = field(default_factory=dict)  # "eval_<name>" and "train_<name>"
    b_simple: float | None = None  # gradient noise scale so far, when tracked
    # The mean loss of the mini-batches trained on since the previous point: what the optimizer saw,
    # drawn in the curve but never judged against the target.
    batch_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurvePoint:
        return cls(**data)

    def value(self, metric: str) -> float | None:
        if metric == "train_loss":
            return self.train_loss
        if metric == "eval_loss":
            return self.eval_loss
        return self.metrics.get(metric)


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """A whole run: its settings, its curve, and when (if) it reached the target."""

    workload: str
    batch_size: int
    micro_batch_size: int
    accumulation: int
    lr: float
    lr_rule: str
    warmup_steps: int
    seed: int
    device: str
    target: dict[str, Any]
    steps: int
    examples: int
    seconds: float
    reached_target: bool
    steps_to_target: int | None
    examples_to_target: int | None
    seconds_to_target: float | None
    diverged: bool
    final_train_loss: float | None
    final_eval_loss: float | None
    final_metrics: dict[str, float]
    curve: tuple[CurvePoint, ...]
    noise: dict[str, float] | None = None
    precision: str = "fp32"
    checkpoint: bool = False
    ghost_batch_size: int | None = None
    world_size: int = 1  # data-parallel ranks: batch_size = per-device batch x world_size
    batch_schedule: dict[str, Any] | None = None  # phases, when the batch size changed during the run
    sharpness: dict[str, Any] | None = None  # of the final model, when asked for
    checkpoints: tuple[dict[str, Any], ...] = ()  # {step, examples, path} of each one saved
    resumed_from: dict[str, Any] | None = None  # {step, examples, path} of the checkpoint it began at
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("curve", "model")}
        out["curve"] = [p.to_dict() for p in self.curve]
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """Rebuild a result read back from JSON or the store (without its model)."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "model"}
        fields["curve"] = tuple(CurvePoint.from_dict(p) for p in data["curve"])
        fields["checkpoints"] = tuple(data.get("checkpoints", ()))
        return cls(**fields)


Progress = Callable[[int, int], None]


def fresh_model(
    workload: Workload,
    seed: int,
    device: torch.device,
    *,
    checkpoint: bool = False,
    ghost_batch_size: int | None = None,
) -> nn.Module:
    """The workload's model, built under `seed`, on `device`; its blocks checkpointed and its batch
    norm layers made ghost batch norm, if asked."""
    torch.manual_seed(seed)
    model = workload.model().to(device)
    if ghost_batch_size is not None and use_ghost_batch_norm(model, ghost_batch_size) == 0:
        raise bad(
            "ghost_batch_size",
            ghost_batch_size,
            "used with a model that has BatchNorm layers",
            f"leave it out: {workload.name}'s model has none",
        )
    return apply_checkpointing(model) if checkpoint else model


def evaluate_within_memory(
    model: nn.Module,
    workload: Workload,
    data: DeviceData,
    *,
    batch_size: int,
    prefix: str = "eval_",
) -> tuple[float, dict[str, float], int]:
    """`evaluate` in chunks of `batch_size`, halved while a chunk runs out of memory; also the chunk
    size that fitted, for the next evaluation to start from. The result does not depend on the
    chunks (a mean weighted by their sizes; the model is in eval mode), only its float rounding."""
    while True:
        try:
            loss, metrics = evaluate(model, workload, data, batch_size=batch_size, prefix=prefix)
            return loss, metrics, batch_size
        except Exception as error:  # only out-of-memory is handled here; the rest is raised again
            if batch_size == 1 or not is_out_of_memory(error):
                raise
        batch_size //= 2  # outside the handler: the failed chunk's tensors are released by now
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def evaluate(
    model: nn.Module,
    workload: Workload,
    data: DeviceData,
    *,
    batch_size: int,
    prefix: str = "eval_",
) -> tuple[float, dict[str, float]]:
    """Mean loss (and metrics, named `prefix` + name) over `data` in eval mode, weighted by chunk size."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    sums: dict[str, float] = {}
    try:
        with torch.no_grad():
            for x, y in data.in_order(batch_size):
                out = model(x)
                n = batch_len(y)
                total += float(workload.loss(out, y)) * n
                count += n
                for name, value in (workload.metrics(out, y) if workload.metrics else {}).items():
                    sums[name] = sums.get(name, 0.0) + float(value) * n
    finally:  # a chunk that ran out of memory must not leave the model in eval mode
        model.train(was_training)
    return total / count, {f"{prefix}{k}": v / count for k, v in sums.items()}


def auto_eval(step: int, resolution: int = EVAL_RESOLUTION) -> bool:
    """Evaluate every step up to 2*R, then every 2^k steps so that the gap stays below step/R."""
    interval = 1 << max(0, int(math.log2(max(step, 1) / resolution)))
    return step % interval == 0


def last_eval_at(steps: int) -> int:
    """The last automatic evaluation point at or before `steps` (0 if none). A run capped there ends
    where an uncapped one is scored, so their steps-to-target compare on the same grid: capped at 746
    a run scored at step 746 "beat" 672 / 0.9 = 746.7 where uncapped it counts at 768 (charlm)."""
    if steps < 1:
        return 0
    # Every point from 16 x interval on is a multiple of its interval, and the interval at `steps`
    # holds back to the multiple below it (itself >= 16 x interval).
    interval = 1 << max(0, int(math.log2(steps / EVAL_RESOLUTION)))
    return steps - steps % interval


def auto_check(step: int) -> bool:
    """Where the automatic schedule scores the data (a subset of `auto_eval`'s points)."""
    return auto_eval(step, CHECK_RESOLUTION)


@dataclass(frozen=True)
class _Kept:
    """An evaluation point not scored yet: where training stood (losses None) and its weights."""

    point: CurvePoint
    weights: dict[str, torch.Tensor]
    noise: NoiseReading | None


def _step_limit(
    workload: Workload,
    schedule: BatchSchedule,
    max_steps: int | None,
    max_epochs: float | None,
    until_target: bool,
) -> int:
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise bad("max_steps", max_steps, "an integer >= 1", "pass --max-steps 1000")
        return max_steps
    epochs = max_epochs
    if epochs is None:
        epochs = DEFAULT_EPOCHS_UNTIL_TARGET if until_target else DEFAULT_EPOCHS
    if not isinstance(epochs, (int, float)) or not math.isfinite(epochs) or epochs <= 0:
        raise bad("max_epochs", max_epochs, "a number > 0", "pass --max-epochs 10")
    return schedule.steps(epochs, workload.train_size)


def resolve_lr(
    workload: Workload, batch_size: int, lr: float | None, rule: LrRule, b_noise: float | None = None
) -> float:
    if lr is not None:
        return check_lr(lr)
    return scale_lr(
        rule, lr_ref=workload.lr, batch_ref=workload.batch_size, batch_size=batch_size, b_noise=b_noise
    )


def train(
    workload: Workload | str,
    *,
    batch_size: int | BatchSchedule,
    lr: float | None = None,
    lr_rule: str | LrRule = LrRule.LINEAR,
    b_noise: float | None = None,
    warmup_steps: int = 0,
    accumulation: int = 1,
    max_steps: int | None = None,
    max_epochs: float | None = None,
    until_target: bool = False,
    eval_every: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    track_noise: bool = False,
    noise_every: int | None = None,
    precision: str | Precision = Precision.FP32,
    checkpoint: bool = False,
    ghost_batch_size: int | None = None,
    sharpness: bool = False,
    final_gap: bool = True,
    checkpoint_at: Sequence[int | float] = (),
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    data_seed: int | None = None,
    keep_model: bool = False,
    on_point: Callable[[CurvePoint], None] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a fresh model from `workload` at `batch_size` and return its whole curve.

    `batch_size` is the effective batch, split into `accumulation` equal micro-batches; a
    `BatchSchedule` changes it (and a factor on the learning rate) at epoch milestones. Without an
    explicit `lr`, the learning rate comes from `lr_rule` applied to the workload's reference point
    at the first batch size.
    With `until_target`, training stops at the first evaluation that reaches the workload's target.
    `eval_every=None` evaluates on a schedule that keeps steps-to-target within 1/16 of its value.
    `track_noise` estimates the gradient noise scale along the way, every `noise_every` steps:
    by default every step when accumulation already splits the batch (nearly free), else every
    NOISE_EVERY-th step, split in two (a split step costs up to twice a plain one on tiny models).
    `ghost_batch_size` swaps the model's BatchNorm layers for ghost batch norm over virtual batches
    of that size; `sharpness` measures the final model's top Hessian eigenvalue and epsilon-sharpness.
    `final_gap` scores FINAL_TRAIN_SAMPLE training examples at the end, for the train/eval gap
    (`final_train_loss`; None without it): a run that only counts steps to the target leaves it out
    (charlm: 0.9 s of a 14 s tuning run).
    `checkpoint_at` saves model, optimizer, data position and random state into `checkpoint_dir` at
    those steps (an int is a step, a float in (0, 1) a fraction of the step limit), evaluating there.
    `resume_from` continues from such a checkpoint (its steps, examples and seconds counted on, and
    `max_steps` still the total): at the same settings the run is the one that saved it, step for
    step; at another batch size or rate it is a branch of it, seeing the same examples in order.
    `data_seed` (with `resume_from`) draws the data from the checkpoint on in another order, from a
    generator seeded with it (the epoch's permutation is drawn again, so the rest of that epoch may
    repeat examples seen before the checkpoint): the same state on other examples, a second sample
    of a branch.
    The target is judged at evaluation points on fixed data: the evaluation set for `eval_*`
    metrics, a fixed sample of the training set for `train_*` (TRAIN_SAMPLE); the mini-batch loss is
    kept as `batch_loss`. A loss that is not finite, or a training-sample loss that rises to
    DIVERGENCE_FACTOR times its start, stops the run and marks it `diverged`: a result, not an error.
    """
    workload = load_workload(workload)
    _dist.init_from_env()
    world = _dist.world_size()
    if isinstance(batch_size, BatchSchedule):
        schedule = batch_size
        for phase in schedule.phases:
            check_batch_size(phase.batch_size, workload.train_size)
    else:
        check_batch_size(batch_size, workload.train_size)
        schedule = BatchSchedule.constant(batch_size)
    rule = as_rule(lr_rule)
    lr_value = resolve_lr(workload, schedule.initial_batch_size, lr, rule, b_noise)
    if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
        raise bad("accumulation", accumulation, "an integer >= 1", "pass --accumulation 1")
    for size in sorted({p.batch_size for p in schedule.phases}):
        if world > 1 and size % (world * accumulation):
            raise bad(
                "batch_size",
                size,
                f"a multiple of world size {world} x accumulation {accumulation} = {world * accumulation} "
                "(it is the global batch)",
                f"pass --batch-size {max(1, size // (world * accumulation)) * world * accumulation}",
            )
        if size % accumulation:
            raise bad(
                "accumulation",
                accumulation,
                f"a divisor of the batch size {size}",
                "pick batch sizes that are multiples of it",
            )
    if warmup_steps < 0:
        raise bad("warmup_steps", warmup_steps, "an integer >= 0")
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise bad("eval_every", eval_every, "an integer >= 1, or None for the automatic schedule")
    # Without accumulation or ranks to compare, a noise step splits its batch in two.
    noise_parts = accumulation if accumulation > 1 or world > 1 else 2
    if noise_every is None:
        noise_every = 1 if accumulation > 1 or world > 1 else NOISE_EVERY
    for size in sorted({p.batch_size for p in schedule.phases}):
        if track_noise and size % noise_parts:
            raise bad(
                "batch_size",
                size,
                f"a multiple of {noise_parts} to track the noise scale",
                "pass an even batch size, or --accumulation K with K dividing it",
            )
    limit = _step_limit(workload, schedule, max_steps, max_epochs, until_target)
    saves = checkpoint_steps(checkpoint_at, checkpoint_dir, limit)
    dev = resolve_device(device)
    resume = None if resume_from is None else load_checkpoint(resume_from, workload.name, dev)
    if data_seed is not None:
        if isinstance(data_seed, bool) or not isinstance(data_seed, int):
            raise bad("data_seed", data_seed, "an integer", "pass data_seed=1")
        if resume is None:
            raise bad("data_seed", data_seed, "used with resume_from", "pass seed= for a fresh run's order")
        order = torch.Generator().manual_seed(data_seed).get_state()
        position = {**resume.state["position"], "rng_state": order}
        resume = replace(resume, state={**resume.state, "position": position})
    amp_precision = as_precision(precision, dev)
    if track_noise and amp_precision is not Precision.FP32:
        raise bad("track_noise", True, "used with fp32 precision", "measure the noise scale in fp32")
    loop = _Loop(
        workload,
        dev,
        schedule=schedule,
        accumulation=accumulation,
        lr=lr_value,
        warmup_steps=warmup_steps,
        seed=seed,
        track_noise=track_noise,
        noise_every=noise_every,
        noise_parts=noise_parts,
        precision=amp_precision,
        checkpoint=checkpoint,
        ghost_batch_size=ghost_batch_size,
    )
    if resume is not None:
        loop.restore(resume)
    loop.saves, loop.checkpoint_dir = saves, None if checkpoint_dir is None else Path(checkpoint_dir)
    curve, stop = loop.run(
        limit=limit, until_target=until_target, eval_every=eval_every, on_point=on_point, progress=progress
    )
    return loop.result(
        curve, stop, rule=rule, keep_model=keep_model, sharpness=sharpness, final_gap=final_gap
    )


class _Loop:
    """The state of one run. Private: `train` is the interface."""

    def __init__(
        self,
        workload: Workload,
        device: torch.device,
        *,
        schedule: BatchSchedule,
        accumulation: int,
        lr: float,
        warmup_steps: int,
        seed: int,
        track_noise: bool,
        noise_every: int,
        noise_parts: int,
        precision: Precision,
        checkpoint: bool,
        ghost_batch_size: int | None,
    ) -> None:
        self.workload, self.device = workload, device
        self.schedule = schedule
        self._enter(schedule.phases[0])
        self.accumulation, self.lr = accumulation, lr
        self.warmup_steps, self.seed = warmup_steps, seed
        self.track_noise, self.noise_every, self.noise_parts = track_noise, max(1, noise_every), noise_parts
        self.model = fresh_model(
            workload, seed, device, checkpoint=checkpoint, ghost_batch_size=ghost_batch_size
        )
        self.precision, self.checkpoint, self.ghost_batch_size = precision, checkpoint, ghost_batch_size
        self.amp = None if precision is Precision.FP32 else Amp(precision, device)
        self.model.train()
        self.optimizer = workload.optimizer(self.model.parameters(), lr)
        self.train_data = DeviceData(workload.train_data, device)
        self.eval_data = None if workload.eval_data is None else DeviceData(workload.eval_data, device)
        on_train = workload.target.metric.startswith("train_")
        sample_size = TRAIN_SAMPLE if on_train else DIVERGENCE_SAMPLE
        if not on_train and self.eval_data is not None:
            sample_size = max(DIVERGENCE_MIN, min(sample_size, self.eval_data.size))
        self.train_sample = self.train_data.sample(sample_size, SAMPLE_SEED)
        self.eval_batch = max(schedule.largest_batch_size, EVAL_CHUNK)
        self.rank, self.world = _dist.rank(), _dist.world_size()
        # What a step runs: the model, or DDP around it.
        self.net: nn.Module = _dist.data_parallel(self.model, device) if self.world > 1 else self.model
        # The same monitor users attach to their own loops: hooks see each micro-batch's (or rank's)
        # gradient; a measured step without either is split in noise_parts.
        self.monitor = (
            NoiseMonitor(self.model, window=NOISE_WINDOW, population=workload.train_size)
            if track_noise
            else None
        )
        self.step = 0
        self.examples = 0
        self.lr_now = lr
        self.seconds = 0.0
        self.diverged = False
        self.target_point: CurvePoint | None = None
        self.start_point: CurvePoint | None = None  # the run's first point, for divergence
        self.position: Position | None = None  # where a resumed run's data stands
        self.resumed_from: dict[str, Any] | None = None
        self.saves: set[int] = set()
        self.checkpoint_dir: Path | None = None
        self.saved: list[dict[str, Any]] = []
        self.noise_at_stop: NoiseReading | None = None

    def _enter(self, phase: Phase) -> None:
        self.phase, self.batch_size, self.lr_stale = phase, phase.batch_size, True
        by_examples = self.schedule.by_examples
        start = phase.start(by_examples)
        later = [p.start(by_examples) for p in self.schedule.phases if p.start(by_examples) > start]
        self.next_phase_start = min(later, default=math.inf)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Take up a saved run where it stood (model, optimizer, counts, data, random state)."""
        checkpoint.restore(self.model, self.optimizer, None if self.amp is None else self.amp.scaler)
        self.lr_now = self.optimizer.param_groups[0]["lr"]
        self.step, self.examples, self.seconds = checkpoint.step, checkpoint.examples, checkpoint.seconds
        self.position = checkpoint.position
        self.start_point = CurvePoint.from_dict(checkpoint.start_point)
        reached = checkpoint.target_point
        self.target_point = None if reached is None else CurvePoint.from_dict(reached)
        self._enter(self.schedule.at(checkpoint.position.epoch, checkpoint.examples))
        self.resumed_from = {"step": self.step, "examples": self.examples, "path": str(checkpoint.path)}

    def _save(self, point: CurvePoint, position: Position) -> None:
        assert self.checkpoint_dir is not None and self.start_point is not None
        if self.rank == 0:
            path = Checkpoint.save(
                self.checkpoint_dir,
                workload=self.workload.name,
                model=self.model,
                optimizer=self.optimizer,
                scaler=None if self.amp is None else self.amp.scaler,
                step=self.step,
                examples=self.examples,
                seconds=self.seconds,
                position=position,
                start_point=self.start_point.to_dict(),
                point=point.to_dict(),
                target_point=None if self.target_point is None else self.target_point.to_dict(),
            )
            self.saved.append({"step": self.step, "examples": self.examples, "path": str(path)})

    def _train_step(self, batch: Batch) -> torch.Tensor:
        if self.lr_stale or self.step <= self.warmup_steps:  # else the rate is what it was
            lr = self.lr * self.phase.lr_factor * warmup_factor(self.step, self.warmup_steps)
            if lr != self.lr_now:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.lr_now = lr
            self.lr_stale = False
        measure = self.monitor is not None and self.step % self.noise_every == 0
        if self.monitor is not None:
            self.monitor.active = measure
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.accumulation
        if measure and self.world == 1 and parts == 1:
            parts = self.noise_parts  # one batch size only: split this step to get two
        out = backward(
            self.net,
            self.workload.loss,
            batch,
            micro_batches=parts,
            amp=self.amp,
            no_sync=self.net.no_sync if self.world > 1 else None,  # type: ignore[arg-type]
        )
        if self.monitor is not None:
            self.monitor.step(self.batch_size)
        optimizer_step(self.optimizer, self.amp)
        self.step += 1
        self.examples += self.batch_size
        return out.loss

    def _diverged(self, point: CurvePoint, start: CurvePoint) -> bool:
        """Not finite, or the training-sample loss far above where it started (DIVERGENCE_FACTOR)."""
        losses = (point.train_loss, point.eval_loss, point.batch_loss)
        if any(v is not None and not math.isfinite(v) for v in losses):
            return True
        first, now = start.train_loss, point.train_loss
        if first is None or now is None or not math.isfinite(first):
            return False
        return now - first > (DIVERGENCE_FACTOR - 1) * abs(first)

    def run(
        self,
        *,
        limit: int,
        until_target: bool,
        eval_every: int | None,
        on_point: Callable[[CurvePoint], None] | None,
        progress: Progress | None,
    ) -> tuple[list[CurvePoint], str]:
        curve = [self._point(None)]
        if self.start_point is None:
            self.start_point = curve[0]
        if on_point:
            on_point(curve[0])
        if until_target and self.target_point is not None:  # resumed past the target already
            return curve, "target"
        batches: Iterator[tuple[Position, Batch]] = self.train_data.epochs(
            self.schedule.batch_size_at,
            torch.Generator().manual_seed(self.seed),
            shard=(self.rank, self.world),
            start=self.position,
        )
        losses: list[torch.Tensor] = []  # summed only at evaluation: no per-step device sync
        # A run to the target scores the data at checks only (CHECK_RESOLUTION); a run for its curve,
        # or on a schedule the caller chose, at every point.
        due: Callable[[int], bool] = auto_eval
        check: Callable[[int], bool] = auto_check if until_target else auto_eval
        if eval_every is not None:
            due = check = lambda step: step % eval_every == 0
        kept: list[_Kept] = []  # points since the last check, not scored yet
        by_examples = self.schedule.by_examples
        started = clock(self.device)
        stop = "budget"
        while self.step < limit:
            position, batch = next(batches)
            if (self.examples if by_examples else position.epoch) >= self.next_phase_start:
                self._enter(self.schedule.at(position.epoch, self.examples))
            losses.append(self._train_step(batch))
            save = self.step in self.saves
            end = save or self.step == limit
            if not (due(self.step) or end):
                continue
            self.seconds += clock(self.device) - started
            batch_loss = float(_dist.mean(torch.stack(losses).mean()))  # over the ranks' shards too
            losses.clear()
            if not (check(self.step) or end):
                kept.append(self._keep(batch_loss))
                started = clock(self.device)
                continue
            point = self._point(batch_loss)
            assert self.start_point is not None
            if self._diverged(point, self.start_point):
                self.diverged, stop = True, "diverged"
                self._emit([point], curve, on_point, progress, limit)
                break
            points = [point]
            if self.target_point is None and self._reached(point) and kept:  # only until_target keeps
                points = self._earliest_reaching(kept, point)
            kept.clear()
            self._emit(points, curve, on_point, progress, limit)
            if self.target_point is None:
                self.target_point = next((p for p in points if self._reached(p)), None)
            if save and points[-1] is point:  # after the target: a resumed run knows it
                self._save(point, position)
            if until_target and self.target_point is not None:
                stop = "target"
                break
            started = clock(self.device)
        return curve, stop

    def _reached(self, point: CurvePoint) -> bool:
        value = point.value(self.workload.target.metric)
        return value is not None and self.workload.target.reached(value)

    def _emit(
        self,
        points: list[CurvePoint],
        curve: list[CurvePoint],
        on_point: Callable[[CurvePoint], None] | None,
        progress: Progress | None,
        limit: int,
    ) -> None:
        for point in points:
            curve.append(point)
            if on_point:
                on_point(point)
        if progress:
            progress(points[-1].step, limit)

    def _keep(self, batch_loss: float) -> _Kept:
        """This point's weights, on the host (a GPU's memory was probed without them), to score later."""
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        reading = self.monitor.reading() if self.monitor is not None else None
        return _Kept(self._unscored(batch_loss, reading), weights, reading)

    def _earliest_reaching(self, kept: list[_Kept], check: CurvePoint) -> list[CurvePoint]:
        """Score the kept points in order up to the first that meets the target, which `check` does.

        The points scored. The run stops at the target: at a kept point that met it, it is left there
        (its weights, steps, examples, seconds and noise reading); else `check` ends the list.
        """
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        scored: list[CurvePoint] = []
        for item in kept:
            self.model.load_state_dict(item.weights)
            scored.append(self._scored(item.point))
            if self._reached(scored[-1]):
                self.step, self.examples = item.point.step, item.point.examples
                self.seconds, self.noise_at_stop = item.point.seconds, item.noise
                return scored
        self.model.load_state_dict(live)
        return [*scored, check]

    def _point(self, batch_loss: float | None) -> CurvePoint:
        reading = self.monitor.reading() if self.monitor is not None else None
        return self._scored(self._unscored(batch_loss, reading))

    def _unscored(self, batch_loss: float | None, reading: NoiseReading | None) -> CurvePoint:
        """Where training stands now (the noise `reading` so far), before the data is scored."""
        return CurvePoint(
            step=self.step,
            examples=self.examples,
            seconds=self.seconds,
            lr=self.optimizer.param_groups[0]["lr"],
            batch_size=self.batch_size,
            train_loss=None,
            eval_loss=None,
            b_simple=reading.b_simple if reading is not None else None,
            batch_loss=batch_loss,
        )

    def _scored(self, point: CurvePoint) -> CurvePoint:
        """`point` with the model, as it stands, scored on the training sample and the evaluation set."""
        train_loss, metrics, self.eval_batch = evaluate_within_memory(
            self.model, self.workload, self.train_sample, batch_size=self.eval_batch, prefix="train_"
        )
        eval_loss: float | None = None
        if self.eval_data is not None:
            eval_loss, eval_metrics, self.eval_batch = evaluate_within_memory(
                self.model, self.workload, self.eval_data, batch_size=self.eval_batch
            )
            metrics.update(eval_metrics)
        return replace(point, train_loss=train_loss, eval_loss=eval_loss, metrics=metrics)

    def result(
        self,
        curve: list[CurvePoint],
        stop: str,
        *,
        rule: LrRule,
        keep_model: bool,
        sharpness: bool,
        final_gap: bool,
    ) -> TrainResult:
        if self.monitor is not None:  # the Hessian's backward passes below are not training steps
            self.monitor.close()
        final_train = None
        if final_gap and not self.diverged:
            final_train, _, self.eval_batch = evaluate_within_memory(
                self.model,
                self.workload,
                self.train_data.sample(FINAL_TRAIN_SAMPLE, SAMPLE_SEED),
                batch_size=self.eval_batch,
            )
        measured = None
        if sharpness and not self.diverged:
            started = clock(self.device)
            top = top_hessian_eigenvalue(
                self.model, self.workload, method="auto", max_examples=SHARPNESS_EXAMPLES, tolerance=1e-3
            )
            measured = {
                **top.to_dict(),
                "epsilon_sharpness": epsilon_sharpness(
                    self.model, self.workload, max_examples=SHARPNESS_EXAMPLES
                ),
            }
            measured["seconds"] = clock(self.device) - started
        last = curve[-1]
        hit = self.target_point
        noise = None
        reading = self.monitor.reading() if self.monitor is not None else None
        if self.noise_at_stop is not None:  # stopped at a kept point: the reading there
            reading = self.noise_at_stop
        if reading is not None:
            noise = {
                "b_simple": reading.b_simple,
                "b_simple_stderr": reading.b_simple_stderr,
                "grad_sq": reading.grad_sq,
                "trace_sigma": reading.trace_sigma,
                "updates": reading.measurements,
            }
        return TrainResult(
            workload=self.workload.name,
            batch_size=self.schedule.initial_batch_size,
            micro_batch_size=self.schedule.initial_batch_size // (self.accumulation * self.world),
            accumulation=self.accumulation,
            lr=self.lr,
            lr_rule=rule.value,
            warmup_steps=self.warmup_steps,
            seed=self.seed,
            device=str(self.device),
            target=self.workload.target.to_dict(),
            steps=self.step,
            examples=self.examples,
            seconds=self.seconds,
            reached_target=hit is not None,
            steps_to_target=None if hit is None else hit.step,
            examples_to_target=None if hit is None else hit.examples,
            seconds_to_target=None if hit is None else hit.seconds,
            diverged=self.diverged,
            final_train_loss=_finite(final_train),
            final_eval_loss=_finite(last.eval_loss),
            final_metrics=dict(last.metrics),
            curve=tuple(curve),
            noise=noise,
            precision=self.precision.value,
            checkpoint=self.checkpoint,
            ghost_batch_size=self.ghost_batch_size,
            world_size=self.world,
            batch_schedule=self.schedule.to_dict() if len(self.schedule.phases) > 1 else None,
            sharpness=measured,
            checkpoints=tuple(self.saved),
            resumed_from=self.resumed_from,
            model=self.model if keep_model else None,
        )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
