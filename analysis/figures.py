"""Paper figures from tidy result frames: forgetting curves, the stability gap around task switches,
stability–plasticity plane, accuracy matrices, hyperparameter sweeps and WiSE-FT interpolation.

Every function takes a pandas DataFrame (the columns are listed in its docstring), writes ``<out_dir>/<name>.pdf``
and ``<out_dir>/<name>.png`` (200 dpi; nothing when ``out_dir`` is None) and returns the figure, a
:class:`PaperFigure`: a :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot, no global figure state),
made under :func:`analysis.style.paper_style`, that a notebook shows as is and that a reader can restyle
(``fig.axes[0].set_title(...)``) and save again (``fig.save(out_dir, name)``). Its ``paths`` are the files
written; for code written when these functions returned ``[pdf_path, png_path]``, the figure also reads as that
list (``paths[-1]``, ``for p in fig``). Colours and line styles follow :mod:`analysis.style`.

Conventions: bands and error bars are ±1 standard deviation over seeds (sample std, ddof = 1), cut at the range
the quantity can take (an accuracy band never leaves [0, 1]); with one seed the std is NaN and nothing is drawn
for it. Accuracy axes span the data (bands included) plus a small margin, never
less than 0.1 accuracy, clipped to [0, 1]; an axis that does not start at 0 carries a break mark (two short
slashes) at its foot so the reader sees it is truncated. Accuracy ticks are plain decimals.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.patches import Rectangle
from matplotlib.path import Path as MplPath
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, ScalarFormatter

from analysis.style import (
    BAND_ALPHA,
    BASELINES,
    METHOD_FAMILIES,
    PNG_DPI,
    method_color,
    method_family,
    order_methods,
    order_settings,
    paper_style,
    setting_styles,
)

MIN_WIDTH = 3.4  # inches: one column
MAX_WIDTH = 7.0  # inches: full page width
MIN_ACCURACY_SPAN = 0.1
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


class PaperFigure(Figure):
    """A figure of this module: a matplotlib :class:`~matplotlib.figure.Figure` that remembers the files it was
    saved to (``paths``: pdf, png) and shows itself in a notebook. Iterating, indexing and ``len`` read
    ``paths``, so code that took the ``[pdf_path, png_path]`` these functions used to return keeps working."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.paths: list[Path] = []

    def save(self, out_dir: str | Path, name: str) -> list[Path]:
        """Write ``<out_dir>/<name>.pdf`` and ``.png`` (e.g. again, after restyling) and return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pdf, png = out / f"{name}.pdf", out / f"{name}.png"
        with paper_style():  # the print sizes the figure was made with (savefig reads a few rcParams)
            self.savefig(pdf)
            self.savefig(png, dpi=PNG_DPI)
        self.paths = [pdf, png]
        return self.paths

    def _repr_png_(self) -> bytes:
        """What Jupyter shows for the figure (no pyplot backend involved)."""
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=110)
        return buffer.getvalue()

    def __iter__(self):
        return iter(self.paths)

    def __getitem__(self, index: int) -> Path:
        return self.paths[index]

    def __len__(self) -> int:
        return len(self.paths)

    def __bool__(self) -> bool:  # a figure is truthy whatever len says (matplotlib tests `if fig`)
        return True


def _new_figure(width: float, height: float) -> PaperFigure:
    fig = PaperFigure(figsize=(min(max(width, MIN_WIDTH), MAX_WIDTH), height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(h_pad=0.04, w_pad=0.04, hspace=0.03, wspace=0.03)
    return fig


def _save(fig: PaperFigure, out_dir: str | Path | None, name: str) -> PaperFigure:
    if out_dir is not None:
        fig.save(out_dir, name)
    return fig


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


def _band(
    ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, color: str, lo: float = 0.0, hi: float = 1.0
) -> list[np.ndarray]:
    """±std band behind every line (zorder 1), cut to [lo, hi] (the values the quantity can take), skipped where
    std is undefined. Returns the band's edges as drawn (for the axis limits)."""
    lower, upper = np.clip(mean - std, lo, hi), np.clip(mean + std, lo, hi)
    ok = np.isfinite(std) & np.isfinite(mean)
    if ok.any():
        ax.fill_between(x, lower, upper, where=ok, color=color, alpha=BAND_ALPHA, linewidth=0, zorder=1)
    return [lower, upper]


