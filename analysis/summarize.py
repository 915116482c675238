"""From the tidy run tables to the numbers a paper reports: per-run forgetting metrics, then per setting over
seeds (mean, sample standard deviation, Student-t 95 % interval, and the number of seeds).

Roles: ``pretrain`` tasks are the model's original abilities ("old"), ``finetune`` tasks the new ones ("new").
A run is a sequence of tasks: the pretraining tasks first, then each fine-tuning task in order. Its accuracy
matrix (:func:`run_accuracy_matrix`) has a row at each task boundary: "start" (step 0, right after pretraining,
the boundary of every pretraining task) and "after <task>" at each fine-tuning task's end (``task_ends``).
Definitions and sources in :mod:`analysis.metrics`.

From each pretraining task's accuracy curve over fine-tuning steps (averaged over the pretraining tasks):
    old_acc         final accuracy
    final_drop      step-0 accuracy − final accuracy
    peak_drop       peak-to-final drop: best accuracy at any evaluation − final accuracy (not Chaudhry's forgetting)
    stability_gap   step-0 accuracy − lowest accuracy during fine-tuning (De Lange et al. 2023)
    retention       final accuracy / step-0 accuracy
    forgetting_auc  mean drop below the step-0 accuracy over fine-tuning (area under the forgetting curve)
From each fine-tuning task's curve (averaged over them): new_acc, the final accuracy (it includes what was
forgotten of an earlier task of a sequence).
From the accuracy matrix, over every task learned before the last one (pretraining tasks and earlier
fine-tuning tasks):
    forgetting      Chaudhry et al. 2018: max over boundary rows from the task's own boundary up to (excluding)
                    the last row, minus the last row; for one fine-tuning task the final drop at its end
    bwt             Lopez-Paz & Ranzato 2017: last row minus the task's own boundary row; negative is forgetting
and over the fine-tuning tasks:
    plasticity             accuracy right after each was learned, A[after task k, k], averaged
    last_task_plasticity   the last fine-tuning task's accuracy at its own end
From every evaluation (De Lange et al. 2023, "continual evaluation"), every task counted as learned at its
boundary (the pretraining tasks at step 0):
    min_acc         min-ACC: over the tasks learned before the last one, the lowest accuracy each fell to after
                    its own boundary, averaged
    wc_acc          WC-ACC: 1/k · the last task's final accuracy + (1 − 1/k) · min_acc, k tasks in all
``finetune_tasks`` counts a run's fine-tuning tasks (1 unless it is a sequence).
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis import metrics as m
from analysis.load import RunSet

OLD_TASK_METRICS = {
    "old_acc": m.final_accuracy,
    "final_drop": m.final_drop,
    "peak_drop": m.peak_drop,
    "stability_gap": m.stability_gap,
    "retention": m.retention,
    "forgetting_auc": m.forgetting_auc,
}


class Reported(NamedTuple):
    """A reported metric: its column, its header in Markdown/HTML, whether higher is better (None: a cost, never
    ranked), where the results tables show it, and its short LaTeX header. ``table``: "main" (the default table,
    which fits one column of a paper, and the wide one), "sequences" (both tables, only when some setting has
    more than one fine-tuning task; with one task it would repeat another column), "single" (both tables when
    no setting is a sequence; else only the wide one, to leave the main table's width to plasticity), "wide"
    (only the wide table: with one fine-tuning task these repeat a main column, e.g. BWT = −forgetting, final
    drop = forgetting, retention ≈ old acc / step-0 acc) or "data" (only in the data files)."""

    column: str
    header: str
    higher: bool | None
    table: str = "main"
    latex: str = ""


# In the order tables show them.
REPORTED = [
    Reported("old_acc", "old tasks: final acc", True, "main", r"old acc.~$\uparrow$"),
    Reported("new_acc", "new tasks: mean final acc", True, "main", r"new acc.~$\uparrow$"),
    Reported("plasticity", "plasticity", True, "sequences", r"plasticity~$\uparrow$"),  # = new_acc for one task
    Reported("last_task_plasticity", "last new task: plasticity", True, "data"),
    Reported("forgetting", "forgetting", False, "main", r"forgetting~$\downarrow$"),
    Reported("bwt", "BWT", True, "wide", r"BWT~$\uparrow$"),
    Reported("final_drop", "final drop", False, "wide", r"final drop~$\downarrow$"),
    Reported("peak_drop", "peak-to-final drop", False, "wide", r"peak-to-final~$\downarrow$"),
    Reported("stability_gap", "stability gap", False, "single", r"stab.\ gap~$\downarrow$"),
    # min-ACC and WC-ACC (De Lange et al. 2023) stay in the wide table: even one more column overflows the
    # main table's one column when sequences add plasticity (checked with tests/test_latex.py's widest rows).
    Reported("min_acc", "min-ACC", True, "wide", r"min-ACC~$\uparrow$"),
    Reported("wc_acc", "WC-ACC", True, "wide", r"WC-ACC~$\uparrow$"),
    Reported("retention", "retention", True, "wide", r"retention~$\uparrow$"),
    Reported("forgetting_auc", "forgetting AUC", False, "wide", r"forg.\ AUC~$\downarrow$"),
    Reported("train_seconds", "time (s)", None, "main", "time (s)"),
    Reported("prepare_seconds", "preparation (s)", None, "wide", "prep.\\ (s)"),
    Reported("kept_examples", "examples kept", None, "data"),
    Reported("kept_megabytes", "extra memory (MB)", None, "data"),
]
# Cost columns: read from summary.json (timings, method_info), not from the curves.
COST_METRICS = ("train_seconds", "prepare_seconds", "kept_examples", "kept_megabytes")
MATRIX_METRICS = ("forgetting", "bwt", "plasticity", "last_task_plasticity")
CONTINUAL_METRICS = ("min_acc", "wc_acc")


def accuracy_curves(runs: RunSet) -> pd.DataFrame:
    """Accuracy of every task at every evaluation: ``run_id, setting, method, seed, step, task, role, value``."""
    acc = runs.metrics[runs.metrics["metric"] == "acc"][["run_id", "step", "task", "role", "value"]]
    return runs.with_runs(acc).sort_values(["run_id", "task", "step"], kind="stable").reset_index(drop=True)


def task_metrics(runs: RunSet) -> pd.DataFrame:
    """One row per run, task and curve metric: ``run_id, setting, method, seed, task, role, metric, value``.
    Each task's metrics come from its own curve, which for a task first scored later (class-incremental) starts
    at its first evaluation."""
    rows = []
    for (run_id, task, role), curve in accuracy_curves(runs).groupby(["run_id", "task", "role"], sort=False):
        steps, acc = curve["step"].to_numpy(), curve["value"].to_numpy()
        if role == "pretrain":
            for name, fn in OLD_TASK_METRICS.items():
                rows.append((run_id, task, role, name, _or_nan(fn, steps, acc)))
        else:
            rows.append((run_id, task, role, "new_acc", m.final_accuracy(steps, acc)))
    frame = pd.DataFrame(rows, columns=["run_id", "task", "role", "metric", "value"])
    return runs.with_runs(frame)


def run_summary(runs: RunSet) -> pd.DataFrame:
    """One row per run: ``run_id, setting, method, seed, finetune_tasks`` and every reported metric, the curve
    metrics averaged over the tasks of their role."""
    per_task = task_metrics(runs)
    wide = per_task.pivot_table(index="run_id", columns="metric", values="value", aggfunc="mean", sort=False)
    from_matrix = pd.DataFrame(
        [matrix_metrics(runs, run_id) | continual_metrics(runs, run_id) for run_id in wide.index], index=wide.index
    )
    wide = wide.join(from_matrix).reset_index()
    costs = pd.DataFrame([run_costs(row) for row in runs.runs.to_dict("records")], index=runs.runs["run_id"])
    wide = wide.merge(costs, left_on="run_id", right_index=True, how="left")
    metrics = [r.column for r in REPORTED if r.column in wide]
    return runs.with_runs(wide)[["run_id", "setting", "method", "seed", "finetune_tasks", *metrics]]


# method_info keys (research/methods/*: info()) that say what a method keeps besides the model.
KEPT_EXAMPLES_KEYS = ("buffer_size", "memory_size")  # replay, der/derpp; agem
KEPT_BYTES_KEYS = ("teacher_bytes",)  # feature_distill's frozen copy of the backbone


def run_costs(row: dict) -> dict[str, float]:
    """What a run cost, from its ``summary.json`` as :func:`analysis.load.load_runs` keeps it; NaN where the run
    did not record it (e.g. W&B data, or runs made before these were recorded):

    - ``train_seconds``: fine-tuning wall-clock time without the evaluations (their cost depends on how often
      the model was scored, not on the method); it includes the method's preparation before each task;
    - ``prepare_seconds``: that preparation (the Fisher or importance estimate, filling a buffer, copying a
      teacher), timed around every method's ``prepare`` (``timings.prepare_seconds``); for older runs, the sum of
      the method's own ``*_seconds`` in ``method_info`` where it recorded any;
    - ``kept_examples``: the examples a method keeps to rehearse (replay and DER buffers, A-GEM's memory);
    - ``kept_megabytes``: what the method keeps beside the model, in MB (10⁶ bytes): every tensor of its state
      (anchors, Fisher or importances, buffers with their logits, a teacher; ``method_state_bytes``), or for
      older runs the bytes it reported keeping (``teacher_bytes``)."""
    finetune = _number(row.get("finetune_seconds"))
    evaluation = _number(row.get("eval_seconds"))
    info = row.get("method_info")
    info = json.loads(info) if isinstance(info, str) else (info or {})
    timed = [_number(v) for k, v in info.items() if k.endswith("_seconds")]
    examples = [_number(info[k]) for k in KEPT_EXAMPLES_KEYS if k in info]
    stored = [_number(info[k]) for k in KEPT_BYTES_KEYS if k in info]
    prepare, state = _number(row.get("prepare_seconds")), _number(row.get("method_state_bytes"))
    return {
        "train_seconds": finetune - (0.0 if np.isnan(evaluation) else evaluation),
        "prepare_seconds": prepare if not np.isnan(prepare) else (float(np.sum(timed)) if timed else np.nan),
        "kept_examples": float(np.sum(examples)) if examples else np.nan,
        "kept_megabytes": state / 1e6 if not np.isnan(state) else (float(np.sum(stored)) / 1e6 if stored else np.nan),
    }


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan


def matrix_metrics(runs: RunSet, run_id: str) -> dict[str, float]:
    """``finetune_tasks`` and, from the run's accuracy matrix at the task boundaries, ``forgetting``, ``bwt``,
    ``plasticity`` and ``last_task_plasticity``; a metric that is undefined (e.g. no task learned before the
    last one) is NaN."""
    matrix, own = _matrix_with_boundaries(runs, run_id)
    rows = _rows(matrix, own)
    values = matrix.to_numpy()
    new = [k for k, task in enumerate(matrix.columns) if task in own]
    result = {
        "finetune_tasks": len(new),
        "forgetting": _or_nan(m.average_forgetting, values, rows),
        "bwt": _or_nan(m.backward_transfer, values, rows),
        "plasticity": np.nan,
        "last_task_plasticity": np.nan,
    }
    if new:
        result["plasticity"] = m.plasticity(values[:, new], [rows[k] for k in new])
        last = max(new, key=lambda k: (rows[k], k))  # the fine-tuning task learned last
        result["last_task_plasticity"] = float(values[rows[last], last])
    return result


def continual_metrics(runs: RunSet, run_id: str) -> dict[str, float]:
    """``min_acc`` and ``wc_acc`` (De Lange et al. 2023; :func:`analysis.metrics.min_accuracy`,
    :func:`analysis.metrics.worst_case_accuracy`) at the run's last evaluation, over EVERY evaluation (not only
    the task boundaries). Each task's boundary step is the one the accuracy matrix uses (:func:`_run_boundaries`):
    the first evaluation (step 0) for the pretraining tasks, which count as learned tasks, and each fine-tuning
    task's end (``task_ends``). NaN where undefined, e.g. several fine-tuning tasks without task boundaries (data
    from W&B: which one was learned last is unknown)."""
    boundaries, own = _run_boundaries(runs, run_id)
    step_of = dict(boundaries)
    acc = _run_acc(runs, run_id)
    try:
        table = acc.pivot(index="step", columns="task", values="value").sort_index()
    except ValueError:  # two rows for one (step, task): not one accuracy per evaluation
        return dict.fromkeys(CONTINUAL_METRICS, float("nan"))
    tasks = list(dict.fromkeys(acc["task"]))
    start = boundaries[0][1]
    task_steps = [step_of[own[task]] if task in own else start for task in tasks]
    args = (table.index.to_numpy(dtype=float), table[tasks].to_numpy(dtype=float), task_steps)
    return {"min_acc": _or_nan(m.min_accuracy, *args), "wc_acc": _or_nan(m.worst_case_accuracy, *args)}


def run_accuracy_matrix(runs: RunSet, run_id: str) -> pd.DataFrame:
    """Rows: the start and the end of each fine-tuning task; columns: every task (old first). A fine-tuning task
    not scored before its own end (class-incremental: no outputs for its classes yet) is NaN there; any other
    missing score is an error."""
    return _matrix_with_boundaries(runs, run_id)[0]


def _matrix_with_boundaries(runs: RunSet, run_id: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """:func:`run_accuracy_matrix` and each fine-tuning task's own row label, read once."""
    boundaries, own = _run_boundaries(runs, run_id)
    frame = _run_acc(runs, run_id).rename(columns={"value": "acc"})[["step", "task", "acc"]]
    return m.accuracy_matrix(frame, boundaries, task_boundaries=own), own


