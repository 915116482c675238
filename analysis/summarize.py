"""From the tidy run tables to the numbers a paper reports: per-run forgetting metrics, then per setting over
seeds (mean, sample standard deviation, Student-t 95 % interval, and the number of seeds).

Roles: ``pretrain`` tasks are the model's original abilities ("old"), ``finetune`` tasks the new ones ("new").
Per pretraining task and run (definitions and sources in :mod:`analysis.metrics`):
    old_acc         final accuracy
    final_drop      step-0 accuracy − final accuracy
    max_drop        best accuracy seen − final accuracy
    stability_gap   step-0 accuracy − lowest accuracy during fine-tuning (De Lange et al. 2023)
    retention       final accuracy / step-0 accuracy
    forgetting_auc  mean drop below the step-0 accuracy over fine-tuning (area under the forgetting curve)
Per new task and run: new_acc, its final accuracy (plasticity). Run-level values average over the tasks of a
role; ``bwt`` (backward transfer, Lopez-Paz & Ranzato 2017) is defined for sequences of ≥ 2 new tasks.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analysis import metrics as m
from analysis.load import RunSet

OLD_TASK_METRICS = {
    "old_acc": lambda steps, acc: float(acc[-1]),
    "final_drop": m.final_drop,
    "max_drop": m.max_drop,
    "stability_gap": m.stability_gap,
    "retention": m.retention,
    "forgetting_auc": m.forgetting_auc,
}
# (column, header, higher is better) in the order tables show them.
REPORTED = [
    ("old_acc", "old tasks: final acc", True),
    ("new_acc", "new task: final acc", True),
    ("final_drop", "forgetting (final drop)", False),
    ("max_drop", "forgetting (max drop)", False),
    ("stability_gap", "stability gap", False),
    ("retention", "retention", True),
    ("forgetting_auc", "forgetting AUC", False),
    ("bwt", "BWT (sequences)", True),
]


def accuracy_curves(runs: RunSet) -> pd.DataFrame:
    """Accuracy of every task at every evaluation: ``run_id, setting, method, seed, step, task, role, value``."""
    acc = runs.metrics[runs.metrics["metric"] == "acc"][["run_id", "step", "task", "role", "value"]]
    return runs.with_runs(acc).sort_values(["run_id", "task", "step"], kind="stable").reset_index(drop=True)


def task_metrics(runs: RunSet) -> pd.DataFrame:
    """One row per run and task: ``run_id, setting, method, seed, task, role, metric, value``."""
    rows = []
    for (run_id, task, role), curve in accuracy_curves(runs).groupby(["run_id", "task", "role"], sort=False):
        steps, acc = curve["step"].to_numpy(), curve["value"].to_numpy()
        if role == "pretrain":
            for name, fn in OLD_TASK_METRICS.items():
                rows.append((run_id, task, role, name, _or_nan(fn, steps, acc)))
        else:
            rows.append((run_id, task, role, "new_acc", m.plasticity(steps, acc)))
    frame = pd.DataFrame(rows, columns=["run_id", "task", "role", "metric", "value"])
    return runs.with_runs(frame)


def run_summary(runs: RunSet) -> pd.DataFrame:
    """One row per run: ``run_id, setting, method, seed`` and every reported metric, averaged over the tasks of
    its role."""
    per_task = task_metrics(runs)
    wide = per_task.pivot_table(index="run_id", columns="metric", values="value", aggfunc="mean", sort=False)
    wide["bwt"] = [sequence_bwt(runs, run_id) for run_id in wide.index]
    wide = wide.reset_index()
    return runs.with_runs(wide)[["run_id", "setting", "method", "seed", *[c for c, _, _ in REPORTED if c in wide]]]


def sequence_bwt(runs: RunSet, run_id: str) -> float:
    """Backward transfer over a run's fine-tuning sequence, from its accuracy matrix; NaN for a single task."""
    matrix = run_accuracy_matrix(runs, run_id)
    new_tasks = [t for t in matrix.columns if t in set(_new_tasks(runs, run_id))]
    if matrix.shape[0] < 3 or len(new_tasks) < 2:
        return float("nan")
    square = matrix.iloc[1:][new_tasks].to_numpy()  # rows after each new task, columns the new tasks
    return m.backward_transfer(square)


def run_accuracy_matrix(runs: RunSet, run_id: str) -> pd.DataFrame:
    """Rows: the start and the end of each fine-tuning task; columns: every task (old first)."""
    row = runs.runs.set_index("run_id").loc[run_id]
    ends = json.loads(row["task_ends"]) if isinstance(row.get("task_ends"), str) else []
    acc = runs.metrics[(runs.metrics["run_id"] == run_id) & (runs.metrics["metric"] == "acc")]
    if not ends:  # data without task boundaries (e.g. from W&B): one new task, ending at the last evaluation
        ends = [{"task": "new tasks", "step": int(acc["step"].max())}]
    boundaries = [("start", int(acc["step"].min()))] + [(f"after {e['task']}", int(e["step"])) for e in ends]
    frame = acc.rename(columns={"value": "acc"})[["step", "task", "acc"]]
    return m.accuracy_matrix(frame, boundaries)


def setting_summary(summary: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per setting: ``setting, method, n`` and for each metric ``<metric>_mean, _std, _ci_low, _ci_high``.
    Settings keep the order of their first run in ``summary``."""
    out = summary[["setting", "method"]].drop_duplicates("setting").reset_index(drop=True)
    for column, _, _ in REPORTED:
        if column not in summary or summary[column].isna().all():
            continue
        # Settings without the metric (e.g. BWT for a single new task) get NaN rather than a row of nothing.
        stats = m.aggregate_seeds(summary[summary[column].notna()], "setting", column, confidence)
        stats = stats.rename(columns={k: f"{column}_{k}" for k in ("mean", "std", "n", "ci_low", "ci_high")})
        out = out.merge(stats, on="setting", how="left")
    # n counts the runs behind each mean. A seed repeated within a setting (the same config rerun after its
    # data changed) is a separate run; the report warns about it.
    runs_per_setting = summary.groupby("setting", sort=False)["run_id"].nunique().rename("n").reset_index()
    return out.merge(runs_per_setting, on="setting", how="left")


def repeated_seeds(summary: pd.DataFrame) -> pd.DataFrame:
    """Settings in which a seed occurs more than once: ``setting, seed, runs``."""
    counts = summary.groupby(["setting", "seed"], sort=False)["run_id"].nunique().rename("runs").reset_index()
    return counts[counts["runs"] > 1].reset_index(drop=True)


def _new_tasks(runs: RunSet, run_id: str) -> list[str]:
    acc = runs.metrics[(runs.metrics["run_id"] == run_id) & (runs.metrics["role"] == "finetune")]
    return list(dict.fromkeys(acc["task"]))


def _or_nan(fn, steps: np.ndarray, acc: np.ndarray) -> float:
    try:
        return float(fn(steps, acc))
    except ValueError:  # e.g. retention of a task that started at accuracy 0
        return float("nan")
