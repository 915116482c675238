"""MAS (Aljundi et al. 2018, "Memory Aware Synapses: Learning what (not) to forget"): a quadratic pull toward
the pretrained weights, each weight weighted by how sensitive the squared L2 norm of the network's output is to
it on the pretraining data. The importance needs no labels. In a sequence of fine-tuning tasks the importance is
accumulated over the tasks learned and the anchor moves to the weights each task ended with (see ``MAS``).

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

MAS needs no labels, so it also runs without pretraining tasks (a model loaded from outside, whose pretraining
data nobody has): with ``reference`` naming one of the experiment's abilities (research.abilities), Ω is estimated
on that ability's inputs (the texts of a representation ability, the words of a similarity set) with f(x) the
backbone's features instead of a head's logits, as Aljundi et al. do for an unlabelled setting (Section 4: the
output of the learned function, wherever it ends). Only backbone parameters are sensitive to the features, so a
pretraining head (when there are pretraining tasks as well) gets Ω = 0 then. The summary says which was used.

Both estimators run in eval mode (no dropout noise, BatchNorm uses and keeps its running statistics) and restore
every module's previous mode. Avalanche's MASPlugin instead puts the model in train mode (and leaves it there), so
with dropout or BatchNorm its values differ from ours and its estimation moves the BatchNorm running statistics.
Avalanche's penalty is λ Σ Ω (θ − θ*)², without the 1/2: its ``lambda_reg`` is our ``lam`` / 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from research.data.inputs import Inputs, compact, take, to_device, unsqueeze
from research.data.inputs import count as count_examples
from research.methods.base import FinetuneContext, HeadBatch, MethodConfig
from research.methods.fisher import example_chunks, split_values
from research.methods.penalty import ImportanceAnchor
from research.methods.registry import register
from research.models.extent import pad_rows
from research.models.modes import eval_mode
from research.models.multihead import MultiHeadNet

MASEstimator = Literal["per_sample", "batched"]
MAS_ESTIMATORS: tuple[str, ...] = ("per_sample", "batched")


class MASConfig(MethodConfig):
    name: Literal["mas"] = "mas"
    lam: float = Field(1.0, ge=0, description="penalty strength λ in λ/2 Σ Ω_i (θ_i − θ*_i)²")
    importance_samples: int | None = Field(
        1000,
        gt=0,
        description="examples for each importance (the pretraining data, then each fine-tuning task learned; "
        "None: all training examples)",
    )
    importance_batch_size: int = Field(64, gt=0, description="minibatch size; changes the result only for 'batched'")
    estimator: MASEstimator = Field(
        "per_sample", description="per_sample (the paper's) or batched (Avalanche's MASPlugin); see methods/mas.py"
    )
    reference: str | None = Field(
        None,
        description="an ability's name: estimate the importance on its inputs from the backbone's features "
        "(label-free; no pretraining tasks needed) instead of on the pretraining tasks",
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
            if batch.head is None:  # features: only the backbone's parameters are differentiated (the rest: Ω 0)
                inside = {n: v for n, v in params.items() if n.startswith(FEATURES)}
                outside = {n: v for n, v in params.items() if n not in inside}
                estimate, examples = _importance_sum(model, inside, {**constants, **outside}, batch, estimator)
            else:
                estimate, examples = _importance_sum(model, params, constants, batch, estimator)
            for n, g in estimate.items():
                total[n] += g
            count += examples
    if count == 0:
        raise ValueError("cannot estimate a MAS importance from no data")
    return {n: (t / count).detach() for n, t in total.items()}


def _importance_sum(
    model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], batch: HeadBatch, estimator: str
) -> tuple[dict[str, Tensor], int]:
    """One batch's contribution: Σ_n |g_n| per parameter and the number of examples (per_sample), or |ḡ| of the
    batch and 1 (batched)."""
    if estimator == "batched":
        return {n: g.abs() for n, g in _batch_mean_gradient(model, params, constants, batch).items()}, 1
    total = {n: p.new_zeros(p.shape) for n, p in params.items()}
    examples = 0
    for x, _ in example_chunks(batch, sum(p.numel() for p in params.values())):
        for n, g in _per_sample_gradients(model, params, constants, batch.head, x).items():
            total[n] += g.abs().sum(0)
        examples += count_examples(x)
    return total, examples


def _output(model: nn.Module, p: dict[str, Tensor], constants: dict[str, Tensor], x: Inputs, head: str | None):
    """f(x): the logits of ``head``, or with ``head`` None the backbone's features (a label-free reference)."""
    if head is not None:
        return functional_call(model, (p, constants), (x,), {"head": head})
    inside = {n.removeprefix(FEATURES): v for n, v in {**constants, **p}.items() if n.startswith(FEATURES)}
    return functional_call(model.backbone, inside, (x,))  # type: ignore[arg-type]


def _per_sample_gradients(
    model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], head: str | None, x: Inputs
) -> dict[str, Tensor]:
    def squared_norm(p: dict[str, Tensor], xi: Inputs) -> Tensor:
        return _output(model, p, constants, unsqueeze(xi), head).pow(2).sum()

    return vmap(grad(squared_norm), in_dims=(None, 0))(params, x)


def _batch_mean_gradient(
    model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], batch: HeadBatch
) -> dict[str, Tensor]:
    def mean_squared_norm(p: dict[str, Tensor]) -> Tensor:
        return _output(model, p, constants, compact(batch.x), batch.head).pow(2).sum(dim=1).mean()

    return grad(mean_squared_norm)(params)


FEATURES = "backbone."  # the parameters the features depend on


