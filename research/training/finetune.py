"""The fine-tuning stage: pretrained weights + new head, trained on the new task under a method, with every
task scored at step 0 and every N steps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from research.abilities import build_abilities
from research.config import ExperimentConfig
from research.data.batches import TensorBatches
from research.data.tasks import Task, TaskSet
from research.evaluation.drift import trained_blocks
from research.evaluation.evaluator import Evaluator, epoch_of_step, eval_sets, score
from research.methods.base import FinetuneContext, Method
from research.models.adapters import adapter
from research.models.extent import Extent, extent_of
from research.models.multihead import MultiHeadNet
from research.tracking import Tracker, tracked_name, trained_drift
from research.training.module import ClassifierModule
from research.training.pretrain import load_pretrained, pretrained_skeleton
from research.training.progress import finetune_stage, make_progress
from research.training.resume import (
    Expected,
    TaskHistory,
    UnusableCheckpoint,
    cpu_copy,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from research.training.trainer import make_trainer


def finetune_model(
    cfg: ExperimentConfig,
    tasks: TaskSet,
    method: Method,
    state: dict[str, Tensor] | None,
    records: dict[str, dict[str, Tensor]] | None = None,
) -> tuple[MultiHeadNet, FinetuneContext]:
    """The model ready for its first fine-tuning task: pretrained weights (when given), a new seeded head for
    each new task (or the shared head grown for the first task's new classes), old heads frozen (they only score
    their tasks), and the method's own freezing applied.

    Called with ``state=None`` to check a config (e.g. ``partial``'s depth) before anything is written."""
    model = pretrained_skeleton(cfg, tasks)
    if state is not None:
        load_pretrained(model, state, cfg, "pretrained weights")
    pretrained_rows = extent_of(model)
    pretrained_names = list(pretrained_rows)
    generator = torch.Generator().manual_seed(cfg.seed)
    for task in tasks.finetune:  # per-task heads exist from the start, so later tasks are scored all along
        if task.head not in model.heads:
            model.add_head(task.head, tasks.head_sizes[task.head], generator=generator)
    new_names = [name for name, _ in model.named_parameters() if name not in pretrained_names]
    context = FinetuneContext(
        model=model,
        tasks=tasks,
        task=tasks.finetune[0],
        seed=cfg.seed,
        batch_size=cfg.train.batch_size,
        pretrained_names=pretrained_names,
        new_names=new_names,
        pretrained_rows=pretrained_rows,
        pretrain_records=dict(records or {}),
    )
    start_task(model, context, method, 0)
    return model, context


def start_task(model: MultiHeadNet, context: FinetuneContext, method: Method, index: int) -> None:
    """Make fine-tuning task ``index`` the current one: a shared head grows outputs for the classes this task
    brings (never for later tasks' classes), its head trains, every other head is frozen (old heads only score
    their tasks), the backbone trains, and the method applies its own freezing. ``context.earlier_rows``
    records what existed before this task's growth."""
    tasks = context.tasks
    task = tasks.finetune[index]
    context.earlier_rows = _rows_before(model, tasks, index, context.pretrained_rows)
    for head, size in tasks.head_sizes_at(index).items():  # a no-op unless the task brings new classes
        model.resize_head(head, size, generator=_growth_generator(context.seed, index))
    context.task = task
    context.task_index = index
    model.backbone.requires_grad_(True)
    for name, head in model.heads.items():
        head.requires_grad_(name == task.head)
    method.configure_trainable(model, context)


def _growth_generator(seed: int, index: int) -> torch.Generator:
    """The seeded stream of the rows a shared head grows at fine-tuning task ``index``. It depends on the run's
    seed and the task alone, so a resumed run that replays earlier tasks' starts draws the very same rows; the
    first task's is the run seed's own stream, as for new per-task heads."""
    if index == 0:
        return torch.Generator().manual_seed(seed)
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def _rows_before(model: MultiHeadNet, tasks: TaskSet, index: int, pretrained_rows: Extent) -> Extent:
    """The extent of what had a value before fine-tuning task ``index`` (research.models.extent): the pretrained
    model for the first task; later, the model as it stands, except the heads of this and later tasks, which
    have never been trained (they exist from the start only so that every task can be scored)."""
    if index == 0:
        return dict(pretrained_rows)
    learned = {t.head for t in tasks.pretrain + tasks.finetune[:index]}
    untrained = tuple(f"heads.{t.head}." for t in tasks.finetune[index:] if t.head not in learned)
    return {name: rows for name, rows in extent_of(model).items() if not name.startswith(untrained)}


@dataclass
class FinetuneOutcome:
    records: list[dict[str, Any]] = field(default_factory=list)  # evaluations + training scalars, tidy
    steps: int = 0
    epochs: int = 0  # epochs completed over all tasks so far
    seconds: float = 0.0
    eval_seconds: float = 0.0
    ability_seconds: float = 0.0  # the part of eval_seconds spent scoring abilities
    prepare_seconds: float = 0.0  # the method's preparation before each task (Fisher, importances, buffers, ...)
    method_state_bytes: int = 0  # what the method keeps beside the model (anchors, Fisher, buffer, teacher)
    evaluations: int = 0
    method_info: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)  # what the backbone is (research.models.adapters)
    ability_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # each ability's data (research.abilities)
    method_rows: list[dict[str, Any]] = field(default_factory=list)  # Method.end_task/finish's, for method.parquet
    drift: list[dict[str, Any]] = field(default_factory=list)  # weight drift per block, for diagnostics.parquet
    task_ends: list[dict[str, Any]] = field(default_factory=list)  # each fine-tuning task's last step, in order
    history: TaskHistory = field(default_factory=TaskHistory)  # what a resume replays (resume.py)
    resumes: list[dict[str, Any]] = field(default_factory=list)  # each resume of this run: from which step
    checkpoint_step: int | None = None  # the step of the run's latest checkpoint (saved or resumed from)


