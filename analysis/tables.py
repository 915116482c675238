"""Results tables in Markdown and LaTeX (booktabs): one row per setting, mean ± standard deviation over seeds
for each metric, and the number of seeds.

Columns (:data:`analysis.summarize.REPORTED`, those present in the settings frame): the *main* set fits one
column of a paper (old- and new-task accuracy, forgetting, fine-tuning time, and the stability gap, or
plasticity in its place when some setting has more than one fine-tuning task); the *wide* set adds the metrics
that, for one fine-tuning task, repeat a main one (BWT = −forgetting, final drop = forgetting, retention, …), the
stability gap, and the method's preparation time.

Bold: per metric, every method setting whose Student-t confidence interval (``<metric>_ci_low/_ci_high`` of
:func:`analysis.summarize.setting_summary`) overlaps the best one's, so no difference the seeds cannot resolve is
bolded (:func:`analysis.metrics.overlaps_best`; a single seed counts as a point). A frame without intervals
bolds the cells whose printed value reads best. Cost columns are never bolded. Reference rows (methods in
:data:`analysis.style.REFERENCE_METHODS`: a frozen backbone, joint training) come last, in their own block, and
are never bolded nor used to find the best.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.metrics import overlaps_best
from analysis.style import REFERENCE_METHODS
from analysis.summarize import REPORTED, Reported


@dataclass
class Row:
    """One table row: its cells (setting, n, then one per column), which cells are bold, and whether it is a
    reference row."""

    cells: list[str]
    bold: list[bool]
    reference: bool


def table_columns(settings: pd.DataFrame, wide: bool = False) -> list[Reported]:
    """The metrics a table shows for ``settings`` (see the module docstring). Without a ``finetune_tasks``
    column the sequence metrics are shown."""
    sequences = "finetune_tasks" not in settings or bool((settings["finetune_tasks"] > 1).any())
    # With sequences plasticity joins the main table and the stability gap moves to the wide one (width).
    shown = {"main", "sequences"} if sequences else {"main", "single"}
    if wide:
        shown |= {"wide", "single"}
    return [r for r in REPORTED if r.table in shown and _has(settings, r.column)]


def _has(settings: pd.DataFrame, column: str) -> bool:
    return f"{column}_mean" in settings and bool(settings[f"{column}_mean"].notna().any())


def table_rows(settings: pd.DataFrame, digits: int = 3, wide: bool = False) -> tuple[list[Reported], list[Row]]:
    """The columns and rows of a table: method rows in the frame's order, then the reference rows."""
    columns = table_columns(settings, wide)
    frame = settings.reset_index(drop=True)
    reference = (
        frame["method"].isin(REFERENCE_METHODS).to_numpy() if "method" in frame else np.zeros(len(frame), dtype=bool)
    )
    bold = {r.column: _bold(frame, r, digits, ~reference) for r in columns}
    rows = []
    for i, record in enumerate(frame.to_dict("records")):
        cells, marks = [str(record["setting"]), str(int(record["n"]))], [False, False]
        for r in columns:
            cells.append(_cell(record.get(f"{r.column}_mean"), record.get(f"{r.column}_std"), r, digits))
            marks.append(bool(bold[r.column][i]))
        rows.append(Row(cells, marks, bool(reference[i])))
    order = [i for i in range(len(rows)) if not rows[i].reference] + [i for i in range(len(rows)) if rows[i].reference]
    return columns, [rows[i] for i in order]


def _bold(frame: pd.DataFrame, column: Reported, digits: int, ranked: np.ndarray) -> np.ndarray:
    """Which rows of ``frame`` are bold in ``column`` (see the module docstring)."""
    bold = np.zeros(len(frame), dtype=bool)
    if column.higher is None or not ranked.any():
        return bold
    means = frame[f"{column.column}_mean"].to_numpy(dtype=float)
    # Decided on the printed value too, so cells that read the same as the best are bold with it.
    printed = np.array([float(f"{v:.{digits}f}") if np.isfinite(v) else np.nan for v in means])
    candidates = np.where(ranked, printed, np.nan)
    if not np.isfinite(candidates).any():
        return bold
    target = np.nanmax(candidates) if column.higher else np.nanmin(candidates)
    bold = ranked & (printed == target)
    low, high = f"{column.column}_ci_low", f"{column.column}_ci_high"
    if low in frame and high in frame:
        index = np.flatnonzero(ranked)
        overlap = overlaps_best(
            means[index], frame[low].to_numpy(float)[index], frame[high].to_numpy(float)[index], column.higher
        )
        bold[index[overlap]] = True
    return bold


