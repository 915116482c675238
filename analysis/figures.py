"""Paper figures from tidy result frames: forgetting curves, stability–plasticity plane, accuracy matrices,
hyperparameter sweeps and WiSE-FT interpolation.

Every function takes a pandas DataFrame (the columns are listed in its docstring), writes ``<out_dir>/<name>.pdf``
and ``<out_dir>/<name>.png`` (200 dpi) and returns ``[pdf_path, png_path]``. Figures are built on
:class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, no global figure state) under
:func:`analysis.style.paper_style`. Colours and line styles follow :mod:`analysis.style`.

Conventions: bands and error bars are ±1 standard deviation over seeds (sample std, ddof = 1); with one seed the
std is NaN and nothing is drawn for it. Accuracy axes span the data (bands included) plus a small margin, never
less than 0.1 accuracy, clipped to [0, 1]; an axis that does not start at 0 carries a break mark (two short
slashes) at its foot so the reader sees it is truncated. Accuracy ticks are plain decimals.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.path import Path as MplPath
from matplotlib.text import Annotation
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, ScalarFormatter

from analysis.style import (
    BAND_ALPHA,
    PNG_DPI,
    method_color,
    order_methods,
    order_settings,
    paper_style,
    setting_styles,
)

MIN_WIDTH = 3.4  # inches: one column
MAX_WIDTH = 7.0  # inches: full page width
MIN_ACCURACY_SPAN = 0.1
GROW = 0.15  # a point label may widen its axes by this fraction before it flips to the other side of its point
OLD_STYLE = {"linestyle": "-", "marker": "o"}
NEW_STYLE = {"linestyle": "--", "marker": "s"}
OLD_LABEL = "old tasks (stability)"
NEW_LABEL = "new task (plasticity)"
# Point labels: 8 pt on a translucent white patch, so a line passing behind them does not cut the text.
LABEL_KW = {
    "fontsize": 8,
    "zorder": 4,
    "bbox": {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
}

CURVE_COLUMNS = ["setting", "method", "seed", "step", "task", "role", "value"]
POINT_COLUMNS = ["setting", "method", "n", "old_mean", "old_std", "new_mean", "new_std", "front"]
SWEEP_COLUMNS = ["method", "x", "old_mean", "old_std", "new_mean", "new_std", "n"]
WISE_COLUMNS = ["alpha", "old_mean", "old_std", "new_mean", "new_std", "n"]


# --- Shared helpers -------------------------------------------------------------------------------------------


def _check_frame(frame: object, columns: Sequence[str], what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{what} needs a pandas DataFrame; got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}; it needs {list(columns)}, got {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{what} got an empty frame (no rows); nothing to plot")
    return frame


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(min(max(width, MIN_WIDTH), MAX_WIDTH), height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(h_pad=0.04, w_pad=0.04, hspace=0.03, wspace=0.03)
    return fig


def _save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pdf, png = out / f"{name}.pdf", out / f"{name}.png"
    fig.savefig(pdf)
    fig.savefig(png, dpi=PNG_DPI)
    return [pdf, png]


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _std(values: pd.Series | np.ndarray) -> np.ndarray:
    """Std as floats with NaN where undefined (one seed)."""
    return np.asarray(values, dtype=float)


class _AccuracyLocator(MaxNLocator):
    """Nice ticks, but only inside [0, 1]: an axis stretched past 1 to make room for labels shows no "1.1"."""

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        ticks = super().tick_values(vmin, vmax)
        return ticks[(ticks >= -1e-9) & (ticks <= 1 + 1e-9)]


def _accuracy_axis(
    ax: Axes, values: Iterable[float], axis: str = "y", label: str = "accuracy", floor: float = 0.0
) -> None:
    """Limits from the data with a small margin (never spanning less than 0.1, clipped to [floor, 1]: 0 for
    accuracies, −1 for a correlation), plain decimal ticks, and a break mark on the axis when it does not start
    at the floor."""
    data = _finite(np.concatenate([_finite(v) for v in values]) if values else np.array([]))
    lo, hi = (float(data.min()), float(data.max())) if data.size else (floor, 1.0)
    lo, hi = max(lo, floor), min(hi, 1.0)
    if hi - lo < MIN_ACCURACY_SPAN:
        centre = (hi + lo) / 2
        lo, hi = centre - MIN_ACCURACY_SPAN / 2, centre + MIN_ACCURACY_SPAN / 2
        if lo < floor:
            lo, hi = floor, floor + MIN_ACCURACY_SPAN
        if hi > 1:
            lo, hi = 1 - MIN_ACCURACY_SPAN, 1.0
    pad = 0.06 * (hi - lo)
    # When the data start near the floor (the empty strip below would be at most 15% of the axis) the axis
    # starts there: nothing is hidden and it reads as complete.
    lower = floor if lo - pad - floor <= 0.15 * (hi - lo + 2 * pad) else lo - pad
    upper = min(hi + pad, 1.0 + pad)
    axis_obj = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_ylim if axis == "y" else ax.set_xlim)(lower, upper)
    axis_obj.set_major_locator(_AccuracyLocator(nbins="auto", steps=[1, 2, 5, 10], min_n_ticks=3))
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    axis_obj.set_major_formatter(formatter)
    (ax.set_ylabel if axis == "y" else ax.set_xlabel)(label)
    if lower > floor:
        _break_mark(ax, axis)


# Two parallel slashes, as a marker so their size is in points whatever the axes' aspect.
_BREAK = MarkerStyle(
    MplPath(
        [(-1.4, -1.0), (-0.2, 1.0), (0.2, -1.0), (1.4, 1.0)],
        [MplPath.MOVETO, MplPath.LINETO, MplPath.MOVETO, MplPath.LINETO],
    )
)


def _break_mark(ax: Axes, axis: str) -> None:
    """Two short slashes across the foot of the axis, below its first tick: the scale does not start at 0."""
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    ticks = [t for t in (ax.get_yticks() if axis == "y" else ax.get_xticks()) if lo <= t <= hi]
    first = (min(ticks) - lo) / (hi - lo) if ticks else 0.1
    where = min(max(first / 2, 0.025), 0.06)
    xy = (0.0, where) if axis == "y" else (where, 0.0)
    ax.plot(
        *xy,
        marker=_BREAK,
        markersize=7,
        markeredgewidth=0.8,
        color="black",
        transform=ax.transAxes,
        clip_on=False,
        zorder=10,
    )


def _band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, color: str) -> None:
    """±std band behind every line (zorder 1), skipped where std is undefined."""
    ok = np.isfinite(std) & np.isfinite(mean)
    if not ok.any():
        return
    ax.fill_between(x, mean - std, mean + std, where=ok, color=color, alpha=BAND_ALPHA, linewidth=0, zorder=1)


def _legend_columns(labels: Sequence[str], width: float, handle: float = 0.55) -> int:
    """How many legend columns fit in ``width`` inches at 8 pt (≈ 0.058 in per character)."""
    longest = max((len(label) for label in labels), default=1)
    per_column = handle + 0.058 * longest + 0.2
    return max(1, min(len(labels), int(width // per_column)))


def _seed_phrase(counts: Iterable[int], legend: bool = True) -> str:
    counts = sorted({int(c) for c in _finite(pd.to_numeric(pd.Series(list(counts)), errors="coerce"))})
    if not counts:
        return "mean ± std over seeds"
    if counts == [1]:
        return "single seed"
    if len(counts) == 1:
        return f"mean ± std over {counts[0]} seeds"
    return f"mean ± std over {counts[0]}–{counts[-1]} seeds" + (", n per setting in legend" if legend else "")


def _error(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _place_labels(fig: Figure, ax: Axes, labels: list[Annotation], rounds: int = 30) -> None:
    """Make point labels readable: a label sticking out of the right of the axes by up to ``GROW`` of its width
    stays (the axes grow to hold it), further it moves to the other side of its point; one sticking out on the
    left moves right or is nudged in; overlapping labels are pushed apart vertically; then the right and top
    limits of the axes are raised until every label fits inside."""
    if not labels:
        return
    to_points = 72.0 / fig.dpi
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    for label in labels:
        box = label.get_window_extent(renderer)
        dx, dy = label.xyann
        ha = label.get_horizontalalignment()
        if box.x1 > frame.x1 + GROW * frame.width and ha == "left":
            label.set_horizontalalignment("right")
            dx = -abs(dx)
        elif box.x0 < frame.x0 and ha == "right":
            label.set_horizontalalignment("left")
            dx = abs(dx)
        if box.y0 < frame.y0 and label.get_verticalalignment() == "top":
            label.set_verticalalignment("bottom")
            dy = abs(dy)
        label.xyann = (dx, dy)
        box = label.get_window_extent(renderer)
        if box.x1 > frame.x1 + GROW * frame.width:
            dx -= (box.x1 - frame.x1 - GROW * frame.width) * to_points
        elif box.x0 < frame.x0:
            dx += (frame.x0 - box.x0) * to_points
        label.xyann = (dx, dy)
    for _ in range(rounds):
        moved = False
        boxes = [label.get_window_extent(renderer) for label in labels]
        order = sorted(range(len(labels)), key=lambda i: -boxes[i].y1)
        for a_pos, i in enumerate(order):
            for j in order[a_pos + 1 :]:
                a, b = boxes[i], boxes[j]
                if a.x1 < b.x0 or b.x1 < a.x0 or a.y1 < b.y0 or b.y1 < a.y0:
                    continue
                shift = (b.y1 - a.y0 + 2) * to_points
                dx, dy = labels[j].xyann
                labels[j].xyann = (dx, dy - shift)
                boxes[j] = labels[j].get_window_extent(renderer)
                moved = True
        if not moved:
            break
    for _ in range(6):
        fig.draw_without_rendering()
        renderer = fig.canvas.get_renderer()
        frame = ax.get_window_extent(renderer)
        boxes = [label.get_window_extent(renderer) for label in labels]
        top, right = max(b.y1 for b in boxes), max(b.x1 for b in boxes)
        if top <= frame.y1 + 0.5 and right <= frame.x1 + 0.5:
            break
        if top > frame.y1 + 0.5:
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi + (top - frame.y1 + 3) / frame.height * (hi - lo))
        if right > frame.x1 + 0.5:
            lo, hi = ax.get_xlim()
            ax.set_xlim(lo, hi + (right - frame.x1 + 3) / frame.width * (hi - lo))


# --- 1. Forgetting curves -------------------------------------------------------------------------------------

STEP_TOLERANCE = 0.1  # steps closer than this fraction of the evaluation spacing count as the same step


def _align_steps(data: pd.DataFrame) -> pd.DataFrame:
    """Snap steps that differ slightly between seeds (e.g. 1000 vs 1001) onto one value per curve, so the mean
    and std over seeds are taken at the same point. Within one (setting, role, task), steps closer than
    ``STEP_TOLERANCE`` × the median evaluation spacing form a cluster, which takes the step value measured by the
    most seeds (ties: the smallest). Exactly shared steps are left as they are."""
    data = data.copy()
    for _, group in data.groupby(["setting", "role", "task"], sort=False):
        steps = np.sort(group["step"].unique())
        if len(steps) < 2:
            continue
        spacings = [np.diff(np.sort(s.unique())) for _, s in group.groupby("seed")["step"]]
        spacings = [d for d in spacings if len(d)]
        spacing = float(np.median(np.concatenate(spacings))) if spacings else float(np.median(np.diff(steps)))
        tolerance = STEP_TOLERANCE * spacing
        seeds_at = group.groupby("step")["seed"].nunique()
        mapping: dict[float, float] = {}
        cluster = [steps[0]]
        for step in [*steps[1:], None]:
            if step is not None and step - cluster[0] <= tolerance:
                cluster.append(step)
                continue
            target = max(cluster, key=lambda v: (seeds_at[v], -v))
            mapping.update(dict.fromkeys(cluster, target))
            if step is not None:
                cluster = [step]
        data.loc[group.index, "step"] = group["step"].map(mapping)
    return data


def forgetting_curves(
    curves: pd.DataFrame,
    out_dir: str | Path,
    name: str = "forgetting_curves",
    settings: Sequence[str] | None = None,
    *,
    sharey: bool = True,
    quantity: str = "accuracy",
    kinds: dict[str, str] | None = None,
    floor: float = 0.0,
) -> list[Path]:
    """Accuracy on every task during fine-tuning, one panel per pretraining task (``role == "pretrain"``)
    followed by one per new task (``role == "finetune"``). ``quantity`` names what the values are (the y
    label and title), ``kinds`` what each role's panels show (their titles), ``floor`` the lowest value the
    axis may show (−1 for correlations).

    ``curves`` columns: ``setting``, ``method``, ``seed``, ``step``, ``task``, ``role``, ``value`` (accuracy).
    Per setting, the mean over seeds at each step (seeds are aligned on equal step values) is a line and ±1 std
    over seeds a band behind it; the legend (below the panels) gives each setting's number of seeds.
    ``settings`` restricts and orders the settings drawn (default: all, in :func:`order_settings` order).
    ``sharey`` puts all panels on one accuracy scale so drops compare across tasks."""
    curves = _check_frame(curves, CURVE_COLUMNS, "forgetting_curves")
    roles = set(curves["role"].astype(str))
    if not roles <= {"pretrain", "finetune"}:
        raise ValueError(f"forgetting_curves: role must be 'pretrain' or 'finetune'; got {sorted(roles)}")
    styles = setting_styles(curves)
    if settings is None:
        drawn = order_settings(curves)
    else:
        drawn = list(dict.fromkeys(str(s) for s in settings))
        unknown = [s for s in drawn if s not in styles]
        if unknown:
            raise ValueError(f"forgetting_curves: settings {unknown} are not in the frame; it has {list(styles)}")
        if not drawn:
            raise ValueError("forgetting_curves: settings is empty; nothing to plot")
    data = curves[curves["setting"].astype(str).isin(drawn)].copy()
    data["setting"] = data["setting"].astype(str)
    data["value"] = pd.to_numeric(data["value"])
    data["step"] = pd.to_numeric(data["step"]).astype(float)
    data["task"] = data["task"].astype(str)
    data["role"] = data["role"].astype(str)
    data = _align_steps(data)

    panels = [("pretrain", t) for t in dict.fromkeys(data.loc[data["role"] == "pretrain", "task"].astype(str))]
    panels += [("finetune", t) for t in dict.fromkeys(data.loc[data["role"] == "finetune", "task"].astype(str))]
    per_seed = data.groupby(["setting", "role", "task", "step", "seed"])["value"].mean()
    stats = per_seed.groupby(level=["setting", "role", "task", "step"]).agg(["mean", "std"]).sort_index()
    seeds = data.groupby("setting")["seed"].nunique()

    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    width = min(max(2.25 * ncols + 0.5, MIN_WIDTH), MAX_WIDTH)
    labels = [f"{s} (n={seeds[s]})" for s in drawn]
    legend_cols = _legend_columns(labels, width)
    legend_rows = math.ceil(len(labels) / legend_cols)
    height = 0.45 + 2.0 * nrows + 0.2 + 0.19 * legend_rows
    title_chars = int((width / ncols - 0.35) / 0.062)  # characters of 8.5 pt text that fit over one panel
    line_width = 1.4 if len(drawn) <= 8 else 1.1  # many overlapping curves read better thinner
    with paper_style():
        fig = _new_figure(width, height)
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=sharey, squeeze=False).ravel()
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        everything: list[np.ndarray] = []
        present = set(stats.index.droplevel("step"))
        for ax, (role, task) in zip(axes, panels, strict=False):
            panel_values: list[np.ndarray] = []
            for layer in ("band", "line"):
                for setting in drawn:
                    key = (setting, role, task)
                    if key not in present:
                        continue
                    part = stats.loc[key]
                    x = part.index.to_numpy(dtype=float)
                    mean, std = part["mean"].to_numpy(float), _std(part["std"])
                    style = styles[setting]
                    if layer == "band":
                        _band(ax, x, mean, std, style.color)
                        panel_values += [mean, mean - std, mean + std]
                    else:
                        ax.plot(
                            x,
                            mean,
                            linewidth=line_width,
                            color=style.color,
                            linestyle=style.linestyle,
                            marker=style.marker,
                            markersize=3,
                            markevery=max(1, len(x) // 8),
                            zorder=3,
                        )
            kind = (kinds or {"pretrain": "(pretraining task)", "finetune": "(new task)"})[role]
            fits = len(task) + len(kind) + 1 <= title_chars
            title = f"{task} {kind}" if fits else f"{task}\n{kind}"
            ax.set_title(title)
            if sharey:
                everything += panel_values
            else:
                _accuracy_axis(ax, panel_values, label=quantity, floor=floor)
        if sharey:
            _accuracy_axis(axes[0], everything, label=quantity, floor=floor)
            for ax in axes[1 : len(panels)]:
                ax.tick_params(labelleft=ax.get_subplotspec().is_first_col())
        for index, ax in enumerate(axes[: len(panels)]):
            if not ax.get_subplotspec().is_first_col():
                ax.set_ylabel("")
            if index + ncols >= len(panels):
                ax.set_xlabel("fine-tuning step")
                ax.tick_params(labelbottom=True)
        handles = [
            Line2D(
                [],
                [],
                color=styles[s].color,
                linestyle=styles[s].linestyle,
                marker=styles[s].marker,
                markersize=3.5,
            )
            for s in drawn
        ]
        fig.legend(handles, labels, loc="outside lower center", ncols=legend_cols, columnspacing=1.2)
        fig.suptitle(f"{quantity[0].upper()}{quantity[1:]} during fine-tuning: {_seed_phrase(seeds[drawn])}")
        return _save(fig, out_dir, name)


# --- 2. Stability–plasticity plane ---------------------------------------------------------------------------


def stability_plasticity(points: pd.DataFrame, out_dir: str | Path, name: str = "stability_plasticity") -> list[Path]:
    """Old-task accuracy (stability, y) against new-task accuracy (plasticity, x), one point per setting with
    ±1 std error bars; the Pareto front (``front`` column, computed by the caller) as a staircase through its
    points, which are labelled with their setting. ``points`` columns: ``setting``, ``method``, ``n`` (seeds),
    ``old_mean``, ``old_std``, ``new_mean``, ``new_std``, ``front`` (bool)."""
    points = _check_frame(points, POINT_COLUMNS, "stability_plasticity").copy()
    points["setting"] = points["setting"].astype(str)
    if points["setting"].duplicated().any():
        dupes = sorted(points.loc[points["setting"].duplicated(), "setting"].unique())
        raise ValueError(f"stability_plasticity: one row per setting; {dupes} appear more than once")
    styles = setting_styles(points)
    drawn = order_settings(points)
    rows = points.set_index("setting").loc[drawn]
    labels = [f"{s} (n={int(rows.at[s, 'n'])})" if np.isfinite(rows.at[s, "n"]) else s for s in drawn]
    entries = len(labels) + int(rows["front"].astype(bool).any())
    axes_height = 3.1
    # The legend goes to the right of the plane when it fits in one column beside it, else below in columns.
    legend_right = entries * 0.17 <= axes_height
    if legend_right:
        width = 3.6 + 0.5 + 0.058 * max(len(label) for label in labels)
        legend_cols, height, where = 1, axes_height + 0.35, "outside right center"
    else:
        width = 6.0
        legend_cols = _legend_columns(labels, width, handle=0.3)
        height = axes_height + 0.35 + 0.19 * math.ceil(entries / legend_cols)
        where = "outside lower center"
    with paper_style():
        fig = _new_figure(width, height)
        ax = fig.subplots()
        handles = []
        for setting in drawn:
            row, style = rows.loc[setting], styles[setting]
            ax.errorbar(
                row["new_mean"],
                row["old_mean"],
                xerr=_error(row["new_std"]),
                yerr=_error(row["old_std"]),
                fmt=style.marker,
                color=style.color,
                markeredgecolor=method_color(style.method),
                markeredgewidth=0.7,
                markersize=5,
                elinewidth=0.8,
                capsize=1.5,
                zorder=3,
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    linestyle="none",
                    marker=style.marker,
                    color=style.color,
                    markeredgecolor=method_color(style.method),
                    markersize=5,
                )
            )
        front = rows[rows["front"].astype(bool)].sort_values(["new_mean", "old_mean"], ascending=[True, False])
        if len(front):
            ax.plot(
                front["new_mean"],
                front["old_mean"],
                drawstyle="steps-pre",
                color="0.3",
                linestyle=(0, (4, 2)),
                linewidth=0.9,
                zorder=2,
            )
            handles.append(Line2D([], [], color="0.3", linestyle=(0, (4, 2)), linewidth=0.9))
            labels = [*labels, "Pareto front"]
        xs = [rows["new_mean"], rows["new_mean"] - rows["new_std"], rows["new_mean"] + rows["new_std"]]
        ys = [rows["old_mean"], rows["old_mean"] - rows["old_std"], rows["old_mean"] + rows["old_std"]]
        _accuracy_axis(ax, xs, axis="x", label="new-task accuracy (plasticity)")
        _accuracy_axis(ax, ys, axis="y", label="old-task accuracy (stability)")
        fig.draw_without_rendering()
        texts = []
        fx, fy = front["new_mean"].to_numpy(dtype=float), front["old_mean"].to_numpy(dtype=float)
        for i, setting in enumerate(front.index):
            (dx, dy), ha, va = _outward(ax, fx, fy, i)
            texts.append(
                ax.annotate(
                    setting, (fx[i], fy[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, **LABEL_KW
                )
            )
        fig.legend(handles, labels, loc=where, ncols=legend_cols, columnspacing=1.0, handletextpad=0.3)
        ax.set_title(f"Stability vs plasticity: {_seed_phrase(rows['n'])}")
        _place_labels(fig, ax, texts)
        return _save(fig, out_dir, name)


# --- 3. Accuracy matrix ---------------------------------------------------------------------------------------


def accuracy_heatmap(
    matrix: pd.DataFrame, out_dir: str | Path, name: str = "accuracy_matrix", title: str | None = None
) -> list[Path]:
    """An accuracy matrix as a heatmap: rows are points in time (the index, e.g. "start", "after task_b"),
    columns the evaluated tasks, each cell annotated with its accuracy (2 decimals), colour scale fixed to 0–1
    with a colour bar, and ``title`` (e.g. the setting) above it. A NaN cell (a task not scored yet) is light
    grey and reads "n/a"."""
    if not isinstance(matrix, pd.DataFrame):
        raise ValueError(f"accuracy_heatmap needs a pandas DataFrame; got {type(matrix).__name__}")
    if matrix.empty or matrix.shape[1] == 0:
        raise ValueError(f"accuracy_heatmap got an empty matrix (shape {matrix.shape}); nothing to plot")
    values = matrix.apply(pd.to_numeric).to_numpy(dtype=float)
    rows = [str(i) for i in matrix.index]
    cols = [str(c) for c in matrix.columns]
    rotate = max(len(c) for c in cols) * len(cols) > 40 or max(len(c) for c in cols) > 12
    row_label_width = 0.06 * max(len(r) for r in rows)
    width = row_label_width + 0.62 * len(cols) + 1.3
    # A long title (a setting label) wraps to the figure's width, at about 0.075 in per character.
    lines = textwrap.wrap(title, max(int(min(max(width, MIN_WIDTH), MAX_WIDTH) / 0.075), 20)) if title else []
    height = 0.9 + 0.36 * len(rows) + (0.045 * max(len(c) for c in cols) if rotate else 0.15) + 0.2 * len(lines)
    with paper_style():
        fig = _new_figure(width, max(height, 1.8))
        ax = fig.subplots()
        cmap = colormaps["viridis"].with_extremes(bad="0.85")  # a missing cell is light grey
        image = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                r, g, b, _ = image.cmap(image.norm(value))
                colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
            else:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="0.3")
        ax.set_xticks(range(len(cols)), labels=cols)
        ax.set_yticks(range(len(rows)), labels=rows)
        if rotate:
            ax.tick_params(axis="x", labelrotation=35)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
                tick.set_rotation_mode("anchor")
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(length=0)
        ax.set_xlabel(str(matrix.columns.name) if matrix.columns.name else "evaluated task")
        ax.set_ylabel(str(matrix.index.name) if matrix.index.name else "checkpoint")
        bar = fig.colorbar(image, ax=ax, label="accuracy", fraction=0.08, pad=0.03, aspect=15)
        bar.set_ticks(np.linspace(0, 1, 6))
        bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
        bar.outline.set_linewidth(0.5)
        if lines:
            ax.set_title("\n".join(lines))
        return _save(fig, out_dir, name)


# --- 4. Hyperparameter sweep ----------------------------------------------------------------------------------


def _set_parameter_scale(ax: Axes, x: np.ndarray) -> str:
    """Log scale when all x > 0 span at least a factor 100; symlog (linear around 0) when the sweep includes 0
    and its positive values span that much; linear otherwise. Returns the scale."""
    positive = x[x > 0]
    if len(positive) and (x >= 0).all() and positive.max() / positive.min() >= 100:
        if (x > 0).all():
            ax.set_xscale("log")
            return "log"
        ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.6)
        return "symlog"
    return "linear"


def sweep_plot(sweep: pd.DataFrame, out_dir: str | Path, name: str = "sweep", parameter: str = "lam") -> list[Path]:
    """Old-task and new-task accuracy against one hyperparameter, ±1 std bands over seeds. ``sweep`` columns:
    ``method``, ``x`` (the hyperparameter value), ``old_mean``, ``old_std``, ``new_mean``, ``new_std``, ``n``.
    Colour is the method; old tasks are solid lines with circles, the new task dashed with squares. The x axis is
    logarithmic when every x > 0 and max/min ≥ 100 (symlog, linear near 0, when the sweep includes 0)."""
    sweep = _check_frame(sweep, SWEEP_COLUMNS, "sweep_plot").copy()
    sweep["method"] = sweep["method"].astype(str)
    methods = order_methods(sweep["method"])
    x_all = pd.to_numeric(sweep["x"]).to_numpy(dtype=float)
    if not np.isfinite(x_all).all():
        raise ValueError(f"sweep_plot: x must be finite; got {x_all.tolist()}")
    handles: list[Line2D] = []
    labels: list[str] = []
    if len(methods) > 1:
        for method in methods:
            handles.append(Line2D([], [], color=method_color(method), linewidth=3))
            labels.append(method)
    legend_colour = method_color(methods[0]) if len(methods) == 1 else "0.2"
    for style, label in ((OLD_STYLE, OLD_LABEL), (NEW_STYLE, NEW_LABEL)):
        handles.append(Line2D([], [], color=legend_colour, markersize=4, **style))
        labels.append(label)
    width = 4.2
    legend_cols = _legend_columns(labels, width)
    height = 2.9 + 0.19 * math.ceil(len(labels) / legend_cols)
    with paper_style():
        fig = _new_figure(width, height)
        ax = fig.subplots()
        scale = _set_parameter_scale(ax, x_all)
        values: list[np.ndarray] = []
        for layer in ("band", "line"):
            for method in methods:
                part = sweep[sweep["method"] == method].sort_values("x")
                x = part["x"].to_numpy(dtype=float)
                for prefix, style in (("old", OLD_STYLE), ("new", NEW_STYLE)):
                    mean = part[f"{prefix}_mean"].to_numpy(dtype=float)
                    std = _std(part[f"{prefix}_std"])
                    if layer == "band":
                        _band(ax, x, mean, std, method_color(method))
                        values += [mean, mean - std, mean + std]
                    else:
                        ax.plot(x, mean, color=method_color(method), markersize=4, zorder=3, **style)
        _accuracy_axis(ax, values)
        ax.set_xlabel(f"{parameter} (log scale)" if scale == "log" else parameter)
        if scale == "symlog":
            ax.set_xlabel(f"{parameter} (symmetric log scale, linear below {x_all[x_all > 0].min():g})")
        what = methods[0] if len(methods) == 1 else ", ".join(methods)
        ax.set_title(f"{what}: sweep over {parameter}, {_seed_phrase(sweep['n'], legend=False)}")
        fig.legend(handles, labels, loc="outside lower center", ncols=legend_cols, columnspacing=1.2)
        return _save(fig, out_dir, name)


# --- 5. WiSE-FT interpolation ---------------------------------------------------------------------------------


def _alpha_labels(alphas: np.ndarray, most: int = 6) -> list[int]:
    """Indices of the α values to annotate: all when few, else the ends and evenly spaced ones between."""
    if len(alphas) <= most:
        return list(range(len(alphas)))
    return sorted({round(float(i)) for i in np.linspace(0, len(alphas) - 1, most)})


def _outward(ax: Axes, x: np.ndarray, y: np.ndarray, i: int, distance: float = 6.0) -> tuple:
    """Offset (points) and alignment that put a label beside point ``i`` of a curve, along the curve's normal on
    its upper-right side (the empty side of a trade-off curve)."""
    points = ax.transData.transform(np.column_stack([x, y]))
    before, after = points[max(i - 1, 0)], points[min(i + 1, len(points) - 1)]
    tangent = after - before
    if not np.isfinite(tangent).all() or np.hypot(*tangent) == 0:
        normal = np.array([1.0, 1.0]) / math.sqrt(2)
    else:
        normal = np.array([-tangent[1], tangent[0]]) / np.hypot(*tangent)
        if normal.sum() < 0:
            normal = -normal
    ha = "left" if normal[0] > 0.35 else ("right" if normal[0] < -0.35 else "center")
    va = "bottom" if normal[1] > 0.35 else ("top" if normal[1] < -0.35 else "center")
    return (distance * normal[0], distance * normal[1]), ha, va


def wise_ft_curve(curve: pd.DataFrame, out_dir: str | Path, name: str = "wise_ft") -> list[Path]:
    """WiSE-FT weight interpolation (Wortsman et al. 2022) ``θ(α) = (1 − α)·θ_pretrained + α·θ_fine-tuned`` for
    the parameters that exist in the pretrained model (backbone, old heads, a shared head's pretrained rows);
    parameters created for fine-tuning (a new task's own head, a shared head's rows for the new classes) keep
    their fine-tuned values at every α, for either head layout. Left: old-task and new-task
    accuracy against α with ±1 std bands. Right: the trade-off curve (new-task accuracy on x, old-task on y, as
    in :func:`stability_plasticity`) with α annotations. ``curve`` columns: ``alpha`` (0..1), ``old_mean``,
    ``old_std``, ``new_mean``, ``new_std``, ``n``."""
    curve = _check_frame(curve, WISE_COLUMNS, "wise_ft_curve").copy()
    curve = curve.apply(pd.to_numeric).sort_values("alpha")
    alpha = curve["alpha"].to_numpy(dtype=float)
    if not np.isfinite(alpha).all() or alpha.min() < 0 or alpha.max() > 1:
        raise ValueError(f"wise_ft_curve: alpha must lie in [0, 1]; got {alpha.tolist()}")
    colour = method_color("wise_ft")
    old, old_std = curve["old_mean"].to_numpy(dtype=float), _std(curve["old_std"])
    new, new_std = curve["new_mean"].to_numpy(dtype=float), _std(curve["new_std"])
    with paper_style():
        fig = _new_figure(6.8, 3.0)
        left, right = fig.subplots(1, 2)
        _band(left, alpha, old, old_std, colour)
        _band(left, alpha, new, new_std, colour)
        left.plot(alpha, old, color=colour, markersize=4, zorder=3, label=OLD_LABEL, **OLD_STYLE)
        left.plot(alpha, new, color=colour, markersize=4, zorder=3, label=NEW_LABEL, **NEW_STYLE)
        _accuracy_axis(left, [old, old - old_std, old + old_std, new, new - new_std, new + new_std])
        left.set_xlim(-0.03, 1.03)
        left.set_xlabel("α  (0 = pretrained, 1 = fine-tuned)")
        left.legend(loc="best")
        left.set_title("accuracy along the interpolation")

        right.plot(new, old, color=colour, linewidth=1.0, zorder=2)
        for i in range(len(alpha)):
            right.errorbar(
                new[i],
                old[i],
                xerr=_error(new_std[i]),
                yerr=_error(old_std[i]),
                fmt="o",
                color=colour,
                markersize=4,
                markerfacecolor="white" if 0 < alpha[i] < 1 else colour,
                elinewidth=0.7,
                zorder=3,
            )
        _accuracy_axis(right, [new, new - new_std, new + new_std], axis="x", label="new-task accuracy (plasticity)")
        _accuracy_axis(right, [old, old - old_std, old + old_std], axis="y", label="old-task accuracy (stability)")
        fig.draw_without_rendering()
        texts = []
        for i in _alpha_labels(alpha):
            text = f"α={alpha[i]:g}"
            if alpha[i] == 0:
                text += " (pretrained)"
            elif alpha[i] == 1:
                text += " (fine-tuned)"
            (dx, dy), ha, va = _outward(right, new, old, i)
            texts.append(
                right.annotate(
                    text, (new[i], old[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, **LABEL_KW
                )
            )
        right.set_title("trade-off")
        fig.suptitle(f"WiSE-FT weight interpolation: {_seed_phrase(curve['n'], legend=False)}")
        _place_labels(fig, right, texts)
        return _save(fig, out_dir, name)
