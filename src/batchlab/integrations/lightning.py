"""The gradient noise scale of a Lightning run, logged through the Trainer's logger.

    from batchlab.integrations.lightning import NoiseScaleCallback
    trainer = L.Trainer(accumulate_grad_batches=4, strategy="ddp", callbacks=[NoiseScaleCallback()])

Lightning divides each micro-batch's loss by `accumulate_grad_batches` and calls
`on_before_optimizer_step` once the step's gradients are accumulated (and all-reduced under DDP),
before it clips them: the monitor's hooks have then seen every micro-batch's and every rank's
gradient, and `.grad` holds the step's. `b_simple`, `b_simple_stderr`, `trace_sigma` and `grad_sq`
are logged each step a reading is new (on rank 0's logger, like every Lightning metric).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl  # the [lightning] extra
import torch

from batchlab.core.monitor import NoiseMonitor, NoiseReading
from batchlab.integrations.scheduler import SAMPLED_STEPS, sample_factors, schedule_from_factors
from batchlab.recipe import LrSchedule
from batchlab.workload import Target, Workload


class NoiseScaleCallback(pl.Callback):  # type: ignore[misc]
    def __init__(self, *, window: float = 0.1, split_every: int = 50, batch_size: int | None = None) -> None:
        """`batch_size`: examples per micro-batch on each device, when the module has no
        `batch_size` attribute and the train dataloader none either."""
        self.window, self.split_every, self.batch_size = window, split_every, batch_size
        self.monitor: NoiseMonitor | None = None
        self.latest: NoiseReading | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.monitor = NoiseMonitor(pl_module, window=self.window, split_every=self.split_every)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.monitor is None:
            return
        micro = self.batch_size or _micro_batch_size(trainer, pl_module)
        batch = micro * trainer.accumulate_grad_batches * trainer.world_size
        reading = self.monitor.step(batch)
        if reading is not None:
            self.latest = reading
            for name, value in reading.metrics().items():
                pl_module.log(name, value, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()


def _micro_batch_size(trainer: Any, pl_module: Any) -> int:
    size = getattr(pl_module, "batch_size", None)
    if size is None:
        loader = trainer.train_dataloader
        size = getattr(loader, "batch_size", None)
    if not size:
        raise ValueError(
            "NoiseScaleCallback cannot tell the micro-batch size: give the module a batch_size "
            "attribute or pass NoiseScaleCallback(batch_size=...)"
        )
    return int(size)


class _Step(torch.nn.Module):
    """A LightningModule seen as batchlab sees a model: calling it returns a deferred training step,
    which the workload's loss completes with the targets (`training_step((x, y), 0)`), so that the
    module's own loss is what batchlab trains, measures and probes."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Any) -> _Deferred:
        return _Deferred(self.module, x)


class _Deferred:
    __slots__ = ("module", "x")

    def __init__(self, module: Any, x: Any) -> None:
        self.module, self.x = module, x


def _loss(outputs: _Deferred, y: Any) -> torch.Tensor:
    out = outputs.module.training_step((outputs.x, y), 0)
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, torch.Tensor):
        raise TypeError("training_step must return the loss (a tensor, or a dict with 'loss')")
    return loss