def _clipped_error(mean: float, std: float, lo: float = 0.0, hi: float = 1.0) -> list[list[float]] | None:
    """An error bar of ±std cut to [lo, hi], as matplotlib's asymmetric ``[[below], [above]]``; None without std."""
    if not (np.isfinite(std) and np.isfinite(mean)):
        return None
    return [[mean - max(mean - std, lo)], [min(mean + std, hi) - mean]]


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


def _label_points(
    ax: Axes, x: np.ndarray, y: np.ndarray, texts: Sequence[str], bold: Sequence[bool] | None = None
) -> None:
    """A label beside every point (``bold`` ones in bold), moved by adjustText until no two labels overlap each
    other or a point (a thin leader line joins a label that had to move away), kept inside the axes."""
    weights = ["bold" if b else "normal" for b in (bold if bold is not None else [False] * len(texts))]
    labels = [
        ax.text(xi, yi, text, ha="left", va="bottom", fontweight=w, **LABEL_KW)
        for xi, yi, text, w in zip(x, y, texts, weights, strict=True)
    ]
    if not labels:
        return
    # Imported here: adjustText imports pyplot, which importing this module must not (no global figure state);
    # it is handed the axes, so it never touches pyplot's current figure.
    from adjustText import adjust_text

    ax.figure.draw_without_rendering()
    adjust_text(
        labels,
        x=np.asarray(x, dtype=float),
        y=np.asarray(y, dtype=float),
        ax=ax,
        expand=(1.1, 1.3),
        ensure_inside_axes=True,
        arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.5, "shrinkA": 1, "shrinkB": 2},
    )


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


def _curve_stats(curves: pd.DataFrame, drawn: list[str]) -> tuple[pd.DataFrame, list[tuple[str, str]], pd.Series]:
    """Mean and std over seeds per (setting, role, task, step) of the drawn settings, the panels (old tasks
    first) and each setting's number of seeds."""
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
    return stats, panels, data.groupby("setting")["seed"].nunique()


def _check_curves(curves: pd.DataFrame, settings: Sequence[str] | None) -> tuple[pd.DataFrame, dict, list[str]]:
    curves = _check_frame(curves, CURVE_COLUMNS, "forgetting_curves")
    roles = set(curves["role"].astype(str))
    if not roles <= {"pretrain", "finetune"}:
        raise ValueError(f"forgetting_curves: role must be 'pretrain' or 'finetune'; got {sorted(roles)}")
    styles = setting_styles(curves)
    if settings is None:
        return curves, styles, order_settings(curves)
    drawn = list(dict.fromkeys(str(s) for s in settings))
    unknown = [s for s in drawn if s not in styles]
    if unknown:
        raise ValueError(f"forgetting_curves: settings {unknown} are not in the frame; it has {list(styles)}")
    if not drawn:
        raise ValueError("forgetting_curves: settings is empty; nothing to plot")
    return curves, styles, drawn


def _draw_panels(
    axes: Sequence[Axes],
    panels: list[tuple[str, str]],
    stats: pd.DataFrame,
    drawn: list[str],
    styles: dict,
    *,
    title_chars: int,
    kinds: dict[str, str] | None,
    floor: float,
) -> list[list[np.ndarray]]:
    """Each panel's lines (mean) and bands (± std, cut to [floor, 1]); returns each panel's plotted values."""
    line_width = 1.4 if len(drawn) <= 8 else 1.1  # many overlapping curves read better thinner
    present = set(stats.index.droplevel("step"))
    values: list[list[np.ndarray]] = []
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
                    panel_values += [mean, *_band(ax, x, mean, std, style.color, lo=floor)]
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
        ax.set_title(f"{task} {kind}" if fits else f"{task}\n{kind}")
        values.append(panel_values)
    return values


