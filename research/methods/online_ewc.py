"""Online EWC (Schwarz et al. 2018, "Progress & Compress: A scalable framework for continual learning"): one
running, decayed Fisher and one anchor, updated at the start of every task of a fine-tuning sequence."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from research.methods.base import FinetuneContext
from research.methods.ewc import EWCConfig
from research.methods.fisher import fisher_diagonal
from research.methods.penalty import ImportanceAnchor
from research.methods.registry import register
from research.models.extent import pad_rows
from research.models.multihead import MultiHeadNet


class OnlineEWCConfig(EWCConfig):
    """EWC's settings (λ, the Fisher estimator and its sample), plus the decay of the running Fisher."""

    name: Literal["online_ewc"] = "online_ewc"  # type: ignore[assignment]
    gamma: float = Field(1.0, ge=0, le=1, description="decay γ of the running Fisher: F̃ ← γ·F̃ + F_new")


@register
class OnlineEWC(ImportanceAnchor):
    """Online EWC: λ/2 Σ_i F̃_i (θ_i − θ*_i)², with F̃ ← γ·F̃ + F_new and θ* ← θ at the start of every task.

    Anchored: at the start of fine-tuning task k, every parameter that trains and had a value before the task
    (``FinetuneContext.earlier_rows``: the pretrained model for k = 0; later, everything trained so far), at its
    current value θ* (the pretrained weights for k = 0, the weights after task k−1 later). F_new is the diagonal
    Fisher of the task learned last: the pretraining tasks for k = 0, fine-tuning task k−1 afterwards (each
    example through its own task's head, eval mode), of the model as it stood before task k: with a shared
    head, over the outputs of the classes seen so far, and rows grown for task k's new classes get F = 0 (one
    mechanism with EWC, MAS and SI: ``ImportanceAnchor``). A shared head's rows therefore stay anchored: the
    rows of the classes already learned are exactly what a class-incremental sequence must not forget. With
    one fine-tuning task it is EWC, exactly, in either head layout. ``gamma`` = 1 keeps every earlier Fisher at
    full weight, smaller values let old tasks fade. Logged as ``train_loss_online_ewc``.

    λ convention: Schwarz et al. write the penalty as 1/2 ‖θ − θ*‖² weighted by γ·F*, the running Fisher decayed
    once more (so do van de Ven et al.'s implementations); ours weights by F̃ itself, so ``lam`` = γ · λ_paper
    gives their penalty (the same λ when γ = 1, and then also EWC's λ).
    """

    name = "online_ewc"
    supports_ddp = True
    needs_pretraining_data = True
    why_pretraining_data = "its Fisher information is estimated on the pretraining tasks"
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

    def estimate_importance(
        self, model: MultiHeadNet, ctx: FinetuneContext, names: list[str], values: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], int]:
        self._learned = ctx.tasks.pretrain if ctx.task_index == 0 else [ctx.tasks.finetune[ctx.task_index - 1]]
        batches = ctx.train_batches(self._learned, self.config.fisher_batch_size, self.config.fisher_samples)
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed + ctx.task_index)
        fisher = fisher_diagonal(model, batches, names, self.config.fisher, generator, values)
        return fisher, sum(len(b.y) for b in batches)

    def accumulate(self, new: dict[str, Tensor]) -> dict[str, Tensor]:
        """F̃ ← γ·F̃ + F_new; the earlier F̃ is zero on rows the shared head grew since."""
        gamma = self.config.gamma
        self._new_trace = float(sum(f.sum() for f in new.values()))
        return {
            n: gamma * pad_rows(self.importance[n], f.shape) + f if n in self.importance else f for n, f in new.items()
        }

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        super().prepare(model, ctx)
        self._history.append(
            {
                "task_index": ctx.task_index,
                "fisher_from": [t.name for t in self._learned],
                "new_fisher_trace": self._new_trace,
                "running_fisher_trace": float(sum(f.sum() for f in self.importance.values())),
            }
        )

    def info(self) -> dict[str, Any]:
        return {**super().info(), "gamma": self.config.gamma, "tasks": self._history}
