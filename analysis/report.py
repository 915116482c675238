"""``research report RUNS_DIR --out DIR``: every table and figure of a set of runs, and one self-contained
``report.html`` (images embedded) that a person can open and read.

What it covers: every run under RUNS_DIR, or those selected by grid (``config.logging.grid``, else
``logging.group``), experiment (``config.name``) or run id. Runs are compared only within their *study* (their
grid, or for a run started on its own its experiment; :func:`analysis.load.study_of`): each study gets its own
protocol, tables and figures, and "best" is never decided across unrelated experiments. With one study:

    DIR/report.html                 the report
    DIR/results.md, results.tex     the results table (main columns; fits one column of a paper)
    DIR/results_wide.md, .tex       every metric (a table* scaled to the text width when wider)
    DIR/figures/*.pdf, *.png        forgetting curves (small multiples per method family when there are many
                                    settings), stability–plasticity with the Pareto front, accuracy matrices,
                                    hyperparameter sweeps, WiSE-FT trade-off (when present)
    DIR/data/*.parquet              the tidy data every table and figure was made from

With several studies each study's files carry its name: ``results_<study>.tex``, ``figures/<study>/``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures
from analysis.abilities import ability_curves, ability_summary, ability_table
from analysis.load import UNREADABLE, RunSet, load_runs
from analysis.metrics import aggregate_seeds, pareto_front
from analysis.protocol import eval_sizes, protocol
from analysis.scenarios import scenario_accuracies, scenario_html, scenario_latex, scenario_markdown, scenario_table
from analysis.style import REFERENCE_METHODS, order_settings
from analysis.summarize import (
    accuracy_curves,
    identical_settings,
    repeated_seeds,
    run_summary,
    setting_accuracy_matrix,
    setting_summary,
)
from analysis.tables import REFERENCE_NOTE, Row, latex_table, markdown_table, table_rows
from research.labels import is_missing

CONFIDENCE = 0.95
FAMILY_PANELS_FROM = 9  # settings from which the forgetting curves are drawn as small multiples per family


@dataclass
class Report:
    html: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    data: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # figures that had nothing to show, and why
    studies: list[str] = field(default_factory=list)  # what the report compares within (grids, experiments)
    left_out: list[str] = field(default_factory=list)  # selected runs not reported: "<run id>: <status> — <why>"


class NoRuns(ValueError):
    """The folder holds no completed run to report on, or none matching the selection."""


# --------------------------------------------------------------------------------------------- selection


def select_runs(
    everything: RunSet,
    where: str | Path,
    grid: str | None = None,
    experiment: str | None = None,
    run_ids: Sequence[str] | None = None,
) -> RunSet:
    """The runs of ``everything`` in ``grid`` and ``experiment`` and among ``run_ids`` (each None: no
    condition). Raises :class:`NoRuns` when nothing matches or a run id is not there, listing what exists."""
    runs = everything.runs
    keep = pd.Series(True, index=runs.index)
    if grid is not None:
        keep &= runs["grid"] == grid
    if experiment is not None:
        keep &= runs["experiment"] == experiment
    if run_ids is not None:
        missing = [r for r in dict.fromkeys(run_ids) if r not in set(runs["run_id"])]
        if missing:
            raise NoRuns(f"{where}: no run director{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}")
        keep &= runs["run_id"].isin(list(run_ids))
    if not keep.any():
        asked = [f"{k} '{v}'" for k, v in (("grid", grid), ("experiment", experiment)) if v is not None]
        asked += [f"run ids {', '.join(run_ids)}"] if run_ids is not None else []
        raise NoRuns(f"{where}: no runs of {' and '.join(asked)}; {available(everything)}")
    ids = set(runs.loc[keep, "run_id"])
    return RunSet(
        runs[keep].reset_index(drop=True),
        everything.metrics[everything.metrics["run_id"].isin(ids)].reset_index(drop=True),
        everything.method_tables[everything.method_tables["run_id"].isin(ids)].reset_index(drop=True)
        if len(everything.method_tables)
        else everything.method_tables,
    )


def available(runs: RunSet) -> str:
    """The grids and experiments among ``runs``, with their run counts, for a message."""

    def listing(column: str) -> str:
        counts = runs.runs[column].dropna().value_counts(sort=False)
        return ", ".join(f"{name} ({count} runs)" for name, count in counts.items()) or "none"

    return f"grids there: {listing('grid')}; experiments there: {listing('experiment')}"


# --------------------------------------------------------------------------------------------- build


def build_report(
    runs_dir: str | Path,
    out_dir: str | Path,
    grid: str | None = None,
    experiment: str | None = None,
    run_ids: list[str] | None = None,
) -> Report:
    """Tables, figures and ``report.html`` for the runs of ``runs_dir`` (optionally only those of ``grid``,
    ``experiment`` or ``run_ids``), one section per study (see the module docstring)."""
    loaded = load_runs(runs_dir)
    if loaded.runs.empty:
        raise NoRuns(f"{runs_dir}: no completed runs to report on (0 run directories)")
    everything = select_runs(loaded, runs_dir, grid, experiment, run_ids)
    runs = everything.completed()
    if runs.runs.empty:
        found = len(everything.runs)
        raise NoRuns(
            f"{runs_dir}: no completed runs to report on ({found} run director{'y' if found == 1 else 'ies'}"
            f"{' selected' if (grid, experiment, run_ids) != (None, None, None) else ''}{_unreadable_note(everything)})"
        )
    out = Path(out_dir)
    _clear(out)
    report = Report(html=out / "report.html")
    left = everything.runs[everything.runs["status"] != "completed"]
    report.left_out = [f"{r.run_id}: {r.status} — {r.error}" for r in left.itertuples()]
    report.studies = list(dict.fromkeys(runs.runs["study"]))
    several = len(report.studies) > 1
    sections, all_settings, all_summaries = [], [], []
    for study in report.studies:
        ids = set(runs.runs.loc[runs.runs["study"] == study, "run_id"])
        mine = _subset(runs, ids)
        slug = _slug(study, {_slug(s, set()) for s in report.studies if s != study}) if several else ""
        section = _study(mine, study, slug, out, report)
        sections.append(section)
        all_settings.append(section.settings.assign(study=study))
        all_summaries.append(section.per_run.assign(study=study))
    for name, frame in (
        ("runs", runs.runs),
        ("metrics", runs.metrics),
        ("run_summary", pd.concat(all_summaries, ignore_index=True)),
        ("settings", pd.concat(all_settings, ignore_index=True)),
    ):
        path = out / "data" / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        report.data.append(path)
    report.html.write_text(_html(everything, runs, sections, report))
    return report


def _unreadable_note(runs: RunSet) -> str:
    """'; 2 unreadable, e.g. <id>: <why>' for the message that nothing is left to report (empty if none)."""
    bad = runs.runs[runs.runs["status"] == UNREADABLE]
    if bad.empty:
        return ""
    first = bad.iloc[0]
    return f"; {len(bad)} unreadable, e.g. {first['run_id']}: {first['error']}"


def _clear(out: Path) -> None:
    """An earlier report's files must not outlive it (another selection may have had other studies)."""
    for folder in ("figures", "data"):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for old in (out / folder).rglob("*"):
            if old.is_file() and old.suffix in (".png", ".pdf", ".parquet"):
                old.unlink()
    for old in [
        *out.glob("results*.md"),
        *out.glob("results*.tex"),
        *out.glob("scenarios*.*"),
        *out.glob("abilities*.md"),
    ]:
        old.unlink()