def _legend_label(setting: str, seeds: pd.Series, same_as: Mapping[str, str] | None) -> str:
    label = f"{setting} (n={seeds[setting]})"
    if same_as and setting in same_as:
        label += f" ≡ {same_as[setting]}"
    return label


def _setting_handle(style) -> Line2D:
    return Line2D([], [], color=style.color, linestyle=style.linestyle, marker=style.marker, markersize=3.5)


def forgetting_curves(
    curves: pd.DataFrame,
    out_dir: str | Path | None,
    name: str = "forgetting_curves",
    settings: Sequence[str] | None = None,
    *,
    sharey: bool = True,
    quantity: str = "accuracy",
    kinds: dict[str, str] | None = None,
    floor: float = 0.0,
    same_as: Mapping[str, str] | None = None,
) -> PaperFigure:
    """Accuracy on every task during fine-tuning, one panel per pretraining task (``role == "pretrain"``)
    followed by one per new task (``role == "finetune"``). ``quantity`` names what the values are (the y
    label and title), ``kinds`` what each role's panels show (their titles), ``floor`` the lowest value the
    axis may show (−1 for correlations).

    ``curves`` columns: ``setting``, ``method``, ``seed``, ``step``, ``task``, ``role``, ``value`` (accuracy).
    Per setting, the mean over seeds at each step (seeds are aligned on equal step values) is a line and ±1 std
    over seeds a band behind it; the legend (below the panels) gives each setting's number of seeds.
    ``settings`` restricts and orders the settings drawn (default: all, in :func:`order_settings` order).
    ``sharey`` puts all panels on one accuracy scale so drops compare across tasks. ``same_as`` maps a setting
    to another whose measurements it repeats exactly; the legend says "≡ other" (their lines coincide)."""
    curves, styles, drawn = _check_curves(curves, settings)
    stats, panels, seeds = _curve_stats(curves, drawn)
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    width = min(max(2.25 * ncols + 0.5, MIN_WIDTH), MAX_WIDTH)
    labels = [_legend_label(s, seeds, same_as) for s in drawn]
    legend_cols = _legend_columns(labels, width)
    legend_rows = math.ceil(len(labels) / legend_cols)
    height = 0.45 + 2.0 * nrows + 0.2 + 0.19 * legend_rows
    title_chars = int((width / ncols - 0.35) / 0.062)  # characters of 8.5 pt text that fit over one panel
    with paper_style():
        fig = _new_figure(width, height)
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=sharey, squeeze=False).ravel()
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        values = _draw_panels(axes, panels, stats, drawn, styles, title_chars=title_chars, kinds=kinds, floor=floor)
        _finish_panels(axes, panels, values, ncols, sharey=sharey, quantity=quantity, floor=floor)
        handles = [_setting_handle(styles[s]) for s in drawn]
        fig.legend(handles, labels, loc="outside lower center", ncols=legend_cols, columnspacing=1.2)
        fig.suptitle(f"{quantity[0].upper()}{quantity[1:]} during fine-tuning: {_seed_phrase(seeds[drawn])}")
        return _save(fig, out_dir, name)


def _finish_panels(
    axes: Sequence[Axes],
    panels: list,
    values: list[list[np.ndarray]],
    ncols: int,
    *,
    sharey: bool,
    quantity: str,
    floor: float,
) -> None:
    """Accuracy axes (one shared scale, or one per panel), y labels on the first column, x labels on the last
    row of each column."""
    if sharey:
        _accuracy_axis(axes[0], [v for panel in values for v in panel], label=quantity, floor=floor)
        for ax in axes[1 : len(panels)]:
            ax.tick_params(labelleft=ax.get_subplotspec().is_first_col())
    else:
        for ax, panel in zip(axes, values, strict=False):
            _accuracy_axis(ax, panel, label=quantity, floor=floor)
    for index, ax in enumerate(axes[: len(panels)]):
        if not ax.get_subplotspec().is_first_col():
            ax.set_ylabel("")
        if index + ncols >= len(panels):
            ax.set_xlabel("fine-tuning step")
            ax.tick_params(labelbottom=True)


