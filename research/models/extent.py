"""Which part of each parameter existed at an earlier point: in the pretrained model, or before the current task.

Fine-tuning adds parameters the pretrained model never had, in two shapes. With per-task heads a new task gets
a whole new head. With a shared head (class-incremental learning) the one head grows: outputs for the new
classes are appended as new rows of its weight and bias, while the rows of the classes it already knew keep
their values. Every method that anchors, weighs or interpolates "what existed before" must treat both shapes
the same way, so both are described by one map, an *extent*: parameter name → how many of its leading rows
(dim 0) existed at that point. A parameter that is absent did not exist at all; a parameter whose extent is its
full size existed entirely.

``FinetuneContext.pretrained_rows`` is the extent of the pretrained model, ``FinetuneContext.earlier_rows`` that
of the model just before the current fine-tuning task (its growth excluded). These helpers cut, pad and split
tensors by an extent, so that no method slices rows by hand.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

Extent = dict[str, int]


def extent_of(model: nn.Module) -> Extent:
    """Every parameter at its full size: the extent of the model as it is now."""
    return {name: rows_of(p) for name, p in model.named_parameters()}


def rows_of(tensor: Tensor) -> int:
    """A tensor's rows (dim 0); a 0-dim tensor counts as one row."""
    return tensor.shape[0] if tensor.dim() else 1


def earlier_part(tensor: Tensor, rows: int) -> Tensor:
    """The rows that existed (a 0-dim tensor counts as one row)."""
    if tensor.dim() == 0:
        return tensor if rows else tensor.reshape(1)[:0]
    return tensor[:rows]


def grown_part(tensor: Tensor, rows: int) -> Tensor:
    """The rows added since (empty when nothing grew; all of it when nothing existed)."""
    if tensor.dim() == 0:
        return tensor.reshape(1)[:0] if rows else tensor
    return tensor[rows:]


def values_at(model: nn.Module, extent: Mapping[str, int]) -> dict[str, Tensor]:
    """Detached values of every parameter that existed, cut to the rows that existed: the model as it stood at
    that point (a shared head with only the outputs it had then). No copy is made; use it through
    ``torch.func.functional_call``, which runs the model with these tensors in place of its own."""
    return {
        name: earlier_part(p.detach(), extent[name]) for name, p in model.named_parameters() if extent.get(name, 0) > 0
    }


def pad_rows(tensor: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """``tensor`` extended with zero rows to ``shape`` (rows grown since it was computed get 0)."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    if tensor.dim() == 0 or tuple(tensor.shape[1:]) != tuple(shape[1:]) or tensor.shape[0] > shape[0]:
        raise ValueError(f"cannot pad a tensor of shape {tuple(tensor.shape)} to {tuple(shape)}")
    padded = tensor.new_zeros(shape)
    padded[: tensor.shape[0]] = tensor
    return padded


def has_grown(tensor: Tensor, rows: int) -> bool:
    return tensor.dim() > 0 and tensor.shape[0] > rows
