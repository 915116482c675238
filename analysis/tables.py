"""Results tables in Markdown and LaTeX (booktabs): one row per setting, mean ± standard deviation over seeds
for each metric, the number of seeds, and the best value of each column in bold (higher or lower, per metric;
every setting that ties the best mean is bold). The columns are the table metrics of
:data:`analysis.summarize.REPORTED` present in the settings frame; plasticity only when some setting has more
than one fine-tuning task (with one task it equals the new task's final accuracy)."""

from __future__ import annotations

import math
import re

import pandas as pd

from analysis.summarize import REPORTED


def table_columns(settings: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """``(column, header, higher is better)`` of each metric the table shows for ``settings``. Without a
    ``finetune_tasks`` column every sequence metric present is shown."""
    sequences = "finetune_tasks" not in settings or bool((settings["finetune_tasks"] > 1).any())
    shown = {"always", "sequences"} if sequences else {"always"}
    return [(r.column, r.header, r.higher) for r in REPORTED if r.table in shown and f"{r.column}_mean" in settings]


def table_cells(settings: pd.DataFrame, digits: int = 3) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Headers, cell texts and which cells are the column's best, for the metrics :func:`table_columns` shows."""
    columns = table_columns(settings)
    headers = ["setting", "n", *[h for _, h, _ in columns]]
    texts, best = [], []
    winners = {}
    for column, _, higher in columns:
        # Decided on the printed value, so bold always marks exactly the cells that read best.
        means = settings[f"{column}_mean"].map(lambda v: float(f"{v:.{digits}f}") if not _nan(v) else float("nan"))
        target = means.max() if higher else means.min()
        winners[column] = means == target
    for index, row in settings.reset_index(drop=True).iterrows():
        cells, marks = [str(row["setting"]), str(int(row["n"]))], [False, False]
        for column, _, _ in columns:
            mean, std = row[f"{column}_mean"], row[f"{column}_std"]
            if _nan(mean):
                cells.append("–")
            elif _nan(std):
                cells.append(f"{mean:.{digits}f}")
            else:
                cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
            marks.append(bool(winners[column].iloc[index]) and not _nan(mean))
        texts.append(cells)
        best.append(marks)
    return headers, texts, best


def markdown_table(settings: pd.DataFrame, digits: int = 3) -> str:
    headers, texts, best = table_cells(settings, digits)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for cells, marks in zip(texts, best, strict=True):
        shown = [f"**{c}**" if b else c for c, b in zip(cells, marks, strict=True)]
        lines.append("| " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def latex_table(settings: pd.DataFrame, digits: int = 3, caption: str | None = None) -> str:
    headers, texts, best = table_cells(settings, digits)
    spec = "l" + "r" * (len(headers) - 1)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(_latex(h) for h in headers) + r" \\")
    lines.append(r"\midrule")
    for cells, marks in zip(texts, best, strict=True):
        shown = [rf"\textbf{{{_latex(c)}}}" if b else _latex(c) for c, b in zip(cells, marks, strict=True)]
        lines.append(" & ".join(shown) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_latex(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "^": r"\^{}",
    "~": r"\~{}",
}


def _latex(text: str) -> str:
    """Escape LaTeX's special characters in one pass (so no replacement is escaped again)."""
    escaped = re.sub(r"[\\{}_%&#$^~]", lambda match: LATEX_SPECIALS[match.group()], text)
    return escaped.replace("±", r"$\pm$").replace("–", "--")


def _nan(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
