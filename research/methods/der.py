"""Dark Experience Replay (Buzzega, Boschini, Porrello, Abati & Calderara 2020, "Dark Experience for General
Continual Learning: a Strong, Simple Baseline"): replay the logits recorded on buffered examples of the earlier
tasks (the pretrained model's on pretraining examples; in a sequence, each learned task's model's on that task's
examples), and with DER++ their labels too."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

from research.methods.base import FinetuneContext, Method, MethodConfig, TrainStep
from research.methods.memory import PretrainMemory, absorb_learned_task
from research.methods.registry import register
from research.models.modes import eval_mode
from research.models.multihead import MultiHeadNet


class DERConfig(MethodConfig):
    name: Literal["der"] = "der"
    alpha: float = Field(0.3, ge=0, description="weight α of the logit-matching term α·MSE(student, stored logits)")
    buffer_size: int = Field(200, gt=0, description="pretraining examples kept in the buffer with their logits")
    selection: Literal["reservoir", "class_balanced"] = Field(
        "reservoir", description="how the buffer is filled from the pretraining data"
    )
    replay_batch_size: int = Field(32, gt=0, description="buffer examples drawn per step for each term")


class DERPPConfig(DERConfig):
    name: Literal["derpp"] = "derpp"  # type: ignore[assignment]
    alpha: float = Field(0.1, ge=0, description="weight α of the logit-matching term α·MSE(student, stored logits)")
    beta: float = Field(0.5, ge=0, description="weight β of the label term β·CE(student, stored labels)")


@register
class DER(Method):
    """DER (Buzzega et al. 2020): loss += α · MSE(f_θ(x_b), z_b) on a batch drawn from the buffer each step.

    Anchored: the student's logits on buffered pretraining examples to z_b, the pretrained model's logits on
    the same examples (each example through its own task's head; with a shared head, its first
    ``pretrain_head_sizes()["shared"]`` outputs, the ones the pretrained model had), computed once in eval mode
    before the first update. The paper stores logits as examples stream by during training; here the earlier
    "task" is pretraining, so its end point is the natural teacher. The MSE is a mean over examples and logit
    units (``F.mse_loss`` in the paper's code); with heads of different sizes, a sum of squared errors over
    the number of (example, unit) pairs. The buffer (``buffer_size``, ``selection``) is filled as ``replay``
    fills its own; draws are uniform without replacement from a seeded generator, the whole buffer when it
    holds fewer than ``replay_batch_size``. Student logits come from a separate forward pass in the model's
    training mode, as in the paper's code. A zero weight skips its term entirely (no draw, no forward pass),
    so the run is fine-tuning exactly. Logged as ``train_loss_der`` (W&B: ``train/loss_der``).

    In a sequence of fine-tuning tasks, each task joins the buffer when it has been learned, at the start of the
    next task, from the buffer and that task's training data only (``PretrainMemory.absorb``, exactly as
    ``replay``'s buffer does: ``reservoir`` continues Algorithm R over the whole stream, ``class_balanced``
    rebalances over every class seen so far). The examples it brings are stored with the logits of the model at
    the end of that task (eval mode, its own head's outputs as they were then: with a shared head, the classes
    seen up to that task); examples already in the buffer keep the logits recorded when their task was learned,
    never refreshed (the paper's "dark knowledge" of the past model). The paper records logits while the task
    streams by, so its examples carry logits from part-way through their task; here, as for pretraining, the
    task's end point is the teacher. The buffer keeps ``buffer_size`` examples throughout; the stored logits are
    padded to the widest head, and each example is compared on its own head's recorded outputs only.
    """

    name = "der"
    supports_ddp = True
    needs_pretraining_data = True
    why_pretraining_data = "its buffer holds pretraining examples and their logits"
    Config = DERConfig
    neutral = {"alpha": 0.0}
    config: DERConfig
    supports_sequences = True

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        if ctx.task_index > 0:  # in a sequence: the task just learned joins the buffer with its logits
            self._absorb(model, ctx)
            return
        self.memory = PretrainMemory.fill(ctx, self.config.buffer_size, self.config.selection)
        sizes = ctx.tasks.pretrain_head_sizes()
        self.units = [sizes[h] for h in self.memory.heads]  # outputs each head had when pretrained
        self.logits = self._teacher_logits(model)
        self.generator = torch.Generator().manual_seed(ctx.seed + 1)  # one draw stream for the whole run

    def _absorb(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        """Task k − 1 joins the buffer. ``model`` is the model at the end of that task (the start of task k,
        before any update), so its logits on the newcomers are the ones recorded when their task was learned;
        the slots kept from the buffer carry their stored logits along unchanged."""
        before = len(self.memory)
        memory, sources = absorb_learned_task(self.memory, ctx, self.config.buffer_size, self.config.selection)
        sources = sources.to(memory.y.device)
        learned = ctx.tasks.finetune[ctx.task_index - 1]
        # The learned task's head as it was while that task trained (a shared head has grown since).
        units = [*self.units, ctx.tasks.head_sizes_at(ctx.task_index - 1)[learned.head]]
        stored = torch.zeros(len(memory), max(units), dtype=self.logits.dtype, device=memory.y.device)
        kept = sources < before
        stored[kept, : self.logits.shape[1]] = self.logits[sources[kept]]
        self.memory, self.units = memory, units
        newcomers = torch.nonzero(~kept).flatten()
        if len(newcomers):
            stored[newcomers] = self._teacher_logits(model, newcomers, stored.shape[1])
        self.logits = stored

    @torch.no_grad()
    def _teacher_logits(self, model: MultiHeadNet, idx: Tensor | None = None, width: int | None = None) -> Tensor:
        """The current model's logits (eval mode) on the buffered examples ``idx`` (default: all), each through
        its own head's recorded outputs, padded to ``width`` (default: the widest head)."""
        with eval_mode(model):
            if idx is None:
                idx = torch.arange(len(self.memory), device=self.memory.y.device)
            stored = torch.zeros(len(idx), width or max(self.units), device=self.memory.y.device)
            for i, positions, out in self.memory.logits(model, idx):
                stored[positions, : self.units[i]] = out[:, : self.units[i]]
        return stored

    def logit_loss(self, model: MultiHeadNet, idx: Tensor) -> Tensor:
        """Mean squared error between the student's logits and the stored ones over (example, unit) pairs."""
        squared = []
        count = 0
        for i, positions, out in self.memory.logits(model, idx):
            units = self.units[i]
            squared.append((out[:, :units] - self.logits[idx[positions], :units]).pow(2).sum())
            count += len(positions) * units
        return torch.stack(squared).sum() / count

    def label_loss(self, model: MultiHeadNet, idx: Tensor) -> Tensor:
        """Mean cross-entropy of the stored labels, each example through its own task's (full) head."""
        y = self.memory.y[idx]
        losses = [F.cross_entropy(out, y[pos], reduction="sum") for _, pos, out in self.memory.logits(model, idx)]
        return torch.stack(losses).sum() / len(idx)

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        terms = {}
        if self.config.alpha > 0:
            idx = self.memory.draw(self.config.replay_batch_size, self.generator)
            terms["der"] = self.config.alpha * self.logit_loss(model, idx)
        return terms

    def info(self) -> dict[str, Any]:
        return {"buffer_size": len(self.memory), "buffer_heads": list(self.memory.heads), "units": list(self.units)}

    def state_dict(self) -> dict[str, Tensor]:
        return {
            **self.memory.state_dict("buffer"),
            "buffer_logits": self.logits,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.memory = PretrainMemory.from_state(self.memory.heads, state, "buffer")
        self.logits = state["buffer_logits"]
        self.generator.set_state(state["generator"])  # the draws go on where they were


@register
class DERPP(DER):
    """DER++ (Buzzega et al. 2020): DER's α · MSE on stored logits plus β · CE on the stored labels of a second,
    independently drawn buffer batch.

    Anchored: as DER (student logits on buffered examples to the logits recorded when their task was learned:
    the pretrained model's for pretraining examples, in a sequence each learned task's final model's for its
    examples; the buffer takes each learned task in as DER's does), and in addition the student's predictions
    on another buffer batch to the examples' true labels (cross-entropy over the example's full head as it
    stands now, as the task loss scores replayed examples). Each term has its own forward pass, as
    in the paper's code; a zero weight skips its term (no draw, no forward pass). Logged as ``train_loss_der`` and
    ``train_loss_der_ce`` (W&B: ``train/loss_der``, ``train/loss_der_ce``).
    """

    name = "derpp"
    Config = DERPPConfig
    neutral = {"alpha": 0.0, "beta": 0.0}
    config: DERPPConfig

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        terms = super().loss_terms(model, step)
        if self.config.beta > 0:
            idx = self.memory.draw(self.config.replay_batch_size, self.generator)
            terms["der_ce"] = self.config.beta * self.label_loss(model, idx)
        return terms
