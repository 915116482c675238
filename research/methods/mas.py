"""MAS (Aljundi et al. 2018, "Memory Aware Synapses: Learning what (not) to forget"): a quadratic pull toward
the pretrained weights, each weight weighted by how sensitive the squared L2 norm of the network's output is to
it on the pretraining data. The importance needs no labels.

With f(x) the logits of the example's own task head and N pretraining examples, two estimators are offered:

- ``per_sample``: Ω = 1/N Σ_n |∇_θ ‖f(x_n)‖²|                  (the paper's definition: per-example gradients,
  absolute value, averaged over examples; computed with ``torch.func.vmap``)
- ``batched``:    Ω = 1/B Σ_b |∇_θ mean_{n∈b} ‖f(x_n)‖²|         (Avalanche's MASPlugin, after FACIL: the absolute
  value of each minibatch-mean gradient, averaged over the B minibatches)

``batched`` takes the absolute value after averaging over a minibatch, so gradients of opposite sign cancel
inside a batch: with batches of equal size it is at most the per-sample value (equal when, within every batch,
each weight's per-example gradients share one sign), and it depends on the batch size. Our batches hold one head
each (``FinetuneContext.pretrain_train_batches``), in order, unshuffled, the last one of each task possibly
smaller; every batch counts once, whatever its size, as in Avalanche.

Both estimators run in eval mode (no dropout noise, BatchNorm uses and keeps its running statistics) and restore
every module's previous mode. Avalanche's MASPlugin instead puts the model in train mode (and leaves it there), so
with dropout or BatchNorm its values differ from ours and its estimation moves the BatchNorm running statistics.
Avalanche's penalty is λ Σ Ω (θ − θ*)², without the 1/2: its ``lambda_reg`` is our ``lam`` / 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from research.data.inputs import Inputs, compact, unsqueeze
from research.data.inputs import count as count_examples
from research.methods.base import FinetuneContext, HeadBatch, MethodConfig
from research.methods.fisher import example_chunks, split_values
from research.methods.penalty import ImportanceAnchor
from research.methods.registry import register
from research.models.modes import eval_mode
from research.models.multihead import MultiHeadNet

MASEstimator = Literal["per_sample", "batched"]
MAS_ESTIMATORS: tuple[str, ...] = ("per_sample", "batched")


class MASConfig(MethodConfig):
    name: Literal["mas"] = "mas"
    lam: float = Field(1.0, ge=0, description="penalty strength λ in λ/2 Σ Ω_i (θ_i − θ*_i)²")
    importance_samples: int | None = Field(
        1000, gt=0, description="pretraining examples used for the importance (None: all training examples)"
    )
    importance_batch_size: int = Field(64, gt=0, description="minibatch size; changes the result only for 'batched'")
    estimator: MASEstimator = Field(
        "per_sample", description="per_sample (the paper's) or batched (Avalanche's MASPlugin); see methods/mas.py"
    )


def mas_importance(
    model: nn.Module,
    batches: Iterable[HeadBatch],
    param_names: list[str],
    estimator: MASEstimator = "per_sample",
    values: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """MAS importance Ω for the named parameters over ``batches`` (each scored by its own head), in eval mode.
    ``values``: the parameter values to evaluate the model at, as in ``fisher_diagonal`` (a shared head cut to
    the outputs it had before it grew gives the pretrained model's own output norm). Never carries a graph."""
    if estimator not in MAS_ESTIMATORS:
        raise ValueError(f"unknown MAS estimator '{estimator}'; valid choices: {', '.join(MAS_ESTIMATORS)}")
    params, constants = split_values(model, param_names, values)
    total = {n: p.new_zeros(p.shape) for n, p in params.items()}
    count = 0
    with eval_mode(model):
        for batch in batches:
            if len(batch.y) == 0:
                continue
            if estimator == "batched":
                for n, g in _batch_mean_gradient(model, params, constants, batch).items():
                    total[n] += g.abs()
                count += 1
                continue
            for x, _ in example_chunks(batch, sum(p.numel() for p in params.values())):
                for n, g in _per_sample_gradients(model, params, constants, batch.head, x).items():
                    total[n] += g.abs().sum(0)
                count += count_examples(x)
    if count == 0:
        raise ValueError("cannot estimate a MAS importance from no data")
    return {n: (t / count).detach() for n, t in total.items()}


def _per_sample_gradients(
    model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], head: str, x: Inputs
) -> dict[str, Tensor]:
    def squared_norm(p: dict[str, Tensor], xi: Inputs) -> Tensor:
        logits = functional_call(model, (p, constants), (unsqueeze(xi),), {"head": head})
        return logits.pow(2).sum()

    return vmap(grad(squared_norm), in_dims=(None, 0))(params, x)


def _batch_mean_gradient(
    model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], batch: HeadBatch
) -> dict[str, Tensor]:
    def mean_squared_norm(p: dict[str, Tensor]) -> Tensor:
        logits = functional_call(model, (p, constants), (compact(batch.x),), {"head": batch.head})
        return logits.pow(2).sum(dim=1).mean()

    return grad(mean_squared_norm)(params)


@register
class MAS(ImportanceAnchor):
    """MAS: λ/2 Σ_i Ω_i (θ_i − θ*_i)², Ω from output-norm sensitivity (Aljundi et al. 2018).

    Anchored: the parameters that came from the pretrained model and train, at their pretrained values θ*,
    weighted by Ω_i = mean over pretraining examples of |∂‖f(x)‖²/∂θ_i| (f: logits of the example's own task
    head; with a shared head, the pretrained model's own outputs, those of the pretraining classes, while the
    rows grown for new classes get Ω = 0, see ``ImportanceAnchor``), estimated on the pretraining tasks'
    training data in eval mode before the first update. ``estimator`` picks the paper's per-example definition
    (``per_sample``) or Avalanche's minibatch one (``batched``: the absolute value of minibatch-mean gradients,
    which partly cancel within a batch, so it is smaller and depends on the batch size); see the module
    docstring. Logged as ``train_loss_mas``.

    λ convention: the paper's loss is L_new + λ_paper Σ Ω (θ − θ*)² (Aljundi et al. 2018, eq. 6, no 1/2); ours
    carries the 1/2 of every quadratic penalty here, so ``lam`` = 2 λ_paper gives the paper's penalty (and
    Avalanche's ``lambda_reg`` is ``lam`` / 2 for the same reason).
    """

    name = "mas"
    supports_ddp = True
    needs_pretraining_data = True
    why_pretraining_data = "its importance is estimated on the pretraining tasks' inputs"
    Config = MASConfig
    neutral = {"lam": 0.0}
    config: MASConfig

    term = "mas"
    importance_name = "importance"

    def estimator(self) -> str:
        return self.config.estimator

    def estimate_importance(
        self, model: MultiHeadNet, ctx: FinetuneContext, names: list[str], values: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], int]:
        batches = ctx.pretrain_train_batches(self.config.importance_batch_size, self.config.importance_samples)
        importance = mas_importance(model, batches, names, self.config.estimator, values)
        return importance, sum(len(b.y) for b in batches)
