"""The fine-tuning stage: pretrained weights + new head, trained on the new task under a method, with every
task scored at step 0 and every N steps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor

from research.config import ExperimentConfig
from research.data.batches import TensorBatches
from research.data.tasks import Task, TaskSet
from research.evaluation.evaluator import Evaluator, epoch_of_step, eval_sets, score
from research.methods.base import FinetuneContext, Method
from research.models.multihead import MultiHeadNet
from research.tracking import Tracker
from research.training.checkpoints import load_into
from research.training.module import ClassifierModule
from research.training.pretrain import pretrained_skeleton
from research.training.trainer import make_trainer


def finetune_model(
    cfg: ExperimentConfig,
    tasks: TaskSet,
    method: Method,
    state: dict[str, Tensor] | None,
    path_integral: dict[str, Tensor] | None = None,
) -> tuple[MultiHeadNet, FinetuneContext]:
    """The model ready for fine-tuning: pretrained weights (when given), a new seeded head for the new task,
    old heads frozen (they only score their tasks), and the method's own freezing applied.

    Called with ``state=None`` to check a config (e.g. ``partial``'s depth) before anything is written."""
    model = pretrained_skeleton(cfg, tasks)
    if state is not None:
        load_into(model, state, "pretrained weights")
    pretrained_names = [name for name, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(cfg.seed)
    for task in tasks.finetune:
        if task.head not in model.heads:
            model.add_head(task.head, tasks.head_sizes[task.head], generator=generator)
        else:  # a shared head: outputs for the new task's new classes, if any
            model.grow_head(task.head, tasks.head_sizes[task.head], generator=generator)
    new_names = [name for name, _ in model.named_parameters() if name not in pretrained_names]
    context = FinetuneContext(
        model=model,
        tasks=tasks,
        task=tasks.finetune[0],
        seed=cfg.seed,
        batch_size=cfg.train.batch_size,
        pretrained_names=pretrained_names,
        new_names=new_names,
        pretrain_path_integral=path_integral,
    )
    start_task(model, context, method, 0)
    return model, context


def start_task(model: MultiHeadNet, context: FinetuneContext, method: Method, index: int) -> None:
    """Make fine-tuning task ``index`` the current one: its head trains, every other head is frozen (old heads
    only score their tasks), the backbone trains, and the method applies its own freezing."""
    task = context.tasks.finetune[index]
    context.task = task
    context.task_index = index
    model.backbone.requires_grad_(True)
    for name, head in model.heads.items():
        head.requires_grad_(name == task.head)
    method.configure_trainable(model, context)


@dataclass
class FinetuneOutcome:
    records: list[dict[str, Any]] = field(default_factory=list)  # evaluations + training scalars, tidy
    steps: int = 0
    epochs: int = 0  # epochs completed over all tasks so far
    seconds: float = 0.0
    eval_seconds: float = 0.0
    evaluations: int = 0
    method_info: dict[str, Any] = field(default_factory=dict)
    method_rows: list[dict[str, Any]] = field(default_factory=list)  # from Method.finish, for method.parquet
    drift: list[dict[str, Any]] = field(default_factory=list)  # weight drift per block, for diagnostics.parquet
    task_ends: list[dict[str, Any]] = field(default_factory=list)  # each fine-tuning task's last step, in order


def run_finetune(
    cfg: ExperimentConfig,
    tasks: TaskSet,
    method: Method,
    state: dict[str, Tensor],
    tracker: Tracker,
    outcome: FinetuneOutcome,
    path_integral: dict[str, Tensor] | None = None,
) -> FinetuneOutcome:
    """Train on each fine-tuning task in turn (one Lightning fit each) on one continuous step axis; fills
    ``outcome`` as it goes, so a failure mid-run still leaves what was measured."""
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, context = finetune_model(cfg, tasks, method, state, path_integral)

    def on_scores(step: int, scores: dict[str, float]) -> None:
        tracker.log(scores, step)

    evaluator = Evaluator(
        eval_sets(tasks.all, tasks.head_sizes, cfg.eval.split, cfg.eval.max_samples, cfg.data.split_seed),
        cfg.eval.every_n_steps,
        cfg.eval.batch_size,
        on_scores,
    )
    evaluator.records = outcome.records  # measurements land in the outcome as they are taken
    evaluator.drift = outcome.drift
    try:
        for index, task in enumerate(tasks.finetune):
            if index > 0:
                start_task(model, context, method, index)
            _fit_task(cfg, task, model, method, context, evaluator, tracker, outcome)
            outcome.task_ends.append({"task": task.name, "step": outcome.steps})
    finally:
        outcome.seconds = time.perf_counter() - started
        outcome.eval_seconds = evaluator.seconds
        outcome.evaluations = evaluator.evaluations
    outcome.method_rows = method.finish(model, context, lambda m: score(m, evaluator.sets, cfg.eval.batch_size))
    outcome.method_info = method.info()
    return outcome


def _fit_task(
    cfg: ExperimentConfig,
    task: Task,
    model: MultiHeadNet,
    method: Method,
    context: FinetuneContext,
    evaluator: Evaluator,
    tracker: Tracker,
    outcome: FinetuneOutcome,
) -> None:
    """One task's training. Steps and epochs continue from the previous task's (``outcome.steps``)."""
    x, y = task.splits["train"]
    batches = TensorBatches(x, y, torch.zeros(len(y), dtype=torch.long), batch_size=cfg.train.batch_size, seed=cfg.seed)
    step_offset, epoch_offset = outcome.steps, outcome.epochs
    evaluator.start_segment(step_offset, epoch_offset, len(batches))

    def on_train_scalars(step: int, scalars: dict[str, Tensor]) -> None:
        epoch = epoch_of_step(step, len(batches), epoch_offset)
        step += step_offset
        values = {name: float(value) for name, value in scalars.items()}
        diverged = {name: v for name, v in values.items() if not math.isfinite(v)}
        if diverged:  # stop now: every further step would only spread NaNs through the weights
            raise FloatingPointError(f"training diverged at step {step}: {diverged}")
        for name, value in values.items():
            outcome.records.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "task": task.name,
                    "role": "finetune",
                    "metric": f"train_{name}",
                    "value": value,
                }
            )
        tracker.log({f"train/{name}": v for name, v in values.items()}, step)

    module = ClassifierModule(
        model, [task.head], cfg.train, method, context, cfg.logging.log_every_n_steps, on_train_scalars
    )
    trainer = make_trainer(cfg.train, cfg.device, cfg.logging.progress, [evaluator])
    try:
        trainer.fit(module, train_dataloaders=batches)
    finally:
        outcome.steps = step_offset + trainer.global_step
        outcome.epochs = epoch_offset + -(-trainer.global_step // len(batches))
