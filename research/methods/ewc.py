"""EWC (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks"): a quadratic pull
toward the pretrained weights, each weight weighted by its diagonal Fisher information on the pretraining data.
"""

import time
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from research.methods.base import FinetuneContext, Method, MethodConfig, TrainStep
from research.methods.fisher import fisher_diagonal, fisher_trace
from research.methods.penalty import quadratic_penalty, snapshot
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


class EWCConfig(MethodConfig):
    name: Literal["ewc"] = "ewc"
    lam: float = Field(100.0, ge=0, description="penalty strength λ in λ/2 Σ F_i (θ_i − θ*_i)²")
    fisher: Literal["exact", "sample", "empirical", "batched"] = Field(
        "exact", description="Fisher estimator (see research.methods.fisher)"
    )
    fisher_samples: int | None = Field(
        1000, gt=0, description="pretraining examples used for the Fisher (None: all training examples)"
    )
    fisher_batch_size: int = Field(64, gt=0, description="minibatch size; changes the result only for 'batched'")


@register
class EWC(Method):
    """EWC: λ/2 Σ_i F_i (θ_i − θ*_i)².

    Anchored: the parameters that came from the pretrained model, at their pretrained values θ*, weighted by
    the diagonal Fisher F estimated on the pretraining tasks' training data (each example through its own
    task's head), in eval mode, before the first update. The estimator is chosen by ``fisher`` and recorded
    in the run's summary with its trace and the time it took. Logged as ``train_loss_ewc``.

    Versus avalanche-lib's EWCPlugin: its importance is our ``batched`` estimator (tested equal on identical
    weights and data), and its penalty is λ·Σ F (θ−θ*)² without the paper's 1/2, so our λ is twice Avalanche's
    for the same penalty.
    """

    name = "ewc"
    Config = EWCConfig
    config: EWCConfig

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        names = [n for n in ctx.pretrained_names if n in trainable]
        self.anchor = snapshot(model, names)
        started = time.perf_counter()
        batches = ctx.pretrain_train_batches(self.config.fisher_batch_size, self.config.fisher_samples)
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        self.fisher = fisher_diagonal(model, batches, names, self.config.fisher, generator)
        self._fisher_seconds = time.perf_counter() - started
        self._fisher_examples = sum(len(b.y) for b in batches)

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        return {"ewc": 0.5 * self.config.lam * quadratic_penalty(params, self.anchor, self.fisher)}

    def info(self) -> dict[str, Any]:
        return {
            "fisher_estimator": self.config.fisher,
            "fisher_trace": fisher_trace(self.fisher),
            "fisher_seconds": self._fisher_seconds,
            "fisher_examples": self._fisher_examples,
        }

    def state_dict(self) -> dict[str, Tensor]:
        return {
            **{f"anchor.{n}": t for n, t in self.anchor.items()},
            **{f"fisher.{n}": t for n, t in self.fisher.items()},
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.anchor = {n.removeprefix("anchor."): t for n, t in state.items() if n.startswith("anchor.")}
        self.fisher = {n.removeprefix("fisher."): t for n, t in state.items() if n.startswith("fisher.")}
