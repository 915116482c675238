"""``research report RUNS_DIR --out DIR``: every table and figure of a set of runs, and one self-contained
``report.html`` (images embedded) that a person can open and read.

    DIR/report.html            the report
    DIR/results.md, .tex       the results table (mean ± std over seeds, best per column in bold)
    DIR/figures/*.pdf, *.png   forgetting curves, stability–plasticity with the Pareto front, accuracy matrices
                               (final accuracies of single-task settings; one per sequence setting),
                               hyperparameter sweeps, WiSE-FT trade-off (when present)
    DIR/data/*.parquet         the tidy data every table and figure was made from
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures
from analysis.abilities import ability_curves, ability_summary, ability_table
from analysis.load import RunSet, load_runs
from analysis.metrics import aggregate_seeds, pareto_front
from analysis.style import order_settings
from analysis.summarize import accuracy_curves, run_summary, setting_accuracy_matrix, setting_summary
from analysis.tables import latex_table, markdown_table, table_cells

CONFIDENCE = 0.95


@dataclass
class Report:
    html: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    data: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # figures that had nothing to show, and why


class NoRuns(ValueError):
    """The folder holds no completed run to report on."""


def build_report(runs_dir: str | Path, out_dir: str | Path) -> Report:
    everything = load_runs(runs_dir)
    runs = everything.completed()
    if runs.runs.empty:
        found = len(everything.runs)
        raise NoRuns(f"{runs_dir}: no completed runs to report on ({found} run director{'y' if found == 1 else 'ies'})")
    out = Path(out_dir)
    for folder in ("figures", "data"):  # an earlier report's files must not outlive it
        (out / folder).mkdir(parents=True, exist_ok=True)
        for old in (out / folder).glob("*"):
            if old.is_file() and old.suffix in (".png", ".pdf", ".parquet"):
                old.unlink()

    per_run = run_summary(runs)
    settings = setting_summary(per_run, CONFIDENCE)
    order = order_settings(settings)
    settings = settings.set_index("setting").loc[order].reset_index()
    curves = accuracy_curves(runs)
    report = Report(html=out / "report.html")

    for name, frame in (
        ("runs", runs.runs),
        ("metrics", runs.metrics),
        ("run_summary", per_run),
        ("settings", settings),
    ):
        path = out / "data" / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        report.data.append(path)
    caption = f"Mean ± std over seeds; n = runs (seeds) per row; best per column in bold. {len(runs.runs)} runs."
    (out / "results.md").write_text(markdown_table(settings))
    (out / "results.tex").write_text(latex_table(settings, caption=caption))
    report.tables += [out / "results.md", out / "results.tex"]

    abilities = ability_summary(runs)
    if not abilities.empty:  # the loaded model's other abilities (research.abilities), in a table of their own
        (out / "abilities.md").write_text(ability_table(abilities, list(settings["setting"])))
        abilities.to_parquet(out / "data" / "ability_summary.parquet", index=False)
        report.tables.append(out / "abilities.md")
        report.data.append(out / "data" / "ability_summary.parquet")

    sections = _figures(runs, curves, settings, out / "figures", report)
    report.html.write_text(_html(everything, runs, settings, sections, report))
    return report


# --------------------------------------------------------------------------------------------- figures


def _figures(runs: RunSet, curves: pd.DataFrame, settings: pd.DataFrame, folder: Path, report: Report) -> list:
    """Make every figure that has data; returns (title, explanation, png path) for the HTML."""
    sections = []

    def add(title: str, text: str, paths: list[Path]) -> None:
        report.figures += paths
        sections.append((title, text, next(p for p in paths if p.suffix == ".png")))

    add(
        "Forgetting curves",
        "Accuracy of every task against fine-tuning steps (step 0 = the pretrained model): the original "
        "(pretraining) tasks on the left, the new task(s) on the right. Lines are the mean over seeds, bands "
        "± one standard deviation. A new task that is not scored before its own training (a shared head without "
        "outputs for its classes yet) starts at its first evaluation.",
        figures.forgetting_curves(curves, folder, sharey=False),
    )
    scores = ability_curves(runs)
    if not scores.empty:
        scores = scores.assign(task=scores["task"] + ": " + scores["metric"])
        add(
            "Abilities",
            "The loaded model's other abilities against fine-tuning steps (step 0 = the loaded model): word "
            "similarity as Spearman's correlation with human scores, representation drift as linear CKA to the "
            "step-0 features, probe accuracy on frozen features (research.abilities). Mean over seeds, bands ± one "
            "standard deviation; the table is abilities.md.",
            figures.forgetting_curves(
                scores,
                folder,
                name="abilities",
                sharey=False,
                quantity="score",
                kinds={"pretrain": "(ability)"},
                floor=-1.0,
            ),
        )
    if "old_acc_mean" not in settings or settings["old_acc_mean"].isna().all():
        report.skipped.append("Stability and plasticity: no pretraining task is scored by a head in these runs")
    else:
        points = settings.rename(
            columns={
                "old_acc_mean": "old_mean",
                "old_acc_std": "old_std",
                "plasticity_mean": "new_mean",
                "plasticity_std": "new_std",
            }
        )[["setting", "method", "n", "old_mean", "old_std", "new_mean", "new_std"]].copy()
        points["front"] = pareto_front(points["old_mean"].to_numpy(), points["new_mean"].to_numpy())
        add(
            "Stability and plasticity",
            "Each setting's final accuracy on the old (pretraining) tasks (stability) against its plasticity (each "
            "new task's accuracy right after it was learned, averaged over the new tasks; for one new task its final "
            "accuracy), mean ± std over seeds. The Pareto front joins the settings no other setting beats on both.",
            figures.stability_plasticity(points, folder),
        )
    for setting, text, matrix, name in _accuracy_matrices(runs, settings):
        title = f"Accuracy matrix: {setting}" if setting else "Accuracy matrix"
        add(title, text, figures.accuracy_heatmap(matrix, folder, name=name, title=setting))
    for method, parameter, sweep in _sweeps(runs, settings):
        add(
            f"Sweep: {method} {parameter}",
            f"{method}'s final old-task accuracy and its plasticity (new-task accuracy right after each new task "
            f"was learned) as its {parameter} varies (mean ± std over seeds; other settings at their defaults).",
            figures.sweep_plot(sweep, folder, name=f"sweep_{method}_{parameter}", parameter=parameter),
        )
    wise = _wise_ft(runs)
    if wise is None:
        report.skipped.append("WiSE-FT trade-off: no wise_ft runs, or several wise_ft settings (not pooled)")
    else:
        add(
            "WiSE-FT trade-off",
            "Accuracy of the weight-space interpolation between the pretrained (α = 0) and the fine-tuned model "
            "(α = 1), mean ± std over seeds. The parameters that exist in the pretrained model θ₀ (the backbone, "
            "the old tasks' heads, a shared head's pretrained rows) are interpolated, (1 − α)·θ₀ + α·θ_ft; the "
            "parameters created for fine-tuning (a new task's own head, or a shared head's rows for the new "
            "classes) have no pretrained value and keep their fine-tuned values at every α.",
            figures.wise_ft_curve(wise, folder),
        )
    return sections


def _accuracy_matrices(runs: RunSet, settings: pd.DataFrame) -> list[tuple[str | None, str, pd.DataFrame, str]]:
    """``(setting, text, matrix, file name)`` of each accuracy-matrix figure: one settings × tasks matrix of the
    final accuracies of the settings with one fine-tuning task (setting None), then one time × task matrix per
    setting with more than one fine-tuning task (mean over its seeds, titled with the setting)."""
    is_sequence = runs.runs["task_ends"].map(lambda t: len(json.loads(t)) > 1 if isinstance(t, str) else False)
    sequences = [s for s in settings["setting"] if s in set(runs.runs.loc[is_sequence, "setting"])]
    single = [s for s in settings["setting"] if s not in sequences]
    result = [_final_matrix(runs, single)] if single else []
    names: set[str] = set()
    for setting in sequences:
        ids = runs.runs.loc[is_sequence & (runs.runs["setting"] == setting), "run_id"]
        matrix = setting_accuracy_matrix(runs, list(ids))
        text = (
            f"Accuracy on every task (columns) at the start and after each fine-tuning task (rows) for {setting}, "
            f"mean over {len(ids)} seed(s). n/a: the task was not scored yet (a shared head has no outputs for its "
            "classes before its own training starts)."
        )
        result.append((setting, text, matrix, _unique_name(setting, names)))
    return result


def _unique_name(setting: str, taken: set[str]) -> str:
    """A file name for a setting's accuracy matrix: letters, digits, '-' and '_' only, unique in ``taken``."""
    base = "accuracy_matrix_" + (re.sub(r"[^A-Za-z0-9-]+", "_", setting).strip("_") or "setting")
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _final_matrix(runs: RunSet, settings: list[str]) -> tuple[None, str, pd.DataFrame, str]:
    """Settings × tasks: each setting's final accuracy per task, under a row with the accuracy before
    fine-tuning (mean over the runs of these settings)."""
    mine = runs.runs.loc[runs.runs["setting"].isin(settings), "run_id"]
    final = runs.metrics[(runs.metrics["metric"] == "acc") & runs.metrics["run_id"].isin(mine)]
    last = final.groupby("run_id")["step"].transform("max")
    at_end = runs.with_runs(final[final["step"] == last])
    rows = at_end.pivot_table(index="setting", columns="task", values="value", aggfunc="mean", sort=False)
    tasks = list(dict.fromkeys(final.sort_values("role", ascending=False)["task"]))  # old tasks first
    start = final[final["step"] == final.groupby("run_id")["step"].transform("min")]
    start_row = start.groupby("task")["value"].mean().rename("before fine-tuning")
    matrix = pd.concat([start_row.to_frame().T, rows.loc[settings]]).reindex(columns=tasks)
    matrix.index.name = "setting (final accuracy)"
    text = (
        "Final accuracy on every task (columns) per setting (rows, mean over seeds); the first row is the model "
        "before fine-tuning (mean over these runs; n/a where a task was not scored before fine-tuning)."
    )
    return None, text, matrix, "accuracy_matrix"


