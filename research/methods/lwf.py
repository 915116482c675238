"""LwF (Li & Hoiem 2017, "Learning without Forgetting", TPAMI 40(12)): distil the old-task outputs of the model
the task started from (the pretrained model; in a sequence, the model after the previous task) on the new task's
inputs into the model being fine-tuned."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from research.data.inputs import Inputs, compact
from research.data.tasks import TaskSet
from research.methods.base import FinetuneContext, MethodConfig, TrainStep
from research.methods.registry import register
from research.methods.teacher import FrozenTeacher
from research.models.multihead import MultiHeadNet


class LwFConfig(MethodConfig):
    name: Literal["lwf"] = "lwf"
    alpha: float = Field(1.0, ge=0, description="weight of the distillation term (λ_o in the paper)")
    temperature: float = Field(2.0, gt=0, description="softmax temperature T of both teacher and student")
    train_old_heads: bool = Field(
        True, description="train the old heads θ_o jointly (as in the paper), driven only by the distillation term"
    )


@register
class LwF(FrozenTeacher):
    """LwF: α · Σ_h KL(softmax(z_h^teacher / T) ‖ softmax(z_h^student / T)), averaged over the batch.

    Distilled: the pretrained model (a frozen copy taken in ``prepare``, run in eval mode without gradients)
    into the model being fine-tuned, on the new task's inputs of each step (no old data is used). The outputs
    compared are the old ones: with per-task heads, each pretraining task's head (one KL per head, summed); with a
    shared head, its first units, those of the pretraining classes. Logged as ``train_loss_lwf``.

    The form is Avalanche 0.6's ``LearningWithoutForgetting`` exactly: ``kl_div(..., reduction="batchmean")``
    and no T² factor (Hinton et al.'s T² gradient correction is not applied; α absorbs it). The paper writes the
    term as the cross-entropy −Σ y'_o log ŷ'_o with T = 2; the KL differs from it by the teacher's entropy, a
    constant, so the gradients are the same and the term is 0 while the student equals the teacher (with
    BatchNorm not quite: the training student normalises with the batch's statistics, the eval-mode teacher with
    its running ones). Avalanche's teacher is a deepcopy left in train mode; ours is in eval mode, like the
    paper's recorded responses Y_o, so it is deterministic and its statistics never move.

    With ``train_old_heads`` the old heads are unfrozen (by default fine-tuning freezes them) and learn from the
    distillation term only, since the task loss never reaches them. With α = 0 the teacher is never run and no
    term is returned, so ``alpha=0, train_old_heads=false`` is plain fine-tuning.

    In a sequence of fine-tuning tasks (the paper's Sec. 3 "add new tasks" setting, applied task after task):
    the teacher is replaced at the start of every task by the model as it stands then, the model after task
    k − 1 (as ``feature_distill``'s is), and every earlier head is distilled: the pretraining tasks' heads and
    those of the fine-tuning tasks already learned (one KL per head, summed; with ``train_old_heads`` all of
    them train). With a shared head, its outputs that existed before the current task grew new ones: the
    classes of the pretraining tasks and of the tasks learned so far. The current and later tasks' heads are
    not in the teacher. Only one teacher is held at a time; ``info`` lists what each task distilled.
    """

    name = "lwf"
    supports_ddp = True
    needs_pretraining_data = True
    why_pretraining_data = "it distils the pretraining tasks' heads"
    Config = LwFConfig
    neutral = {"alpha": 0.0, "train_old_heads": False}
    config: LwFConfig
    supports_sequences = True

    teacher: MultiHeadNet | None = None

    def __init__(self, config: LwFConfig) -> None:
        super().__init__(config)
        self._distilled: list[dict[str, Any]] = []

    def configure_trainable(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        if self.config.train_old_heads:
            for head in earlier_outputs(ctx.tasks, ctx.task_index):
                model.heads[head].requires_grad_(True)

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        # Old outputs per head: a per-task head's every unit, or a shared head's units from before this task.
        self.old_units = earlier_outputs(ctx.tasks, ctx.task_index)
        # The teacher is the model as this task starts; a resume replays prepare on each task's start weights.
        teacher = copy.deepcopy(model)
        for head in [h for h in teacher.heads if h not in self.old_units]:
            del teacher.heads[head]  # this and later tasks' heads: the teacher has nothing to say about them
        self.freeze(teacher)  # resuming: the saved teacher, not the current student
        self._distilled.append({"task_index": ctx.task_index, "task": ctx.task.name, "heads": dict(self.old_units)})

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        if self.config.alpha == 0:
            return {}
        assert self.teacher is not None, "lwf: prepare() must run before loss_terms()"
        new = step.batches[0]  # the new task's batch; replayed batches (if any) are not distilled
        x = compact(new.x)
        with torch.no_grad():
            teacher_features = self.teacher.features(x)
        student_features = None
        total = new.y.new_zeros((), dtype=teacher_features.dtype)
        for head, units in self.old_units.items():
            if head == new.head:  # a shared head: the step's own logits, so no second forward
                student = step.logits[0][:, :units]
            else:
                if student_features is None:
                    student_features = features_keeping_norm_statistics(model, x)
                student = model.heads[head](student_features)[:, :units]
            with torch.no_grad():
                teacher = self.teacher.heads[head](teacher_features)[:, :units]
            total = total + distillation_loss(student, teacher, self.config.temperature)
        return {"lwf": self.config.alpha * total}

    def info(self) -> dict[str, Any]:
        return {
            "teacher": "frozen copy of the model (eval mode, no gradients) taken at the start of each task",
            "distilled": list(self._distilled),
        }


def earlier_outputs(tasks: TaskSet, index: int) -> dict[str, int]:
    """The outputs that existed before fine-tuning task ``index``, by head: every pretraining head, and in a
    sequence every earlier fine-tuning task's head, each with its size then (a shared head: the classes seen
    before this task, not the ones it adds). The pretraining heads for the first task."""
    if index == 0:
        return tasks.pretrain_head_sizes()
    sizes = tasks.head_sizes_at(index - 1)  # as they stood while the previous task trained
    learned = dict.fromkeys(t.head for t in tasks.learned_before(index))
    return {head: sizes[head] for head in learned}


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T)) summed over units, averaged over the batch."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean")


def features_keeping_norm_statistics(model: MultiHeadNet, x: Inputs) -> Tensor:
    """The backbone's features of ``x`` for the old heads. This is a second forward of the batch the module
    already ran: BatchNorm normalises it with the same batch statistics but must not fold them into its running
    statistics a second time, so it runs untracked (PyTorch then passes no running buffers to batch_norm).
    Dropout draws a fresh mask here, as in Avalanche's multi-head LwF."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    tracked = [m.track_running_stats for m in norms]
    try:
        for m in norms:
            m.track_running_stats = False
        return model.features(x)
    finally:
        for m, flag in zip(norms, tracked, strict=True):
            m.track_running_stats = flag
