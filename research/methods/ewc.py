"""EWC (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks"): a quadratic pull toward
the weights each learned task ended with, each weight weighted by its diagonal Fisher information on that task's
data; one such penalty per learned task."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from research.data.tasks import Task
from research.methods.base import FinetuneContext, MethodConfig, TrainStep
from research.methods.fisher import fisher_diagonal
from research.methods.penalty import ImportanceAnchor, quadratic_penalty
from research.methods.registry import register
from research.models.extent import pad_rows
from research.models.multihead import MultiHeadNet


class EWCConfig(MethodConfig):
    name: Literal["ewc"] = "ewc"
    lam: float = Field(
        100.0, ge=0, description="penalty strength λ in λ/2 Σ_i F_i (θ_i − θ*_i)² (ewc: one such term per learned task)"
    )
    fisher: Literal["exact", "sample", "empirical", "batched"] = Field(
        "exact", description="Fisher estimator (see research.methods.fisher)"
    )
    fisher_samples: int | None = Field(
        1000,
        gt=0,
        description="examples for each Fisher (the pretraining data, then each fine-tuning task learned); None: all",
    )
    fisher_batch_size: int = Field(64, gt=0, description="minibatch size; changes the result only for 'batched'")


@dataclass
class Penalty:
    """One learned task's quadratic penalty: its Fisher, its anchor θ*, and where they came from."""

    fisher_from: list[str]  # the tasks whose data the Fisher was estimated on
    task_index: int  # the fine-tuning task from whose start on the penalty applies
    fisher: dict[str, Tensor]
    anchor: dict[str, Tensor]
    examples: int | None = None  # None: loaded from a state dict without being prepared here
    seconds: float | None = None


