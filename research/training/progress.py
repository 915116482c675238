"""What a training stage shows while it runs: a Lightning progress bar on a terminal, plain lines elsewhere.

Both name the stage and its task ("pretrain digits_0_4", "finetune 2/3 digits_7_9") and show the latest scores:
the training loss while pretraining, and while fine-tuning the accuracy at the last evaluation, old (mean over the
pretraining tasks), earlier (mean over the sequence's earlier fine-tuning tasks, from the second task on) and new
(the task being trained). The scores are read from what the stage measures anyway (the evaluator's records, the
module's logged scalars), so showing them adds no host sync to any step.

Where stderr is a terminal the display is a ``TQDMProgressBar`` subclass. Anywhere else (a cluster log, a pipe,
``tee``, a notebook) carriage-return bars would leave thousands of fragments, so :class:`StageLines` writes a
plain line instead: when the stage starts, then at an epoch's end or an evaluation once ``LINE_SECONDS`` have
passed since the last line, and when it ends. A stage of any length writes a few lines a minute at most.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TextIO

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, TQDMProgressBar
from torch import Tensor

from research.data.tasks import TaskSet

LINE_SECONDS = 30.0  # the least time between two lines of a log (the first and last line of a stage excepted)


class Status(Protocol):
    """The scores a display shows next to the stage's position."""

    text: str

    def poll(self) -> bool:
        """Take in what was measured since the last call; whether ``text`` changed. Called after every batch,
        so it must cost next to nothing when nothing new came."""
        ...


@dataclass
class TrainLoss:
    """The training loss at the last logging step (pretraining has no evaluations). ``sink`` is the module's
    ``scalar_sink``: the module calls it on logging steps only, after it has read the loss on the host itself."""

    text: str = ""
    _latest: float | None = None
    _shown: float | None = None

    def sink(self, step: int, scalars: dict[str, Tensor]) -> None:
        self._latest = float(scalars["loss"])

    def poll(self) -> bool:
        if self._latest is None or self._latest == self._shown:
            return False
        self._shown = self._latest
        self.text = f"loss {self._latest:.4f}"
        return True


@dataclass
class EvalScores:
    """Accuracy at the last evaluation, from the evaluator's tidy records (``Evaluator.records``, which the
    fine-tuning stage shares with the training scalars): ``old`` is the mean over the pretraining tasks,
    ``earlier`` the mean over the fine-tuning tasks before the current one, ``new`` the current task. Only rows
    appended since the last poll are read, so a poll with nothing new is one ``len``."""

    records: list[dict[str, Any]]
    old: Sequence[str]
    earlier: Sequence[str]
    new: str
    text: str = ""
    _seen: int = 0
    _step: int = -1
    _scores: dict[str, float] = field(default_factory=dict)

    def poll(self) -> bool:
        size = len(self.records)
        if size == self._seen:
            return False
        if size < self._seen:  # the list was refilled (a resumed run): read it again
            self._seen, self._step, self._scores = 0, -1, {}
        wanted = {*self.old, *self.earlier, self.new}
        for row in self.records[self._seen : size]:
            if row["metric"] != "acc" or row["task"] not in wanted:
                continue  # training scalars, losses, abilities
            if row["step"] > self._step:  # a new evaluation
                self._step, self._scores = row["step"], {}
            if row["step"] == self._step:
                self._scores[row["task"]] = float(row["value"])
        self._seen = size
        text = self.describe()
        changed, self.text = text != self.text, text
        return changed

    def describe(self) -> str:
        parts = []
        for label, tasks in (("old", self.old), ("earlier", self.earlier), ("new", [self.new])):
            scores = [self._scores[t] for t in tasks if t in self._scores]
            if scores and len(scores) == len(tasks):  # a mean over part of the tasks would mislead
                parts.append(f"{label} {sum(scores) / len(scores):.3f}")
        return " ".join(parts)


