"""Pretraining examples kept by a method: the replay buffer, A-GEM's episodic memory, DER's buffer.

All of them are filled the same way, from the pretraining tasks' training data with the run's seed, so a
memory and a replay buffer of the same size and selection rule hold the same examples; in a sequence of
fine-tuning tasks each learned task joins them the same way too (``absorb_learned_task``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from research.data.inputs import Inputs, compact, concat, flatten, take, to_device, unflatten
from research.data.tasks import Task
from research.methods.base import FinetuneContext
from research.models.multihead import MultiHeadNet


@dataclass
class PretrainMemory:
    """Pretraining examples kept for a method (A-GEM's episodic memory, DER's buffer): inputs, labels in head
    coordinates, and the index of each example's head in ``heads``."""

    heads: list[str]
    x: Inputs
    y: Tensor
    head: Tensor

    @classmethod
    def fill(cls, ctx: FinetuneContext, size: int, selection: Literal["reservoir", "class_balanced"]) -> PretrainMemory:
        """Chosen from the pretraining tasks' training data exactly as ``replay`` fills its buffer (same seed,
        same selection rule), so a memory and a replay buffer of the same size hold the same examples."""
        pools = [(t.head, *t.splits["train"]) for t in ctx.tasks.pretrain]
        x = concat([x for _, x, _ in pools])
        y = torch.cat([y for _, _, y in pools])
        head_ids = torch.cat([torch.full((len(yy),), i) for i, (_, _, yy) in enumerate(pools)])
        generator = torch.Generator().manual_seed(ctx.seed)
        if selection == "reservoir":
            chosen = reservoir_indices(len(y), size, generator)
        else:
            chosen = class_balanced_indices(head_ids * (int(y.max()) + 1) + y, size, generator)
        return cls(
            [h for h, _, _ in pools],
            to_device(take(x, chosen), ctx.device),
            y[chosen].to(ctx.device),
            head_ids[chosen].to(ctx.device),
        )

    def absorb(
        self,
        task: Task,
        size: int,
        selection: Literal["reservoir", "class_balanced"],
        seen: int,
        generator: torch.Generator,
    ) -> PretrainMemory:
        """The memory after a task was learned, built from the memory and that task's training data only (the
        continual-learning rule: earlier data survives only through the memory). ``reservoir`` continues
        Algorithm R over the stream (``seen`` examples streamed so far), so every example ever streamed is kept
        with equal probability; ``class_balanced`` rebalances over every class seen, shrinking old classes."""
        return self.absorb_with_sources(task, size, selection, seen, generator)[0]

    def absorb_with_sources(
        self,
        task: Task,
        size: int,
        selection: Literal["reservoir", "class_balanced"],
        seen: int,
        generator: torch.Generator,
    ) -> tuple[PretrainMemory, Tensor]:
        """``absorb``, and where each slot of the new memory came from: its position in the pool of the old
        memory's examples (``0 … len(self) − 1``) followed by the task's training examples (``len(self) + i``
        for the task's example ``i``). A method that stores something beside each example (DER's logits)
        carries it along for the old slots and computes it for the new ones."""
        x_new, y_new = to_device(task.splits["train"][0], self.y.device), task.splits["train"][1].to(self.y.device)
        heads = [*self.heads, task.head]
        head_new = torch.full((len(y_new),), len(self.heads), device=self.y.device)
        # The memory and the task's data as one pool: memory examples first, then the task's.
        x, y, head = concat([self.x, x_new]), torch.cat([self.y, y_new]), torch.cat([self.head, head_new])
        if selection == "class_balanced":
            chosen = class_balanced_indices((head * (int(y.max()) + 1) + y).cpu(), size, generator)
            return PretrainMemory(heads, to_device(take(x, chosen), y.device), y[chosen], head[chosen]), chosen
        slots = list(range(len(self.y)))  # positions in the pool of what each memory slot holds
        for i in torch.randperm(len(y_new), generator=generator).tolist():
            seen += 1
            if len(slots) < size:
                slots.append(len(self.y) + i)
                continue
            j = int(torch.randint(0, seen, (1,), generator=generator))
            if j < size:
                slots[j] = len(self.y) + i
        chosen = torch.tensor(slots, dtype=torch.long, device=y.device)
        return PretrainMemory(heads, to_device(take(x, chosen), y.device), y[chosen], head[chosen]), chosen

    def __len__(self) -> int:
        return len(self.y)

    def draw(self, count: int, generator: torch.Generator) -> Tensor:
        """``count`` indices uniformly without replacement; the whole memory (and no draw) when it holds fewer."""
        if count >= len(self):
            return torch.arange(len(self), device=self.y.device)
        return torch.randperm(len(self), generator=generator)[:count].to(self.y.device)

    def logits(self, model: MultiHeadNet, idx: Tensor) -> list[tuple[int, Tensor, Tensor]]:
        """``(head index, positions in idx, logits)`` per head present, each example through its own task's
        head. One backbone pass over all examples, so BatchNorm sees them as one batch (as the module does)."""
        features = model.features(compact(take(self.x, idx)))
        head = self.head[idx]
        if len(self.heads) == 1:
            return [(0, torch.arange(len(idx), device=idx.device), model.heads[self.heads[0]](features))]
        groups = []
        for i, name in enumerate(self.heads):
            positions = torch.nonzero(head == i).flatten()
            if len(positions):
                groups.append((i, positions, model.heads[name](features[positions])))
        return groups

    def state_dict(self, prefix: str) -> dict[str, Tensor]:
        return {**flatten(self.x, f"{prefix}_x"), f"{prefix}_y": self.y, f"{prefix}_head": self.head}

    @classmethod
    def from_state(cls, heads: list[str], state: dict[str, Tensor], prefix: str) -> PretrainMemory:
        return cls(heads, unflatten(state, f"{prefix}_x"), state[f"{prefix}_y"], state[f"{prefix}_head"])