@dataclass
class Checkpointing:
    """Where the fine-tuning stage saves checkpoints (how often is ``cfg.checkpoint``), and the checkpoint to
    resume from."""

    run_dir: Path
    run_id: str
    resume: dict[str, Any] | None = None
    commit: str | None = None  # the code's git commit, kept in each checkpoint
    save: bool = True  # False in a DDP run's further processes: rank 0 saves


def run_finetune(
    cfg: ExperimentConfig,
    tasks: TaskSet,
    method: Method,
    state: dict[str, Tensor],
    tracker: Tracker,
    outcome: FinetuneOutcome,
    records: dict[str, dict[str, Tensor]] | None = None,
    checkpointing: Checkpointing | None = None,
) -> FinetuneOutcome:
    """Train on each fine-tuning task in turn (one Lightning fit each) on one continuous step axis; fills
    ``outcome`` as it goes, so a failure mid-run still leaves what was measured. With ``checkpointing`` it
    saves checkpoints as it goes, and resumes from ``checkpointing.resume`` when one is given."""
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, context = finetune_model(cfg, tasks, method, state, records)
    stage = FinetuneStage(cfg, tasks, method, model, context, tracker, outcome, checkpointing, started)

    def scorer(m: MultiHeadNet) -> dict[str, dict[str, float]]:
        return score(m, stage.evaluator.sets, cfg.eval.batch_size)

    try:
        for index in range(stage.first_task, len(tasks.finetune)):
            if index > 0:
                start_task(model, context, method, index)
            stage.fit_task(index)
            outcome.task_ends.append({"task": tasks.finetune[index].name, "step": outcome.steps})
            outcome.method_rows.extend(method.end_task(model, context, scorer))
    finally:
        outcome.seconds = stage.elapsed()
        outcome.eval_seconds = stage.evaluator.seconds
        outcome.ability_seconds = stage.evaluator.ability_seconds
        outcome.evaluations = stage.evaluator.evaluations
    outcome.model_info = adapter(cfg.model.arch).describe(cfg.model, model.backbone)
    outcome.method_rows.extend(method.finish(model, context, scorer))
    outcome.method_info = method.info()
    outcome.method_state_bytes = tensor_bytes(method.state_dict())
    return outcome