def setting_accuracy_matrix(runs: RunSet, run_ids: list[str]) -> pd.DataFrame:
    """The mean over runs (e.g. the seeds of one setting) of their accuracy matrices (:func:`run_accuracy_matrix`),
    cell by cell; a cell no run measured stays NaN. Index named "when measured"."""
    matrices = [run_accuracy_matrix(runs, run_id) for run_id in run_ids]
    matrix = pd.concat(matrices).groupby(level=0, sort=False).mean()[matrices[0].columns]
    matrix.index.name = "when measured"
    return matrix


def _rows(matrix: pd.DataFrame, own: dict[str, str]) -> list[int]:
    labels = list(matrix.index)
    return [labels.index(own[task]) if task in own else 0 for task in matrix.columns]


def _run_boundaries(runs: RunSet, run_id: str) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The matrix rows as ``(label, step)`` and each fine-tuning task's own row label. A fine-tuning task
    missing from ``task_ends`` (data without task boundaries, e.g. from W&B) ends at the last row."""
    row = runs.runs.set_index("run_id").loc[run_id]
    ends = json.loads(row["task_ends"]) if isinstance(row.get("task_ends"), str) else []
    acc = _run_acc(runs, run_id)
    if not ends:  # one new task, ending at the last evaluation
        ends = [{"task": "new tasks", "step": int(acc["step"].max())}]
    boundaries = [("start", int(acc["step"].min()))] + [(f"after {e['task']}", int(e["step"])) for e in ends]
    own = {e["task"]: f"after {e['task']}" for e in ends}
    own = {task: own.get(task, boundaries[-1][0]) for task in _new_tasks(runs, run_id)}
    return boundaries, own


def _run_acc(runs: RunSet, run_id: str) -> pd.DataFrame:
    return runs.metrics[(runs.metrics["run_id"] == run_id) & (runs.metrics["metric"] == "acc")]


def setting_summary(summary: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per setting: ``setting, method, finetune_tasks, n`` and for each metric ``<metric>_mean, _std, _n,
    _ci_low, _ci_high``. Settings keep the order of their first run in ``summary``."""
    out = summary[["setting", "method"]].drop_duplicates("setting").reset_index(drop=True)
    if "finetune_tasks" in summary:
        tasks = summary.groupby("setting", sort=False)["finetune_tasks"].max().reset_index()
        out = out.merge(tasks, on="setting", how="left")
    for column, *_ in REPORTED:
        if column not in summary or summary[column].isna().all():
            continue
        # Settings without the metric (e.g. no task before the last) get NaN rather than a row of nothing.
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