def absorb_learned_task(
    memory: PretrainMemory, ctx: FinetuneContext, size: int, selection: Literal["reservoir", "class_balanced"]
) -> tuple[PretrainMemory, Tensor]:
    """At the start of fine-tuning task k > 0 of a sequence: ``memory`` after task k − 1, the one just learned,
    joined it (``absorb_with_sources``), and where each slot came from. The stream so far is the pretraining
    tasks' and the earlier fine-tuning tasks' training data; the draw is seeded by the run's seed and k as
    ``replay``'s is, so a memory and a replay buffer of the same size and selection hold the same examples
    throughout a sequence."""
    index = ctx.task_index
    assert index > 0, "the first fine-tuning task has no learned task to take in"
    learned = ctx.tasks.finetune[index - 1]
    seen = sum(len(t.splits["train"][1]) for t in ctx.tasks.learned_before(index - 1))
    generator = torch.Generator().manual_seed(ctx.seed + 1000 + index)
    return memory.absorb_with_sources(learned, size, selection, seen, generator)


def reservoir_indices(stream_length: int, capacity: int, generator: torch.Generator) -> Tensor:
    """Algorithm R over the stream in a seeded random order: every example ends up kept with equal probability."""
    order = torch.randperm(stream_length, generator=generator).tolist()
    reservoir = order[:capacity]
    for seen, item in enumerate(order[capacity:], start=capacity):
        j = int(torch.randint(0, seen + 1, (1,), generator=generator))
        if j < capacity:
            reservoir[j] = item
    return torch.tensor(sorted(reservoir), dtype=torch.long)


def class_balanced_indices(labels: Tensor, capacity: int, generator: torch.Generator) -> Tensor:
    """Take examples class by class in turn (each class's order seeded), so counts differ by at most one
    unless a class runs out of examples."""
    per_class = [
        members[torch.randperm(len(members), generator=generator)].tolist()
        for members in (torch.nonzero(labels == c).flatten() for c in torch.unique(labels))
    ]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < capacity and any(depth < len(m) for m in per_class):
        for members in per_class:
            if depth < len(members) and len(chosen) < capacity:
                chosen.append(members[depth])
        depth += 1
    return torch.tensor(sorted(chosen), dtype=torch.long)