def family_panels(settings: pd.DataFrame) -> dict[str, list[str]]:
    """The settings of each method family (:data:`analysis.style.METHOD_FAMILIES`, in its order; "other" last)
    present in ``settings`` (columns ``setting``, ``method``), each with the baselines (fine-tuning, joint
    training) present added, so every family is read against the same two references. A family with nothing
    but baselines is left out unless nothing else is there."""
    order = order_settings(settings)
    methods = dict(zip(settings["setting"].astype(str), settings["method"].astype(str), strict=False))
    baselines = [s for s in order if methods[s] in BASELINES]
    families: dict[str, list[str]] = {}
    for setting in order:
        if methods[setting] not in BASELINES:
            families.setdefault(method_family(methods[setting]), []).append(setting)
    ranked = {f: i for i, f in enumerate([*METHOD_FAMILIES, "other"])}
    result = {
        family: order_settings(settings[settings["setting"].isin(members + baselines)])
        for family, members in sorted(families.items(), key=lambda item: ranked[item[0]])
    }
    return result or {"references": baselines}


def forgetting_curves_by_family(
    curves: pd.DataFrame,
    out_dir: str | Path | None,
    name: str = "forgetting_curves",
    *,
    quantity: str = "accuracy",
    kinds: dict[str, str] | None = None,
    floor: float = 0.0,
    same_as: Mapping[str, str] | None = None,
) -> PaperFigure:
    """:func:`forgetting_curves` as small multiples: one row of panels per method family
    (:func:`family_panels`), each row with its own legend on the right and the baselines (fine-tuning, joint
    training) in every row; every panel of a task on one accuracy scale, so rows compare."""
    curves, styles, drawn = _check_curves(curves, None)
    stats, panels, seeds = _curve_stats(curves, drawn)
    families = family_panels(curves[["setting", "method"]].drop_duplicates())
    ncols = min(len(panels), 4)
    rows_per_family = math.ceil(len(panels) / ncols)
    longest = max(len(_legend_label(s, seeds, same_as)) for s in drawn)
    legend_width = 0.55 + 0.058 * longest
    width = min(2.0 * ncols + 0.5 + legend_width, MAX_WIDTH + 0.5)
    panel_height = 1.55
    height = 0.4 + len(families) * (rows_per_family * panel_height + 0.25)
    title_chars = int(((width - legend_width) / ncols - 0.35) / 0.062)
    with paper_style():
        fig = _new_figure(width, height)
        fig.set_size_inches(width, height)  # may exceed the one-page width: the legends sit beside the panels
        subfigures = np.atleast_1d(fig.subfigures(len(families), 1, hspace=0.02))
        every_axis: list[Axes] = []
        every_panel: list[tuple[Axes, str, str, list[np.ndarray]]] = []
        for subfigure, (family, members) in zip(subfigures, families.items(), strict=True):
            axes = subfigure.subplots(rows_per_family, ncols, sharex=True, squeeze=False).ravel()
            for ax in axes[len(panels) :]:
                ax.set_visible(False)
            values = _draw_panels(
                axes, panels, stats, members, styles, title_chars=title_chars, kinds=kinds, floor=floor
            )
            for ax, (role, task), panel in zip(axes, panels, values, strict=False):
                every_panel.append((ax, role, task, panel))
            every_axis += list(axes[: len(panels)])
            labels = [_legend_label(s, seeds, same_as) for s in members]
            subfigure.legend(
                [_setting_handle(styles[s]) for s in members], labels, loc="outside right center", title=family
            )
            for index, ax in enumerate(axes[: len(panels)]):
                if index + ncols >= len(panels):
                    ax.set_xlabel("fine-tuning step")
        for role, task in panels:  # one scale per task across the families
            mine = [(ax, v) for ax, r, t, v in every_panel if (r, t) == (role, task)]
            limits_from = [x for _, v in mine for x in v]
            for ax, _ in mine:
                _accuracy_axis(ax, limits_from, label=quantity, floor=floor)
                if not ax.get_subplotspec().is_first_col():
                    ax.set_ylabel("")
        fig.suptitle(
            f"{quantity[0].upper()}{quantity[1:]} during fine-tuning by method family: {_seed_phrase(seeds[drawn])}"
        )
        return _save(fig, out_dir, name)