def _sweeps(runs: RunSet, settings: pd.DataFrame):
    """Methods with one numeric hyperparameter taking three or more values across their settings."""
    per_run = runs.runs
    for method in dict.fromkeys(settings["method"]):
        mine = per_run[per_run["method"] == method]
        params = [
            c
            for c in mine.columns
            if c.startswith("config.method.")
            and c != "config.method.name"
            and pd.api.types.is_numeric_dtype(mine[c])
            and mine[c].nunique() >= 3
        ]
        if len(params) != 1:
            continue
        column = params[0]
        values = mine[column]
        # A sweep only where that one value is all that differs: one setting per value, every value a number.
        if values.isna().any() or mine.groupby(column)["setting_id"].nunique().max() > 1:
            continue
        summary = run_summary(
            RunSet(mine, runs.metrics[runs.metrics["run_id"].isin(mine["run_id"])], runs.method_tables)
        )
        summary = summary.merge(mine[["run_id", column]], on="run_id")
        old = aggregate_seeds(summary, column, "old_acc", CONFIDENCE)
        new = aggregate_seeds(summary, column, "plasticity", CONFIDENCE)
        sweep = pd.DataFrame(
            {
                "method": method,
                "x": old[column].astype(float),
                "old_mean": old["mean"],
                "old_std": old["std"],
                "new_mean": new["mean"],
                "new_std": new["std"],
                "n": old["n"],
            }
        ).sort_values("x")
        yield method, column.removeprefix("config.method."), sweep


