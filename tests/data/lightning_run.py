"""A Lightning run with batchlab's NoiseScaleCallback, as a user's script: `python lightning_run.py
STRATEGY DEVICES ACCUMULATE STEPS`. Prints one JSON line (on rank 0): the callback's last reading
and what the Trainer's logger holds. Run as a script, since Lightning's DDP re-executes it."""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from batchlab import Target, Workload, load_workload
from batchlab.integrations import lightning as integration
from batchlab.integrations.lightning import NoiseScaleCallback
from batchlab.train.model import fresh_model

MICRO = 16


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.workload = load_workload("digits-mlp")
        self.net = fresh_model(self.workload, 0, torch.device("cpu"))
        self.batch_size = MICRO

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return self.workload.loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.workload.optimizer(self.net.parameters(), self.workload.lr)

    def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return DataLoader(self.workload.train_data, batch_size=self.batch_size, shuffle=True)


class Digits(pl.LightningDataModule):
    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        digits = load_workload("digits-mlp")
        self.train, self.val = digits.train_data, digits.eval_data

    def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return DataLoader(self.val, batch_size=256)


def workload() -> Workload:
    """The same module and data as a batchlab Workload (what `--workload this_file.py:workload` loads)."""
    return integration.workload(Module, Digits(), target=Target(metric="eval_loss", value=0.15))


class ScheduledModule(Module):
    """nanoGPT's recipe as Lightning users write it: a linear warm-up over 5 steps and a cosine to
    a tenth of the peak at step 100, stepped per optimizer step."""

    def configure_optimizers(self) -> dict:  # type: ignore[override, type-arg]
        optimizer = self.workload.optimizer(self.net.parameters(), self.workload.lr)
        sched = torch.optim.lr_scheduler
        warmup = sched.LinearLR(optimizer, start_factor=1e-9, end_factor=1.0, total_iters=5)
        cosine = sched.CosineAnnealingLR(optimizer, T_max=95, eta_min=0.1 * self.workload.lr)
        both = sched.SequentialLR(optimizer, [warmup, cosine], milestones=[5])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": both, "interval": "step"}}


class EpochScheduledModule(Module):
    def configure_optimizers(self) -> tuple:  # type: ignore[override, type-arg]
        optimizer = self.workload.optimizer(self.net.parameters(), self.workload.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)]


def scheduled_workload(module: type = ScheduledModule) -> Workload:
    """The scheduled module, with the Trainer it trains under: 2 accumulation steps, a clip."""
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=100, accumulate_grad_batches=2, gradient_clip_val=0.5, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    return integration.workload(
        module, Digits(), target=Target(metric="eval_loss", value=0.15), trainer=trainer
    )


def epoch_scheduled_workload() -> Workload:
    return scheduled_workload(EpochScheduledModule)


def main(strategy: str, devices: int, accumulate: int, steps: int) -> None:
    pl.seed_everything(0, verbose=False)
    callback = NoiseScaleCallback()
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=steps, callbacks=[callback],
        accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(Module())
    if trainer.global_rank == 0:
        reading = callback.latest
        logged = {k: float(v) for k, v in trainer.logged_metrics.items()}
        print(json.dumps({"reading": None if reading is None else reading.to_dict(), "logged": logged}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