@register
class EWC(ImportanceAnchor):
    """EWC: λ/2 Σ_t Σ_i F_t,i (θ_i − θ*_t,i)², one penalty per learned task t (Kirkpatrick et al.'s separate
    penalties, not a running sum: that is ``online_ewc``).

    Anchored, for the first (or only) fine-tuning task: the parameters that came from the pretrained model and
    train, at their pretrained values θ*, weighted by the diagonal Fisher F estimated on the pretraining tasks'
    training data (each example through its own task's head), in eval mode, before the first update. The Fisher
    is that of the pretrained model itself: with a shared head, its softmax runs over the pretrained classes'
    outputs only, and the rows the head grew for the new classes get F = 0 (see ``ImportanceAnchor``).

    In a sequence of fine-tuning tasks, at the start of task k (k ≥ 1) one more penalty joins the earlier ones,
    for the task just learned (fine-tuning task k−1): its Fisher is estimated on that task's training data
    (through its head; with a shared head, over the outputs of the classes seen so far) at the weights it ended
    with, which are also its anchor; it covers every parameter that trains and existed before task k
    (``FinetuneContext.earlier_rows``). So task k is trained under k + 1 penalties: the pretraining tasks' and one
    for each earlier fine-tuning task, each keeping its own Fisher and anchor. Parameters created later (a later
    task's head, rows a shared head grows) get F = 0 in every earlier penalty: they had no value to keep then.
    Memory grows with the sequence: every penalty holds a Fisher and an anchor as large as the parameters it
    covers (two copies of the backbone per learned task), and each step computes every penalty.

    The estimator is chosen by ``fisher`` and recorded in the run's summary, with each penalty's tasks, Fisher
    trace, examples and seconds (``penalties``) and their totals. Logged as ``train_loss_ewc`` (the sum of every
    penalty). With one fine-tuning task it is exactly the single-task EWC of the pretrained model.

    Versus avalanche-lib's EWCPlugin: its importance is our ``batched`` estimator (tested equal on identical
    weights and data), and its penalty is λ·Σ F (θ−θ*)² without the paper's 1/2, so our λ is twice Avalanche's
    for the same penalty. (Its ``mode="separate"`` is this method's sequence semantics.)
    """

    name = "ewc"
    supports_ddp = True
    supports_sequences = True
    needs_pretraining_data = True
    why_pretraining_data = "its Fisher information is estimated on the pretraining tasks"
    Config = EWCConfig
    neutral = {"lam": 0.0}
    config: EWCConfig

    term = "ewc"
    importance_name = "fisher"

    def __init__(self, config: EWCConfig) -> None:
        super().__init__(config)
        self.penalties: list[Penalty] = []
        self._learned: list[Task] = []

    def estimator(self) -> str:
        return self.config.fisher

    def estimate_importance(
        self, model: MultiHeadNet, ctx: FinetuneContext, names: list[str], values: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], int]:
        """The Fisher of the task learned last: the pretraining tasks before the first fine-tuning task, the
        previous fine-tuning task later (``values``: the weights it ended with, before this task's growth)."""
        k = ctx.task_index
        self._learned = ctx.tasks.pretrain if k == 0 else [ctx.tasks.finetune[k - 1]]
        batches = ctx.train_batches(self._learned, self.config.fisher_batch_size, self.config.fisher_samples)
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed + k)
        fisher = fisher_diagonal(model, batches, names, self.config.fisher, generator, values)
        return fisher, sum(len(b.y) for b in batches)

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        # The earlier penalties cover the rows that existed when they were made: rows grown since get F = 0.
        shapes = {n: p.shape for n, p in model.named_parameters()}
        for penalty in self.penalties:
            penalty.fisher = {n: pad_rows(f, shapes[n]) for n, f in penalty.fisher.items()}
            penalty.anchor = {n: pad_rows(a, shapes[n]) for n, a in penalty.anchor.items()}
        super().prepare(model, ctx)  # this task's Fisher and anchor: self.importance, self.anchor
        learned = [t.name for t in self._learned]
        self.penalties.append(
            Penalty(learned, ctx.task_index, self.importance, self.anchor, self._examples, self._seconds)
        )

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        total: Tensor | None = None
        for penalty in self.penalties:  # one penalty: exactly the single-task expression
            term = quadratic_penalty(params, penalty.anchor, penalty.fisher)
            total = term if total is None else total + term
        assert total is not None, "ewc: loss_terms before prepare"
        return {self.term: 0.5 * self.strength() * total}

    @torch.no_grad()
    def term_gradient(self, model: MultiHeadNet) -> dict[str, Tensor]:
        """Σ_t λ · F_t · (θ − θ*_t), per anchored parameter."""
        params = dict(model.named_parameters())
        gradient: dict[str, Tensor] = {}
        for penalty in self.penalties:
            for n, a in penalty.anchor.items():
                part = self.strength() * penalty.fisher[n] * (params[n] - a)
                gradient[n] = gradient[n] + part if n in gradient else part
        return gradient

    @property
    def fisher(self) -> dict[str, Tensor]:
        """The newest penalty's Fisher (the only one for a single fine-tuning task); all are in ``penalties``."""
        return self.importance

    def info(self) -> dict[str, Any]:
        penalties = [
            {
                "fisher_from": p.fisher_from,
                "from_task_index": p.task_index,
                "fisher_trace": float(sum(f.sum() for f in p.fisher.values())),
                "fisher_examples": p.examples,
                "fisher_seconds": p.seconds,
            }
            for p in self.penalties
        ]
        return {
            "fisher_estimator": self.estimator(),
            "fisher_trace": sum(p["fisher_trace"] for p in penalties),
            "fisher_seconds": sum(p["fisher_seconds"] or 0.0 for p in penalties),
            "fisher_examples": sum(p["fisher_examples"] or 0 for p in penalties),
            "penalties": penalties,
        }

    def state_dict(self) -> dict[str, Tensor]:
        """Every penalty's Fisher and anchor, as ``penalty.<t>.fisher.<param>`` and ``penalty.<t>.anchor.<param>``."""
        state: dict[str, Tensor] = {}
        for t, penalty in enumerate(self.penalties):
            state.update({f"penalty.{t}.anchor.{n}": a for n, a in penalty.anchor.items()})
            state.update({f"penalty.{t}.fisher.{n}": f for n, f in penalty.fisher.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """The penalties the state holds, and only those. The tasks, examples and seconds of each stay those of
        this instance's own preparation (a resume replays it), unknown for a penalty it never prepared.
        Also reads a single-task checkpoint from before sequences (``anchor.<param>``, ``fisher.<param>``)."""
        groups: dict[int, dict[str, dict[str, Tensor]]] = {}
        for key, tensor in state.items():
            if key.startswith("penalty."):
                _, index, kind, name = key.split(".", 3)
                t = int(index)
            else:
                t, (kind, name) = 0, key.split(".", 1)
            if kind not in ("anchor", "fisher"):
                raise ValueError(f"ewc: unexpected state key '{key}'")
            groups.setdefault(t, {"anchor": {}, "fisher": {}})[kind][name] = tensor
        if sorted(groups) != list(range(len(groups))):
            raise ValueError(f"ewc: the state's penalties are not numbered 0..n-1: {sorted(groups)}")
        penalties = []
        for t in range(len(groups)):
            anchor, fisher = groups[t]["anchor"], groups[t]["fisher"]
            if set(anchor) != set(fisher):
                raise ValueError(f"ewc: penalty {t} has an anchor and a Fisher for different parameters")
            known = self.penalties[t] if t < len(self.penalties) else Penalty([], t, {}, {})
            penalties.append(replace(known, fisher=fisher, anchor=anchor))
        self.penalties = penalties
        if penalties:
            self.importance, self.anchor = penalties[-1].fisher, penalties[-1].anchor