SWITCH_COLUMNS = ["setting", "seed", "task", "step"]


def task_switches(switches: pd.DataFrame) -> list[float]:
    """The steps at which training switched from one fine-tuning task to the next: each fine-tuning task's end
    (``switches``: ``setting, seed, task, step``, one row per run and task, as ``task_ends`` records them) except
    the last task's, the median over seeds, distinct over settings, sorted."""
    switches = _check_frame(switches, SWITCH_COLUMNS, "stability_gap_figure switches")
    ends = switches.assign(step=pd.to_numeric(switches["step"]).astype(float))
    last = ends.groupby(["setting", "seed"])["step"].transform("max")
    medians = ends[ends["step"] < last].groupby(["setting", "task"], sort=False)["step"].median()
    return sorted(set(medians.tolist()))


def stability_gap_figure(
    curves: pd.DataFrame,
    switches: pd.DataFrame,
    out_dir: str | Path | None,
    name: str = "stability_gap",
    settings: Sequence[str] | None = None,
) -> PaperFigure:
    """The stability gap (De Lange, van de Ven & Tuytelaars 2023, Fig. 2): accuracy of the tasks learned first
    (every pretraining task and the first fine-tuning task, one panel each) against absolute fine-tuning steps,
    with each switch to the next fine-tuning task marked by a vertical dashed line (:func:`task_switches`; step 0
    is the switch from pretraining to the first fine-tuning task). Per setting the mean over seeds is a line and
    ±1 std a band. On the first fine-tuning task's panel the span it was trained on is shaded: after it, a dip
    right after a switch followed by a partial recovery is the gap, which evaluating only at task ends misses.

    ``curves``: ``setting, method, seed, step, task, role, value`` (accuracy at every evaluation), as for
    :func:`forgetting_curves`; ``switches``: ``setting, seed, task, step`` (each fine-tuning task's end).
    ``settings`` restricts and orders the settings drawn."""
    curves, styles, drawn = _check_curves(curves, settings)
    first = list(dict.fromkeys(curves.loc[curves["role"].astype(str) == "finetune", "task"].astype(str)))
    if len(first) < 2:
        raise ValueError(f"stability_gap_figure needs a sequence of fine-tuning tasks; got {first}")
    marks = task_switches(switches)
    stats, panels, seeds = _curve_stats(curves, drawn)
    panels = [p for p in panels if p[0] == "pretrain"] + [("finetune", first[0])]
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    width = min(max(2.4 * ncols + 0.5, MIN_WIDTH), MAX_WIDTH)
    labels = [_legend_label(s, seeds, None) for s in drawn]
    legend_cols = _legend_columns(labels, width)
    height = 0.45 + 2.0 * nrows + 0.2 + 0.19 * math.ceil(len(labels) / legend_cols)
    title_chars = int((width / ncols - 0.35) / 0.062)
    kinds = {"pretrain": "(pretraining task)", "finetune": "(first new task)"}
    with paper_style():
        fig = _new_figure(width, height)
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=False, squeeze=False).ravel()
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        values = _draw_panels(axes, panels, stats, drawn, styles, title_chars=title_chars, kinds=kinds, floor=0.0)
        _finish_panels(axes, panels, values, ncols, sharey=False, quantity="accuracy", floor=0.0)
        for ax in axes[: len(panels)]:
            for step in marks:
                ax.axvline(step, color="0.35", linestyle="--", linewidth=0.8, zorder=2)
        if marks:  # the first new task trained from step 0 to the first switch
            axes[len(panels) - 1].axvspan(0, marks[0], color="0.9", zorder=0, linewidth=0)
        handles = [_setting_handle(styles[s]) for s in drawn]
        handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=0.8))
        labels.append("switch to the next task")
        fig.legend(handles, labels, loc="outside lower center", ncols=legend_cols, columnspacing=1.2)
        fig.suptitle(f"Stability gap: accuracy around each task switch, {_seed_phrase(seeds[drawn])}")
        return _save(fig, out_dir, name)


