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

from typing import Any

import lightning.pytorch as pl  # the [lightning] extra

from ..monitor import NoiseMonitor, NoiseReading


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
