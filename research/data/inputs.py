"""Model inputs of a batch: one tensor (features, images, signals) or a mapping of tensors (a tokenizer's
``input_ids``, ``attention_mask``, …), every value with the examples along dim 0.

Every piece of code that keeps, mixes, moves or slices inputs (batches, replay buffers, A-GEM's memory, joint
training, Fisher and MAS per-example gradients, LwF's teacher, the evaluator) goes through these few helpers,
so that it works on both shapes without knowing which it has. A split too large for memory holds examples on
disk instead (research.data.stream); ``count`` and ``take`` work on it too, and what ``take`` returns is
ordinary tensors of just the examples taken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

Inputs = Tensor | dict[str, Tensor]


def is_mapping(x: Inputs) -> bool:
    return isinstance(x, Mapping)


def apply(x: Inputs, fn: Callable[[Tensor], Tensor]) -> Inputs:
    """``fn`` applied to the tensor, or to every tensor of the mapping."""
    if isinstance(x, Mapping):
        return {key: fn(value) for key, value in x.items()}
    return fn(x)


def _lazy(x: object) -> bool:
    from research.data.stream import LAZY

    return isinstance(x, LAZY)


def count(x: Inputs) -> int:
    """Number of examples."""
    if _lazy(x):
        return len(x)  # type: ignore[arg-type]
    if isinstance(x, Mapping):
        return len(next(iter(x.values())))
    return len(x)


def take(x: Inputs, index: Tensor | slice) -> Inputs:
    """The examples at ``index`` (a slice, a boolean mask or integer indices); read from disk if they are there."""
    if _lazy(x):
        if isinstance(index, Tensor) and index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return x.take(index)  # type: ignore[union-attr]
    return apply(x, lambda t: t[index])


def concat(parts: Sequence[Inputs]) -> Inputs:
    """Examples of several batches as one batch (all of one kind and, for mappings, the same keys)."""
    if any(_lazy(p) for p in parts):  # examples on disk stay there: a view of the parts in order
        from research.data.stream import ChainedExamples

        return ChainedExamples(tuple(parts))  # type: ignore[return-value]
    first = parts[0]
    if isinstance(first, Mapping):
        keys = list(first)
        if any(list(p) != keys for p in parts):  # type: ignore[arg-type]
            raise ValueError(f"cannot concatenate inputs with different keys: {[sorted(p) for p in parts]}")
        return {key: torch.cat([p[key] for p in parts]) for key in keys}  # type: ignore[index]
    return torch.cat(list(parts))  # type: ignore[arg-type]


def to_device(x: Inputs, device: torch.device | str, non_blocking: bool = False) -> Inputs:
    """Moved to ``device``; examples on disk stay there (what ``take`` reads of them is moved when used)."""
    if _lazy(x):
        return x
    return apply(x, lambda t: t.to(device, non_blocking=non_blocking))


def detach(x: Inputs) -> Inputs:
    return apply(x, Tensor.detach)


def example_shape(x: Inputs) -> tuple:
    """The shape of one example (keys and shapes for a mapping): whether two batches can be concatenated."""
    if isinstance(x, Mapping):
        return tuple((key, tuple(value.shape[1:])) for key, value in x.items())
    return tuple(x.shape[1:])


def unsqueeze(x: Inputs) -> Inputs:
    """One example as a batch of one (inside ``torch.func.vmap``, where each call sees a single example)."""
    return apply(x, lambda t: t.unsqueeze(0))


def compact(x: Inputs) -> Inputs:
    """Token inputs cut after the last position that any example of the batch attends to.

    Text tasks are tokenised once, padded to the model's ``max_length`` so that every batch has one shape (they
    can then be stored, mixed and concatenated like tensors). A batch of short texts would still pay for every
    padding position, so batches are compacted just before the forward pass. For an encoder with an attention
    mask this changes no result: padded positions are masked out of attention and pooling. Plain tensors and
    mappings without an ``attention_mask`` are returned as they are.
    """
    if not isinstance(x, Mapping) or "attention_mask" not in x:
        return x
    mask = x["attention_mask"]
    if mask.dim() != 2 or mask.shape[1] == 0:
        return x
    used = mask.ne(0).any(dim=0)
    length = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    if length == mask.shape[1]:
        return x
    return {
        key: value[:, :length] if value.dim() >= 2 and value.shape[1] == mask.shape[1] else value
        for key, value in x.items()
    }


def flatten(x: Inputs, prefix: str) -> dict[str, Tensor]:
    """Inputs as flat named tensors for a state dict: ``prefix`` for a tensor, ``prefix.key`` for a mapping."""
    if isinstance(x, Mapping):
        return {f"{prefix}.{key}": value for key, value in x.items()}
    return {prefix: x}


def unflatten(state: Mapping[str, Tensor], prefix: str) -> Inputs:
    """The inverse of ``flatten``."""
    if prefix in state:
        return state[prefix]
    keys = {name[len(prefix) + 1 :]: value for name, value in state.items() if name.startswith(f"{prefix}.")}
    if not keys:
        raise KeyError(prefix)
    return keys
