"""Online EWC (Schwarz et al. 2018, "Progress & Compress: A scalable framework for continual learning"): one
running, decayed Fisher and one anchor, updated at the start of every task of a fine-tuning sequence."""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from research.methods.base import FinetuneContext
from research.methods.ewc import EWCConfig
from research.methods.fisher import fisher_diagonal
from research.methods.penalty import ImportanceAnchor, snapshot
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


class OnlineEWCConfig(EWCConfig):
    """EWC's settings (λ, the Fisher estimator and its sample), plus the decay of the running Fisher."""

    name: Literal["online_ewc"] = "online_ewc"  # type: ignore[assignment]
    gamma: float = Field(1.0, ge=0, le=1, description="decay γ of the running Fisher: F̃ ← γ·F̃ + F_new")


@register
class OnlineEWC(ImportanceAnchor):
    """Online EWC: λ/2 Σ_i F̃_i (θ_i − θ*_i)², with F̃ ← γ·F̃ + F_new and θ* ← θ at the start of every task.

    Anchored: at the start of fine-tuning task k, every parameter that trains and was trained before, at its
    current value θ* (the pretrained weights for k = 0, the weights after task k−1 later). F_new is the diagonal
    Fisher of the task learned last: the pretraining tasks for k = 0, fine-tuning task k−1 afterwards (each
    example through its own task's head, eval mode). With one fine-tuning task it is EWC; ``gamma`` = 1 keeps
    every earlier Fisher at full weight, smaller values let old tasks fade. Logged as ``train_loss_online_ewc``.
    """

    name = "online_ewc"
    Config = OnlineEWCConfig
    config: OnlineEWCConfig
    neutral = {"lam": 0.0}
    supports_sequences = True
    term = "online_ewc"
    importance_name = "fisher"

    def __init__(self, config: OnlineEWCConfig) -> None:
        super().__init__(config)
        self.importance: dict[str, Tensor] = {}
        self._history: list[dict[str, Any]] = []

    def estimator(self) -> str:
        return self.config.fisher

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        # Trained before this task: the pretrained parameters, and later everything but the new task's head.
        current_head = {n for n, _ in model.heads[ctx.task.head].named_parameters(prefix=f"heads.{ctx.task.head}")}
        earlier = set(ctx.pretrained_names) if ctx.task_index == 0 else {n for n, _ in model.named_parameters()}
        names = [n for n, p in model.named_parameters() if p.requires_grad and n in earlier - current_head]
        started = time.perf_counter()
        learned = ctx.tasks.pretrain if ctx.task_index == 0 else [ctx.tasks.finetune[ctx.task_index - 1]]
        batches = ctx.train_batches(learned, self.config.fisher_batch_size, self.config.fisher_samples)
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed + ctx.task_index)
        new = fisher_diagonal(model, batches, names, self.config.fisher, generator)
        gamma = self.config.gamma
        self.importance = {n: gamma * self.importance[n] + f if n in self.importance else f for n, f in new.items()}
        self.anchor = snapshot(model, names)
        self._examples = sum(len(b.y) for b in batches)
        self._seconds = time.perf_counter() - started
        self._history.append(
            {
                "task_index": ctx.task_index,
                "fisher_from": [t.name for t in learned],
                "new_fisher_trace": float(sum(f.sum() for f in new.values())),
                "running_fisher_trace": float(sum(f.sum() for f in self.importance.values())),
            }
        )

    def info(self) -> dict[str, Any]:
        return {**super().info(), "gamma": self.config.gamma, "tasks": self._history}
