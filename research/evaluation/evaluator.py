"""Scoring every task during fine-tuning: the measurements forgetting curves are made of.

``Evaluator`` is a Lightning callback that scores every task (pretraining and fine-tuning) at step 0, before
the first update, then every ``every_n_steps`` optimizer steps, and once more at the end. It never disturbs
training: it runs in inference mode with the model in eval mode, restores each submodule's own train/eval
flag afterwards (so BatchNorm statistics and dropout behave as before), and draws no random numbers (the
optional subsample of a large eval set is fixed once, with its own seeded generator).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from research.abilities import Ability
from research.abilities.base import ModelView
from research.data.inputs import Inputs, compact, take, to_device
from research.data.tasks import Task
from research.evaluation.drift import extend_snapshot, weight_drift
from research.models.modes import eval_mode
from research.models.multihead import MultiHeadNet
from research.tracking import tracked_name


@dataclass
class EvalSet:
    task: Task
    x: Inputs
    y: Tensor
    accuracy: MulticlassAccuracy | None = field(default=None, repr=False)  # built once per head width

    def __post_init__(self) -> None:
        self.classes_needed = int(self.y.max()) + 1 if len(self.y) else 0  # outputs the head must have

    def accuracy_metric(self, num_classes: int, device: torch.device) -> MulticlassAccuracy:
        """Micro accuracy over the head's current outputs (a shared head grows as classes arrive)."""
        if self.accuracy is None or self.accuracy.device != device or self.accuracy.num_classes != num_classes:
            self.accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro").to(device)
        self.accuracy.reset()
        return self.accuracy


def eval_sets(tasks: list[Task], split: str, max_samples: int | None, seed: int) -> list[EvalSet]:
    """Each task's evaluation split, subsampled to ``max_samples`` with a fixed seed when it is larger."""
    sets = []
    for i, task in enumerate(tasks):
        x, y = task.splits[split]
        if max_samples is not None and len(y) > max_samples:
            generator = torch.Generator().manual_seed(seed * 1_000 + i)
            idx = torch.randperm(len(y), generator=generator)[:max_samples].sort().values
            x, y = take(x, idx), y[idx]
        sets.append(EvalSet(task, x, y))
    return sets


def scorable(model: MultiHeadNet, s: EvalSet) -> bool:
    """Whether the model can score this task yet. In a class-incremental sequence a shared head has outputs only
    for the classes seen so far, so a later task is scored from its own start on (van de Ven et al. 2022)."""
    return s.task.head in model.heads and model.heads[s.task.head].out_features >= s.classes_needed


@torch.inference_mode()
def score(model: MultiHeadNet, sets: list[EvalSet], batch_size: int) -> dict[str, dict[str, float]]:
    """Accuracy and mean cross-entropy of every set the model can score (see ``scorable``), in eval mode;
    restores every module's own mode."""
    device = next(model.parameters()).device
    results = {}
    with eval_mode(model):
        for s in sets:
            if not scorable(model, s):
                continue
            accuracy = s.accuracy_metric(model.heads[s.task.head].out_features, device)
            # A plain sum: torchmetrics' MeanMetric drops NaN batches by default, which would hide divergence.
            loss_sum = torch.zeros((), device=device)
            for start in range(0, len(s.y), batch_size):
                x = compact(to_device(take(s.x, slice(start, start + batch_size)), device, non_blocking=True))
                y = s.y[start : start + batch_size].to(device, non_blocking=True)
                logits = model(x, s.task.head)
                accuracy.update(logits, y)
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
            results[s.task.name] = {"acc": float(accuracy.compute()), "loss": float(loss_sum) / len(s.y)}
    return results


def epoch_of_step(step: int, steps_per_epoch: int, epoch_offset: int = 0) -> int:
    """The epoch column of a row at ``step``: the 0-based epoch in which the step-th update happened (step 0,
    before any update, belongs to epoch 0). Evaluation rows and training-scalar rows share it. In a sequence of
    fine-tuning tasks, ``step`` counts within the current task and ``epoch_offset`` is the epochs of the tasks
    before; the task's step 0 is the previous task's last update, so it belongs to the previous epoch."""
    if step == 0 and epoch_offset > 0:
        return epoch_offset - 1
    return epoch_offset + max(step - 1, 0) // steps_per_epoch


Record = dict[str, object]


