"""Workloads whose training data is a stream (an IterableDataset), loaded by file path so that the
memory probe's child processes can build them too."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from batchlab import Target, Workload

VOCAB, WINDOW = 12, 6


def tokens(n: int) -> torch.Tensor:
    """A token sequence with structure to learn: mostly the next of a cycle, sometimes a jump."""
    g = torch.Generator().manual_seed(0)
    jumps = torch.randint(0, VOCAB, (n,), generator=g)
    keep = torch.rand(n, generator=g) < 0.8
    out = torch.empty(n, dtype=torch.long)
    out[0] = 0
    for i in range(1, n):
        out[i] = (out[i - 1] + 1) % VOCAB if keep[i] else jumps[i]
    return out


class TokenWindows(IterableDataset):
    """Windows of WINDOW tokens and their next tokens, read off the sequence in order, as a
    generator of token windows does; `passes` counts the times it was read from its start."""

    def __init__(self, count: int = 100) -> None:
        self.stream = tokens(count + WINDOW)
        self.count = count
        self.passes = 0

    def windows(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        s = self.stream
        return [(s[i : i + WINDOW], s[i + 1 : i + WINDOW + 1]) for i in range(self.count)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.passes += 1
        yield from self.windows()


class ShuffledWindows(TokenWindows):
    """A stream with a seeded shuffle buffer of its own, in the manner of Hugging Face's
    `IterableDataset.shuffle(seed=..., buffer_size=...)` (which returns the shuffled stream)."""

    def __init__(self, count: int = 100, seed: int | None = None, buffer_size: int = 16) -> None:
        super().__init__(count)
        self.seed, self.buffer_size, self.epoch = seed, buffer_size, 0

    def shuffle(self, seed: int, buffer_size: int = 16) -> ShuffledWindows:
        return ShuffledWindows(self.count, seed, buffer_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.seed is None:
            yield from super().__iter__()
            return
        rng, buffer = random.Random(self.seed + self.epoch), []
        for window in self.windows():
            buffer.append(window)
            if len(buffer) == self.buffer_size:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(idx)))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def _lm(name: str, data: IterableDataset) -> Workload:
    return Workload(
        name=name,
        model=TinyLM,
        train_data=data,
        eval_data=None,
        loss=lm_loss,
        optimizer=lambda params, lr: torch.optim.Adam(params, lr=lr),
        batch_size=16,
        lr=0.02,
        target=Target(metric="train_loss", value=1.2),
        tokens_per_example=WINDOW,
    )


def windows() -> Workload:
    return _lm("token-windows", TokenWindows())


def shuffled_windows() -> Workload:
    return _lm("shuffled-token-windows", ShuffledWindows())


class Vectors(IterableDataset):
    """The memory tests' 1000 vectors (memory_workloads._data), as a stream."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(1000, 8, generator=g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for row in self.x:
            yield row, (row[0] > 0).long()


def fake_oom_stream() -> Workload:
    """memory_workloads.fake_oom (CUDA's out-of-memory error above batch 300) over the stream."""
    from batchlab.workloads import load_workload

    fake_oom = load_workload(f"{Path(__file__).with_name('memory_workloads.py')}:fake_oom")
    return Workload(
        name="fake-oom-stream",
        model=fake_oom.model,
        train_data=Vectors(),
        eval_data=TensorDataset(torch.randn(64, 8), torch.zeros(64, dtype=torch.long)),
        loss=F.cross_entropy,
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        batch_size=8,
        lr=0.1,
        target=Target(metric="eval_loss", value=0.3),
    )
