"""Helpers shared by several test modules (importable because pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch

from research.config import ExperimentConfig, ModelConfig
from research.data import build_tasks
from research.data.tasks import TaskSet
from research.methods import HeadBatch, Method, build_method
from research.methods.base import FinetuneContext
from research.models import build_model
from research.models.multihead import MultiHeadNet
from research.training.finetune import finetune_model

SMALL_HEADS = {"a": 3, "b": 2}


def prepare_method(
    cfg: ExperimentConfig, state: dict | None = None, records: dict | None = None
) -> tuple[Method, MultiHeadNet, FinetuneContext, TaskSet]:
    """The method of ``cfg``, prepared on the fine-tuning model exactly as a run prepares it."""
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state, records)
    method.prepare(model, ctx)
    return method, model, ctx, tasks


def small_model(batchnorm: bool = False) -> MultiHeadNet:
    """MLP 4-6-5 with heads a (3 classes) and b (2 classes); BatchNorm, if any, with non-trivial statistics."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[6, 5], batchnorm=batchnorm), (4,), SMALL_HEADS)
    if batchnorm:
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(16, 4) * 2 + 1, "a")
    return model


def small_batches() -> list[HeadBatch]:
    """Three seeded batches for ``small_model``, two heads, of unequal sizes."""
    g = torch.Generator().manual_seed(1)
    return [
        HeadBatch("a", torch.randn(7, 4, generator=g), torch.randint(0, 3, (7,), generator=g)),
        HeadBatch("b", torch.randn(5, 4, generator=g), torch.randint(0, 2, (5,), generator=g)),
        HeadBatch("a", torch.randn(3, 4, generator=g), torch.randint(0, 3, (3,), generator=g)),
    ]