def _or_nan(fn, *args) -> float:
    try:
        return float(fn(*args))
    except ValueError:  # e.g. retention of a task that started at accuracy 0
        return float("nan")


def identical_settings(runs: RunSet, order: list[str] | None = None) -> dict[str, str]:
    """Settings whose accuracy measurements repeat an earlier setting's exactly: ``{setting: earlier setting}``.
    Two settings are identical when they ran the same seeds and every (seed, step, task) accuracy is equal, e.g.
    online EWC and EWC on one fine-tuning task (the same penalty until a second task). Settings are compared in
    ``order`` (default: the order of their first run); each maps to the first one it repeats."""
    acc = runs.with_runs(runs.metrics[runs.metrics["metric"] == "acc"])
    signatures: dict[str, tuple] = {}
    for setting, part in acc.groupby("setting", sort=False):
        rows = part[["seed", "step", "task", "value"]].sort_values(["seed", "task", "step"], kind="stable")
        signatures[str(setting)] = tuple(map(tuple, rows.astype(str).to_numpy().tolist()))
    first: dict[tuple, str] = {}
    same: dict[str, str] = {}
    ranked = [s for s in (order or []) if s in signatures] + [s for s in signatures if s not in (order or [])]
    for setting, signature in ((s, signatures[s]) for s in ranked):
        if signature and signature in first:
            same[setting] = first[signature]
        else:
            first.setdefault(signature, setting)
    return same
