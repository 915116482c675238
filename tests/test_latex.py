"""The LaTeX results tables compile with pdflatex + booktabs and fit: the main table one column of a one-column
article, the wide one the text width. Skipped only when pdflatex is not installed (CI installs it: .ci/run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from analysis.tables import _latex, latex_table

PDFLATEX = shutil.which("pdflatex")
needs_pdflatex = pytest.mark.skipif(
    PDFLATEX is None,
    reason="pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended; .ci/run does)",
)

# The demo grid's settings (research demo), the longest labels a table of the shipped grids has.
DEMO = [
    ("finetune", "finetune"),
    ("partial", "partial"),
    ("lp_ft", "lp_ft"),
    ("l2sp", "l2sp"),
    ("ewc lam=10", "ewc"),
    ("ewc lam=10000", "ewc"),
    ("online_ewc", "online_ewc"),
    ("si", "si"),
    ("mas", "mas"),
    ("lwf", "lwf"),
    ("feature_distill", "feature_distill"),
    ("replay", "replay"),
    ("agem", "agem"),
    ("derpp", "derpp"),
    ("wise_ft (α=1)", "wise_ft"),
    ("lora", "lora"),
    ("feature_extraction", "feature_extraction"),
    ("joint", "joint"),
]
METRICS = ["old_acc", "new_acc", "plasticity", "forgetting", "bwt", "final_drop", "peak_drop", "stability_gap"]
METRICS += ["retention", "forgetting_auc", "min_acc", "wc_acc", "train_seconds", "prepare_seconds"]


def settings_frame(tasks: int = 1, names: list[tuple[str, str]] = DEMO) -> pd.DataFrame:
    """A settings frame with the widest numbers a cell can hold (negative BWT, 3-digit seconds)."""
    rows = []
    for i, (setting, method) in enumerate(names):
        row = {"setting": setting, "method": method, "n": 3, "finetune_tasks": tasks}
        for metric in METRICS:
            mean = -0.123 - i / 1000 if metric == "bwt" else 0.9 - i / 100
            mean = 123.4 if metric.endswith("seconds") else mean
            row |= {f"{metric}_mean": mean, f"{metric}_std": 0.0123, f"{metric}_ci_low": mean - 0.03}
            row[f"{metric}_ci_high"] = mean + 0.03
        rows.append(row)
    return pd.DataFrame(rows)


def compile_document(tmp_path: Path, body: str) -> str:
    """pdflatex on a one-column article (10 pt, letter paper: a 345 pt text width) around ``body``; returns the
    log, failing the test with its tail when pdflatex fails."""
    document = (
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
        "\\begin{document}\n" + body + "\n\\end{document}\n"
    )
    (tmp_path / "doc.tex").write_text(document)
    proc = subprocess.run(
        [PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    return log


def overfull(log: str) -> list[str]:
    return re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)


@needs_pdflatex
@pytest.mark.parametrize("tasks", [1, 2])
def test_main_table_compiles_and_fits_one_column(tmp_path: Path, tasks: int) -> None:
    tex = latex_table(settings_frame(tasks), caption="Mean ± std; α, λ and 5% of a_b {x}.")
    log = compile_document(tmp_path, tex)
    assert overfull(log) == [], "the main table is wider than one column"
    assert (tmp_path / "doc.pdf").stat().st_size > 0


@needs_pdflatex
def test_wide_table_compiles_and_is_scaled_into_the_text_width(tmp_path: Path) -> None:
    wide = latex_table(settings_frame(2), caption="every metric", label="tab:wide", wide=True)
    assert wide.startswith(r"\begin{table*}") and r"\resizebox" in wide
    log = compile_document(tmp_path, wide)
    assert overfull(log) == []


@needs_pdflatex
def test_the_check_sees_an_overfull_table(tmp_path: Path) -> None:
    """The fit test can fail: the same wide table without its resizebox overflows the column."""
    wide = latex_table(settings_frame(2), wide=True)
    unscaled = wide.replace(r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%", "")
    unscaled = unscaled.replace(r"\end{tabular}}", r"\end{tabular}")
    assert float(overfull(compile_document(tmp_path, unscaled))[0]) > 10


@needs_pdflatex
def test_every_special_character_compiles(tmp_path: Path) -> None:
    text = r"a_b {x} \ 5% $ & # ^ ~ < > | α λ Ω ± – — − × · ≤ ≥ → ≡ é ü ß ☃ ç ñ ő ł ø ą Þ ð ŋ Đ ϝ ς"
    log = compile_document(tmp_path, _latex(text))
    assert "Unicode character" not in log and "Missing $" not in log
    assert "unavailable in encoding" not in log and "Undefined control sequence" not in log


def test_negative_numbers_get_a_minus_sign() -> None:
    from analysis.tables import _latex_number

    assert _latex_number("-0.090 ± 0.015", bold=False) == r"$-$0.090{\scriptsize$\pm$.015}"
    assert _latex_number("-0.090", bold=True) == r"\textbf{\boldmath{}$-$0.090}"


def test_latex_escaping_by_hand() -> None:
    assert _latex(r"a_b {x} \ 5% $") == r"a\_b \{x\} \textbackslash{} 5\% \$"
    assert _latex("wise_ft (α=1)") == r"wise\_ft ($\alpha$=1)"
    assert _latex("λ Λ Α") == r"$\lambda$ $\Lambda$ A"  # a Greek capital A is drawn as a Latin A
    assert _latex("x < y | z") == r"x \textless{} y \textbar{} z"
    assert _latex("é ☃") == r"é \texttt{U+2603}"  # pdflatex prints é; the snowman is named, not fatal
    # Letters the default fonts lack (an ogonek, thorn, eth; digamma needs a package) are named too.
    assert _latex("ą Þ ϝ ç") == r"\texttt{U+0105} \texttt{U+00DE} \texttt{U+03DD} ç"


def test_table_layout_caption_label_reference_block() -> None:
    frame = settings_frame(1)
    frame.loc[frame["setting"] == "feature_extraction", "old_acc_mean"] = 0.999  # above every method
    tex = latex_table(frame, caption="cap", label="tab:x")
    lines = tex.splitlines()
    assert lines[0] == r"\begin{table}[t]"
    tabular = next(i for i, line in enumerate(lines) if line.startswith(r"\begin{tabular}"))
    assert lines.index(r"\caption{cap}") < tabular  # caption above the table
    assert r"\label{tab:x}" in lines
    rows = [line for line in lines if line.endswith(r"\\")]
    assert rows[0].split(" & ")[0] == "setting" and "n" not in rows[0].split(" & ")  # every row has 3 seeds
    # The references come after their own rule, marked, and never bold although feature_extraction is "best".
    joint = next(line for line in lines if line.startswith("joint"))
    extraction = next(line for line in lines if line.startswith("feature\\_extraction"))
    assert lines[lines.index(joint) - 2] == r"\midrule" and r"\textbf" not in joint + extraction
    finetune = next(line for line in lines if line.startswith("finetune"))
    assert finetune.split(" & ")[1].startswith(r"\textbf")  # the best method's old acc (0.900) is bold
    assert r"feature\_extraction$^\dagger$" in tex
    # One new task: no BWT, final drop or retention (they repeat forgetting); the time is there.
    assert "BWT" not in rows[0] and "retention" not in rows[0] and "time (s)" in rows[0]


@needs_pdflatex
def test_scenario_table_compiles_and_fits_one_column(tmp_path: Path) -> None:
    from analysis.scenarios import scenario_latex, scenario_table

    rows = [
        (setting, setting, scenario, acc)
        for setting in ("finetune", "online_ewc", "replay_memory=1000", "joint")
        for scenario in ("task", "domain", "class")
        for acc in (0.812, 0.834)
    ]
    table = scenario_table(pd.DataFrame(rows, columns=["setting", "method", "scenario", "acc"]))
    log = compile_document(tmp_path, scenario_latex(table))
    assert overfull(log) == [], "the scenario table is wider than one column"
