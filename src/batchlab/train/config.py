"""How one run trains: `TrainConfig`, every option of `train`, checked where it is built; and
`plan`, what those options come to on a given workload and device (the checks that need them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from batchlab.core import dist as _dist
from batchlab.core.device import resolve_device
from batchlab.core.precision import Precision, as_precision
from batchlab.errors import bad, check_int, check_seed
from batchlab.lr import LrRule, as_rule, rate_for
from batchlab.recipe import Decay, LrSchedule
from batchlab.schedule import BatchSchedule
from batchlab.train.checkpoint import Checkpoint, checkpoint_steps, load_checkpoint
from batchlab.workload import Workload, check_batch_size, check_lr

DEFAULT_EPOCHS_UNTIL_TARGET = 100  # a run to the target stops here if it never gets there
DEFAULT_EPOCHS = 10
NOISE_EVERY = 50  # without accumulation, track_noise splits one step in this many


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every option of one run. Built by `train`; checks itself and names the bad field."""

    # The effective batch, split into `accumulation` equal micro-batches; a `BatchSchedule` changes
    # it (and a factor on the learning rate) at epoch milestones.
    batch_size: int | BatchSchedule
    lr: float | None = None  # None: `lr_rule` applied to the workload's reference point
    lr_rule: LrRule | str = LrRule.LINEAR
    b_noise: float | None = None  # for lr_rule "noise"
    warmup_steps: int = 0
    accumulation: int = 1
    max_steps: int | None = None  # None: max_epochs (default DEFAULT_EPOCHS, or ..._UNTIL_TARGET)
    max_epochs: float | None = None
    max_examples: int | None = None  # the run's length in examples (a recipe's horizon), instead
    max_tokens: int | None = None  # or in tokens, with the workload's tokens_per_example
    until_target: bool = False  # stop at the first evaluation that reaches the target
    eval_every: int | None = None  # None: steps-to-target kept within 1/16 of its value
    seed: int = 0
    device: str | torch.device = "auto"
    # Track the gradient noise scale every `noise_every` steps: by default every step when
    # accumulation already splits the batch (nearly free), else every NOISE_EVERY-th step, split in
    # two (a split step costs up to twice a plain one on tiny models).
    track_noise: bool = False
    noise_every: int | None = None
    precision: Precision | str = Precision.FP32
    checkpoint: bool = False  # activation checkpointing
    ghost_batch_size: int | None = None  # BatchNorm layers made ghost batch norm of this size
    sharpness: bool = False  # the final model's top Hessian eigenvalue and epsilon-sharpness
    # Score FINAL_TRAIN_SAMPLE training examples at the end, for the train/eval gap; a run that only
    # counts steps to the target leaves it out.
    final_gap: bool = True
    # Save model, optimizer, data position and random state into `checkpoint_dir` at these steps (an
    # int is a step, a float in (0, 1) a fraction of the step limit), evaluating there.
    checkpoint_at: Sequence[int | float] = ()
    checkpoint_dir: str | Path | None = None
    # Continue from such a checkpoint (steps, examples, seconds counted on; max_steps still the total):
    # at the same settings the run that saved it, step for step; at another batch or rate, a branch.
    resume_from: str | Path | None = None
    # With resume_from: the data from the checkpoint on in another order, drawn from a generator
    # seeded with it (the same state on other examples, a second sample of a branch).
    data_seed: int | None = None
    keep_model: bool = False  # return the trained model in TrainResult.model

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_rule", as_rule(self.lr_rule))
        if self.lr is not None:
            object.__setattr__(self, "lr", check_lr(self.lr))
        if (
            isinstance(self.accumulation, bool)
            or not isinstance(self.accumulation, int)
            or self.accumulation < 1
        ):
            raise bad("accumulation", self.accumulation, "an integer >= 1", "pass --accumulation 1")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", self.warmup_steps, "an integer >= 0")
        if self.eval_every is not None and (not isinstance(self.eval_every, int) or self.eval_every < 1):
            raise bad("eval_every", self.eval_every, "an integer >= 1, or None for the automatic schedule")
        check_seed(self.seed)
        if self.data_seed is not None:
            check_seed(self.data_seed, field="data_seed", fix="pass data_seed=1")
            if self.resume_from is None:
                raise bad(
                    "data_seed", self.data_seed, "used with resume_from", "pass seed= for a fresh run's order"
                )

    @property
    def schedule(self) -> BatchSchedule:
        if isinstance(self.batch_size, BatchSchedule):
            return self.batch_size
        return BatchSchedule.constant(self.batch_size)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a config comes to on one workload and device: the numbers the loop runs with."""

    schedule: BatchSchedule
    lr: float
    rule: LrRule
    noise_parts: int  # a measured step's parts: micro-batches, ranks, or a plain step split in two
    noise_every: int
    limit: int  # steps
    horizon: int  # the examples those steps take: a schedule decays over them
    lr_schedule: LrSchedule | None  # the workload's, as this run applies it (see run_schedule)
    saves: set[int]  # steps to checkpoint at
    device: torch.device
    precision: Precision
    resume: Checkpoint | None


def plan_run(workload: Workload, config: TrainConfig) -> Plan:
    """Check `config` against the workload and the ranks, and resolve what it leaves open."""
    world = _dist.world_size()
    if isinstance(config.batch_size, BatchSchedule):  # a stream (no length) runs at one batch size
        for phase in config.batch_size.phases:
            check_batch_size(phase.batch_size, workload.train_size)
    else:
        check_batch_size(config.batch_size, workload.train_len)
    schedule = config.schedule
    sizes = sorted({p.batch_size for p in schedule.phases})
    lr = config.lr
    if lr is None:
        lr = rate_for(workload, schedule.initial_batch_size, config.lr_rule, config.b_noise)
    _check_splits(sizes, config.accumulation, world)
    # Without accumulation or ranks to compare, a noise step splits its batch in two.
    split = config.accumulation > 1 or world > 1
    noise_parts = config.accumulation if split else 2
    noise_every = config.noise_every if config.noise_every is not None else 1 if split else NOISE_EVERY
    for size in sizes:
        if config.track_noise and size % noise_parts:
            raise bad(
                "batch_size",
                size,
                f"a multiple of {noise_parts} to track the noise scale",
                "pass an even batch size, or --accumulation K with K dividing it",
            )
    limit = step_limit(workload, schedule, config)
    saves = checkpoint_steps(config.checkpoint_at, config.checkpoint_dir, limit)
    device = resolve_device(config.device)
    precision = as_precision(config.precision, device)
    if config.track_noise and precision is not Precision.FP32:
        raise bad("track_noise", True, "used with fp32 precision", "measure the noise scale in fp32")
    return Plan(
        schedule=schedule,
        lr=lr,
        rule=LrRule(config.lr_rule),
        noise_parts=noise_parts,
        noise_every=max(1, noise_every),
        limit=limit,
        horizon=schedule.examples_in(limit, workload.train_len),
        lr_schedule=run_schedule(workload.schedule, config.until_target),
        saves=saves,
        device=device,
        precision=precision,
        resume=_resume(workload, config, device),
    )


def _check_splits(sizes: list[int], accumulation: int, world: int) -> None:
    """Every batch splits evenly over the ranks (it is the global batch) and the micro-batches."""
    for size in sizes:
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


def _resume(workload: Workload, config: TrainConfig, device: torch.device) -> Checkpoint | None:
    """The checkpoint to resume from, its data drawn in `data_seed`'s order where one is given."""
    if config.resume_from is None:
        return None
    resume = load_checkpoint(config.resume_from, workload.name, device)
    if config.data_seed is None:
        return resume
    order = torch.Generator().manual_seed(config.data_seed).get_state()
    position = {**resume.state["position"], "rng_state": order}
    return replace(resume, state={**resume.state, "position": position})