def tensor_bytes(state: Any) -> int:
    """Bytes of every tensor in a (nested) state: what a method keeps beside the model, as a checkpoint saves it."""
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(tensor_bytes(v) for v in state)
    return 0


def task_schedule(cfg: ExperimentConfig, task: Task) -> tuple[TensorBatches, int, int]:
    """A fine-tuning task's seeded batches, its updates per epoch, and its updates in all."""
    x, y = task.splits["train"]
    batches = TensorBatches(
        x,
        y,
        torch.zeros(len(y), dtype=torch.long),
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        workers=cfg.data.workers,
    )
    steps_per_epoch = -(-len(batches) // cfg.train.accumulate_grad_batches)  # the last update takes what is left
    total = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    return batches, steps_per_epoch, total


def expected_checkpoint(cfg: ExperimentConfig, tasks: TaskSet, method: Method) -> Expected:
    """What this run's checkpoint must match (research.training.resume.checkpoint_problem): each task's
    updates, and the model's tensors as the first task starts (built without weights)."""
    model, _ = finetune_model(cfg, tasks, method, state=None)
    return Expected(
        task_updates=[task_schedule(cfg, task)[2] for task in tasks.finetune],
        model={name: tuple(t.shape) for name, t in model.state_dict().items()},
    )


class FinetuneStage:
    """One run's fine-tuning: the model, the method, the evaluator, and the bookkeeping that checkpoints and
    resumes need."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        tasks: TaskSet,
        method: Method,
        model: MultiHeadNet,
        context: FinetuneContext,
        tracker: Tracker,
        outcome: FinetuneOutcome,
        checkpointing: Checkpointing | None,
        started: float,
    ) -> None:
        self.cfg, self.tasks, self.method, self.model, self.context = cfg, tasks, method, model, context
        self.tracker, self.outcome, self.checkpointing, self.started = tracker, outcome, checkpointing, started
        abilities = build_abilities(cfg, adapter(cfg.model.arch).input_encoder(cfg.model)) if cfg.abilities else []
        outcome.ability_info = {a.name: a.info() for a in abilities}
        context.references = {a.name: a.inputs for a in abilities}  # label-free stand-ins (MAS's reference)
        self.evaluator = Evaluator(
            eval_sets(tasks.all, cfg.eval.split, cfg.eval.max_samples, cfg.data.split_seed),
            cfg.eval.every_n_steps,
            cfg.eval.batch_size,
            # W&B gets weight drift only for the blocks that train (diagnostics.parquet keeps every block).
            lambda step, scores: tracker.log(trained_drift(scores, trained_blocks(model)), step),
            abilities,
        )
        self.evaluator.records = outcome.records  # measurements land in the outcome as they are taken
        self.evaluator.drift = outcome.drift
        self.previous_seconds = 0.0  # fine-tuning time of the attempts before a resume
        self.resume = checkpointing.resume if checkpointing is not None else None
        self.first_task, self.resumed_steps = 0, 0
        if self.resume is not None:
            self._load_progress(self.resume)

    def elapsed(self) -> float:
        return self.previous_seconds + time.perf_counter() - self.started

    # ------------------------------------------------------------------------------------------ one task

    def fit_task(self, index: int) -> None:
        """Task ``index``'s training (from where a checkpoint left it, when resuming). Steps and epochs continue
        from the previous task's (``outcome.steps``)."""
        cfg, task, outcome = self.cfg, self.tasks.finetune[index], self.outcome
        resume = self.resume if index == self.first_task else None
        done = self.resumed_steps if resume is not None else 0  # this task's updates before this fit
        batches, steps_per_epoch, total = task_schedule(cfg, task)
        accumulate = cfg.train.accumulate_grad_batches
        epochs_done, updates_into_epoch = divmod(done, steps_per_epoch)
        batches.resume_at(epochs_done * len(batches) + updates_into_epoch * accumulate)
        step_offset, epoch_offset = outcome.steps, outcome.epochs
        self.evaluator.start_segment(step_offset, epoch_offset, steps_per_epoch, done)

        def on_train_scalars(step: int, scalars: dict[str, Tensor]) -> None:
            epoch = epoch_of_step(step, steps_per_epoch, epoch_offset)
            step += step_offset
            values = {name: float(value) for name, value in scalars.items()}
            diverged = {name: v for name, v in values.items() if not math.isfinite(v)}
            if diverged:  # stop now: every further step would only spread NaNs through the weights
                raise FloatingPointError(f"training diverged at step {step}: {diverged}")
            where = {"step": step, "epoch": epoch, "task": task.name, "role": "finetune"}
            rows = [{**where, "metric": f"train_{name}", "value": v} for name, v in values.items()]
            outcome.records.extend(rows)
            self.tracker.log({tracked_name(row): row["value"] for row in rows}, step)

        module = ClassifierModule(
            self.model,
            [task.head],
            cfg.train,
            self.method,
            self.context,
            cfg.logging.log_every_n_steps,
            on_train_scalars,
            step_offset=done,
            start_hook=(lambda m: self._restore(m, resume)) if resume is not None else self._prepare,
            steps_before=step_offset,
            resume_skip=updates_into_epoch * accumulate,
        )
        callbacks: list[L.Callback] = [self.evaluator]  # evaluations first: a checkpoint holds its step's scores
        saving = self.checkpointing is not None and self.checkpointing.save
        if saving and (cfg.checkpoint.every_n_steps or cfg.checkpoint.every_n_seconds):
            callbacks.append(_Saver(self, index, done, total))
        # What is left of the task: the epochs from the one the checkpoint fell in, and the remaining steps.
        remaining = cfg.train.model_copy(
            update={
                "epochs": cfg.train.epochs - done // steps_per_epoch,
                "max_steps": cfg.train.max_steps - done if cfg.train.max_steps else None,
            }
        )
        stage = finetune_stage(self.tasks, index, steps_per_epoch, total, done, self.evaluator.records)
        trainer = make_trainer(remaining, cfg.device, make_progress(cfg.logging.progress, stage), callbacks)
        try:
            trainer.fit(module, train_dataloaders=batches)
        finally:
            outcome.steps = step_offset + done + trainer.global_step
            outcome.epochs = epoch_offset + -(-(done + trainer.global_step) // steps_per_epoch)
        if index < len(self.tasks.finetune) - 1:  # the next task's resume replays this task's end state
            self.outcome.history.method_ends.append(cpu_copy(self.method.state_dict()))

    # ------------------------------------------------------------------------------------------ fit start

    def _prepare(self, module: ClassifierModule) -> None:
        """A task's start: remember what it started from (for a resume), then let the method prepare."""
        self.outcome.history.starts.append(cpu_copy(self.model.state_dict()))
        self.outcome.history.rngs.append(rng_state())
        started = time.perf_counter()
        self.method.prepare(self.model, self.context)
        self.outcome.prepare_seconds += time.perf_counter() - started

    def _restore(self, module: ClassifierModule, resume: dict[str, Any]) -> None:
        """Rebuild the state of the checkpoint step: replay the method's preparation of every task so far on
        the weights each started from, then load the checkpoint's weights, optimizer and method state."""
        try:
            self._replay(module, resume)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
            # What checkpoint_problem cannot see before the fit: a method state that does not fit the method,
            # an optimizer state that does not fit the optimizer.
            raise UnusableCheckpoint(f"checkpoint does not fit this run: {type(err).__name__}: {err}") from err

    def _replay(self, module: ClassifierModule, resume: dict[str, Any]) -> None:
        model, context, method, history = self.model, self.context, self.method, self.outcome.history
        device = module.device
        for j in range(self.first_task + 1):
            start_task(model, context, method, j)
            model.load_state_dict(history.starts[j])
            set_rng_state(history.rngs[j])
            method.prepare(model, context)
            if j < self.first_task:
                method.load_state_dict(_to(history.method_ends[j], device))
        model.load_state_dict(resume["model"])
        method.load_state_dict(_to(resume["method"], device))
        module.trainer.optimizers[0].load_state_dict(resume["optimizer"])
        self.evaluator.restore(
            {**resume["evaluator"], "start": _to(resume["evaluator"]["start"], device)}, resume["global_step"]
        )
        set_rng_state(resume["rng"])

    def _load_progress(self, resume: dict[str, Any]) -> None:
        """The measurements, positions and history a checkpoint carries, before the first fit."""
        outcome = self.outcome
        self.first_task, self.resumed_steps = resume["task_index"], resume["task_step"]
        outcome.records[:] = resume["records"]
        outcome.drift[:] = resume["drift"]
        outcome.task_ends[:] = resume["task_ends"]
        outcome.method_rows[:] = resume.get("method_rows", [])  # absent from checkpoints written before end_task
        outcome.steps, outcome.epochs = resume["steps_before"], resume["epochs_before"]
        outcome.history = TaskHistory(resume["task_starts"], resume["method_ends"], resume["task_rngs"])
        outcome.resumes = [*resume["resumes"], {"from_step": resume["global_step"]}]
        outcome.checkpoint_step = resume["global_step"]
        self.previous_seconds = resume["finetune_seconds"]

    # ------------------------------------------------------------------------------------------ saving

    def save_checkpoint(self, trainer: L.Trainer, index: int, task_step: int) -> None:
        assert self.checkpointing is not None
        outcome = self.outcome
        save_checkpoint(
            self.checkpointing.run_dir,
            {
                "run_id": self.checkpointing.run_id,
                "commit": self.checkpointing.commit,
                "task_index": index,
                "task_step": task_step,
                "global_step": outcome.steps + task_step,
                "steps_before": outcome.steps,
                "epochs_before": outcome.epochs,
                "task_ends": outcome.task_ends,
                "method_rows": outcome.method_rows,
                "records": outcome.records,
                "drift": outcome.drift,
                "evaluator": {**self.evaluator.state(), "start": cpu_copy(self.evaluator.state()["start"])},
                "finetune_seconds": self.elapsed(),
                "model": cpu_copy(self.model.state_dict()),
                "optimizer": trainer.optimizers[0].state_dict(),
                "method": cpu_copy(self.method.state_dict()),
                "task_starts": outcome.history.starts,
                "method_ends": outcome.history.method_ends,
                "task_rngs": outcome.history.rngs,
                "rng": rng_state(),
                "resumes": outcome.resumes,
            },
        )
        outcome.checkpoint_step = outcome.steps + task_step


class _Saver(L.Callback):
    """Saves a checkpoint every N updates of a task and/or once every so many seconds of training, after that
    step's evaluation; never at the task's last update (the task's end follows at once, and a resume there
    would have nothing left to fit)."""

    def __init__(self, stage: FinetuneStage, index: int, done: int, total: int) -> None:
        self.stage, self.index, self.done, self.total = stage, index, done, total
        self.last_saved = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        every = self.stage.cfg.checkpoint
        task_step = self.done + trainer.global_step
        due_by_steps = every.every_n_steps > 0 and task_step % every.every_n_steps == 0
        due_by_time = 0 < every.every_n_seconds <= time.monotonic() - self.last_saved
        if (due_by_steps or due_by_time) and task_step < self.total and pl_module.at_update:
            self.stage.save_checkpoint(trainer, self.index, task_step)
            self.last_saved = time.monotonic()


def _to(state: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {name: tensor.to(device) for name, tensor in state.items()}
