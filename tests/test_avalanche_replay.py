"""The class-balanced replay buffer against avalanche-lib's ClassBalancedBuffer on the same pretraining data."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.training.storage_policy import ClassBalancedBuffer

from research.data import build_tasks
from research.methods import build_method
from research.training.finetune import finetune_model


@pytest.mark.parametrize("capacity", [7, 200, 203])
def test_class_balanced_counts_match_avalanche(capacity: int, make_cfg) -> None:
    cfg = make_cfg("method.name=replay", "method.selection=class_balanced", f"method.buffer_size={capacity}")
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None)
    method.prepare(model, ctx)
    ours = torch.bincount(method.buffer_y, minlength=5).tolist()

    x, y = tasks.pretrain[0].splits["train"]
    dataset = _make_taskaware_tensor_classification_dataset(x, y, targets=y.tolist())
    buffer = ClassBalancedBuffer(max_size=capacity, adaptive_size=True)
    buffer.update_from_dataset(dataset)
    theirs = [len(buffer.buffer_groups[c].buffer) if c in buffer.buffer_groups else 0 for c in range(5)]

    # Both give every class capacity // classes examples and the remainder, one each, to the lowest labels.
    assert ours == theirs
    assert sum(ours) == capacity
