"""Workload factories as a user would write them, for the loader's tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from batchlab import Target, Workload


def tiny() -> Workload:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x.sum(dim=1) > 0).long()
    return Workload(
        name="tiny <b>&</b>",
        model=lambda: nn.Linear(4, 2),
        train_data=TensorDataset(x, y),
        eval_data=TensorDataset(x, y),
        loss=F.cross_entropy,
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        batch_size=8,
        lr=0.1,
        target=Target(metric="eval_loss", value=0.3),
    )


def not_a_workload() -> dict[str, int]:
    return {"batch_size": 32}


NOT_CALLABLE = 3


def printing() -> Workload:
    """linreg, with code that prints as people's code does: the dataset when it is built, the model's
    size from its constructor (nanoGPT's 'number of parameters'), and the loss on its first call."""
    import dataclasses

    from batchlab.workloads import linreg

    base = linreg.workload()
    print("PRINTED dataset: built")
    said: list[int] = []

    def model() -> nn.Module:
        net = base.model()
        print(f"PRINTED number of parameters: {sum(p.numel() for p in net.parameters())}")
        return net

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not said:
            said.append(1)
            print("PRINTED loss: first call")
        return base.loss(out, y)

    return dataclasses.replace(base, name="printing", model=model, loss=loss)
