"""The grid's closing table: per setting (a sub-grid point), final accuracy on the old and new tasks, as mean ±
standard deviation over seeds with the number of seeds. Read from the runs' own summary.json files.
(The full analysis — curves, forgetting metrics, figures — is ``research report``'s job.)"""

from __future__ import annotations

import pandas as pd

from research.grid.spec import Grid
from research.store import read_summary


def results_frame(grid: Grid) -> pd.DataFrame:
    """One row per completed run: setting, seed, and mean accuracy over its old and new tasks."""
    rows = []
    for run in grid.runs:
        summary = read_summary(run.run_dir)
        if not summary or summary.get("status") != "completed":
            continue
        row = {"setting_id": run.setting_id, "setting": run.setting, "seed": run.seed}
        for role, label in (("pretrain", "old"), ("finetune", "new")):
            tasks = [t for t, v in summary["final"].items() if v["role"] == role]
            # In a class-incremental sequence a later task has no outputs at step 0 (nor an initial score): the
            # start is the mean over the tasks scored then.
            scored = [summary["initial"][t]["acc"] for t in tasks if t in summary["initial"]]
            row[f"{label}_start"] = sum(scored) / len(scored) if scored else float("nan")
            row[f"{label}_final"] = sum(summary["final"][t]["acc"] for t in tasks) / len(tasks)
        rows.append(row)
    columns = ["setting_id", "setting", "seed", "old_start", "old_final", "new_start", "new_final"]
    return pd.DataFrame(rows, columns=columns)


def results_table(grid: Grid) -> str:
    frame = results_frame(grid)
    if frame.empty:
        return "no completed runs"
    # Grouped by the resolved config without the seed, so that two settings never share a row by their label.
    labels = dict(zip(frame["setting_id"], frame["setting"], strict=True))
    order = list(labels)
    stats = frame.drop(columns="setting").groupby("setting_id", sort=False).agg(["mean", "std", "count"])
    width = max(len(s) for s in labels.values())

    def cell(setting: str, column: str) -> str:
        mean, std = stats.loc[setting, (column, "mean")], stats.loc[setting, (column, "std")]
        return f"{mean:.3f} ± {std:.3f}" if pd.notna(std) else f"{mean:.3f}"

    starts = frame["old_start"].round(6).unique()
    before = f", {starts[0]:.3f} before fine-tuning" if len(starts) == 1 else ""
    lines = [
        f"final accuracy, mean ± std over seeds (old = the pretraining tasks{before}):",
        f"  {'setting':{width}s}  {'seeds':>5s}  {'old tasks':>15s}  {'new task':>15s}",
    ]
    for setting in order:
        n = int(stats.loc[setting, ("seed", "count")])
        old, new = cell(setting, "old_final"), cell(setting, "new_final")
        lines.append(f"  {labels[setting]:{width}s}  {n:5d}  {old:>15s}  {new:>15s}")
    return "\n".join(lines)
