"""Minibatches straight from in-memory tensors, or read ahead from disk for tasks too large for memory.

Most tasks fit in memory, and for them a ``DataLoader`` (per-example indexing, collation, worker processes) only
adds per-step cost, so batches are gathered from the tensors directly. A task whose examples stay on disk
(research.data.stream) is read batch by batch by DataLoader workers instead, in the very same order. The order
comes from this iterable's own seeded generator, so it depends on the seed and the epoch alone, never on global
RNG state that evaluation or other code might touch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from research.data.inputs import Inputs, count, take
from research.data.stream import LAZY, prefetched


class TensorBatches:
    """Yields tuples of aligned slices of ``tensors`` (e.g. inputs, labels, head ids), reshuffled every pass.
    Inputs may be a mapping of tensors (a tokenizer's output); each batch then holds the same keys."""

    def __init__(
        self, *tensors: Inputs, batch_size: int, shuffle: bool = True, seed: int = 0, workers: int = 2
    ) -> None:
        if len({count(t) for t in tensors}) != 1:
            raise ValueError("all tensors must have the same length")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0  # advanced on every full pass
        self._skip = 0  # batches to leave out at the start of the next pass (resuming mid-epoch)
        self.on_disk = any(isinstance(t, LAZY) for t in tensors)  # examples read from disk (research.data.stream)
        self.workers = workers  # DataLoader worker processes that read them ahead

    def resume_at(self, batches_done: int) -> None:
        """Continue as if ``batches_done`` batches had already been drawn: the pass they end in, from the batch
        after the last one drawn, in the same seeded order."""
        self.epoch, self._skip = divmod(batches_done, len(self))

    def __len__(self) -> int:
        return len(self._starts())

    def _starts(self) -> list[int]:
        # A last batch of a single example is folded into the one before: BatchNorm cannot train on one example.
        n = count(self.tensors[0])
        starts = list(range(0, n, self.batch_size))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        return starts

    def __iter__(self) -> Iterator[tuple[Inputs, ...]]:
        tensors = self.tensors
        n = count(tensors[0])
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        self.epoch += 1
        starts = self._starts()
        ends = [*starts[1:], n]
        skip, self._skip = self._skip, 0
        batches = [order[start:end] for start, end in list(zip(starts, ends, strict=True))[skip:]]
        if self.on_disk:  # read and encoded ahead by worker processes, in this same order
            yield from prefetched(tensors, [b.numpy() for b in batches], self.workers)
            return
        for index in batches:  # the same examples as slicing the permuted tensors, gathered batch by batch
            yield tuple(take(t, index) for t in tensors)
