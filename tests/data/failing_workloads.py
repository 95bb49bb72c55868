"""Workloads that fail or stall on purpose, for the tests of interrupts and of user-code failures.
They are loaded by file path, in the CLI's own process or in the memory probe's children."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from batchlab import Target, Workload

STUBBORN_MARKER = "stubborn-forward-began"
STEP_SECONDS = 0.05  # each forward pass sleeps this long: a trial or a run lasts seconds, not ms


def _workload(name: str, model) -> Workload:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    return Workload(
        name=name,
        model=model,
        train_data=data,
        eval_data=data,
        loss=F.cross_entropy,
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        batch_size=8,
        lr=0.1,
        target=Target(metric="eval_loss", value=0.01),
    )


class Slow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(STEP_SECONDS)
        return self.linear(x)


class Stubborn(Slow):
    """Cleans up slowly after an interrupt (30 s): a second Ctrl-C is what ends it. Each forward
    first touches STUBBORN_MARKER in the working folder, so that a test signals it mid-step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Path(STUBBORN_MARKER).touch()
        try:
            time.sleep(1.0)  # nearly all of a step: the first signal lands here
        except BaseException:
            time.sleep(30)
            raise
        return self.linear(x)


class Raises(Slow):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("a bug in the user's forward")  # RAISES_LINE


def slow() -> Workload:
    return _workload("slow", Slow)


def stubborn() -> Workload:
    return _workload("stubborn", Stubborn)


def raises() -> Workload:
    return _workload("raises", Raises)
