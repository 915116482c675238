"""The one generic LightningModule, used for pretraining and for fine-tuning under any method.

It computes the task loss (cross-entropy, each example through its own task's head, averaged over every
example of the step, replayed ones included), adds the method's loss terms, and performs the update itself
through Lightning's manual optimization (``zero_grad``, ``manual_backward``, ``step``). Training scalars are
recorded every ``log_every_n_steps`` steps only, without host syncs on the other steps: for small models the
per-step path is the bottleneck.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F

from research.config import OptimConfig
from research.data.inputs import compact, concat, example_shape, take
from research.methods.base import FinetuneContext, HeadBatch, Method, TrainStep, split_by_head
from research.models.multihead import MultiHeadNet


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        model: MultiHeadNet,
        heads: list[str],
        optim: OptimConfig,
        method: Method | None = None,
        context: FinetuneContext | None = None,
        log_every_n_steps: int = 25,
        scalar_sink: Any = None,
        recorders: dict[str, Any] | None = None,
        step_offset: int = 0,
        start_hook: Callable[[ClassifierModule], None] | None = None,
        steps_before: int = 0,
        resume_skip: int = 0,
    ) -> None:
        super().__init__()
        # The module runs the update itself (zero_grad, backward, step): a short, explicit per-step path,
        # and the one place where methods could later hook in around the step. Methods never call step().
        self.automatic_optimization = False
        self.model = model
        self.heads = heads  # batch head ids index into this list
        self.optim = optim
        self.method = method
        self.context = context
        self.log_every_n_steps = log_every_n_steps
        self.scalar_sink = scalar_sink  # callable(step, {name: tensor}) or None
        # What methods record while the lab pretrains (Method.records_in_pretraining), e.g. SI's path integral.
        self.recorders = list((recorders or {}).values())
        # Updates of this task done before this fit (a resumed run); methods count on from there.
        self.step_offset = step_offset
        # Batches of the resumed epoch that the checkpoint's updates already used (gradient accumulation only).
        self.resume_skip = resume_skip
        self.at_update = True  # whether the last batch ended an update (checkpoints are taken only there)
        self._pending: dict[str, Tensor] = {}  # an accumulated update's scalars so far
        # Updates of the fine-tuning tasks before this one: logging counts on the run's one step axis, so that
        # ``log_every_n_steps`` means the same in a sequence as in a single task.
        self.steps_before = steps_before
        # Replaces the method's plain ``prepare`` at fit start (the fine-tuning stage records or restores state).
        self.start_hook = start_hook
        # Blocks with nothing to train run in eval mode, so their BatchNorm statistics stay pretrained.
        self.frozen_blocks = [b for b in model.blocks() if not any(p.requires_grad for p in b.parameters())]

    # ------------------------------------------------------------------------------------------ modes

    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        if mode:
            self._freeze_modes()
        return self

    def _freeze_modes(self) -> None:
        for block in self.frozen_blocks:
            block.eval()

    def on_fit_start(self) -> None:
        # Lightning 2.6 keeps the modules' own modes during fit (it does not call train()), so the frozen
        # blocks are put in eval mode here, before the step-0 evaluation and the first update.
        self.train()
        if self.context is not None:
            self.context.device = self.device
        for recorder in self.recorders:  # built with the model before Lightning moved it to its device
            recorder.to(self.device)
        if self.start_hook is not None:
            self.start_hook(self)
        elif self.method is not None and self.context is not None:
            self.method.prepare(self.model, self.context)

    def on_train_epoch_start(self) -> None:
        self._freeze_modes()

    def on_train_end(self) -> None:
        # Divergence is caught without a per-step host sync: the loss is checked on logging steps, every
        # evaluation fails on non-finite losses (NaN weights give NaN outputs), and so does this final check.
        broken = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if broken:
            raise FloatingPointError(
                f"training diverged: non-finite weights in {broken[:3]} at step {self.global_step}"
            )

    # ------------------------------------------------------------------------------------------ step

    def _group(self, batch_idx: int) -> tuple[bool, bool, int]:
        """(first batch of an update, last batch of it, batches in it) under gradient accumulation. The last
        update of an epoch takes the batches that are left. A resumed fit's first epoch starts after the batches
        already done (``resume_skip``), at an update's boundary."""
        k = self.optim.accumulate_grad_batches
        if k == 1:
            return True, True, 1
        position = batch_idx + (self.resume_skip if self.current_epoch == 0 else 0)
        per_epoch = self.trainer.num_training_batches  # the whole epoch's batches (a resumed one yields fewer)
        start = position - position % k
        size = min(k, per_epoch - start)
        return position == start, position == start + size - 1, size

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        step = self.step_offset + self.global_step  # updates so far: this step's will be number step + 1
        first, last, group = self._group(batch_idx)
        x, y, head_ids = batch
        batches = split_by_head(self.heads, x, y, head_ids)
        if self.method is not None:
            batches += self.method.extra_batches(len(y))
        if self.trainer.world_size > 1:
            batches = self._share(batches)
        logits = self._forward(batches)
        losses: list[Tensor] = []  # summed per batch; only needed when several batches are mixed
        if len(batches) == 1:  # the common case, kept to the same ops as a plain training loop
            task_loss = F.cross_entropy(logits[0], batches[0].y)
        else:
            losses = [F.cross_entropy(out, b.y, reduction="sum") for out, b in zip(logits, batches, strict=True)]
            task_loss = torch.stack(losses).sum() / sum(len(b.y) for b in batches)
        terms = {}
        if self.method is not None:
            terms = self.method.loss_terms(self.model, TrainStep(batches, logits, step))
        loss = task_loss + sum(terms.values()) if terms else task_loss

        logging_step = (self.steps_before + step) % self.log_every_n_steps == 0
        if group > 1:  # scalars of an accumulated update: the mean over its batches, recorded at its last one
            if first:
                self._pending = {}
            if logging_step:
                for name, value in self._scalars(loss, task_loss, terms, batches, losses).items():
                    self._pending[name] = self._pending.get(name, 0) + value / group
        if logging_step and last:
            scalars = self._reduced(
                self._pending if group > 1 else self._scalars(loss, task_loss, terms, batches, losses)
            )
            value = float(scalars["loss"])
            if not math.isfinite(value):
                raise FloatingPointError(f"training diverged: loss {value} at step {step}")
            if self.scalar_sink is not None:
                self.scalar_sink(step, scalars)

        optimizer = self.optimizers()
        if first:
            optimizer.zero_grad()
        self.manual_backward(loss / group if group > 1 else loss)
        self.at_update = last
        if not last:
            return loss
        if self.method is not None:
            self.method.after_backward(self.model, step)  # e.g. A-GEM projects the gradients here
        for recorder in self.recorders:
            recorder.before_step(self.model)
        optimizer.step()
        for recorder in self.recorders:
            recorder.after_step(self.model)
        if self.method is not None:
            self.method.after_step(self.model, step)  # e.g. SI accumulates its path integral here
        return loss

    def _share(self, batches: list[HeadBatch]) -> list[HeadBatch]:
        """This process's share of every batch under DDP: examples rank, rank + world, … of the global batch
        (the new examples and the method's extra ones, which every process draws alike). The gradients DDP
        averages are then those of the global batch, exactly when the shares are equal in size."""
        rank, world = self.trainer.global_rank, self.trainer.world_size
        share = slice(rank, None, world)
        shared = [HeadBatch(b.head, take(b.x, share), b.y[share], b.source) for b in batches]
        return [b for i, b in enumerate(shared) if i == 0 or len(b.y)]  # a small extra batch may leave none here

    def _reduced(self, scalars: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training scalars averaged over the processes (logging steps only): those of the global batch."""
        if self.trainer.world_size == 1:
            return scalars
        return {name: self.trainer.strategy.reduce(value, reduce_op="mean") for name, value in scalars.items()}

    def _scalars(
        self,
        loss: Tensor,
        task_loss: Tensor,
        terms: dict[str, Tensor],
        batches: list[HeadBatch],
        losses: list[Tensor],
    ) -> dict[str, Tensor]:
        scalars = {"loss": loss.detach(), "loss_task": task_loss.detach()}
        scalars.update({f"loss_{name}": value.detach() for name, value in terms.items()})
        for source in sorted({b.source for b in batches}) if losses else []:  # mixed batches: each part's loss
            parts = [(lo, len(b.y)) for lo, b in zip(losses, batches, strict=True) if b.source == source]
            scalars[f"loss_task_{source}"] = sum(lo for lo, _ in parts).detach() / sum(n for _, n in parts)
        return scalars

    def _forward(self, batches: list[HeadBatch]) -> list[Tensor]:
        """Logits per batch. One backbone pass over all examples when shapes allow, so BatchNorm sees the
        mixed batch as one batch, as it would in a single-stream training loop."""
        if len(batches) == 1:
            return [self.model(compact(batches[0].x), batches[0].head)]
        if len({example_shape(b.x) for b in batches}) == 1:
            features = self.model.features(compact(concat([b.x for b in batches])))
            chunks = features.split([len(b.y) for b in batches])
            return [self.model.heads[b.head](f) for b, f in zip(batches, chunks, strict=True)]
        return [self.model(compact(b.x), b.head) for b in batches]

    # ------------------------------------------------------------------------------------------ optimizer

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = parameter_groups(self.model, self.optim)
        if not groups:
            raise ValueError("nothing to train: every parameter is frozen")
        if self.optim.optimizer == "sgd":
            return torch.optim.SGD(
                groups, lr=self.optim.lr, momentum=self.optim.momentum, weight_decay=self.optim.weight_decay
            )
        optimizer = torch.optim.AdamW if self.optim.optimizer == "adamw" else torch.optim.Adam
        return optimizer(groups, lr=self.optim.lr, weight_decay=self.optim.weight_decay)


def parameter_groups(model: MultiHeadNet, optim: OptimConfig) -> list[dict[str, Any]]:
    """Heads train at ``lr``; backbone block i of n (0 = bottom) at lr · backbone_lr_scale · lr_decay^(n−1−i).

    Only trainable parameters are included, so frozen ones are never touched by momentum or weight decay.
    """
    blocks = model.blocks()
    groups = []
    for i, block in enumerate(blocks):
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            scale = optim.backbone_lr_scale * optim.lr_decay ** (len(blocks) - 1 - i)
            groups.append({"params": params, "lr": optim.lr * scale, "name": f"backbone.{i}"})
    head_params = [p for p in model.heads.parameters() if p.requires_grad]
    if head_params:
        groups.append({"params": head_params, "lr": optim.lr, "name": "heads"})
    return groups
