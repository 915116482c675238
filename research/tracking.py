"""Weights & Biases through Lightning's ``WandbLogger``, kept strictly secondary to the local run store.

Offline mode (the default without a stored login) writes a real W&B run under ``<run dir>/wandb/`` and makes no
network connection; ``research sync`` (or ``wandb sync``) uploads it later. Every W&B call is guarded: a W&B
failure (at init or mid-run) is reported once and W&B is switched off for the rest of the run; it never fails
the run.

Where a run goes (:func:`resolve_destination`), for each of mode, project and entity the first that is set:
the config (``logging.wandb``, ``logging.project``, ``logging.entity``), then W&B's own environment variables
(``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_ENTITY``), then, for the mode only, a stored login (``WANDB_API_KEY``,
``WANDB_IDENTITY_TOKEN_FILE``, or the key ``wandb login`` keeps in ``~/.netrc`` / ``$NETRC`` for the W&B host)
making it ``online``; otherwise ``offline``, project ``forgetting-lab`` and W&B's default entity.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis import metrics as m  # pure functions (numpy, pandas, scipy): the report's own definitions
from analysis.summarize import OLD_TASK_METRICS  # the report's per-old-task curve metrics, by its names
from research.errors import ConfigError

if TYPE_CHECKING:  # Lightning is imported when a W&B run starts: the grid's expansion names groups without it
    from lightning.pytorch.loggers import WandbLogger

DEFAULT_PROJECT = "forgetting-lab"
MODES = ("offline", "online", "disabled")
# WANDB_MODE values W&B accepts, as the three modes here ("dryrun" is W&B's old name for offline).
ENV_MODES = {"offline": "offline", "dryrun": "offline", "online": "online", "run": "online", "disabled": "disabled"}
# logging.* keys left out of the W&B config: where the run goes (W&B shows the run's own project and entity;
# the mode actually used is in summary.json's "wandb"), what W&B already holds as the run's own name and tags,
# and display-only settings (progress bars). The group, grid, setting and logging interval stay: the UI groups
# and filters by them, and the logging interval changes which rows a run records.
NOT_IN_WANDB_CONFIG = ("wandb", "project", "entity", "run_name", "tags", "progress")
GROUP_LIMIT = 128  # characters W&B allows in a group name
TAG_LIMIT = 64  # characters W&B allows in a tag


def wandb_key(name: str) -> str:
    """A name as one W&B key segment: W&B nests keys on '.', so ``backbone.1`` becomes ``backbone_1``."""
    return name.replace(".", "_")


def tracked_name(row: Mapping[str, Any]) -> str:
    """The W&B name of a tidy measurement row: ``<role>/<task>/<metric>`` for evaluations, ``train/<name>`` for
    a training scalar (metric ``train_<name>``), ``drift/<block>/<metric>`` for weight drift (rows with a block;
    the block's dots as underscores). Live logging and the replay of a resumed run's history both name metrics
    here, so they cannot drift apart."""
    metric = str(row["metric"])
    if "block" in row:
        return f"drift/{wandb_key(str(row['block']))}/{metric}"
    if metric.startswith("train_"):
        return f"train/{metric.removeprefix('train_')}"
    return f"{row['role']}/{row['task']}/{metric}"


def trained_drift(scores: Mapping[str, float], trained_blocks: set[str]) -> dict[str, float]:
    """``scores`` without the weight drift of blocks that do not train (frozen: their drift is 0 or constant, a
    flat line per block that only clutters W&B). ``trained_blocks``: block names as in diagnostics.parquet,
    which keeps every block."""
    keep = {f"drift/{wandb_key(block)}/" for block in trained_blocks}
    return {k: v for k, v in scores.items() if not k.startswith("drift/") or k[: k.rindex("/") + 1] in keep}


def replayed_drift(drift: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drift rows of a resumed run's history that live logging would have sent to W&B: those of a block
    while it trained, read from the rows themselves (whether a block was trainable is not in a checkpoint). A
    block trains between two evaluations when its ``drift_l2`` changed; an evaluation's row is kept when the
    block trained just before or just after it."""
    by_block: dict[str, list[tuple[int, float]]] = {}
    for row in drift:
        if row["metric"] == "drift_l2":
            by_block.setdefault(str(row["block"]), []).append((int(row["step"]), float(row["value"])))
    kept: set[tuple[str, int]] = set()
    for block, points in by_block.items():
        points.sort()
        for i, (step, value) in enumerate(points):
            before = i > 0 and points[i - 1][1] != value
            after = i + 1 < len(points) and points[i + 1][1] != value
            if before or after:
                kept.add((block, step))
    return [row for row in drift if (str(row["block"]), int(row["step"])) in kept]


# --------------------------------------------------------------------------------------------- destination


@dataclass(frozen=True)
class Destination:
    """Where a run's W&B data goes, and where each value came from (``config``, an environment variable, the
    stored login, or ``default``), recorded in summary.json."""

    mode: str
    project: str
    entity: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"mode": self.mode, "project": self.project, "entity": self.entity, "sources": dict(self.sources)}