# --- 2. Stability–plasticity plane ---------------------------------------------------------------------------


def outliers(values: np.ndarray, fence: float = 1.5) -> np.ndarray:
    """Mask of the values outside Tukey's fences, ``[Q1 − fence·IQR, Q3 + fence·IQR]`` (quartiles by linear
    interpolation); with fewer than 4 finite values nothing is an outlier. NaN is never an outlier."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size < 4:
        return np.zeros(values.shape, dtype=bool)
    q1, q3 = np.percentile(finite, [25, 75])
    spread = fence * (q3 - q1)
    with np.errstate(invalid="ignore"):
        return (values < q1 - spread) | (values > q3 + spread)


def stability_plasticity(
    points: pd.DataFrame, out_dir: str | Path | None, name: str = "stability_plasticity"
) -> PaperFigure:
    """Old-task accuracy (stability, y) against new-task accuracy (plasticity, x), one point per setting with
    ±1 std error bars (cut to [0, 1]); the Pareto front (``front`` column, computed by the caller) as a
    staircase through its points. Every point is labelled with its setting (placed by adjustText so labels do
    not overlap; the front's labels in bold). When some settings lie far from the rest (:func:`outliers` on
    either axis), a small overview on the left shows every setting and the zoomed region, and the main panel
    zooms past the outliers onto the others. ``points`` columns: ``setting``, ``method``, ``n`` (seeds),
    ``old_mean``, ``old_std``, ``new_mean``, ``new_std``, ``front`` (bool)."""
    points = _check_frame(points, POINT_COLUMNS, "stability_plasticity").copy()
    points["setting"] = points["setting"].astype(str)
    if points["setting"].duplicated().any():
        dupes = sorted(points.loc[points["setting"].duplicated(), "setting"].unique())
        raise ValueError(f"stability_plasticity: one row per setting; {dupes} appear more than once")
    styles = setting_styles(points)
    drawn = order_settings(points)
    rows = points.set_index("setting").loc[drawn]
    far = outliers(rows["new_mean"].to_numpy(float)) | outliers(rows["old_mean"].to_numpy(float))
    zoom = bool(far.any()) and int((~far).sum()) >= 2
    width = min(max(4.2, 3.4 + 0.16 * len(drawn)) + (2.2 if zoom else 0), MAX_WIDTH)
    height = min(max(3.2, 2.6 + 0.1 * len(drawn)), 5.2)
    with paper_style():
        fig = _new_figure(width, height)
        if zoom:
            overview, ax = fig.subplots(1, 2, width_ratios=[1, 2.4])
            inside = _plane(ax, rows, styles, limits_from=rows[~far])  # every point within its limits labelled
            x0, x1 = ax.get_xlim()
            y0, y1 = ax.get_ylim()
            _plane(overview, rows, styles, labelled=[s for s in rows.index if s not in inside])
            overview.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="0.35", linewidth=0.7, zorder=5)
            )
            overview.set_title(f"all {len(rows)} settings")
            ax.set_title(f"zoom: the {len(inside)} settings inside the box")
            ax.set_ylabel("")
            fig.suptitle(f"Stability vs plasticity: {_seed_phrase(rows['n'])}")
        else:
            ax = fig.subplots()
            _plane(ax, rows, styles)
            ax.set_title(f"Stability vs plasticity: {_seed_phrase(rows['n'])}")
        return _save(fig, out_dir, name)


def _plane(
    ax: Axes,
    rows: pd.DataFrame,
    styles: dict,
    labelled: Sequence[str] | None = None,
    limits_from: pd.DataFrame | None = None,
) -> list[str]:
    """One stability–plasticity panel: every row's point and error bars (the axes limits from ``limits_from``,
    default every row, so points outside are clipped away), the Pareto front, and a label on each setting of
    ``labelled`` (default: every point inside the axes limits). Returns the labelled settings."""
    for setting in rows.index:
        row, style = rows.loc[setting], styles[setting]
        ax.errorbar(
            row["new_mean"],
            row["old_mean"],
            xerr=_clipped_error(row["new_mean"], row["new_std"]),
            yerr=_clipped_error(row["old_mean"], row["old_std"]),
            fmt=style.marker,
            color=style.color,
            markeredgecolor=style.base,
            markeredgewidth=0.7,
            markersize=5,
            elinewidth=0.8,
            capsize=1.5,
            zorder=3,
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
            label="Pareto front (labels in bold)",
        )
    source = rows if limits_from is None else limits_from
    xs = [source["new_mean"], *[(source["new_mean"] + sign * source["new_std"]).clip(0, 1) for sign in (-1, 1)]]
    ys = [source["old_mean"], *[(source["old_mean"] + sign * source["old_std"]).clip(0, 1) for sign in (-1, 1)]]
    _accuracy_axis(ax, xs, axis="x", label="new-task accuracy (plasticity)")
    _accuracy_axis(ax, ys, axis="y", label="old-task accuracy (stability)")
    if labelled is None:
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        within = rows["new_mean"].between(x0, x1) & rows["old_mean"].between(y0, y1)
        labelled = list(rows.index[within])
        if len(front):  # the main panel explains the staircase
            ax.legend(loc="lower left", handlelength=2.0)
    chosen = rows.loc[list(labelled)]
    _label_points(
        ax,
        chosen["new_mean"].to_numpy(float),
        chosen["old_mean"].to_numpy(float),
        list(chosen.index),
        bold=list(chosen["front"].astype(bool)),
    )
    return list(chosen.index)


# --- 3. Accuracy matrix ---------------------------------------------------------------------------------------


def accuracy_heatmap(
    matrix: pd.DataFrame,
    out_dir: str | Path | None,
    name: str = "accuracy_matrix",
    title: str | None = None,
    delta_from: str | None = None,
) -> PaperFigure:
    """An accuracy matrix as a heatmap: rows are points in time (the index, e.g. "start", "after task_b"),
    columns the evaluated tasks, each cell annotated with its accuracy (2 decimals), colour scale fixed to 0–1
    with a colour bar, and ``title`` (e.g. the setting) above it. A NaN cell (a task not scored yet) is light
    grey and reads "n/a". With ``delta_from`` (a row label, e.g. "before fine-tuning") every other cell also
    shows its change from that row's cell in the same column, signed, under the accuracy (e.g. "−0.14")."""
    if not isinstance(matrix, pd.DataFrame):
        raise ValueError(f"accuracy_heatmap needs a pandas DataFrame; got {type(matrix).__name__}")
    if matrix.empty or matrix.shape[1] == 0:
        raise ValueError(f"accuracy_heatmap got an empty matrix (shape {matrix.shape}); nothing to plot")
    values = matrix.apply(pd.to_numeric).to_numpy(dtype=float)
    rows = [str(i) for i in matrix.index]
    cols = [str(c) for c in matrix.columns]
    if delta_from is not None and delta_from not in rows:
        raise ValueError(f"accuracy_heatmap: delta_from {delta_from!r} is not a row; rows are {rows}")
    base = values[rows.index(delta_from)] if delta_from is not None else None
    rotate = max(len(c) for c in cols) * len(cols) > 40 or max(len(c) for c in cols) > 12
    row_label_width = 0.06 * max(len(r) for r in rows)
    width = row_label_width + 0.62 * len(cols) + 1.3
    # A long title (a setting label) wraps to the figure's width, at about 0.075 in per character.
    lines = textwrap.wrap(title, max(int(min(max(width, MIN_WIDTH), MAX_WIDTH) / 0.075), 20)) if title else []
    labels_height = 0.045 * max(len(c) for c in cols) if rotate else 0.15
    height = 0.9 + (0.5 if base is not None else 0.36) * len(rows) + labels_height + 0.2 * len(lines)
    with paper_style():
        fig = _new_figure(width, max(height, 1.8))
        ax = fig.subplots()
        cmap = colormaps["viridis"].with_extremes(bad="0.85")  # a missing cell is light grey
        image = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                r, g, b, _ = image.cmap(image.norm(value))
                colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                text = f"{value:.2f}"
                if base is not None and rows[i] != delta_from and np.isfinite(base[j]):
                    text += "\n" + f"{value - base[j]:+.2f}".replace("-", "−")
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour, linespacing=1.1)
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


