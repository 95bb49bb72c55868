"""Batches from a stream: an `IterableDataset` (Hugging Face streaming datasets, webdataset shards,
a generator of token windows), read in its order and never indexed.

A pass over the stream is an epoch: `set_epoch(epoch)` is called before each where the dataset
offers it (Hugging Face's streaming datasets reshuffle their buffer by it). A dataset with a seeded
shuffle of its own (`shuffle(seed=...)`, as Hugging Face's) is shuffled with the run's seed, as a
map-style dataset's order is drawn from it; any other stream reads alike under every seed, and the
run says so once (`stream_order`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, default_collate

from batchlab.core.data import Batch, DeviceData, Position, to_device
from batchlab.errors import WorkloadError


def is_stream(dataset: object) -> bool:
    return isinstance(dataset, IterableDataset)


def stream_order(dataset: object) -> str:
    """How a run's seed orders the stream, in words, for the run's notes."""
    if _seeded_shuffle(dataset) is not None:
        return "the stream is shuffled by its own buffer, seeded with the run's seed"
    return "the stream has no seeded shuffle: every seed reads it in its own order"


def _seeded_shuffle(dataset: object) -> Callable[..., Any] | None:
    shuffle = getattr(dataset, "shuffle", None)
    if not callable(shuffle):
        return None
    try:
        takes_seed = "seed" in inspect.signature(shuffle).parameters
    except (TypeError, ValueError):
        return None
    return shuffle if takes_seed else None


def _examples(dataset: Any, epoch: int) -> Iterator[Any]:
    """One pass over the stream's examples, one at a time, in the main process."""
    if callable(getattr(dataset, "set_epoch", None)):
        dataset.set_epoch(epoch)
    return iter(DataLoader(dataset, batch_size=None))


def _pair(examples: list[Any]) -> tuple[Any, Any]:
    batch = default_collate(examples)
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise WorkloadError("the stream's examples must be (input, target) pairs")
    return batch[0], batch[1]


class StreamData:
    """A stream placed for training on one device; DeviceData's interface where a stream has it."""

    size: int | None = None  # unknown: a stream has no length

    def __init__(self, dataset: Any, device: torch.device) -> None:
        self.dataset = dataset
        self.device = device

    def shuffled(
        self, batch_size: int, generator: torch.Generator, *, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[Batch]:
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
        """Endless (position, batch) pairs, as DeviceData.epochs: each pass over the stream is an
        epoch whose last partial batch is dropped. `generator`'s seed seeds the stream's own
        shuffle where it has one. `start` continues from a position by reading the pass up to it
        again (the stream cannot seek)."""
        rank, world = shard
        shuffle = _seeded_shuffle(self.dataset)
        dataset = self.dataset
        if shuffle is not None:  # Hugging Face's returns the shuffled stream; another may shuffle itself
            dataset = shuffle(seed=generator.initial_seed()) or self.dataset
        pos = start or Position()
        epoch, offset, examples = pos.epoch, pos.offset, pos.examples
        while True:
            items = _examples(dataset, epoch)
            for _ in itertools.islice(items, offset):
                pass
            drawn = 0
            while len(chunk := list(itertools.islice(items, size := batch_size_of(epoch, examples)))) == size:
                offset, examples, drawn = offset + size, examples + size, drawn + 1
                if world > 1:
                    chunk = [chunk[i] for i in torch.arange(size).chunk(world)[rank].tolist()]
                x, y = _pair(chunk)
                yield (
                    Position(epoch, offset, examples),
                    (to_device(x, self.device), to_device(y, self.device)),
                )
            if not drawn and offset == 0:
                raise WorkloadError(f"the stream ended before one batch of {size} examples")
            epoch, offset = epoch + 1, 0

    def sample(self, size: int, seed: int = 0) -> DeviceData:
        """The stream's first `size` examples (all of them when it is shorter), in its own order
        with no shuffle: the same examples for every run, whatever its seed."""
        del seed  # a stream cannot be sampled at random; its first examples stand in
        examples = list(itertools.islice(_examples(self.dataset, 0), size))
        if not examples:
            raise WorkloadError("the stream holds no examples")
        x, y = _pair(examples)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return DeviceData(TensorDataset(x, y), self.device)
        return DeviceData(_Listed(examples), self.device)

    def first(self, count: int) -> tuple[Any, Any]:
        """One batch of `count` examples from the stream's start, read again from the start as
        often as it takes (the memory probe's batch)."""
        examples: list[Any] = []
        epoch = 0
        while len(examples) < count:
            before = len(examples)
            examples += itertools.islice(_examples(self.dataset, epoch), count - len(examples))
            if len(examples) == before:
                raise WorkloadError("the stream holds no examples")
            epoch += 1
        x, y = _pair(examples)
        return to_device(x, self.device), to_device(y, self.device)

    def in_order(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """One pass in the stream's order, in chunks of `batch_size`, over the first `limit`."""
        items = itertools.islice(_examples(self.dataset, 0), limit)
        while chunk := list(itertools.islice(items, batch_size)):
            x, y = _pair(chunk)
            yield to_device(x, self.device), to_device(y, self.device)


class _Listed(torch.utils.data.Dataset[Any]):
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def placed(dataset: Any, device: torch.device) -> DeviceData | StreamData:
    """A dataset placed on `device`: indexed when it is map-style, read in order when a stream."""
    return StreamData(dataset, device) if is_stream(dataset) else DeviceData(dataset, device)