def resolve_destination(logging: Any) -> Destination:
    """W&B mode, project and entity for ``logging`` (a LoggingConfig), by the precedence in the module docstring.
    An unknown ``WANDB_MODE`` is a ConfigError (W&B itself would refuse it)."""
    env = os.environ
    sources: dict[str, str] = {}
    if logging.wandb is not None:
        mode, sources["mode"] = logging.wandb, "config"
    elif env.get("WANDB_MODE"):
        raw = env["WANDB_MODE"].strip().lower()
        if raw not in ENV_MODES:
            raise ConfigError(
                f"WANDB_MODE={env['WANDB_MODE']!r} is not a W&B mode; valid: {', '.join(ENV_MODES)} "
                "(or set logging.wandb to offline, online or disabled)"
            )
        mode, sources["mode"] = ENV_MODES[raw], "WANDB_MODE"
    else:
        login = stored_login()
        mode, sources["mode"] = ("online", login) if login else ("offline", "default")
    project, sources["project"] = _first(logging.project, env.get("WANDB_PROJECT"), "WANDB_PROJECT", DEFAULT_PROJECT)
    entity, sources["entity"] = _first(logging.entity, env.get("WANDB_ENTITY"), "WANDB_ENTITY", None)
    return Destination(mode, project, entity, sources)


def _first(configured: str | None, from_env: str | None, variable: str, default: str | None) -> tuple[Any, str]:
    if configured is not None:
        return configured, "config"
    if from_env:
        return from_env, variable
    return default, "default"


def stored_login() -> str | None:
    """Where W&B would find an API key without asking, or None: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``,
    or the netrc entry (``$NETRC``, else ``~/.netrc``) that ``wandb login`` writes for the W&B host
    (``WANDB_BASE_URL``, else the ``base_url`` of W&B's settings file in ``WANDB_CONFIG_DIR``, else W&B's
    default). Read with W&B's own netrc lookup; no network. A key W&B would reject as malformed counts as none
    (the run stays offline rather than failing to log in)."""
    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(variable):
            return variable
    try:
        import wandb
        from wandb.sdk.lib.wbauth import read_netrc_auth

        settings = wandb.Settings()
        config_dir = os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb"
        settings.settings_system = str(Path(config_dir).expanduser() / "settings")
        settings.update_from_system_settings()
        if os.environ.get("WANDB_BASE_URL"):
            settings.base_url = os.environ["WANDB_BASE_URL"]
        if read_netrc_auth(host=settings.base_url):
            return "netrc"
        if settings.api_key:
            return "wandb settings"
    except Exception:  # noqa: BLE001 - a malformed key or settings file: W&B could not log in with it either
        return None
    return None


# --------------------------------------------------------------------------------------------- what is logged


def wandb_config(config: dict[str, Any], run_id: str, git: Mapping[str, Any]) -> dict[str, Any]:
    """The W&B config of a run: its resolved config without the logging keys W&B shows elsewhere or that only
    change the display (NOT_IN_WANDB_CONFIG), with the local run directory's id and the code's git commit."""
    logging = {k: v for k, v in (config.get("logging") or {}).items() if k not in NOT_IN_WANDB_CONFIG}
    return {
        **config,
        "logging": logging,
        "run_id": run_id,
        "git": {"commit": git.get("commit"), "dirty": git.get("dirty")},
    }