def _cell(mean: object, std: object, column: Reported, digits: int) -> str:
    if _nan(mean):
        return "–"
    mean = float(mean)
    if column.higher is None:  # a cost: its mean only, at a precision that suits its size
        return f"{mean:.1f}" if abs(mean) < 100 else f"{mean:.0f}"
    if _nan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(std):.{digits}f}"


def table_cells(
    settings: pd.DataFrame, digits: int = 3, wide: bool = False
) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Headers, cell texts and bold marks (reference rows last), for the metrics :func:`table_columns` shows."""
    columns, rows = table_rows(settings, digits, wide)
    headers = ["setting", "n", *[r.header for r in columns]]
    return headers, [r.cells for r in rows], [r.bold for r in rows]


REFERENCE_MARK = " †"
REFERENCE_NOTE = (
    "† reference, not a method: feature extraction (frozen backbone, nothing to forget) and joint training (the "
    "old tasks' data trained alongside); never bolded nor compared."
)


def markdown_table(settings: pd.DataFrame, digits: int = 3, wide: bool = False) -> str:
    columns, rows = table_rows(settings, digits, wide)
    headers = ["setting", "n", *[r.header for r in columns]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for row in rows:
        cells = [row.cells[0] + (REFERENCE_MARK if row.reference else ""), *row.cells[1:]]
        shown = [f"**{c}**" if b else c for c, b in zip(cells, row.bold, strict=True)]
        lines.append("| " + " | ".join(shown) + " |")
    if any(r.reference for r in rows):
        lines += ["", REFERENCE_NOTE]
    return "\n".join(lines) + "\n"


def latex_table(
    settings: pd.DataFrame,
    digits: int = 3,
    caption: str | None = None,
    label: str = "tab:results",
    wide: bool = False,
) -> str:
    """A booktabs table for pdflatex, caption and ``\\label`` above the tabular. The main table (``wide=False``)
    is a ``table`` meant to fit one column; it drops the ``n`` column when every row has the same number of seeds
    (say it in the caption). The wide one is a ``table*`` across both columns, scaled down to the text width
    only when it is wider. Reference rows follow a rule of their own. ``caption`` is plain text (escaped)."""
    columns, rows = table_rows(settings, digits, wide)
    keep_n = wide or len({r.cells[1] for r in rows}) > 1
    headers = ["setting", *(["n"] if keep_n else []), *[r.latex or _latex(r.header) for r in columns]]
    spec = "l" + "r" * (len(headers) - 1)
    environment = "table*" if wide else "table"
    lines = [rf"\begin{{{environment}}}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{_latex(caption)}}}")
    lines.append(rf"\label{{{label}}}")
    lines.append(r"\small")
    lines.append(r"\setlength{\tabcolsep}{3.5pt}")
    if wide:  # only shrinks: a table narrower than the text keeps its size
        lines.append(r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(headers) + r" \\", r"\midrule"]
    previous = False
    for row in rows:
        if row.reference and not previous:
            lines.append(r"\midrule")
        previous = row.reference
        cells = [row.cells[0], *(row.cells[1:2] if keep_n else []), *row.cells[2:]]
        marks = [row.bold[0], *(row.bold[1:2] if keep_n else []), *row.bold[2:]]
        name = _latex(cells[0]) + (r"$^\dagger$" if row.reference else "")
        shown = [name] + [_latex_number(c, b) for c, b in zip(cells[1:], marks[1:], strict=True)]
        lines.append(" & ".join(shown) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}" + ("}" if wide else ""))
    lines.append(rf"\end{{{environment}}}")
    return "\n".join(lines) + "\n"


def _latex_number(cell: str, bold: bool) -> str:
    """A numeric cell; ``mean ± std`` keeps the std in a smaller size without its leading zero (``0.906±.015``)
    so the column stays narrow. Bold is ``\\textbf`` with ``\\boldmath`` for the ± (``\\bm`` is not in every
    preamble)."""
    if " ± " in cell:
        mean, std = cell.split(" ± ")
        std = std[1:] if std.startswith("0.") else std  # ±.015, as papers print it: the column stays narrow
        text = rf"{_minus(mean)}{{\scriptsize$\pm${std}}}"
    else:
        text = _minus(_latex(cell))
    return rf"\textbf{{\boldmath{{}}{text}}}" if bold else text


def _minus(number: str) -> str:
    """A minus sign, not a text hyphen, before a negative number (``−0.09``, as a paper prints it)."""
    return f"$-${number[1:]}" if number.startswith("-") else number


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
    "<": r"\textless{}",  # in the default OT1 font encoding '<', '>' and '|' print as other glyphs
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
# Non-ASCII characters the labels and captions use, in commands of LaTeX's base (no package needed).
LATEX_UNICODE = {
    "±": r"$\pm$",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "≈": r"$\approx$",
    "≡": r"$\equiv$",
    "→": r"$\rightarrow$",
    "←": r"$\leftarrow$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "√": r"$\surd$",
    "∞": r"$\infty$",
    "°": r"\ensuremath{^\circ}",
    "µ": r"$\mu$",
    "’": "'",
    "‘": "`",
    "“": "``",
    "”": "''",
    "…": r"\ldots{}",
    "†": r"$\dagger$",
    "₀": r"$_0$",
    "₁": r"$_1$",
    "²": r"$^2$",
    "⁻": r"$^-$",
    "¹": r"$^1$",
    "\u00a0": "~",
}
# Greek capitals with a glyph of their own in LaTeX's math fonts (the others look like Latin capitals).
GREEK_CAPITALS = {"Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"}


def _latex(text: str) -> str:
    """Plain text → pdflatex source that prints it: LaTeX's special characters escaped in one pass (so no
    replacement is escaped again), Greek letters and the symbols of :data:`LATEX_UNICODE` as math, accented
    Latin letters kept (pdflatex reads UTF-8 and has them), and any other character shown as its code point
    (``U+2603``) rather than stopping the compilation."""
    return "".join(_latex_char(c) for c in str(text))


def _latex_char(char: str) -> str:
    if char in LATEX_SPECIALS:
        return LATEX_SPECIALS[char]
    if char.isascii():
        return char
    if char in LATEX_UNICODE:
        return LATEX_UNICODE[char]
    name = unicodedata.name(char, "")
    greek = re.fullmatch(r"GREEK (SMALL|CAPITAL) LETTER ([A-Z]+)", name)
    if greek:
        letter = greek.group(2).capitalize()
        if greek.group(1) == "SMALL":
            letter = {"Lamda": "lambda", "Omicron": "o"}.get(letter, letter.lower())
            if letter == "o":
                return "o"
            if letter in GREEK_SMALL:
                return f"$\\{letter}$"
        else:
            letter = "Lambda" if letter == "Lamda" else letter
            return f"$\\{letter}$" if letter in GREEK_CAPITALS else _greek_like_latin(letter)
    if _in_default_fonts(char):
        return char  # é, ü, ç, ß, ø…: pdflatex's UTF-8 input has them for the default (OT1) fonts
    return rf"\texttt{{U+{ord(char):04X}}}"


# Small Greek letters plain LaTeX has a command for (digamma, koppa and the like need extra packages).
GREEK_SMALL = {
    *("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"),
    *("nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega"),
}
# Accents the default OT1 fonts can put on a Latin letter (grave, acute, circumflex, tilde, macron, breve, dot,
# diaeresis, ring, double acute, caron, cedilla); an ogonek, for one, stops pdflatex.
OT1_ACCENTS = {0x300, 0x301, 0x302, 0x303, 0x304, 0x306, 0x307, 0x308, 0x30A, 0x30B, 0x30C, 0x327}
OT1_LETTERS = set("ßøØæÆœŒłŁı")


def _in_default_fonts(char: str) -> bool:
    """Whether pdflatex prints the character with its default fonts and UTF-8 input, with no package."""
    if char in OT1_LETTERS:
        return True
    base, *marks = unicodedata.normalize("NFD", char)
    return base.isascii() and base.isalpha() and bool(marks) and all(ord(m) in OT1_ACCENTS for m in marks)


def _greek_like_latin(letter: str) -> str:
    """A Greek capital that has no LaTeX command of its own: the Latin capital it is drawn as."""
    latin = {"Alpha": "A", "Beta": "B", "Epsilon": "E", "Zeta": "Z", "Eta": "H", "Iota": "I", "Kappa": "K"}
    latin |= {"Mu": "M", "Nu": "N", "Omicron": "O", "Rho": "P", "Tau": "T", "Chi": "X"}
    return latin.get(letter, rf"\texttt{{{letter}}}")


def _nan(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