def _subset(runs: RunSet, ids: set[str]) -> RunSet:
    tables = runs.method_tables
    return RunSet(
        runs.runs[runs.runs["run_id"].isin(ids)].reset_index(drop=True),
        runs.metrics[runs.metrics["run_id"].isin(ids)].reset_index(drop=True),
        tables[tables["run_id"].isin(ids)].reset_index(drop=True) if len(tables) else tables,
    )


def _slug(study: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9-]+", "_", study.removeprefix("grid ").removeprefix("experiment ")).strip("_")
    base = base or "study"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


@dataclass
class Study:
    """One study's part of the report."""

    name: str
    runs: RunSet
    per_run: pd.DataFrame
    settings: pd.DataFrame
    caption: str
    same_as: dict[str, str]
    figures: list[tuple[str, str, Path]]  # (title, explanation, png)
    tables: list[Path]
    scenarios: pd.DataFrame | None = None  # results by scenario, when the study spans several (analysis.scenarios)


def _study(runs: RunSet, study: str, slug: str, out: Path, report: Report) -> Study:
    per_run = run_summary(runs)
    settings = setting_summary(per_run, CONFIDENCE)
    order = order_settings(settings)
    settings = settings.set_index("setting").loc[order].reset_index()
    same_as = identical_settings(runs, order)
    caption = _caption(runs, settings, study if slug else None)
    suffix = f"_{slug}" if slug else ""
    label = f"tab:results-{slug}" if slug else "tab:results"
    written = {
        f"results{suffix}.md": markdown_table(settings),
        f"results{suffix}.tex": latex_table(settings, caption=caption, label=label),
        f"results{suffix}_wide.md": markdown_table(settings, wide=True),
        f"results{suffix}_wide.tex": latex_table(settings, caption=caption, label=f"{label}-wide", wide=True),
    }
    tables = []
    for name, text in written.items():
        (out / name).write_text(text)
        tables.append(out / name)
    by_scenario = scenario_accuracies(runs)
    scenarios = scenario_table(by_scenario) if by_scenario["scenario"].nunique() > 1 else None
    if scenarios is not None:  # van de Ven & Tolias 2019's layout: a column per scenario
        written = {
            f"scenarios{suffix}.md": scenario_markdown(scenarios),
            f"scenarios{suffix}.tex": scenario_latex(
                scenarios, label=f"tab:scenarios-{slug}" if slug else "tab:scenarios"
            ),
        }
        for name, text in written.items():
            (out / name).write_text(text)
            tables.append(out / name)
    abilities = ability_summary(runs)
    if not abilities.empty:  # the loaded model's other abilities (research.abilities), in a table of their own
        (out / f"abilities{suffix}.md").write_text(ability_table(abilities, list(settings["setting"])))
        abilities.to_parquet(out / "data" / f"ability_summary{suffix}.parquet", index=False)
        tables.append(out / f"abilities{suffix}.md")
        report.data.append(out / "data" / f"ability_summary{suffix}.parquet")
    report.tables += tables
    folder = out / "figures" / slug if slug else out / "figures"
    sections = _figures(runs, accuracy_curves(runs), settings, same_as, folder, report, study if slug else "")
    return Study(study, runs, per_run, settings, caption, same_as, sections, tables, scenarios)


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _caption(runs: RunSet, settings: pd.DataFrame, study: str | None) -> str:
    """The results table's caption: what a cell is, what bold means, the resolution of one example."""
    counts = sorted({int(n) for n in settings["n"]})
    seeds = _seeds(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds (n per row)"
    sizes = [n for values in eval_sizes(runs.runs).values() for n in values]
    resolution = f" One evaluation example is {1 / min(sizes):.4f} accuracy (1/{min(sizes)})." if sizes else ""
    references = settings["method"].isin(REFERENCE_METHODS).any()
    parts = [
        f"{study}: " if study else "",
        f"Mean ± std over {seeds}. Bold: every method whose {CONFIDENCE:.0%} confidence interval (Student t over "
        "seeds) overlaps the best one's, so that no bold entry is claimed better than another"
        + (" (a single seed has no interval: it counts as a point)." if counts[0] == 1 else "."),
        resolution,
        " Time: fine-tuning seconds without the evaluations, the method's preparation included, mean over seeds.",
        " † Reference, not a method: never bolded." if references else "",
    ]
    return "".join(parts)


# --------------------------------------------------------------------------------------------- figures


def _figures(
    runs: RunSet,
    curves: pd.DataFrame,
    settings: pd.DataFrame,
    same_as: dict[str, str],
    folder: Path,
    report: Report,
    study: str,
) -> list[tuple[str, str, Path]]:
    """Make every figure that has data; returns (title, explanation, png path) for the HTML."""
    sections = []
    where = f" ({study})" if study else ""

    def add(title: str, text: str, figure: figures.PaperFigure) -> None:
        report.figures += figure.paths
        sections.append((title, text, next(p for p in figure.paths if p.suffix == ".png")))

    identical = ""
    if same_as:
        pairs = "; ".join(f"{a} ≡ {b}" for a, b in same_as.items())
        identical = (
            f" Settings whose every accuracy equals another's (same seeds, every step; their lines coincide): {pairs}."
        )
    by_family = len(settings) >= FAMILY_PANELS_FROM
    text = (
        "Accuracy of every task against fine-tuning steps (step 0 = the pretrained model): the original "
        "(pretraining) tasks on the left, the new task(s) on the right. Lines are the mean over seeds, bands "
        "± one standard deviation (cut at 0 and 1). A new task that is not scored before its own training (a "
        "shared head without outputs for its classes yet) starts at its first evaluation."
    )
    if by_family:
        text += (
            " One row per method family; plain fine-tuning and joint training (when run) are in every row, so each "
            "family reads against the same baselines, and each task's panels share one scale."
        )
        figure = figures.forgetting_curves_by_family(curves, folder, same_as=same_as)
    else:
        figure = figures.forgetting_curves(curves, folder, sharey=False, same_as=same_as)
    add(f"Forgetting curves{where}", text + identical, figure)
    switches = _switches(runs)
    if switches.empty:
        report.skipped.append(f"Stability gap{where}: no run has more than one fine-tuning task")
    else:
        sequence_curves = curves[curves["setting"].isin(set(switches["setting"]))]
        add(
            f"Stability gap around each task switch{where}",
            "Accuracy of the tasks learned first (the pretraining tasks and the first new task) at every "
            "evaluation, against fine-tuning steps, for the settings with more than one new task; dashed lines "
            "mark each switch to the next new task, the grey span is where the first new task was trained. Lines "
            "are the mean over seeds, bands ± one standard deviation. A sharp dip right after a switch that then "
            "partly recovers is the stability gap (De Lange et al. 2023): evaluating only at task ends misses it. "
            "min-ACC and WC-ACC (wide table) measure it.",
            figures.stability_gap_figure(sequence_curves, switches, folder),
        )
    scores = ability_curves(runs)
    if not scores.empty:
        scores = scores.assign(task=scores["task"] + ": " + scores["metric"])
        add(
            f"Abilities{where}",
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
        report.skipped.append(f"Stability and plasticity{where}: no pretraining task is scored by a head in these runs")
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
            f"Stability and plasticity{where}",
            "Each setting's final accuracy on the old (pretraining) tasks (stability) against its plasticity (each "
            "new task's accuracy right after it was learned, averaged over the new tasks; for one new task its final "
            "accuracy), mean ± std over seeds. The Pareto front joins the settings no other setting beats on both; "
            "their labels are bold.",
            figures.stability_plasticity(points, folder),
        )
    for setting, text, matrix, name, delta in _accuracy_matrices(runs, settings):
        title = f"Accuracy matrix: {setting}" if setting else "Accuracy matrix"
        heatmap = figures.accuracy_heatmap(matrix, folder, name=name, title=setting, delta_from=delta)
        add(f"{title}{where}", text, heatmap)
    for method, parameter, sweep in _sweeps(runs, settings):
        add(
            f"Sweep: {method} {parameter}{where}",
            f"{method}'s final old-task accuracy and its plasticity (new-task accuracy right after each new task "
            f"was learned) as its {parameter} varies (mean ± std over seeds; other settings at their defaults).",
            figures.sweep_plot(sweep, folder, name=f"sweep_{method}_{parameter}", parameter=parameter),
        )
    wise = _wise_ft(runs)
    if wise is None:
        report.skipped.append(f"WiSE-FT trade-off{where}: no wise_ft runs, or several wise_ft settings (not pooled)")
    else:
        add(
            f"WiSE-FT trade-off{where}",
            "Accuracy of the weight-space interpolation between the pretrained (α = 0) and the fine-tuned model "
            "(α = 1), mean ± std over seeds. The parameters that exist in the pretrained model θ₀ (the backbone, "
            "the old tasks' heads, a shared head's pretrained rows) are interpolated, (1 − α)·θ₀ + α·θ_ft; the "
            "parameters created for fine-tuning (a new task's own head, or a shared head's rows for the new "
            "classes) have no pretrained value and keep their fine-tuned values at every α.",
            figures.wise_ft_curve(wise, folder),
        )
    return sections


def _switches(runs: RunSet) -> pd.DataFrame:
    """``setting, seed, task, step``: each fine-tuning task's end (``task_ends``) in the runs with more than one
    fine-tuning task (empty when there are none)."""
    rows = []
    for run in runs.runs.itertuples():
        ends = json.loads(run.task_ends) if isinstance(run.task_ends, str) else []
        if len(ends) > 1:
            rows += [(run.setting, run.seed, end["task"], end["step"]) for end in ends]
    return pd.DataFrame(rows, columns=["setting", "seed", "task", "step"])


def _accuracy_matrices(
    runs: RunSet, settings: pd.DataFrame
) -> list[tuple[str | None, str, pd.DataFrame, str, str | None]]:
    """``(setting, text, matrix, file name, row to show the change from)`` of each accuracy-matrix figure: one
    settings × tasks matrix of the final accuracies of the settings with one fine-tuning task (setting None;
    each cell also shows its change from the step-0 row), then one time × task matrix per setting with more
    than one fine-tuning task (mean over its seeds, titled with the setting)."""
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
        result.append((setting, text, matrix, _unique_name(setting, names), None))
    return result


def _unique_name(setting: str, taken: set[str]) -> str:
    """A file name for a setting's accuracy matrix: letters, digits, '-' and '_' only, unique in ``taken``."""
    base = "accuracy_matrix_" + (re.sub(r"[^A-Za-z0-9-]+", "_", setting).strip("_") or "setting")
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


START_ROW = "before fine-tuning"


def _final_matrix(runs: RunSet, settings: list[str]) -> tuple[None, str, pd.DataFrame, str, str]:
    """Settings × tasks: each setting's final accuracy per task, under a row with the accuracy before
    fine-tuning (mean over the runs of these settings)."""
    mine = runs.runs.loc[runs.runs["setting"].isin(settings), "run_id"]
    final = runs.metrics[(runs.metrics["metric"] == "acc") & runs.metrics["run_id"].isin(mine)]
    last = final.groupby("run_id")["step"].transform("max")
    at_end = runs.with_runs(final[final["step"] == last])
    rows = at_end.pivot_table(index="setting", columns="task", values="value", aggfunc="mean", sort=False)
    tasks = list(dict.fromkeys(final.sort_values("role", ascending=False)["task"]))  # old tasks first
    start = final[final["step"] == final.groupby("run_id")["step"].transform("min")]
    start_row = start.groupby("task")["value"].mean().rename(START_ROW)
    matrix = pd.concat([start_row.to_frame().T, rows.loc[settings]]).reindex(columns=tasks)
    matrix.index.name = "setting (final accuracy)"
    text = (
        "Final accuracy on every task (columns) per setting (rows, mean over seeds), and under it its change from "
        "the first row, the model before fine-tuning (mean over these runs; n/a where a task was not scored "
        "before fine-tuning): a negative change on an old task is what it forgot."
    )
    return None, text, matrix, "accuracy_matrix", START_ROW


def _sweeps(runs: RunSet, settings: pd.DataFrame):
    """Methods with one numeric hyperparameter taking two or more values across their settings, that value
    being all that differs between them."""
    per_run = runs.runs
    for method in dict.fromkeys(settings["method"]):
        mine = per_run[per_run["method"] == method]
        params = [
            c
            for c in mine.columns
            if c.startswith("config.method.")
            and c != "config.method.name"
            and pd.api.types.is_numeric_dtype(mine[c])
            and not pd.api.types.is_bool_dtype(mine[c])
            and mine[c].nunique() >= 2
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
    if "final" in table.columns:  # a sequence's per-task sweeps (method.sweep=every_task) are not the curve
        table = table[table["final"].fillna(True).astype(bool)]
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
    (
        "min-ACC",
        "average minimum accuracy (De Lange, van de Ven & Tuytelaars 2023): for every task learned before the last "
        "one (the pretraining tasks, learned at step 0, and the earlier new tasks), the lowest accuracy it fell to "
        "at any evaluation after its own boundary, averaged over those tasks. It reads every evaluation, so it "
        "counts transient drops that recovered (the stability gap) and depends on how often the model was scored.",
    ),
    (
        "WC-ACC",
        "worst-case accuracy (De Lange et al. 2023) at the end of the run: 1/k · the last new task's final "
        "accuracy + (1 − 1/k) · min-ACC, with k the number of tasks learned (pretraining tasks included): the mean "
        "accuracy over all tasks with every earlier task counted at its worst since it was learned, so never above "
        "the final mean accuracy over all tasks.",
    ),
    ("retention", "final accuracy divided by step-0 accuracy."),
    ("forgetting AUC", "the mean drop below the step-0 accuracy over fine-tuning (area under the forgetting curve)."),
    (
        "time (s)",
        "fine-tuning wall-clock seconds without the evaluations (their cost depends on how often the model was "
        "scored), the method's preparation (e.g. a Fisher estimate) included; mean over seeds.",
    ),
    (
        "bold",
        "every method whose 95% Student-t confidence interval over seeds overlaps the best one's (a single seed "
        "counts as a point), so that no bold entry is claimed better than another (overlapping intervals do not "
        "prove two means equal either: bold is a claim withheld, not one made). References (feature extraction, "
        "joint training) are never bolded.",
    ),
]


def _html(everything: RunSet, runs: RunSet, studies: list[Study], report: Report) -> str:
    failed = everything.runs[everything.runs["status"] != "completed"]
    seeds = sorted({int(s) for s in runs.runs["seed"]})
    names = ", ".join(html.escape(s) for s in report.studies)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Forgetting report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Forgetting report</h1>",
        f"<p>{len(runs.runs)} completed runs of {sum(len(s.settings) for s in studies)} settings in "
        f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} ({names}); seeds {', '.join(map(str, seeds))}. "
        "Runs are compared only within their study (a grid, or for runs started on their own an experiment). "
        f"Every mean is over seeds, shown with its standard deviation (sample, n − 1) and the number of seeds n; "
        f"the data files also hold Student-t {CONFIDENCE:.0%} confidence intervals "
        "(<code>data/settings.parquet</code>).</p>",
    ]
    if len(studies) > 1:
        parts.append(
            "<p>Contents: "
            + " · ".join(f"<a href='#{_anchor(s.name)}'>{html.escape(s.name)}</a>" for s in studies)
            + "</p>"
        )
    repeats = repeated_seeds(pd.concat([s.per_run for s in studies], ignore_index=True))
    if len(repeats):
        items = "".join(
            f"<li>{html.escape(str(r.setting))}: seed {r.seed} × {r.runs}</li>" for r in repeats.itertuples()
        )
        parts.append(
            "<p><b>Warning:</b> some seeds occur more than once in a setting (the same config rerun, e.g. after "
            f"its data changed); each run counts in n:</p><ul>{items}</ul>"
        )
    if len(failed):
        items = "".join(_left_out_html(r) for r in failed.itertuples())
        parts.append(
            f"<p>Left out: {len(failed)} run(s) that did not complete or could not be read:</p><ul>{items}</ul>"
        )
    for study in studies:
        parts += _study_html(study, report, several=len(studies) > 1)
    parts.append("<h2>What the metrics mean</h2><dl>")
    parts += [f"<dt>{html.escape(a)}</dt><dd>{html.escape(b)}</dd>" for a, b in METRIC_TEXT]
    parts.append("</dl>")
    tables = ", ".join(f"<code>{html.escape(p.name)}</code>" for p in report.tables)
    parts.append(
        f"<p class='small'>Tables: {tables} (LaTeX: booktabs; the main table fits one column, the wide one is a "
        "<code>table*</code>). Tidy data: <code>data/</code>.</p></body></html>"
    )
    return "\n".join(parts)