def setting_group(grid: str, setting: str) -> str:
    """The W&B group of a grid's setting, ``<grid>/<setting>``: all seeds of a setting share it, so W&B's grouped
    line is their mean. Past W&B's 128 characters it is cut and ends in a hash of the whole, so two long
    settings never share a group."""
    group = f"{grid}/{setting}"
    if len(group) <= GROUP_LIMIT:
        return group
    digest = hashlib.sha256(group.encode()).hexdigest()[:10]
    return f"{group[: GROUP_LIMIT - len(digest) - 1]}~{digest}"


def short_tag(tag: str) -> str:
    """A tag W&B takes (at most 64 characters; longer ones fail the run's W&B init)."""
    return tag if len(tag) <= TAG_LIMIT else tag[: TAG_LIMIT - 1] + "…"


def accuracy_matrix(records: list[dict[str, Any]], task_ends: list[dict[str, Any]]) -> pd.DataFrame:
    """A run's accuracy matrix as the report builds it (analysis.summarize.run_accuracy_matrix): rows "start"
    (the first evaluation) and "after <task>" at each fine-tuning task's end, columns every task scored by
    ``acc`` in order of first measurement; a fine-tuning task not scored before its own end is NaN there."""
    return _matrix(records, task_ends)[0]


def _matrix(
    records: list[dict[str, Any]], task_ends: list[dict[str, Any]]
) -> tuple[pd.DataFrame, list[int], list[int]]:
    """The matrix, each task's own (boundary) row, and the columns of the fine-tuning tasks."""
    acc = pd.DataFrame([r for r in records if r["metric"] == "acc"], columns=["step", "task", "role", "value"])
    ends = task_ends or [{"task": "new tasks", "step": int(acc["step"].max())}]
    boundaries = [("start", int(acc["step"].min()))] + [(f"after {e['task']}", int(e["step"])) for e in ends]
    new_tasks = list(dict.fromkeys(acc.loc[acc["role"] == "finetune", "task"]))
    own_label = {e["task"]: f"after {e['task']}" for e in ends}
    own = {task: own_label.get(task, boundaries[-1][0]) for task in new_tasks}
    frame = acc.rename(columns={"value": "acc"})[["step", "task", "acc"]]
    matrix = m.accuracy_matrix(frame, boundaries, task_boundaries=own)
    labels = list(matrix.index)
    rows = [labels.index(own[task]) if task in own else 0 for task in matrix.columns]
    return matrix, rows, [k for k, task in enumerate(matrix.columns) if task in own]


def forgetting_summary(records: list[dict[str, Any]], task_ends: list[dict[str, Any]]) -> dict[str, float]:
    """The report's per-run numbers for a W&B summary, from the same functions (analysis.metrics):

    - ``old/<task>/initial_acc`` (step 0), ``final_acc``, ``final_drop`` (forgetting from step 0), ``peak_drop``,
      ``stability_gap`` (largest drop below step 0), ``retention``, ``forgetting_auc`` per pretraining task;
    - ``new/<task>/final_acc`` per fine-tuning task;
    - ``report/<metric>``: the report's run summary (analysis.summarize.run_summary): the curve metrics averaged
      over the tasks of their role (``old_acc``, ``new_acc``, ``final_drop`` ...) and, from the accuracy matrix,
      ``forgetting`` (Chaudhry et al. 2018), ``bwt``, ``plasticity``, ``last_task_plasticity``,
      ``finetune_tasks``.

    Undefined values (retention of a task that started at 0, forgetting with no task before the last) are left
    out rather than logged as NaN."""
    values: dict[str, float] = {}
    per_role: dict[str, dict[str, list[float]]] = {"pretrain": {}, "finetune": {}}
    acc = [r for r in records if r["metric"] == "acc"]
    for task in dict.fromkeys(r["task"] for r in acc):
        curve = sorted((int(r["step"]), float(r["value"]), r["role"]) for r in acc if r["task"] == task)
        steps, scores, role = np.array([c[0] for c in curve]), np.array([c[1] for c in curve]), curve[0][2]
        if role == "pretrain":
            values[f"old/{task}/initial_acc"] = float(scores[0])
            for name, fn in OLD_TASK_METRICS.items():
                value = _or_nan(fn, steps, scores)
                values[f"old/{task}/{'final_acc' if name == 'old_acc' else name}"] = value
                per_role["pretrain"].setdefault(name, []).append(value)
        else:
            value = m.final_accuracy(steps, scores)
            values[f"new/{task}/final_acc"] = value
            per_role["finetune"].setdefault("new_acc", []).append(value)
    for metrics in per_role.values():
        for name, task_values in metrics.items():
            finite = [v for v in task_values if not math.isnan(v)]
            values[f"report/{name}"] = float(np.mean(finite)) if finite else math.nan
    if acc:
        matrix, rows, new = _matrix(records, task_ends)
        cells = matrix.to_numpy()
        values["report/finetune_tasks"] = len(new)
        values["report/forgetting"] = _or_nan(m.average_forgetting, cells, rows)
        values["report/bwt"] = _or_nan(m.backward_transfer, cells, rows)
        if new:
            values["report/plasticity"] = m.plasticity(cells[:, new], [rows[k] for k in new])
            last = max(new, key=lambda k: (rows[k], k))  # the fine-tuning task learned last
            values["report/last_task_plasticity"] = float(cells[rows[last], last])
        values.update(_continual(acc, task_ends))
    return {k: v for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))}