def workload(
    module_factory: Callable[[], Any],
    datamodule: Any,
    *,
    target: Target,
    lr: float | None = None,
    name: str | None = None,
    trainer: Any = None,
) -> Workload:
    """A LightningModule + DataModule as a batchlab Workload, so that `batchlab memory`, `throughput`,
    `noise` and `advise` run on it. Batches must be (inputs, targets) pairs; the loss is the
    module's `training_step`; the optimizer is its `configure_optimizers()` (the first one; its
    learning rate set by batchlab, `lr` the reference, default the optimizer's own); the reference
    batch is the DataModule's `batch_size` (times the trainer's accumulation steps and devices,
    with `trainer`). Put it in a file for the CLI:

        def my_workload():
            return workload(MyModule, MyDataModule(), target=Target(metric="eval_loss", value=0.3))

        batchlab advise --workload my_file.py:my_workload

    The recipe is read where it is written: the learning-rate scheduler that configure_optimizers
    returns (stepped per optimizer step, read by its rates: integrations.scheduler) and, with
    `trainer` (the `lightning.Trainer` you train with), its `gradient_clip_val` and the steps it
    runs (`max_steps`, the schedule's horizon when the scheduler has none of its own). What could
    not be read is listed in the workload's description and `extras["unread"]`.
    """
    datamodule.setup("fit")
    train_loader = datamodule.train_dataloader()
    try:
        eval_data = datamodule.val_dataloader().dataset
    except (AttributeError, NotImplementedError, TypeError):  # a DataModule with no validation data
        eval_data = None
    batch = getattr(datamodule, "batch_size", None) or train_loader.batch_size
    owners: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

    def model() -> torch.nn.Module:
        module = module_factory()
        for p in module.parameters():
            owners[id(p)] = module
        return _Step(module)

    def optimizer(params: Any, rate: float) -> torch.optim.Optimizer:
        params = list(params)
        module = owners.get(id(params[0])) if params else None
        if module is None:  # parameters of no module built here (a probe of the optimizer's kind):
            kind = _first_optimizer(module_factory().configure_optimizers())  # its class and defaults
            return type(kind)(params, **{**kind.defaults, "lr": rate})
        built = _first_optimizer(module.configure_optimizers())  # the module's own param groups
        for group in built.param_groups:
            group["lr"] = rate
        return built

    configured = module_factory().configure_optimizers()
    reference_lr = lr
    if reference_lr is None:  # a scheduler has already set the group's lr to its first step's
        group = _first_optimizer(configured).param_groups[0]
        reference_lr = group.get("initial_lr", group["lr"])
    if trainer is not None:  # the global batch a step of the trainer takes
        batch = int(batch) * trainer.accumulate_grad_batches * trainer.world_size
    schedule, unread = read_recipe(configured, trainer, int(batch))
    clip, clip_unread = _clip(trainer)
    unread += clip_unread
    description = "a LightningModule and DataModule"
    if unread:
        description += "; could not read: " + "; ".join(unread)
    return Workload(
        name=name or type(datamodule).__name__,
        description=description,
        schedule=schedule,
        clip_grad_norm=clip,
        extras={"unread": tuple(unread)},
        model=model,
        train_data=train_loader.dataset,
        eval_data=eval_data,
        loss=_loss,  # type: ignore[arg-type]
        optimizer=optimizer,
        batch_size=int(batch),
        lr=float(reference_lr),
        target=target,
    )


def _first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """configure_optimizers may return an optimizer, a list or tuple, or a dict with 'optimizer'."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict):
        return _first_optimizer(configured["optimizer"])
    if isinstance(configured, (list, tuple)) and configured:
        return _first_optimizer(configured[0])
    raise TypeError(f"configure_optimizers returned {type(configured).__name__}, not an optimizer")


def read_recipe(configured: Any, trainer: Any, examples_per_step: int) -> tuple[LrSchedule | None, list[str]]:
    """The schedule of the scheduler `configure_optimizers` returned, by its rates over the
    trainer's `max_steps` (or SAMPLED_STEPS), in examples at `examples_per_step`; what was unread."""
    found = _scheduler(configured)
    if found is None:
        return None, []
    scheduler, interval = found
    if interval != "step":
        return None, [f"the lr scheduler steps per {interval} (batchlab reads one stepped per step)"]
    max_steps = -1 if trainer is None else trainer.max_steps
    steps = SAMPLED_STEPS if max_steps is None or max_steps <= 0 else max_steps + max(10, max_steps // 10)
    schedule, why = schedule_from_factors(sample_factors(scheduler, steps), examples_per_step)
    return schedule, [] if why is None else [f"the lr scheduler ({type(scheduler).__name__}): {why}"]


def _scheduler(configured: Any) -> tuple[Any, str] | None:
    """The first scheduler configure_optimizers returned, with its interval (Lightning's default
    is 'epoch'): a dict's 'lr_scheduler', or the second list of an (optimizers, schedulers) pair."""
    if isinstance(configured, dict):
        entry = configured.get("lr_scheduler")
    elif isinstance(configured, (list, tuple)) and len(configured) == 2 and isinstance(configured[1], list):
        entry = configured[1][0] if configured[1] else None
    else:
        return None
    if entry is None:
        return None
    if isinstance(entry, dict):
        return entry["scheduler"], entry.get("interval", "epoch")
    return entry, "epoch"


def _clip(trainer: Any) -> tuple[float | None, list[str]]:
    if trainer is None or not trainer.gradient_clip_val:
        return None, []
    if trainer.gradient_clip_algorithm not in (None, "norm"):
        return None, [
            f"gradient_clip_algorithm={trainer.gradient_clip_algorithm!r} (batchlab clips the norm)"
        ]
    return float(trainer.gradient_clip_val), []