def _left_out_html(run) -> str:
    """One left-out run: its id, its setting and seed where its config could be read, its status and why."""
    known = not is_missing(run.method) and not is_missing(run.seed)
    seed = int(run.seed) if isinstance(run.seed, float) and run.seed.is_integer() else run.seed  # NaN-padded column
    which = f" {html.escape(str(run.setting))} seed {html.escape(str(seed))}" if known else ""
    return (
        f"<li><code>{html.escape(run.run_id)}</code>{which}: "
        f"{html.escape(str(run.status))} — {html.escape(str(run.error))}</li>"
    )


def _anchor(name: str) -> str:
    return "study-" + re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")


def _study_html(study: Study, report: Report, several: bool) -> list[str]:
    h2 = "h3" if several else "h2"  # a study's own headings sit under its name
    parts = [f"<h2 id='{_anchor(study.name)}'>{html.escape(study.name)}</h2>"] if several else []
    parts.append(f"<{h2}>Protocol</{h2}><dl class='protocol'>")
    parts += [f"<dt>{html.escape(a)}</dt><dd>{html.escape(b)}</dd>" for a, b in protocol(study.runs.runs)]
    parts.append("</dl>")
    parts += [f"<{h2}>Results</{h2}>", f"<p class='small'>{html.escape(study.caption)}</p>"]
    parts.append(_html_table(*table_rows(study.settings)))
    if study.settings["method"].isin(REFERENCE_METHODS).any():
        parts.append(f"<p class='small'>{html.escape(REFERENCE_NOTE)}</p>")
    if study.same_as:
        pairs = ", ".join(f"{html.escape(a)} ≡ {html.escape(b)}" for a, b in study.same_as.items())
        parts.append(
            f"<p class='small'>Identical settings (every accuracy of every seed equal; they are one result, not two "
            f"confirmations): {pairs}.</p>"
        )
    if study.scenarios is not None:
        parts += [f"<{h2}>Results by scenario</{h2}>", scenario_html(study.scenarios)]
    parts.append("<details><summary>Every metric</summary>")
    parts.append(_html_table(*table_rows(study.settings, wide=True)))
    parts.append("</details>")
    parts += _cost_html(study, h2)
    for title, text, png in study.figures:
        data = base64.b64encode(png.read_bytes()).decode()
        pdf = png.with_suffix(".pdf").relative_to(report.html.parent)
        parts.append(
            f"<{h2}>{html.escape(title)}</{h2}><p>{html.escape(text)}</p>"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
            f"<p class='small'>Vector version: <a href='{html.escape(str(pdf))}'><code>{html.escape(str(pdf))}</code>"
            "</a></p>"
        )
    return parts


