"""Minibatches straight from in-memory tensors.

The data sets here fit in memory, so a ``DataLoader`` (per-example indexing, collation, worker processes)
only adds per-step cost. This iterable shuffles with its own seeded generator, so the order depends on the
seed and the epoch alone, never on global RNG state that evaluation or other code might touch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from research.data.inputs import Inputs, count, take


class TensorBatches:
    """Yields tuples of aligned slices of ``tensors`` (e.g. inputs, labels, head ids), reshuffled every pass.
    Inputs may be a mapping of tensors (a tokenizer's output); each batch then holds the same keys."""

    def __init__(self, *tensors: Inputs, batch_size: int, shuffle: bool = True, seed: int = 0) -> None:
        if len({count(t) for t in tensors}) != 1:
            raise ValueError("all tensors must have the same length")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0  # advanced on every full pass
        self._skip = 0  # batches to leave out at the start of the next pass (resuming mid-epoch)

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
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(count(tensors[0]), generator=generator)
            tensors = tuple(take(t, order) for t in tensors)
        self.epoch += 1
        starts = self._starts()
        ends = [*starts[1:], count(tensors[0])]
        skip, self._skip = self._skip, 0
        for start, end in list(zip(starts, ends, strict=True))[skip:]:
            yield tuple(take(t, slice(start, end)) for t in tensors)
