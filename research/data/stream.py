"""Examples read from disk when they are needed, for tasks too large to hold in memory as model inputs.

A task's split normally holds its model inputs in memory (tensors, or a tokenizer's tensors): the fast path, and
the right one for every built-in source. A large image folder or text table would not fit that way (100,000
RGB images of 224×224 are 60 GB as float32; a million tokenised texts of 128 tokens are 3 GB), so when a source's
inputs would exceed ``data.memory_budget_mb`` (or with ``data.stream: always``), its splits hold
``DiskExamples`` instead: which examples they are (file paths, or the raw texts) and how to make model inputs of
them. Anything that takes examples (``research.data.inputs.take``) gets ordinary tensors of just those examples,
so batches, evaluation sets, replay buffers and per-example gradients work unchanged; training batches are
prepared ahead by DataLoader worker processes (``data.workers``), in the seeded order of the in-memory path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

Loader = Callable[[np.ndarray], np.ndarray]  # references (paths, texts) -> raw examples (pixels, texts)
Encoder = Callable[[np.ndarray], object]  # raw examples -> model inputs (a tensor or a mapping of tensors)


@dataclass(frozen=True)
class DiskExamples:
    """Examples of one split, made into model inputs on demand: ``encode(load(refs[i]))``."""

    refs: np.ndarray  # one reference per example (a file path, or the text itself)
    load: Loader
    encode: Encoder

    def __len__(self) -> int:
        return len(self.refs)

    def take(self, index: Tensor | slice | np.ndarray):
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        return self.encode(self.load(self.refs[index]))

    def subset(self, index: np.ndarray) -> DiskExamples:
        """The same examples' references, still unread."""
        return DiskExamples(self.refs[index], self.load, self.encode)


@dataclass(frozen=True)
class ChainedExamples:
    """Several splits seen as one (in order), at least one of them on disk; taking examples reads only those."""

    parts: tuple

    def __len__(self) -> int:
        from research.data.inputs import count

        return sum(count(p) for p in self.parts)

    def take(self, index: Tensor | slice | np.ndarray):
        from research.data.inputs import concat, count, take

        positions = np.arange(len(self))[index.cpu().numpy() if isinstance(index, Tensor) else index]
        bounds = np.cumsum([0, *[count(p) for p in self.parts]])
        pieces, order = [], []
        for i, part in enumerate(self.parts):
            inside = np.flatnonzero((positions >= bounds[i]) & (positions < bounds[i + 1]))
            if len(inside):
                pieces.append(take(part, torch.from_numpy(positions[inside] - bounds[i])))
                order.append(inside)
        gathered = concat(pieces)
        back = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        return take(gathered, back)  # the examples in the order they were asked for


LAZY = (DiskExamples, ChainedExamples)


class _Batches(Dataset):
    """Item i is batch i of a fixed list of index batches: one worker prepares a whole batch."""

    def __init__(self, tensors: Sequence, batches: list[np.ndarray]) -> None:
        self.tensors, self.batches = tensors, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple:
        from research.data.inputs import take

        index = torch.from_numpy(self.batches[i])
        return tuple(take(t, index) for t in self.tensors)


def prefetched(tensors: Sequence, batches: list[np.ndarray], workers: int) -> Iterator[tuple]:
    """The batches in order, read and encoded ahead by ``workers`` processes (none: in this process)."""
    if workers:  # a tokenizer used before the workers fork would otherwise warn (and turn its threads off) in each
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loader = DataLoader(
        _Batches(tensors, batches),
        batch_size=None,  # items are whole batches already
        shuffle=False,  # the order is the seeded one given
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
        # The workers' base seed is drawn from this generator, not from the global RNG, which would shift every
        # later random draw of training (dropout masks) away from the in-memory path's.
        generator=torch.Generator().manual_seed(0),
    )
    yield from loader