def _html_table(columns, rows: list[Row]) -> str:
    headers = ["setting", "n", *[c.header for c in columns]]
    table = ["<table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in headers], "</tr></thead><tbody>"]
    previous = False
    for row in rows:
        if row.reference and not previous:
            table.append(f"</tbody><tbody class='reference'><tr><th colspan='{len(headers)}'>references</th></tr>")
        previous = row.reference
        tds = [
            f"<td{'' if i == 0 else ' class=num'}>{'<b>' if b else ''}{html.escape(c)}{'</b>' if b else ''}</td>"
            for i, (c, b) in enumerate(zip(row.cells, row.bold, strict=True))
        ]
        table.append("<tr>" + "".join(tds) + "</tr>")
    table.append("</tbody></table>")
    return "".join(table)


COSTS = [
    ("train_seconds", "fine-tuning (s)", "{:.1f}"),
    ("prepare_seconds", "of which preparation (s)", "{:.2f}"),
    ("kept_examples", "examples kept", "{:.0f}"),
    ("kept_megabytes", "extra tensors (MB)", "{:.2f}"),
]


def _cost_html(study: Study, heading: str) -> list[str]:
    """At what cost: time and what a method keeps besides the model, as far as the runs recorded it."""
    settings = study.settings
    shown = [c for c in COSTS if f"{c[0]}_mean" in settings and settings[f"{c[0]}_mean"].notna().any()]
    if not shown:
        return [f"<{heading}>At what cost</{heading}><p>These runs recorded no timings (e.g. loaded from W&B).</p>"]
    headers = ["setting", "n", *[h for _, h, _ in shown]]
    rows = ["<table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in headers], "</tr></thead><tbody>"]
    for record in settings.to_dict("records"):
        cells = [html.escape(str(record["setting"])), str(int(record["n"]))]
        for column, _, form in shown:
            mean, std = record.get(f"{column}_mean"), record.get(f"{column}_std")
            if pd.isna(mean):
                cells.append("–")
            elif pd.isna(std) or column != "train_seconds":
                cells.append(form.format(mean))
            else:
                cells.append(f"{form.format(mean)} ± {form.format(std)}")
        rows.append("<tr>" + "".join(f"<td{'' if i == 0 else ' class=num'}>{c}</td>" for i, c in enumerate(cells)))
    rows.append("</tbody></table>")
    return [
        f"<{heading}>At what cost</{heading}>",
        "<p>Fine-tuning wall-clock seconds without the evaluations (mean ± std over seeds; the method's "
        "preparation, such as estimating a Fisher, is inside it and also shown alone where the method times it), "
        "and what a method keeps besides the model: rehearsal examples (replay, DER, A-GEM) and extra tensors it "
        "reports (a teacher's weights). Times compare only between runs on the same machine and load. – : not "
        "recorded by the method (e.g. EWC's anchor and Fisher, two copies of the trained parameters, are kept but "
        "not reported).</p>",
        "".join(rows),
    ]


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { padding: 0.3em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.num, th { white-space: nowrap; }
thead th { border-bottom: 2px solid #444; }
tbody.reference { border-top: 2px solid #444; color: #444; }
tbody.reference th { text-align: left; font-weight: normal; font-style: italic; }
details { margin: 0.5em 0 1em; }
img { max-width: 100%; border: 1px solid #eee; }
.small { font-size: 0.85em; color: #555; }
dt { font-weight: bold; margin-top: 0.5em; }
dl.protocol dd { margin-left: 1.5em; }
"""
