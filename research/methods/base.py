"""The interface between the generic fine-tuning module and an anti-forgetting method.

Methods never own the optimizer step. The generic module (research.training.module) computes the task loss on
the new task's batch and does the update; a method contributes only through these optional hooks:

- ``configure_trainable``: freeze parts of the model before the optimizer is built;
- ``prepare``: once, before the first update (snapshot θ₀, estimate a Fisher, fill a replay buffer);
- ``extra_batches``: more examples mixed into every training step (replay);
- ``loss_terms``: extra loss terms, returned by name so each is logged under its own name;
- ``after_backward`` / ``after_step``: only where a method needs them, around the update the module performs
  (gradient projection such as A-GEM; importance accumulation such as SI);
- ``end_task``: after each fine-tuning task's last update and evaluation, extra measurements of the model as
  that task left it (WiSE-FT's per-task sweep), returned as tidy rows for ``<run dir>/method.parquet``;
- ``finish``: after the last update, extra measurements of the fine-tuned model (WiSE-FT's interpolation
  sweep), returned as tidy rows that the run stores as ``<run dir>/method.parquet``;
- ``info``: what the run's summary should record about the method (estimator used, timings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from research.data.inputs import Inputs, compact, take, to_device
from research.data.tasks import Task, TaskSet
from research.models.extent import Extent
from research.models.multihead import MultiHeadNet


class MethodConfig(BaseModel):
    """Base of every method's hyperparameters: typed, with defaults, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    name: str


@dataclass
class HeadBatch:
    """Examples scored by one head. ``source`` says where they came from (``new`` or ``replay``)."""

    head: str
    x: Inputs  # a tensor, or a mapping of tensors (token inputs): research.data.inputs
    y: Tensor
    source: str = "new"


def split_by_head(heads: list[str], x: Inputs, y: Tensor, head_ids: Tensor, source: str = "new") -> list[HeadBatch]:
    """Examples tagged with indices into ``heads`` as one HeadBatch per head present, in ``heads`` order."""
    if len(heads) == 1:
        return [HeadBatch(heads[0], x, y, source)]
    return [
        HeadBatch(head, take(x, head_ids == i), y[head_ids == i], source)
        for i, head in enumerate(heads)
        if bool((head_ids == i).any())
    ]


@dataclass
class FinetuneContext:
    """What a method may look at when it prepares: the model, every task, and the run's settings."""

    model: MultiHeadNet
    tasks: TaskSet
    task: Task  # the fine-tuning task being trained on now
    seed: int
    batch_size: int
    pretrained_names: list[str]  # parameters that came from the pretrained model (backbone, old heads)
    new_names: list[str]  # parameters created for fine-tuning (the new tasks' heads)
    # How many leading rows of each parameter the pretrained model had (research.models.extent): a parameter's
    # full size, except for a shared head, which grows rows for new classes; parameters created for fine-tuning
    # are absent. "What came pretrained" is this map, not ``pretrained_names``, wherever rows matter.
    pretrained_rows: Extent = field(default_factory=dict)
    # The same for the model just before the current task (before its head grew): what was pretrained or trained
    # on an earlier task. Methods that anchor to "everything learned so far" (online EWC, SI) use this one.
    earlier_rows: Extent = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # What methods recorded during pretraining, by record name (``Method.records_in_pretraining``), e.g. SI's
    # path integral {"path_integral": {"omega.<param>", "start.<param>"}}; empty for a model not pretrained here.
    pretrain_records: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    task_index: int = 0  # position of ``task`` in the sequence of fine-tuning tasks
    # Unlabelled inputs that stand in for pretraining data where a method can use them (MAS's ``reference``): each
    # ability's inputs by ability name (research.abilities), on the CPU as the ability stores them.
    references: dict[str, Inputs] = field(default_factory=dict)

    def pretrain_train_batches(self, batch_size: int, max_samples: int | None = None) -> list[HeadBatch]:
        """The pretraining tasks' training data in batches of one head each, optionally a seeded subsample
        of ``max_samples`` examples spread over the tasks in proportion to their sizes."""
        return self.train_batches(self.tasks.pretrain, batch_size, max_samples)

    def train_batches(self, tasks: list[Task], batch_size: int, max_samples: int | None = None) -> list[HeadBatch]:
        """These tasks' training data in batches of one head each (optionally a seeded, proportional subsample)."""
        sizes = [len(t.splits["train"][1]) for t in tasks]
        total = sum(sizes)
        generator = torch.Generator().manual_seed(self.seed)
        batches = []
        for task, size in zip(tasks, sizes, strict=True):
            x, y = task.splits["train"]
            if max_samples is not None and max_samples < total:
                keep = max(1, round(max_samples * size / total))
                idx = torch.randperm(size, generator=generator)[:keep].sort().values
                x, y = take(x, idx), y[idx]
            for start in range(0, len(y), batch_size):
                batches.append(
                    HeadBatch(
                        task.head,
                        compact(to_device(take(x, slice(start, start + batch_size)), self.device)),
                        y[start : start + batch_size].to(self.device),
                        "pretrain",
                    )
                )
        return batches