def sweep_plot(
    sweep: pd.DataFrame, out_dir: str | Path | None, name: str = "sweep", parameter: str = "lam"
) -> PaperFigure:
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
                        values += [mean, *_band(ax, x, mean, std, method_color(method))]
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


def wise_ft_curve(curve: pd.DataFrame, out_dir: str | Path | None, name: str = "wise_ft") -> PaperFigure:
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
        drawn = [old, new, *_band(left, alpha, old, old_std, colour), *_band(left, alpha, new, new_std, colour)]
        left.plot(alpha, old, color=colour, markersize=4, zorder=3, label=OLD_LABEL, **OLD_STYLE)
        left.plot(alpha, new, color=colour, markersize=4, zorder=3, label=NEW_LABEL, **NEW_STYLE)
        _accuracy_axis(left, drawn)
        left.set_xlim(-0.03, 1.03)
        left.set_xlabel("α  (0 = pretrained, 1 = fine-tuned)")
        left.legend(loc="best")
        left.set_title("accuracy along the interpolation")

        right.plot(new, old, color=colour, linewidth=1.0, zorder=2)
        for i in range(len(alpha)):
            right.errorbar(
                new[i],
                old[i],
                xerr=_clipped_error(new[i], new_std[i]),
                yerr=_clipped_error(old[i], old_std[i]),
                fmt="o",
                color=colour,
                markersize=4,
                markerfacecolor="white" if 0 < alpha[i] < 1 else colour,
                elinewidth=0.7,
                zorder=3,
            )
        new_band = [np.clip(new - new_std, 0, 1), np.clip(new + new_std, 0, 1)]
        old_band = [np.clip(old - old_std, 0, 1), np.clip(old + old_std, 0, 1)]
        _accuracy_axis(right, [new, *new_band], axis="x", label="new-task accuracy (plasticity)")
        _accuracy_axis(right, [old, *old_band], axis="y", label="old-task accuracy (stability)")
        right.set_title("trade-off")
        shown = _alpha_labels(alpha)
        texts = []
        for i in shown:
            text = f"α={alpha[i]:g}"
            if alpha[i] == 0:
                text += " (pretrained)"
            elif alpha[i] == 1:
                text += " (fine-tuned)"
            texts.append(text)
        _label_points(right, new[shown], old[shown], texts)
        fig.suptitle(f"WiSE-FT weight interpolation: {_seed_phrase(curve['n'], legend=False)}")
        return _save(fig, out_dir, name)
