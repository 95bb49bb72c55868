"""The gradient noise scale of a Hugging Face `Trainer` run, logged with its loss.

    from batchlab.integrations.transformers import NoiseScaleCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[NoiseScaleCallback()])

Every optimizer step, the callback's NoiseMonitor reads each micro-batch's gradient (with
`gradient_accumulation_steps` > 1) and each rank's (under DDP) as the small batch and the step's
gradient as the big one: no extra backward pass, the Trainer's gradients untouched. The Trainer
clips before its callbacks run: a step whose gradient it clipped is left out and counted
(`monitor.clipped_steps`), its own norm being gone. At each logging step `b_simple`,
`b_simple_stderr`, `trace_sigma` and `grad_sq` join the Trainer's logs and its `log_history`. The
Trainer calls its own reporters (TensorBoard, W&B, ...) before a user's callbacks: to have them
record the figures too, attach the callback first:

    callback = NoiseScaleCallback.attach(trainer)
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback  # the [hf] extra

from batchlab.core.monitor import NoiseMonitor, NoiseReading
from batchlab.integrations.scheduler import sample_factors, schedule_from_factors
from batchlab.recipe import LrSchedule


class NoiseScaleCallback(TrainerCallback):  # type: ignore[misc]
    def __init__(self, *, window: float = 0.1, split_every: int = 50) -> None:
        self.window, self.split_every = window, split_every
        self.monitor: NoiseMonitor | None = None
        self.latest: NoiseReading | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.monitor = NoiseMonitor(model, window=self.window, split_every=self.split_every)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None:
            return
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        clip = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None
        reading = self.monitor.step(batch, clip_norm=clip)
        if reading is not None:
            self.latest = reading

    @classmethod
    def attach(cls, trainer: Any, **options: Any) -> NoiseScaleCallback:
        """Put a new callback first among the trainer's callbacks, so that the reporters Trainer
        adds before any user's callback (TensorBoard, W&B, ...) see its figures in the logs."""
        callback = cls(**options)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if logs is None or self.latest is None or "loss" not in logs:
            return
        logs.update(self.latest.metrics())
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(self.latest.metrics())  # Trainer copied the logs before us

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()


def recipe_from_args(
    args: Any, *, train_size: int | None = None
) -> tuple[LrSchedule | None, float | None, list[str]]:
    """A `TrainingArguments`' recipe for a Workload: (schedule, clip_grad_norm, what was unread).

    The schedule is the Trainer's own scheduler (`lr_scheduler_type`, its kwargs, the warm-up),
    built with Hugging Face's get_scheduler and read by its rates (integrations.scheduler), its
    lengths in examples at the arguments' global batch. Its horizon is `max_steps`, or
    `num_train_epochs` over `train_size` examples. `max_grad_norm` is the clip (Hugging Face's
    default, 1.0, included: 0 or None is none).

        schedule, clip, unread = recipe_from_args(args, train_size=len(train_dataset))
        Workload(..., schedule=schedule, clip_grad_norm=clip)
    """
    import torch
    from transformers import get_scheduler

    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    clip = float(args.max_grad_norm) if args.max_grad_norm and args.max_grad_norm > 0 else None
    total = args.max_steps if args.max_steps and args.max_steps > 0 else None
    if total is None and train_size is not None:  # as the Trainer counts an epoch's updates
        per_process = args.per_device_train_batch_size * args.world_size
        batches = train_size // per_process if args.dataloader_drop_last else -(-train_size // per_process)
        updates = max(1, -(-batches // args.gradient_accumulation_steps))
        total = math.ceil(args.num_train_epochs * updates)
    if total is None:
        return None, clip, ["the schedule's horizon (no max_steps, and no train_size for num_train_epochs)"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(total),
        num_training_steps=total,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
    )
    schedule, why = schedule_from_factors(sample_factors(scheduler, total + max(10, total // 10)), batch)
    return schedule, clip, [] if why is None else [f"lr_scheduler_type={args.lr_scheduler_type!r}: {why}"]
