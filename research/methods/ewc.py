"""EWC (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks"): a quadratic pull
toward the pretrained weights, each weight weighted by its diagonal Fisher information on the pretraining data.
"""

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from research.methods.base import FinetuneContext, MethodConfig
from research.methods.fisher import fisher_diagonal
from research.methods.penalty import ImportanceAnchor
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


class EWCConfig(MethodConfig):
    name: Literal["ewc"] = "ewc"
    lam: float = Field(100.0, ge=0, description="penalty strength λ in λ/2 Σ F_i (θ_i − θ*_i)²")
    fisher: Literal["exact", "sample", "empirical", "batched"] = Field(
        "exact", description="Fisher estimator (see research.methods.fisher)"
    )
    fisher_samples: int | None = Field(
        1000,
        gt=0,
        description="examples for the Fisher (pretraining data; online_ewc: the task just learned); None: all",
    )
    fisher_batch_size: int = Field(64, gt=0, description="minibatch size; changes the result only for 'batched'")


@register
class EWC(ImportanceAnchor):
    """EWC: λ/2 Σ_i F_i (θ_i − θ*_i)².

    Anchored: the parameters that came from the pretrained model and train, at their pretrained values θ*,
    weighted by the diagonal Fisher F estimated on the pretraining tasks' training data (each example through
    its own task's head), in eval mode, before the first update. The Fisher is that of the pretrained model
    itself: with a shared head, its softmax runs over the pretrained classes' outputs only, and the rows the
    head grew for the new classes get F = 0 (see ``ImportanceAnchor``). The estimator is chosen by ``fisher``
    and recorded in the run's summary with its trace and the time it took. Logged as ``train_loss_ewc``.

    Versus avalanche-lib's EWCPlugin: its importance is our ``batched`` estimator (tested equal on identical
    weights and data), and its penalty is λ·Σ F (θ−θ*)² without the paper's 1/2, so our λ is twice Avalanche's
    for the same penalty.
    """

    name = "ewc"
    supports_ddp = True
    needs_pretraining_data = True
    why_pretraining_data = "its Fisher information is estimated on the pretraining tasks"
    Config = EWCConfig
    neutral = {"lam": 0.0}
    config: EWCConfig

    term = "ewc"
    importance_name = "fisher"

    def estimator(self) -> str:
        return self.config.fisher

    def estimate_importance(
        self, model: MultiHeadNet, ctx: FinetuneContext, names: list[str], values: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], int]:
        batches = ctx.pretrain_train_batches(self.config.fisher_batch_size, self.config.fisher_samples)
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        fisher = fisher_diagonal(model, batches, names, self.config.fisher, generator, values)
        return fisher, sum(len(b.y) for b in batches)

    @property
    def fisher(self) -> dict[str, Tensor]:
        return self.importance