@dataclass
class Stage:
    """One fit as a display names it: ``name`` ("pretrain", "finetune 2/3"), the task(s), where it stands."""

    name: str
    task: str
    steps_per_epoch: int  # optimizer updates per epoch
    total_steps: int  # updates of the whole stage (of this task, in a sequence)
    status: Status
    steps_done: int = 0  # updates made before this fit (a resumed run)

    @property
    def label(self) -> str:
        return f"{self.name} {self.task}"

    @property
    def epochs(self) -> int:
        return max(1, math.ceil(self.total_steps / self.steps_per_epoch))

    def epoch(self, trainer: L.Trainer) -> int:
        """The 1-based epoch the fit is in, counted over the whole stage."""
        return min(self.epochs, self.steps_done // self.steps_per_epoch + trainer.current_epoch + 1)

    def step(self, trainer: L.Trainer) -> int:
        return self.steps_done + trainer.global_step


def stage_name(stage: str, index: int, count: int) -> str:
    """``finetune`` for a single fine-tuning task, ``finetune 2/3`` for the second of a sequence of three."""
    return f"{stage} {index + 1}/{count}" if count > 1 else stage


def progress_mode(enabled: bool, stream: TextIO) -> Literal["off", "bar", "lines"]:
    """A bar where ``stream`` is a terminal; plain lines anywhere else (a file, a pipe, a notebook's stream)."""
    if not enabled:
        return "off"
    isatty = getattr(stream, "isatty", None)
    try:
        return "bar" if isatty is not None and isatty() else "lines"
    except ValueError:  # a closed stream
        return "lines"


def make_progress(enabled: bool, stage: Stage, stream: TextIO | None = None) -> ProgressBar | None:
    """The display for ``stage`` on ``stream`` (stderr by default, so that stdout keeps only results), or None
    when progress is off."""
    stream = stream or sys.stderr
    mode = progress_mode(enabled, stream)
    if mode == "off":
        return None
    return StageBar(stage, stream) if mode == "bar" else StageLines(stage, stream)


class StageBar(TQDMProgressBar):
    """Lightning's tqdm bar, on stderr, described as "<stage> <task> epoch e/E" with the stage's scores as its
    postfix. Lightning's own bar redraws after every batch; this one lets tqdm redraw at most every
    ``mininterval`` (0.1 s), which keeps a fast loop fast."""

    def __init__(self, stage: Stage, stream: TextIO) -> None:
        super().__init__()
        self.stage, self.stream = stage, stream

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=self.stage.label,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=self.stream,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {}  # no version number, no logged metrics: the postfix is the stage's scores

    def _show_status(self, refresh: bool) -> None:
        self.stage.status.poll()
        self.train_progress_bar.set_postfix_str(self.stage.status.text, refresh=refresh)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._show_status(refresh=False)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.set_description(f"{self.stage.label} epoch {self.stage.epoch(trainer)}/{self.stage.epochs}", refresh=False)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if bar.disable:
            return
        if self.stage.status.poll():
            bar.set_postfix_str(self.stage.status.text, refresh=False)
        bar.update(batch_idx + 1 - bar.n)  # draws only when tqdm's mininterval has passed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self._show_status(refresh=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:  # the evaluator's last evaluation has just run
            self._show_status(refresh=True)
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Close the bar so that the error message starts on a line of its own.
        if self._train_progress_bar is not None:
            self._train_progress_bar.close()


class StageLines(ProgressBar):
    """Plain lines for a log: "<stage> <task>: epoch e/E, step s/S, <scores>, <elapsed>" when the stage starts,
    at an epoch's end or after an evaluation once ``interval`` seconds have passed since the last line, and when
    it ends."""

    def __init__(self, stage: Stage, stream: TextIO, interval: float = LINE_SECONDS) -> None:
        super().__init__()
        self.stage, self.stream, self.interval = stage, stream, interval
        self._enabled = True
        self._started = self._last = 0.0

    def disable(self) -> None:  # Lightning disables the display in every process but the first (DDP)
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def line(self, trainer: L.Trainer, done: bool = False) -> str:
        stage, status = self.stage, self.stage.status.text
        elapsed = f"{'done in ' if done else ''}{time.monotonic() - self._started:.0f} s"
        return (
            f"{stage.label}: epoch {stage.epoch(trainer)}/{stage.epochs}, step {stage.step(trainer)}/"
            f"{stage.total_steps}" + (f", {status}" if status else "") + f", {elapsed}"
        )

    def _write(self, trainer: L.Trainer, done: bool = False) -> None:
        self._last = time.monotonic()
        print(self.line(trainer, done), file=self.stream, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            self._started = time.monotonic()
            self.stage.status.poll()  # the step-0 evaluation, when there is one
            self._write(trainer)

    def _due(self) -> bool:
        return time.monotonic() - self._last >= self.interval

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._enabled and self.stage.status.poll() and self._due():
            self._write(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and self._due():
            self.stage.status.poll()
            self._write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            self.stage.status.poll()  # the evaluator's last evaluation has just run
            self._write(trainer, done=True)


def finetune_stage(
    tasks: TaskSet, index: int, steps_per_epoch: int, total: int, done: int, records: list[dict[str, Any]]
) -> Stage:
    """Fine-tuning task ``index`` as its display shows it, with the accuracies read from ``records`` (the
    evaluator's). ``done``: the task's updates before this fit (a resumed run)."""
    task = tasks.finetune[index]
    old, earlier = [t.name for t in tasks.pretrain], [t.name for t in tasks.finetune[:index]]
    scores = EvalScores(records, old, earlier, task.name)
    return Stage(stage_name("finetune", index, len(tasks.finetune)), task.name, steps_per_epoch, total, scores, done)
