"""Feature distillation: an L2 pull of the backbone's features toward those of the model the task started from,
on the new task's own inputs (label-free LwF on features, Li & Hoiem 2016; DELTA's feature-map regularizer
without its attention weights, Li et al. 2019)."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from research.data.inputs import compact
from research.methods.base import FinetuneContext, MethodConfig, TrainStep
from research.methods.lwf import features_keeping_norm_statistics
from research.methods.registry import register
from research.methods.teacher import FrozenTeacher
from research.models.modes import eval_mode
from research.models.multihead import MultiHeadNet


class FeatureDistillConfig(MethodConfig):
    name: Literal["feature_distill"] = "feature_distill"
    lam: float = Field(
        0.1,
        ge=0,
        description="strength λ in λ · mean_i ‖f_θ(x_i) − f_θ₀(x_i)‖² (squared norm summed over the feature "
        "dimensions, averaged over the batch's examples; its scale follows the features' width and size)",
    )


@register
class FeatureDistill(FrozenTeacher):
    """Feature distillation: λ · mean_i ‖f_θ(x_i) − f_θ₀(x_i)‖², the backbone's features pulled to a frozen
    teacher's on each step's new inputs (label-free LwF on features, Li & Hoiem 2016, "Learning without
    Forgetting", ECCV; DELTA's feature-map term without attention, Li et al. 2019, "DELTA: Deep Learning Transfer
    using Feature Map with Attention for Convolutional Networks", ICLR).

    Anchored: the backbone's output f_θ(x), the feature vector every head reads (for ``hf`` the pooled encoder
    output of ``model.pooling``, for ``mlp``/``cnn`` the last hidden layer, for ``timm``/``torchvision``/``custom``
    what the backbone returns), to the features f_θ₀(x) of a frozen teacher on the same inputs. The term is the
    squared L2 norm of the difference **summed over the feature dimensions and averaged over the examples** of
    the batch, times λ (no 1/2), so λ's scale depends on the feature width. Logged as
    ``train_loss_feature_distill``.

    Teacher: a copy of the backbone alone (no heads) taken in ``prepare``, before the task's first update: for
    the first fine-tuning task the pretrained model (for a model loaded from outside, the loaded model itself),
    in eval mode, with ``requires_grad`` off, run under ``torch.no_grad``: its weights and BatchNorm statistics
    never move. In a sequence of fine-tuning tasks the teacher is replaced at the start of every task by the
    model as it stands then (the weights after task k−1), as LwF's teacher is the previous model in a sequence
    and as online EWC moves its anchor: every head trained so far, the pretraining heads and each earlier
    task's (all frozen), reads the features of that model, so those are the features to keep; a pretrained
    teacher throughout would instead pull the features back from what the earlier fine-tuning tasks learned
    (L2-SP keeps its pretrained anchor; this method does not).

    Pulled: the new task's batch of each step (``step.batches[0]``, compacted as the module compacts it for its
    forward), on each process's own share of it under DDP; the method adds no extra batches, and it needs no
    pretraining data, so it runs on models loaded from outside without ``pretrain.tasks``. The student's
    features come from a second forward of that batch in the model's training mode (the one the task loss is
    computed in): with dropout it draws a fresh mask, so the term is not zero at θ = θ₀, and BatchNorm
    normalises with the batch's statistics without folding them into its running statistics a second time
    (LwF's helper); the teacher normalises with its running statistics.

    Cost: memory for one extra copy of the backbone (its parameters and buffers; no gradients, no optimizer
    state), which the method's state also carries into every checkpoint (and, in a sequence, one per finished
    task for a resume); compute per step: one teacher forward without gradients and one extra student forward
    and backward through the backbone. With λ = 0 neither forward runs and no term is returned: the run is
    plain fine-tuning exactly.

    Departures: DELTA sums squared differences of intermediate convolutional feature maps, weighted per channel
    by attention weights from the pretrained model's sensitivity, and adds an L2 penalty on the new head; here
    the weights are all 1, the one feature map is the backbone's output, and the new head is unpenalised.
    LwF distils the old heads' softmax outputs; here the features themselves are matched, so no labels, heads or
    temperature are involved.
    """

    name = "feature_distill"
    Config = FeatureDistillConfig
    config: FeatureDistillConfig
    neutral = {"lam": 0.0}
    supports_sequences = True
    supports_ddp = True  # the same teacher on every process; each pulls its own share of the batch

    def __init__(self, config: FeatureDistillConfig) -> None:
        super().__init__(config)
        self._teachers: list[dict[str, Any]] = []

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        # The teacher is the model as this task starts: the pretrained model for the first task, the model after
        # task k−1 later. A resume replays prepare on each task's start weights, so it makes the same teacher.
        teacher = copy.deepcopy(model.backbone)
        for p in teacher.parameters():
            p.grad = None
        self.freeze(teacher)  # with the saved teacher's weights when resuming
        self.feature_dim = model.feature_dim
        self._teachers.append({"task_index": ctx.task_index, "task": ctx.task.name})

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        if self.config.lam == 0:
            return {}
        assert self.teacher is not None, "feature_distill: prepare() must run before loss_terms()"
        x = compact(step.batches[0].x)  # the new task's batch, as the module fed it to the model
        with torch.no_grad(), eval_mode(self.teacher):
            target = self.teacher(x)
        features = features_keeping_norm_statistics(model, x)
        return {"feature_distill": self.config.lam * feature_penalty(features, target)}

    def info(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "lam": self.config.lam,
            "penalty": "lam * mean over examples of ||f(x) - f0(x)||^2, summed over feature dimensions",
            "features": "the backbone's output (what the heads read)",
            "pulled": "the new task's batch of each step (no extra batches)",
            "teacher": "frozen copy of the backbone (eval mode, no gradients) taken at the start of each task",
            "teachers": list(self._teachers),
        }
        if self.teacher is not None:
            facts["feature_dim"] = self.feature_dim
            facts["teacher_parameters"] = sum(p.numel() for p in self.teacher.parameters())
            facts["teacher_bytes"] = sum(t.numel() * t.element_size() for t in self.teacher.state_dict().values())
        return facts


def feature_penalty(features: Tensor, target: Tensor) -> Tensor:
    """mean_i ‖features_i − target_i‖²: squared L2 norm over every dimension after the first, averaged over the
    examples (computed in float32, also under mixed precision)."""
    difference = features.float() - target.float()
    return difference.pow(2).flatten(1).sum(1).mean()