def _wise_ft(runs: RunSet) -> pd.DataFrame | None:
    table = runs.method_tables
    if table.empty or "alpha" not in table.columns:
        return None
    wise = runs.runs[runs.runs["run_id"].isin(table["run_id"])]
    if wise["setting_id"].nunique() > 1:  # pooling different settings would average unlike curves
        return None
    acc = table[table["metric"] == "acc"]
    per_run = acc.groupby(["run_id", "alpha", "role"])["value"].mean().unstack("role").reset_index()
    old = aggregate_seeds(per_run, "alpha", "pretrain", CONFIDENCE)
    new = aggregate_seeds(per_run, "alpha", "finetune", CONFIDENCE)
    return pd.DataFrame(
        {
            "alpha": old["alpha"].astype(float),
            "old_mean": old["mean"],
            "old_std": old["std"],
            "new_mean": new["mean"],
            "new_std": new["std"],
            "n": old["n"],
        }
    )


# --------------------------------------------------------------------------------------------- HTML

METRIC_TEXT = [
    (
        "task boundaries",
        "a run is a sequence of tasks: the pretraining tasks first (their boundary is the start, step 0, right "
        "after pretraining), then each fine-tuning (new) task in order (its boundary is the step at which its "
        "training ended). The accuracy matrix A[t, k] holds every task's accuracy at each boundary t.",
    ),
    ("old tasks: final acc", "final accuracy on the pretraining tasks (mean over them): stability."),
    (
        "new tasks: mean final acc",
        "final accuracy on the new tasks, averaged over them; in a sequence it includes what was forgotten of "
        "the earlier new tasks.",
    ),
    (
        "plasticity",
        "each new task's accuracy right after it was learned, A[after task k, k], averaged over the new tasks "
        "(the learning accuracy of Riemer et al. 2019); shown for sequences (for one new task it equals its "
        "final accuracy). The last new task's own value is last_task_plasticity in data/settings.parquet.",
    ),
    (
        "forgetting",
        "Chaudhry et al. 2018 (RWalk): for every task learned before the last one (the pretraining tasks and the "
        "earlier new tasks), the highest accuracy at a task boundary from its own boundary up to (not including) "
        "the last one, minus its final accuracy; averaged over those tasks. For one new task it is the final drop "
        "of the pretraining tasks.",
    ),
    (
        "BWT",
        "backward transfer (Lopez-Paz & Ranzato 2017): for every task learned before the last one, its final "
        "accuracy minus its accuracy at its own boundary (the start for the pretraining tasks); averaged. Negative "
        "is forgetting; for one new task it is minus the final drop.",
    ),
    ("final drop", "step-0 accuracy minus final accuracy on the pretraining tasks."),
    (
        "peak-to-final drop",
        "the best accuracy seen at any evaluation minus the final accuracy on the pretraining tasks. Not the "
        "literature's forgetting: its peak is over every evaluation, so it depends on how often the model was "
        "evaluated and picks up evaluation noise (it is never below the forgetting's per-task term).",
    ),
    (
        "stability gap",
        "step-0 accuracy minus the lowest accuracy during fine-tuning (De Lange et al. 2023): the worst transient "
        "loss, even if recovered by the end.",
    ),
    ("retention", "final accuracy divided by step-0 accuracy."),
    ("forgetting AUC", "the mean drop below the step-0 accuracy over fine-tuning (area under the forgetting curve)."),
]


