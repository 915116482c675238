"""Results by continual-learning scenario, laid out like van de Ven & Tolias 2019's tables ("Three scenarios for
continual learning"): one row per method, grouped into baselines, regularization and replay, with references
last; one column per scenario present (Task-IL, Domain-IL, Class-IL); each cell the final average accuracy ACC
(every task, pretraining tasks included, after the last one) as mean ± SEM over seeds.

A study gets this table only when its runs span at least two scenarios; a run's scenario is ``scenario_of``.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from analysis.load import RunSet
from analysis.metrics import final_average_accuracy
from analysis.protocol import scenario_of
from analysis.style import REFERENCE_METHODS
from analysis.summarize import run_accuracy_matrix
from analysis.tables import _latex
from research.labels import setting_labels

SCENARIO_HEADERS = {"task": "Task-IL", "domain": "Domain-IL", "class": "Class-IL"}
# van de Ven & Tolias's grouping of approaches; a method in none of them is listed under "other".
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("baseline", ("finetune",)),
    ("regularization", ("ewc", "online_ewc", "si", "mas", "l2sp", "lwf", "feature_distill")),
    ("replay", ("replay", "agem", "der", "derpp")),
)


def scenario_accuracies(runs: RunSet) -> pd.DataFrame:
    """One row per completed run: ``run_id, setting, method, scenario, acc`` with ``acc`` the final average
    accuracy. ``setting`` is the run's label without the scenario (and the head layout it sets), so that one
    method's runs in the three scenarios share a row of the table."""
    frame = runs.runs.copy()
    frame["scenario"] = [scenario_of(row) for row in frame.to_dict("records")]
    frame = frame[frame["scenario"].notna()]
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "setting", "method", "scenario", "acc"])
    scenario_keys = [c for c in ("config.scenario", "config.model.heads") if c in frame.columns]
    frame["setting"] = setting_labels(frame.drop(columns=scenario_keys))
    frame["acc"] = [final_average_accuracy(run_accuracy_matrix(runs, run_id)) for run_id in frame["run_id"]]
    return frame[["run_id", "setting", "method", "scenario", "acc"]].reset_index(drop=True)


def scenario_table(accuracies: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, scenario): ``mean``, ``sem`` (sample std with ddof=1 over √n; NaN for one seed) and ``n``,
    rows in the grouped order (references last), with ``group`` and ``reference`` columns."""
    grouped = accuracies.groupby(["setting", "scenario"]).agg(
        method=("method", "first"), mean=("acc", "mean"), std=("acc", "std"), n=("acc", "size")
    )
    grouped["sem"] = grouped["std"] / np.sqrt(grouped["n"])
    table = grouped.drop(columns="std").reset_index()
    table["group"] = [_group(m) for m in table["method"]]
    table["reference"] = table["method"].isin(REFERENCE_METHODS)
    rank = {name: i for i, (name, _) in enumerate(GROUPS)}
    order = {m: i for _, methods in GROUPS for i, m in enumerate(methods)}
    table["_order"] = [
        (bool(ref), rank.get(group, len(GROUPS)), order.get(method, len(order)), setting)
        for ref, group, method, setting in zip(
            table["reference"], table["group"], table["method"], table["setting"], strict=True
        )
    ]
    return table.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def _group(method: str) -> str:
    if method in REFERENCE_METHODS:
        return "reference"
    return next((name for name, methods in GROUPS if method in methods), "other")


def _cells(table: pd.DataFrame) -> tuple[list[str], list[tuple[str, str, bool, list[str]]]]:
    """Scenario columns present, and per row (group, setting, reference, cell texts as percentages)."""
    scenarios = [s for s in SCENARIO_HEADERS if s in set(table["scenario"])]
    rows = []
    for setting, part in table.groupby("setting", sort=False):
        by = part.set_index("scenario")
        cells = []
        for scenario in scenarios:
            if scenario not in by.index:
                cells.append("–")
                continue
            mean, sem = 100 * by.at[scenario, "mean"], 100 * by.at[scenario, "sem"]
            cells.append(f"{mean:.2f}" if np.isnan(sem) else f"{mean:.2f} ± {sem:.2f}")
        first = part.iloc[0]
        rows.append((first["group"], setting, bool(first["reference"]), cells))
    return scenarios, rows


def scenario_caption(table: pd.DataFrame) -> str:
    counts = sorted({int(n) for n in table["n"]})
    seeds = f"{counts[0]} seed{'s' if counts[0] > 1 else ''}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds"
    spread = " (one seed: no ±)" if counts[0] == 1 else ""
    return (
        "Final average accuracy (%) over every task, pretraining tasks included, after the last task, per "
        f"scenario (van de Ven & Tolias 2019): mean ± SEM (std with ddof=1 over √n) over {seeds}{spread}."
        + (" † Reference, not a method." if table["reference"].any() else "")
    )


def scenario_markdown(table: pd.DataFrame) -> str:
    scenarios, rows = _cells(table)
    lines = [
        "| approach | setting | " + " | ".join(SCENARIO_HEADERS[s] for s in scenarios) + " |",
        "|---|---|" + "---:|" * len(scenarios),
    ]
    lines += [
        f"| {group} | {setting}{' †' if ref else ''} | " + " | ".join(cells) + " |"
        for group, setting, ref, cells in rows
    ]
    return "\n".join(lines) + "\n\n" + scenario_caption(table) + "\n"


def scenario_latex(table: pd.DataFrame, label: str = "tab:scenarios") -> str:
    """A booktabs table that fits one column: each approach is a row of its own above its methods."""
    scenarios, rows = _cells(table)
    out = [
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        "\\setlength{\\tabcolsep}{4pt}",
        f"\\caption{{{_latex(scenario_caption(table))}}}",
        f"\\label{{{label}}}",
        "\\begin{tabular}{l" + "r" * len(scenarios) + "}",
        "\\toprule",
        "Method & " + " & ".join(SCENARIO_HEADERS[s] for s in scenarios) + " \\\\",
    ]
    previous = None
    for group, setting, ref, cells in rows:
        if group != previous:
            out += ["\\midrule", f"\\multicolumn{{{1 + len(scenarios)}}}{{l}}{{\\emph{{{_latex(group)}}}}} \\\\"]
        name = _latex(setting) + ("$^\\dagger$" if ref else "")
        numbers = [c.replace(" ± ", "$\\pm$").replace("–", "--") for c in cells]
        out.append(f"{name} & " + " & ".join(numbers) + " \\\\")
        previous = group
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


def scenario_html(table: pd.DataFrame) -> str:
    scenarios, rows = _cells(table)
    headers = ["approach", "setting", *(SCENARIO_HEADERS[s] for s in scenarios)]
    parts = [f"<p class='small'>{html.escape(scenario_caption(table))}</p>", "<table><thead><tr>"]
    parts += [f"<th>{html.escape(h)}</th>" for h in headers] + ["</tr></thead><tbody>"]
    for group, setting, ref, cells in rows:
        texts = [group, setting + (" †" if ref else ""), *cells]
        parts.append(
            "<tr>" + "".join(f"<td{' class=num' if i > 1 else ''}>{html.escape(t)}</td>" for i, t in enumerate(texts))
        )
    return "".join([*parts, "</tbody></table>"])
