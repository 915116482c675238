"""Weights & Biases through Lightning's ``WandbLogger``, kept strictly secondary to the local run store.

Offline mode (the default without an API key) writes a real W&B run under ``<run dir>/wandb/`` and makes no
network connection; ``wandb sync`` uploads it later. Every W&B call is guarded: a W&B failure (at init or
mid-run) is reported once and W&B is switched off for the rest of the run; it never fails the run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def tracked_name(row: Mapping[str, Any]) -> str:
    """The W&B name of a tidy measurement row: ``<role>/<task>/<metric>`` for evaluations, ``train/<name>`` for
    a training scalar (metric ``train_<name>``), ``drift/<block>/<metric>`` for weight drift (rows with a block).
    Live logging and the replay of a resumed run's history both name metrics here, so they cannot drift apart."""
    metric = str(row["metric"])
    if "block" in row:
        return f"drift/{row['block']}/{metric}"
    if metric.startswith("train_"):
        return f"train/{metric.removeprefix('train_')}"
    return f"{row['role']}/{row['task']}/{metric}"


class Tracker:
    """Wraps one W&B run. ``logger`` is None when W&B is disabled or has failed."""

    def __init__(
        self,
        mode: str,
        run_dir: Path,
        project: str,
        name: str,
        config: dict[str, Any],
        job_type: str,
        tags: list[str],
        group: str | None = None,
    ) -> None:
        self.mode = mode
        self.problem: str | None = None
        self.logger: WandbLogger | None = None
        self._run: Any = None  # the wandb Run, kept to close it if W&B fails part-way
        self.run_id: str | None = None
        if mode == "disabled":
            return
        try:
            import wandb

            if wandb.run is not None:  # left open by someone: Lightning would attach to it instead of starting ours
                wandb.run.finish()
            settings = wandb.Settings(console="off", x_disable_stats=True, silent=True, x_disable_machine_info=True)
            self.logger = WandbLogger(
                name=name,
                save_dir=str(run_dir),
                project=project,
                mode=mode,
                config=config,
                job_type=job_type,
                group=group,
                tags=tags,
                settings=settings,
                reinit="finish_previous",
            )
            self.logger._wandb_init.pop("anonymous", None)  # deprecated in wandb; Lightning still passes it
            experiment = self._run = self.logger.experiment  # wandb.init happens here
            self.run_id = experiment.id
            # Every metric plots against fine-tuning steps, not W&B's internal step counter.
            experiment.define_metric("trainer/global_step")
            experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        except Exception as err:  # noqa: BLE001 - any W&B trouble must leave the run alone
            self._fail("init", err)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is None:
            return
        try:
            self.logger.log_metrics(metrics, step=step)
        except Exception as err:  # noqa: BLE001
            self._fail("log", err)

    def summary(self, values: dict[str, Any]) -> None:
        if self.logger is None:
            return
        try:
            self.logger.experiment.summary.update(values)
        except Exception as err:  # noqa: BLE001
            self._fail("summary", err)

    def finish(self, exit_code: int = 0) -> None:
        if self.logger is None:
            return
        try:
            self.logger.experiment.finish(exit_code=exit_code)
        except Exception as err:  # noqa: BLE001
            self._fail("finish", err)
        self.logger = self._run = None

    def _fail(self, stage: str, err: Exception) -> None:
        # Whole message on one line: a first line alone can say nothing ("1 validation error for Settings").
        lines = [line for line in str(err).splitlines() if not line.strip().startswith("For further information")]
        reason = " ".join(" ".join(lines).split())[:300] or "no message"
        self.problem = f"W&B {stage} failed ({type(err).__name__}: {reason}); the local run store is unaffected"
        print(f"warning: {self.problem}", file=sys.stderr)
        self.logger = None
        run, self._run = self._run, None
        if run is not None:  # close it: the next WandbLogger in this process (a grid worker's next run) would attach
            with contextlib.suppress(Exception):  # already reported; nothing more to do
                run.finish(exit_code=1)