def _html(everything: RunSet, runs: RunSet, settings: pd.DataFrame, sections: list, report: Report) -> str:
    headers, texts, best = table_cells(settings)
    table = ["<table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in headers], "</tr></thead><tbody>"]
    for cells, marks in zip(texts, best, strict=True):
        tds = [
            f"<td>{'<b>' if b else ''}{html.escape(c)}{'</b>' if b else ''}</td>"
            for c, b in zip(cells, marks, strict=True)
        ]
        table.append("<tr>" + "".join(tds) + "</tr>")
    table.append("</tbody></table>")
    failed = everything.runs[everything.runs["status"] != "completed"]
    seeds = sorted({int(s) for s in runs.runs["seed"]})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Forgetting report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Forgetting report</h1>",
        f"<p>{len(runs.runs)} completed runs of {len(settings)} settings "
        f"({', '.join(html.escape(str(e)) for e in dict.fromkeys(runs.runs['experiment']))}); seeds "
        f"{', '.join(map(str, seeds))}. Every mean is over seeds, shown with its standard deviation (sample, "
        f"n − 1) and the number of seeds n; the data files also hold Student-t {CONFIDENCE:.0%} confidence "
        "intervals (<code>data/settings.parquet</code>).</p>",
    ]
    from analysis.summarize import repeated_seeds

    repeats = repeated_seeds(run_summary(runs))
    if len(repeats):
        items = "".join(
            f"<li>{html.escape(str(r.setting))}: seed {r.seed} × {r.runs}</li>" for r in repeats.itertuples()
        )
        parts.append(
            "<p><b>Warning:</b> some seeds occur more than once in a setting (the same config rerun, e.g. after "
            f"its data changed); each run counts in n:</p><ul>{items}</ul>"
        )
    if len(failed):
        items = "".join(
            f"<li><code>{html.escape(r.run_id)}</code> {html.escape(str(r.setting))} seed {r.seed}: "
            f"{html.escape(str(r.status))} — {html.escape(str(r.error))}</li>"
            for r in failed.itertuples()
        )
        parts.append(f"<p>Left out: {len(failed)} run(s) that did not complete:</p><ul>{items}</ul>")
    parts += ["<h2>Results</h2>", "".join(table)]
    for title, text, png in sections:
        data = base64.b64encode(png.read_bytes()).decode()
        pdf = png.with_suffix(".pdf").relative_to(report.html.parent)
        parts.append(
            f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
            f"<p class='small'>Vector version: <a href='{html.escape(str(pdf))}'><code>{html.escape(str(pdf))}</code>"
            "</a></p>"
        )
    parts.append("<h2>What the metrics mean</h2><dl>")
    parts += [f"<dt>{html.escape(a)}</dt><dd>{html.escape(b)}</dd>" for a, b in METRIC_TEXT]
    parts.append("</dl>")
    parts.append(
        "<p class='small'>Tables: <code>results.md</code>, <code>results.tex</code> (booktabs). Tidy data: "
        "<code>data/</code>.</p></body></html>"
    )
    return "\n".join(parts)


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { padding: 0.3em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; }
img { max-width: 100%; border: 1px solid #eee; }
.small { font-size: 0.85em; color: #555; }
dt { font-weight: bold; margin-top: 0.5em; }
"""