@dataclass
class TrainStep:
    """One training step as the method sees it: the batches (new first) and each batch's logits."""

    batches: list[HeadBatch]
    logits: list[Tensor]
    step: int


class Method:
    """Base class. Subclasses set ``name`` and ``Config`` and override only the hooks they need."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    # Hyperparameter values that switch the method's effect off, so that it must behave exactly like plain
    # fine-tuning (the registry-generated tests check this); None where a method has no such setting.
    neutral: ClassVar[dict[str, Any] | None] = None
    why_no_neutral: ClassVar[str] = ""  # where ``neutral`` is None: why no setting can switch the method off
    # What a method records while the lab pretrains (SI's path integral): a class built with the model being
    # pretrained, with ``to(device)``, ``before_step(model)`` (gradients in ``p.grad``), ``after_step(model)``
    # and ``state_dict()``. The pretraining stage runs every registered method's recorder and stores each
    # state under ``pretraining_record`` in its cache entry; fine-tuning finds it in ``ctx.pretrain_records``.
    # A model not pretrained here (a user checkpoint, a model loaded from outside) has no record, so such a
    # method refuses to run on it.
    records_in_pretraining: ClassVar[type | None] = None
    pretraining_record: ClassVar[str] = ""
    # What the method needs besides the new task's data: the pretraining tasks' data and heads (EWC's Fisher,
    # replay's buffer, LwF's teacher outputs...), or nothing. A model loaded from outside has pretraining tasks
    # only where the user gives them, and a method that needs them refuses to run without (never does nothing).
    needs_pretraining_data: ClassVar[bool] = False
    why_pretraining_data: ClassVar[str] = ""  # what the pretraining data is for, said in the refusal
    # True for methods whose hooks are defined for a sequence of fine-tuning tasks: ``prepare`` then runs at the
    # start of every task, with ``ctx.task`` and ``ctx.task_index`` set to the task about to be trained.
    supports_sequences: ClassVar[bool] = False
    # True for methods that are correct under DDP (train.strategy=ddp): every process prepares the same state
    # (importances, anchors, buffers and memories computed from the same data with the same seeds), draws the
    # same extra examples and takes its share of them, and the hooks see gradients already averaged. A method
    # that changes what trains during a fit (LP-FT) is not: DDP fixes the set of synchronised parameters when
    # it wraps the model.
    supports_ddp: ClassVar[bool] = False

    @classmethod
    def label_free_reference(cls, config: dict[str, Any]) -> str | None:
        """The ability whose inputs this method's settings ``config`` use in place of pretraining data (MAS's
        ``reference``), or None: with one, a method that needs pretraining data runs without pretraining tasks."""
        return None

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    def configure_trainable(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        """Freeze what this method keeps fixed (``requires_grad_(False)``). Default: train everything the
        generic module left trainable (backbone and the new task's head)."""

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        """Runs once before the first update, on the device the model trains on."""

    def extra_batches(self, batch_size: int) -> list[HeadBatch]:
        """Examples to mix into the current step, alongside the new task's batch of ``batch_size``."""
        return []

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        """Extra terms added to the task loss, by name; each is recorded as ``train_loss_<name>`` in
        metrics.parquet and ``train/loss_<name>`` in W&B."""
        return {}

    def after_backward(self, model: MultiHeadNet, step: int) -> None:
        """Gradients of this step's loss are in ``p.grad``; a method may modify them (never step itself)."""

    def after_step(self, model: MultiHeadNet, step: int) -> None:
        """The optimizer has applied update number ``step + 1``."""

    def end_task(
        self, model: MultiHeadNet, ctx: FinetuneContext, score: Callable[[MultiHeadNet], dict[str, dict[str, float]]]
    ) -> list[dict[str, Any]]:
        """After the last update and evaluation of fine-tuning task ``ctx.task`` (every task, the last included,
        before ``finish``); ``score`` as in ``finish``. Must leave ``model`` unchanged. Returns rows for
        method.parquet; a checkpoint keeps them, so a resumed run does not measure an earlier task's end again."""
        return []

    def finish(
        self, model: MultiHeadNet, ctx: FinetuneContext, score: Callable[[MultiHeadNet], dict[str, dict[str, float]]]
    ) -> list[dict[str, Any]]:
        """After the last update and the final evaluation. ``score(m)`` gives every task's {"acc", "loss"} for a
        model ``m``. Must leave ``model`` unchanged (work on a copy). Returns rows for method.parquet."""
        return []

    def info(self) -> dict[str, Any]:
        """Facts for summary.json, e.g. which Fisher estimator ran and how long it took."""
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors the method needs to resume (anchors, importances, buffers)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"method '{self.name}' keeps no state but was given {sorted(state)}")