class Evaluator(L.Callback):
    """Scores every task at step 0, every ``every_n_steps`` optimizer steps, and at the end of training,
    and with them every ability of the loaded model (research.abilities: rows with ``role: pretrain``, the ability
    as ``task`` and the kind's metrics).

    Each measurement becomes tidy records (step, epoch, task, role, metric, value) in ``self.records`` and,
    through ``on_scores``, goes to whatever else wants it (the W&B logger). With each evaluation it also records
    how far every top-level block has drifted from its step-0 weights (``self.drift``: step, epoch, block,
    metric, value), the weight-space side of the forgetting curve.
    """

    def __init__(
        self,
        sets: list[EvalSet],
        every_n_steps: int,
        batch_size: int,
        on_scores: Callable[[int, dict[str, float]], None] | None = None,
        abilities: list[Ability] | None = None,
    ) -> None:
        self.sets = sets
        self.abilities = list(abilities or [])
        self.start_segment(step_offset=0, epoch_offset=0, steps_per_epoch=1)  # each task's fit sets its own
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.on_scores = on_scores
        self.records: list[Record] = []
        self.drift: list[Record] = []
        self._start: dict[str, Tensor] | None = None
        self.seconds = 0.0
        self.ability_seconds = 0.0  # the part of ``seconds`` spent scoring abilities
        self.evaluations = 0
        self._last_step: int | None = None

    def start_segment(self, step_offset: int, epoch_offset: int, steps_per_epoch: int, done: int = 0) -> None:
        """Fine-tuning tasks train one after another (one Lightning fit each) on one step axis: a fit's steps
        and epochs count on from where the previous task's ended. ``done``: updates of this task made before
        this fit (a resumed run), whose measurements are already in ``records``."""
        self.step_offset, self.epoch_offset, self.steps_per_epoch = step_offset, epoch_offset, steps_per_epoch
        self.done = done

    def task_step(self, trainer: L.Trainer) -> int:
        return self.done + trainer.global_step

    def state(self) -> dict[str, object]:
        """What a resumed run needs besides the records: the drift reference and the running totals."""
        return {
            "start": self._start,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "ability_seconds": self.ability_seconds,
            "abilities": {a.name: a.state_dict() for a in self.abilities},
        }

    def restore(self, state: dict[str, object], step: int) -> None:
        """Continue from a checkpoint taken at ``step``; that step's evaluation, if it had one, is in the
        records, and the resumed fit's first step is not a new measurement point."""
        self._start = state["start"]  # type: ignore[assignment]
        self.evaluations = int(state["evaluations"])  # type: ignore[call-overload]
        self.seconds = float(state["seconds"])  # type: ignore[arg-type]
        self.ability_seconds = float(state.get("ability_seconds", 0.0))  # type: ignore[arg-type]
        saved: dict[str, dict[str, Tensor]] = state.get("abilities", {})  # type: ignore[assignment]
        for ability in self.abilities:
            ability.load_state_dict(saved.get(ability.name, {}))
        self._last_step = step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Drift is measured from the weights before the very first update; rows a shared head grew since (new
        # classes of a later task) from their values when they were added.
        self._start = extend_snapshot(self._start, pl_module.model)
        self.evaluate(trainer, pl_module)  # the model before this task's first update (step 0: pretrained)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if (self.step_offset + self.task_step(trainer)) % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = self.step_offset + self.task_step(trainer)
        if step == self._last_step:
            return
        self._last_step = step
        started = time.perf_counter()
        results = score(pl_module.model, self.sets, self.batch_size)  # type: ignore[arg-type]
        epoch = epoch_of_step(self.task_step(trainer), self.steps_per_epoch, self.epoch_offset)
        flat: dict[str, float] = {}
        for s in self.sets:
            for metric, value in results.get(s.task.name, {}).items():  # a task not scorable yet has no rows
                row = {"step": step, "epoch": epoch, "task": s.task.name, "role": s.task.role, "metric": metric}
                self.records.append({**row, "value": value})
                flat[tracked_name(row)] = value
        view = ModelView(pl_module.model, self.batch_size)
        abilities_started = time.perf_counter()
        for ability in self.abilities:  # the loaded model's other abilities, from its features
            values = ability.score(view)
            for metric, value in values.items():
                row = {"step": step, "epoch": epoch, "task": ability.name, "role": "pretrain", "metric": metric}
                self.records.append({**row, "value": value})
                flat[tracked_name(row)] = value
        self.ability_seconds += time.perf_counter() - abilities_started
        if self._start is not None:
            for block, values in weight_drift(pl_module.model, self._start).items():
                for metric, value in values.items():
                    row = {"step": step, "epoch": epoch, "block": block, "metric": metric, "value": value}
                    self.drift.append(row)
                    flat[tracked_name(row)] = value
        self.seconds += time.perf_counter() - started
        self.evaluations += 1
        if self.on_scores is not None:
            self.on_scores(step, flat)
        broken = {k: v for k, v in flat.items() if k.endswith("/loss") and not math.isfinite(v)}
        if broken:  # non-finite outputs mean non-finite weights: the run has diverged
            raise FloatingPointError(f"evaluation at step {step} gave non-finite losses: {broken}")
