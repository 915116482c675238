"""Weight drift: how far each top-level block of the model has moved from where fine-tuning started."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def block_of(name: str) -> str:
    """``backbone.1.0.weight`` -> ``backbone.1``; ``heads.digits.bias`` -> ``heads.digits``."""
    return ".".join(name.split(".")[:2])


def parameter_snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def extend_snapshot(start: dict[str, Tensor] | None, model: nn.Module) -> dict[str, Tensor]:
    """``start`` with what the model gained since: parameters it lacks and rows a parameter grew (a shared head
    meeting new classes), at their current values; the snapshot of the model when ``start`` is None."""
    if start is None:
        return parameter_snapshot(model)
    extended = dict(start)
    for name, p in model.named_parameters():
        if name not in start:
            extended[name] = p.detach().clone()
        elif p.shape != start[name].shape:
            grown = p.detach().clone()
            grown[: start[name].shape[0]] = start[name]
            extended[name] = grown
    return extended


def parameter_block_names(model: nn.Module) -> dict[str, str]:
    """Each parameter's block: the model's own ``parameter_blocks()`` where it has one, else :func:`block_of`."""
    blocks = model.parameter_blocks() if hasattr(model, "parameter_blocks") else {}
    return {name: blocks.get(name) or block_of(name) for name, _ in model.named_parameters()}


def trained_blocks(model: nn.Module) -> set[str]:
    """The blocks that train now: those with a parameter that requires a gradient (a frozen backbone, or the
    per-task head of a task other than the current one, does not)."""
    names = parameter_block_names(model)
    return {names[name] for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def weight_drift(model: nn.Module, start: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Per block: ``drift_l2`` = ‖θ − θ₀‖₂ over the block's parameters, and ``drift_relative`` = that divided by
    ‖θ₀‖₂ (0 when ‖θ₀‖ is 0)."""
    moved: dict[str, Tensor] = {}
    size: dict[str, Tensor] = {}
    blocks = parameter_block_names(model)
    for name, p in model.named_parameters():
        block = blocks[name]
        moved[block] = moved.get(block, 0) + (p - start[name]).pow(2).sum()
        size[block] = size.get(block, 0) + start[name].pow(2).sum()
    out = {}
    for block in moved:
        l2, norm = float(moved[block].sqrt()), float(size[block].sqrt())
        out[block] = {"drift_l2": l2, "drift_relative": l2 / norm if norm > 0 else 0.0}
    return out