def run_schedule(schedule: LrSchedule | None, until_target: bool) -> LrSchedule | None:
    """The workload's rate schedule as a run applies it. A run to the target has no length of its
    own (its step limit is a cap): it decays only over a horizon the schedule states, and otherwise
    keeps the warm-up and then the peak, at every batch alike."""
    if schedule is None or not until_target or schedule.horizon_examples is not None:
        return schedule
    if schedule.warmup_fraction:
        raise bad(
            "schedule.warmup_fraction",
            schedule.warmup_fraction,
            "0 in a run to the target without a stated horizon (the run has no length to take a fraction of)",
            "give the warm-up as warmup_examples, or state horizon_examples",
        )
    return replace(schedule, decay=Decay.CONSTANT)


def step_limit(workload: Workload, schedule: BatchSchedule, config: TrainConfig) -> int:
    """The run's length in steps: `max_steps`, else `max_examples` (the fewest steps that take
    them), else `max_epochs` (or the default) over the schedule."""
    max_steps, max_epochs, max_examples = config.max_steps, config.max_epochs, config.max_examples
    if config.max_tokens is not None:
        if max_examples is not None:
            raise bad(
                "max_tokens",
                config.max_tokens,
                "left out when max_examples is given",
                "give the run one length",
            )
        max_examples = workload.examples_in_tokens(
            check_int("max_tokens", config.max_tokens), field="max_tokens"
        )
    if max_examples is not None and (max_steps is not None or max_epochs is not None):
        other = "max_steps" if max_steps is not None else "max_epochs"
        raise bad("max_examples", max_examples, f"left out when {other} is given", "give the run one length")
    if max_steps is not None:
        return check_int("max_steps", max_steps, fix="pass --max-steps 1000")
    if max_examples is not None:
        check_int("max_examples", max_examples, fix="pass --max-examples 100000")
        return schedule.steps_for(max_examples, workload.train_len)
    epochs = max_epochs
    if epochs is None:
        epochs = DEFAULT_EPOCHS_UNTIL_TARGET if config.until_target else DEFAULT_EPOCHS
    if not isinstance(epochs, (int, float)) or not math.isfinite(epochs) or epochs <= 0:
        raise bad("max_epochs", max_epochs, "a number > 0", "pass --max-epochs 10")
    return schedule.steps(epochs, workload.train_size)