def _continual(acc: list[dict[str, Any]], task_ends: list[dict[str, Any]]) -> dict[str, float]:
    """``report/min_acc`` and ``report/wc_acc`` (De Lange et al. 2023) over every evaluation, each task's boundary
    as analysis.summarize.continual_metrics takes it: step 0 for the pretraining tasks, each fine-tuning task's
    end (the last step when the run recorded no ends)."""
    frame = pd.DataFrame(acc, columns=["step", "task", "role", "value"])
    try:
        table = frame.pivot(index="step", columns="task", values="value").sort_index()
    except ValueError:  # two rows for one (step, task): not one accuracy per evaluation
        return {}
    tasks = list(dict.fromkeys(frame["task"]))
    role = dict(zip(frame["task"], frame["role"], strict=False))
    end = {e["task"]: int(e["step"]) for e in task_ends}
    first, last = int(table.index.min()), int(table.index.max())
    task_steps = [first if role[t] == "pretrain" else end.get(t, last) for t in tasks]
    args = (table.index.to_numpy(dtype=float), table[tasks].to_numpy(dtype=float), task_steps)
    return {"report/min_acc": _or_nan(m.min_accuracy, *args), "report/wc_acc": _or_nan(m.worst_case_accuracy, *args)}


def _or_nan(fn, *args) -> float:
    try:
        return float(fn(*args))
    except ValueError:  # e.g. retention of a task that started at accuracy 0
        return math.nan


# --------------------------------------------------------------------------------------------- the W&B run


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
        entity: str | None = None,
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
            from lightning.pytorch.loggers import WandbLogger

            if wandb.run is not None:  # left open by someone: Lightning would attach to it instead of starting ours
                wandb.run.finish()
            settings = wandb.Settings(console="off", x_disable_stats=True, silent=True, x_disable_machine_info=True)
            # Lightning's WandbLogger defines the step axis itself (every metric against trainer/global_step =
            # fine-tuning steps), so it is not defined again here.
            self.logger = WandbLogger(
                name=name,
                save_dir=str(run_dir),
                project=project,
                entity=entity,
                mode=mode,
                config=config,
                job_type=job_type,
                group=group,
                tags=[short_tag(t) for t in tags],
                settings=settings,
                reinit="finish_previous",
            )
            self.logger._wandb_init.pop("anonymous", None)  # deprecated in wandb; Lightning still passes it
            experiment = self._run = self.logger.experiment  # wandb.init happens here
            self.run_id = experiment.id
        except Exception as err:  # noqa: BLE001 - any W&B trouble must leave the run alone
            self._fail("init", err)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is None:
            return
        try:
            self.logger.log_metrics(metrics, step=step)
        except Exception as err:  # noqa: BLE001
            self._fail("log", err)

    def table(self, key: str, frame: pd.DataFrame) -> None:
        """Log ``frame`` as a ``wandb.Table`` under ``key`` (NaN cells as empty: W&B tables hold JSON)."""
        if self.logger is None:
            return
        try:
            import wandb

            cells = frame.astype(object).where(frame.notna(), None)
            self.logger.experiment.log(
                {key: wandb.Table(columns=[str(c) for c in frame.columns], data=cells.values.tolist())}
            )
        except Exception as err:  # noqa: BLE001
            self._fail("table", err)

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
