"""Batches from a map-style dataset: a fast path for tensor datasets, a DataLoader otherwise.

The fast path keeps the whole dataset on the device and indexes it with a seeded permutation, so
that a tiny model is timed on its own work, not on Python collation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

Batch = tuple[Any, Any]


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def batch_len(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.shape[0])
    if isinstance(value, (list, tuple)):
        return batch_len(value[0])
    if isinstance(value, dict):
        return batch_len(next(iter(value.values())))
    raise TypeError(f"cannot tell the batch size of a {type(value).__name__}")


def _tensor_pair(dataset: Dataset[Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    return None


@dataclass(frozen=True)
class Position:
    """Where a run stands in its data: the epoch, the examples of its permutation drawn so far, the
    examples drawn in all, and the generator's state before the epoch's permutation was drawn."""

    epoch: int = 0
    offset: int = 0
    examples: int = 0
    rng_state: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "examples": self.examples,
            "rng_state": self.rng_state,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Position:
        return cls(data["epoch"], data["offset"], data["examples"], data["rng_state"])


def epoch_spans(
    batch_size_of: Callable[[int, int], int], epoch: int, examples: int, dataset_size: int, *, offset: int = 0
) -> list[tuple[int, int]]:
    """(offset, size) of each batch left in `epoch` from `offset`, `examples` having been drawn
    before it; each size is `batch_size_of(epoch, examples before the batch)`, and the epoch ends when
    the next batch would not fit (the last partial batch dropped)."""
    spans = []
    while offset + (size := batch_size_of(epoch, examples)) <= dataset_size:
        spans.append((offset, size))
        offset += size
        examples += size
    return spans


class DeviceData:
    """A dataset placed for training on one device: shuffled batches and in-order passes."""

    def __init__(self, dataset: Dataset[Any], device: torch.device) -> None:
        self.dataset = dataset
        self.device = device
        self.size = len(dataset)  # type: ignore[arg-type]
        pair = _tensor_pair(dataset)
        self.tensors = None if pair is None else (pair[0].to(device), pair[1].to(device))

    def shuffled(
        self, batch_size: int, generator: torch.Generator, *, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[Batch]:
        """Endless batches: each epoch a fresh seeded permutation; the last partial batch dropped."""
        for _, batch in self.epochs(lambda _epoch, _examples: batch_size, generator, shard=shard):
            yield batch

    def epochs(
        self,
        batch_size_of: Callable[[int, int], int],
        generator: torch.Generator,
        *,
        shard: tuple[int, int] = (0, 1),
        start: Position | None = None,
    ) -> Iterator[tuple[Position, Batch]]:
        """Endless (position, batch) pairs, the position being where the data stands after the batch.
        Each batch's size is `batch_size_of(epoch, examples drawn before it)`, so a schedule may change
        it at an epoch or in the middle of one; an epoch ends when the next batch would not fit.
        With `shard=(rank, world)`, every rank draws the same global batch and keeps its contiguous
        1/world part, so the ranks' mean gradients average to the global batch's.
        `start`, a position yielded before, continues from there: the same permutation, the same
        offset in it, even at another batch size (a branch of a run)."""
        rank, world = shard
        pos = start or Position()
        if pos.rng_state is not None:
            generator.set_state(pos.rng_state)
        epoch, offset, examples = pos.epoch, pos.offset, pos.examples
        while True:
            state = generator.get_state()  # what draws this epoch's permutation, for a checkpoint
            # One permutation per epoch on both paths, so a generic Dataset sees the same order.
            order = torch.randperm(self.size, generator=generator)
            base = examples - offset  # the count of examples at this epoch's offset 0
            spans = epoch_spans(batch_size_of, epoch, examples, self.size, offset=offset)
            examples += sum(b for _, b in spans)
            if self.tensors is None:
                batches = [order[s : s + b].chunk(world)[rank].tolist() for s, b in spans]
                loader = DataLoader(self.dataset, batch_sampler=batches)
                for (s, b), (x, y) in zip(spans, loader, strict=True):
                    at = Position(epoch, s + b, base + s + b, state)
                    yield at, (to_device(x, self.device), to_device(y, self.device))
            else:
                order = order.to(self.device)
                x_all, y_all = self.tensors
                for s, b in spans:
                    idx = order[s : s + b]
                    if world > 1:  # (a chunk costs microseconds: only when there are ranks)
                        idx = idx.chunk(world)[rank]
                    yield Position(epoch, s + b, base + s + b, state), (x_all[idx], y_all[idx])
            epoch += 1
            offset = 0

    def sample(self, size: int, seed: int = 0) -> DeviceData:
        """A fixed random subset of `size` examples (all of them when the set is smaller): the same
        examples for every run with the same `seed`, whatever the run's own seed, and in the order
        of the dataset. Samples of one seed are nested: a smaller one is a subset of a larger one.
        A random subset, not the first `size`: a dataset sorted by class would bias a prefix."""
        if size >= self.size:
            return self
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed))[:size]
        idx = order.sort().values
        if self.tensors is not None:
            x_all, y_all = self.tensors
            subset = TensorDataset(x_all[idx.to(x_all.device)], y_all[idx.to(y_all.device)])
            return DeviceData(subset, self.device)
        return DeviceData(torch.utils.data.Subset(self.dataset, idx.tolist()), self.device)

    def in_order(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """One pass in order (for evaluation), in chunks of `batch_size`, over the first `limit`."""
        size = self.size if limit is None else min(limit, self.size)
        if self.tensors is not None:
            x_all, y_all = self.tensors
            for start in range(0, size, batch_size):
                stop = min(start + batch_size, size)
                yield x_all[start:stop], y_all[start:stop]
            return
        subset: Dataset[Any] = self.dataset
        if size < self.size:
            subset = torch.utils.data.Subset(self.dataset, range(size))
        for x, y in DataLoader(subset, batch_size=batch_size, shuffle=False):
            yield to_device(x, self.device), to_device(y, self.device)