def reference_batches(ctx: FinetuneContext, name: str, batch_size: int, max_samples: int | None) -> list[HeadBatch]:
    """An ability's inputs as unlabelled batches (head None: scored through the features), a seeded sample of
    ``max_samples`` of them when there are more."""
    x = ctx.references[name]
    total = count_examples(x)
    if max_samples is not None and max_samples < total:
        generator = torch.Generator().manual_seed(ctx.seed)
        x = take(x, torch.randperm(total, generator=generator)[:max_samples].sort().values)
        total = max_samples
    batches = []
    for start in range(0, total, batch_size):
        part = compact(to_device(take(x, slice(start, start + batch_size)), ctx.device))
        no_labels = torch.zeros(count_examples(part), dtype=torch.long, device=ctx.device)  # sizes the chunks
        batches.append(HeadBatch(None, part, no_labels, "reference"))  # type: ignore[arg-type]
    return batches


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
    docstring. With ``reference`` (an ability's name), Ω is estimated label-free on that ability's inputs from the
    backbone's features instead, so MAS runs on a model without pretraining tasks; ``method_info.importance_data``
    says which. Logged as ``train_loss_mas``.

    In a sequence of fine-tuning tasks, at the start of task k (k ≥ 1) the task just learned (fine-tuning task
    k−1) adds its own importance, Ω ← Ω + Ω_{k−1}, estimated the same way on that task's training inputs (through
    its head; with a shared head, over the outputs of the classes seen so far) at the weights it ended with, and
    the anchor θ* moves to those weights, for every parameter that trains and existed before task k
    (``FinetuneContext.earlier_rows``). That is the sum of each learned task's importance, as in Aljundi et al.'s
    own code (``accumulate_MAS_weights``: ``omega = prev_omega + new_omega``, the previous task's model as the
    new ``init_val``); Avalanche's MASPlugin instead keeps a running average Ω ← α Ω + (1 − α) Ω_new (α = 0.5),
    which halves the older tasks' weight at every task. Rows a shared head grows for a task's new classes start
    at Ω = 0 and gain importance from the tasks that train them; a later task's head gets none until then. With
    ``reference``, only the first importance comes from the ability's inputs (it stands in for the pretraining
    data); each fine-tuning task's comes from its own inputs. The summary's ``tasks`` lists each task's part.

    λ convention: the paper's loss is L_new + λ_paper Σ Ω (θ − θ*)² (Aljundi et al. 2018, eq. 6, no 1/2); ours
    carries the 1/2 of every quadratic penalty here, so ``lam`` = 2 λ_paper gives the paper's penalty (and
    Avalanche's ``lambda_reg`` is ``lam`` / 2 for the same reason).
    """

    name = "mas"
    supports_ddp = True
    supports_sequences = True
    needs_pretraining_data = True
    why_pretraining_data = (
        "its importance is estimated on the pretraining tasks' inputs, or with method.reference on an ability's"
    )
    Config = MASConfig
    neutral = {"lam": 0.0}
    config: MASConfig

    term = "mas"
    importance_name = "importance"

    def estimator(self) -> str:
        return self.config.estimator

    @classmethod
    def label_free_reference(cls, config: dict[str, Any]) -> str | None:
        return config.get("reference")

    def __init__(self, config: MASConfig) -> None:
        super().__init__(config)
        self._history: list[dict[str, Any]] = []

    def estimate_importance(
        self, model: MultiHeadNet, ctx: FinetuneContext, names: list[str], values: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], int]:
        """The importance of the task learned last: the pretraining tasks (or the reference) before the first
        fine-tuning task, the previous fine-tuning task later (``values``: the weights it ended with)."""
        size, samples = self.config.importance_batch_size, self.config.importance_samples
        k = ctx.task_index
        if k > 0:
            self._data = [ctx.tasks.finetune[k - 1].name]
            batches = ctx.train_batches([ctx.tasks.finetune[k - 1]], size, samples)
        elif self.config.reference is not None:
            self._data = [f"ability:{self.config.reference}"]
            batches = reference_batches(ctx, self.config.reference, size, samples)
        else:
            self._data = [t.name for t in ctx.tasks.pretrain]
            batches = ctx.pretrain_train_batches(size, samples)
        importance = mas_importance(model, batches, names, self.config.estimator, values)
        return importance, sum(len(b.y) for b in batches)

    def accumulate(self, new: dict[str, Tensor]) -> dict[str, Tensor]:
        """Ω ← Ω + Ω_new (Aljundi et al.'s code); the earlier Ω is zero on rows a shared head grew since."""
        self._new_trace = float(sum(t.sum() for t in new.values()))
        earlier = getattr(self, "importance", None)
        if earlier is None:  # the first task: Ω_new itself, untouched
            return new
        return {n: pad_rows(earlier[n], t.shape) + t if n in earlier else t for n, t in new.items()}

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        super().prepare(model, ctx)
        self._history.append(
            {
                "task_index": ctx.task_index,
                "importance_from": self._data,
                "new_importance_trace": self._new_trace,
                "importance_trace": float(sum(t.sum() for t in self.importance.values())),
                "importance_examples": self._examples,
                "importance_seconds": self._seconds,
            }
        )

    def info(self) -> dict[str, Any]:
        reference = self.config.reference
        data = f"ability '{reference}': its inputs, through the backbone's features" if reference else None
        data = data or "pretraining tasks' training inputs, through their heads"
        if len(self._history) > 1:
            data += "; then each fine-tuning task's training inputs, through its head"
        return {**super().info(), "importance_data": data, "tasks": self._history}
