"""``research report RUNS_DIR --out DIR``: every table and figure of a set of runs, and one self-contained
``report.html`` (images embedded) that a person can open and read.

    DIR/report.html            the report
    DIR/results.md, .tex       the results table (mean ± std over seeds, best per column in bold)
    DIR/figures/*.pdf, *.png   forgetting curves, stability–plasticity with the Pareto front, accuracy matrix,
                               hyperparameter sweeps, WiSE-FT trade-off (when present)
    DIR/data/*.parquet         the tidy data every table and figure was made from
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures
from analysis.load import RunSet, load_runs
from analysis.metrics import aggregate_seeds, pareto_front
from analysis.style import order_settings
from analysis.summarize import accuracy_curves, run_accuracy_matrix, run_summary, setting_summary
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
        "± one standard deviation.",
        figures.forgetting_curves(curves, folder, sharey=False),
    )
    points = settings.rename(
        columns={
            "old_acc_mean": "old_mean",
            "old_acc_std": "old_std",
            "new_acc_mean": "new_mean",
            "new_acc_std": "new_std",
        }
    )[["setting", "method", "n", "old_mean", "old_std", "new_mean", "new_std"]].copy()
    points["front"] = pareto_front(points["old_mean"].to_numpy(), points["new_mean"].to_numpy())
    add(
        "Stability and plasticity",
        "Each setting's final accuracy on the old tasks (stability) against the new task (plasticity), mean ± std "
        "over seeds. The Pareto front joins the settings no other setting beats on both.",
        figures.stability_plasticity(points, folder),
    )
    matrix, text = _accuracy_matrix(runs, settings)
    add("Accuracy matrix", text, figures.accuracy_heatmap(matrix, folder))
    for method, parameter, sweep in _sweeps(runs, settings):
        add(
            f"Sweep: {method} {parameter}",
            f"{method}'s final old- and new-task accuracy as its {parameter} varies (mean ± std over seeds; "
            "other settings at their defaults).",
            figures.sweep_plot(sweep, folder, name=f"sweep_{method}_{parameter}", parameter=parameter),
        )
    wise = _wise_ft(runs)
    if wise is None:
        report.skipped.append("WiSE-FT trade-off: no wise_ft runs, or several wise_ft settings (not pooled)")
    else:
        add(
            "WiSE-FT trade-off",
            "Accuracy of the weight-space interpolation (1 − α)·θ₀ + α·θ_ft between the pretrained (α = 0) and the "
            "fine-tuned model (α = 1), mean ± std over seeds.",
            figures.wise_ft_curve(wise, folder),
        )
    return sections


def _accuracy_matrix(runs: RunSet, settings: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """For task sequences, the time × task matrix of the first sequence setting (mean over its seeds); otherwise
    settings × tasks: each setting's final accuracy per task, under a row with the accuracy before fine-tuning."""
    sequences = runs.runs[runs.runs["task_ends"].map(lambda t: len(json.loads(t)) > 1 if isinstance(t, str) else False)]
    if len(sequences):
        setting = next(s for s in settings["setting"] if s in set(sequences["setting"]))
        ids = sequences.loc[sequences["setting"] == setting, "run_id"]
        matrix = sum(run_accuracy_matrix(runs, rid) for rid in ids) / len(ids)
        matrix.index.name = "when measured"
        return matrix, (
            f"Accuracy on every task (columns) at the start and after each fine-tuning task (rows) for {setting}, "
            f"mean over {len(ids)} seed(s)."
        )
    final = runs.metrics[runs.metrics["metric"] == "acc"]
    last = final.groupby("run_id")["step"].transform("max")
    at_end = runs.with_runs(final[final["step"] == last])
    rows = at_end.pivot_table(index="setting", columns="task", values="value", aggfunc="mean", sort=False)
    tasks = list(dict.fromkeys(final.sort_values("role", ascending=False)["task"]))  # old tasks first
    start = final[final["step"] == final.groupby("run_id")["step"].transform("min")]
    start_row = start.groupby("task")["value"].mean().rename("before fine-tuning")
    matrix = pd.concat([start_row.to_frame().T, rows.loc[settings["setting"]]])[tasks]
    matrix.index.name = "setting (final accuracy)"
    return matrix, (
        "Final accuracy on every task (columns) per setting (rows, mean over seeds); the first row is the model "
        "before fine-tuning (mean over all runs)."
    )


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
        new = aggregate_seeds(summary, column, "new_acc", CONFIDENCE)
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
    ("old tasks: final acc", "final accuracy on the pretraining tasks (mean over them): stability."),
    ("new task: final acc", "final accuracy on the new task(s): plasticity."),
    ("forgetting (final drop)", "step-0 accuracy minus final accuracy on the pretraining tasks."),
    (
        "forgetting (max drop)",
        "best accuracy seen at any evaluation minus final accuracy (peak-to-final; Chaudhry et al. 2018 take the "
        "peak over task boundaries only, which for one new task equals the final drop).",
    ),
    (
        "stability gap",
        "step-0 accuracy minus the lowest accuracy during fine-tuning (De Lange et al. 2023): the worst transient "
        "loss, even if recovered by the end.",
    ),
    ("retention", "final accuracy divided by step-0 accuracy."),
    ("forgetting AUC", "the mean drop below the step-0 accuracy over fine-tuning (area under the forgetting curve)."),
    ("BWT", "backward transfer over a sequence of new tasks (Lopez-Paz & Ranzato 2017); negative is forgetting."),
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
            f"<p class='small'>Vector version: <code>{html.escape(str(pdf))}</code></p>"
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
