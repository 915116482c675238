"""A-GEM (Chaudhry, Ranzato, Rohrbach & Elhoseiny 2019, "Efficient Lifelong Learning with A-GEM"): the update
may not increase the loss on a small episodic memory of the earlier tasks' examples (pretraining tasks, and in a
sequence every fine-tuning task already learned), to first order."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

from research.methods.base import FinetuneContext, Method, MethodConfig
from research.methods.memory import PretrainMemory, absorb_learned_task
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


def agem_project(g: Tensor, g_ref: Tensor) -> tuple[Tensor, Tensor]:
    """A-GEM's projection (eq. 11 of the paper): ``g̃ = g − (g·g_ref)/(g_ref·g_ref) · g_ref`` when g·g_ref < 0,
    else ``g`` unchanged. Returns ``(g̃, fired)`` with ``fired`` a bool tensor.

    Branch-free, so the training step needs no host sync: when the projection does not fire the coefficient is
    exactly zero and ``g − 0·g_ref`` is ``g`` bit for bit. (g·g_ref < 0 implies g_ref ≠ 0, so the division is
    only ever used when it is defined.)"""
    dot = torch.dot(g, g_ref)
    fired = dot < 0
    coefficient = torch.where(fired, dot / torch.dot(g_ref, g_ref), torch.zeros_like(dot))
    return g - coefficient * g_ref, fired


class AGEMConfig(MethodConfig):
    name: Literal["agem"] = "agem"
    memory_size: int = Field(200, gt=0, description="pretraining examples kept in the episodic memory")
    selection: Literal["reservoir", "class_balanced"] = Field(
        "reservoir", description="how the memory is filled from the pretraining data"
    )
    reference_batch_size: int = Field(
        64, gt=0, description="memory examples drawn each step for the reference gradient g_ref"
    )


@register
class AGEM(Method):
    """A-GEM (Chaudhry et al. 2019): after the backward pass, the step's gradient g (flattened over every
    trainable parameter) is replaced by its projection g − (g·g_ref)/(g_ref·g_ref)·g_ref whenever g·g_ref < 0,
    so the update does not increase, to first order, the loss on the episodic memory.

    Anchored: nothing in weight space; the update direction is constrained by g_ref, the gradient of the mean
    cross-entropy of a fresh reference batch (``reference_batch_size`` examples drawn each step with a seeded
    generator) from a memory of ``memory_size`` pretraining examples (filled once, as ``replay`` fills its
    buffer), each example scored by its own task's head (a shared head with all its outputs, as replay scores
    its examples), at the current weights and in the model's training mode, like the step's own loss. g_ref
    is computed with ``torch.autograd.grad``, so the step's gradients in ``p.grad`` stay untouched until they
    are replaced.

    Differences from Avalanche 0.6's AGEMPlugin, deliberate: the reference gradient is taken over the trainable
    parameters only (frozen old heads and blocks are not part of the update, so they are not part of the
    constraint either); the reference pass leaves BatchNorm running statistics as they were (A-GEM changes
    gradients, nothing else; dropout in that pass does draw from the global, seeded generator); a trainable
    parameter that only the memory's loss reaches gets the projected gradient −c·g_ref (Avalanche leaves it
    without one, which breaks the orthogonality); g_ref is taken after the step's backward rather than before
    its forward, at the same weights, so the result is the same; the memory holds only pretraining examples
    of a single fine-tuning task (its one earlier "experience" is pretraining). The projection formula itself
    is the same (tested against the plugin). ``info`` records how often the projection fired, over the whole
    run.

    In a sequence of fine-tuning tasks (the paper's setting: the memory holds examples of every task seen so
    far), each task joins the memory when it has been learned, at the start of the next task, from the memory
    and that task's training data only (``PretrainMemory.absorb``, exactly as ``replay``'s buffer does):
    ``reservoir`` continues Algorithm R over the whole stream (every example of the pretraining and learned
    tasks equally likely to be kept; the paper's own code keeps a ring buffer per task instead),
    ``class_balanced`` rebalances over every class seen so far. The memory keeps ``memory_size`` examples
    throughout (it does not grow with the tasks); each is scored by its own task's head, with a shared head's
    outputs as they stand during the current task. The draw generator is one stream for the whole run.
    """

    name = "agem"
    supports_ddp = True
    needs_pretraining_data = True
    why_pretraining_data = "its episodic memory holds pretraining examples"
    Config = AGEMConfig
    why_no_neutral = "the projection has no strength; it fires whenever the gradients conflict"
    config: AGEMConfig
    supports_sequences = True

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        if ctx.task_index > 0:  # in a sequence: the task just learned joins the memory; counts go on
            self.memory, _ = absorb_learned_task(self.memory, ctx, self.config.memory_size, self.config.selection)
            return
        self.memory = PretrainMemory.fill(ctx, self.config.memory_size, self.config.selection)
        self.generator = torch.Generator().manual_seed(ctx.seed + 1)  # one draw stream for the whole run
        self.projections = torch.zeros((), dtype=torch.long, device=ctx.device)  # a tensor: no host sync per step
        self.steps = 0

    def reference_gradient(self, model: MultiHeadNet, params: list[Tensor]) -> list[Tensor]:
        """Gradient of the mean cross-entropy on a fresh memory batch; ``p.grad`` and BatchNorm statistics are
        left as they were."""
        idx = self.memory.draw(self.config.reference_batch_size, self.generator)
        buffers = list(model.buffers())
        saved = [b.clone() for b in buffers]
        with torch.enable_grad():
            groups = self.memory.logits(model, idx)
            losses = [F.cross_entropy(out, self.memory.y[idx][pos], reduction="sum") for _, pos, out in groups]
            loss = torch.stack(losses).sum() / len(idx)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]

    def after_backward(self, model: MultiHeadNet, step: int) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        reference = self.reference_gradient(model, params)
        with torch.no_grad():
            g = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in params])
            g_ref = torch.cat([r.flatten() for r in reference])
            projected, fired = agem_project(g, g_ref)
            for p, r, chunk in zip(params, reference, projected.split([p.numel() for p in params]), strict=True):
                if p.grad is not None:
                    p.grad.copy_(chunk.view_as(p))
                elif bool(r.any()):  # no gradient from the task loss, but one from the memory: g̃ = −c·g_ref
                    p.grad = chunk.view_as(p).clone()
        self.projections += fired
        self.steps += 1

    def info(self) -> dict[str, Any]:
        projections = int(self.projections)
        return {
            "memory_size": len(self.memory),
            "memory_heads": list(self.memory.heads),
            "projections": projections,
            "projection_share": projections / self.steps if self.steps else 0.0,
            "steps": self.steps,
        }

    def state_dict(self) -> dict[str, Tensor]:
        return {
            **self.memory.state_dict("memory"),
            "projections": self.projections,
            "steps": torch.tensor(self.steps),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.memory = PretrainMemory.from_state(self.memory.heads, state, "memory")
        self.projections = state["projections"]
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])  # the draws go on where they were
