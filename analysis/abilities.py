"""Abilities in the report: the loaded model's other abilities (research.abilities: word similarity, drift of
its representation, a probe), measured alongside the tasks with their own metrics. Forgetting of an ability is
computed from its *score* curve (each kind's first metric: Spearman, CKA, probe accuracy) exactly as it is from
a pretraining task's accuracy curve (analysis.metrics), and kept in a table of its own: a Spearman correlation
and an accuracy are not averaged together.

Per run and ability: ``start`` (the score at step 0, the loaded model), ``final``, ``final_drop`` (start −
final), ``stability_gap`` (start − the lowest score during fine-tuning) and ``forgetting_auc`` (the mean drop
below the start over fine-tuning); per setting, mean ± standard deviation over seeds.
"""

from __future__ import annotations

import json

import pandas as pd

from analysis import metrics as m
from analysis.load import RunSet

COLUMNS = {
    "start": ("at step 0", True),
    "final": ("final", True),
    "final_drop": ("final drop", False),
    "stability_gap": ("stability gap", False),
    "forgetting_auc": ("forgetting AUC", False),
}


def ability_curves(runs: RunSet) -> pd.DataFrame:
    """Every ability's score at every evaluation: ``run_id, setting, method, seed, step, task, role, metric,
    value`` (``task``: the ability's name; ``metric``: its score, as each run's summary names it in
    ``abilities.<name>.score``). Runs read from W&B carry no such record and contribute nothing."""
    scores = runs.runs["ability_scores"] if "ability_scores" in runs.runs else pd.Series("{}", index=runs.runs.index)
    wanted = {
        (run_id, ability, metric)
        for run_id, text in zip(runs.runs["run_id"], scores.fillna("{}"), strict=True)
        for ability, metric in json.loads(text).items()
    }
    frame = runs.metrics[["run_id", "step", "task", "role", "metric", "value"]]
    keys = pd.Series(list(zip(frame["run_id"], frame["task"], frame["metric"], strict=True)), index=frame.index)
    frame = frame[keys.isin(wanted)] if wanted else frame.iloc[0:0]
    return runs.with_runs(frame).sort_values(["run_id", "task", "step"], kind="stable").reset_index(drop=True)


def ability_summary(runs: RunSet) -> pd.DataFrame:
    """One row per run and ability: ``run_id, setting, method, seed, ability, metric`` and the columns of
    :data:`COLUMNS`."""
    rows = []
    for (run_id, task, metric), curve in ability_curves(runs).groupby(["run_id", "task", "metric"], sort=False):
        steps, score = curve["step"].to_numpy(), curve["value"].to_numpy()
        rows.append(
            {
                "run_id": run_id,
                "ability": task,
                "metric": metric,
                "start": float(score[steps.argmin()]),
                "final": m.final_accuracy(steps, score),
                "final_drop": m.final_drop(steps, score),
                "stability_gap": m.stability_gap(steps, score),
                "forgetting_auc": m.forgetting_auc(steps, score),
            }
        )
    columns = ["run_id", "ability", "metric", *COLUMNS]
    return runs.with_runs(pd.DataFrame(rows, columns=columns))


def ability_table(per_run: pd.DataFrame, settings: list[str], digits: int = 3) -> str:
    """Markdown: a row per setting and ability (settings in ``settings`` order), mean ± std over seeds of each
    column, the number of seeds."""
    headers = ["setting", "ability", "n", *(f"{label}" for label, _ in COLUMNS.values())]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(headers) - 2)) + "|"]
    for (ability, metric), part in per_run.groupby(["ability", "metric"], sort=False):
        for setting in [s for s in settings if s in set(part["setting"])]:
            mine = part[part["setting"] == setting]
            cells = [setting, f"{ability} ({metric})", str(len(mine))]
            for column in COLUMNS:
                summary = m.seed_summary(mine[column].to_numpy(dtype=float))
                std = summary["std"]
                cells.append(f"{summary['mean']:.{digits}f}" + (f" ± {std:.{digits}f}" if std == std else ""))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
