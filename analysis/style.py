"""One look for every figure and table: method order, method colours, per-setting line styles, print rcParams.

Rules (the same in every figure, whatever subset of methods or settings it shows):

* **Method order** — :data:`METHOD_ORDER` (baselines, then regularisers, distillation, rehearsal, the joint upper
  bound and weight interpolation). Methods not in it come after, alphabetically (:func:`order_methods`).
* **Method colour** — :func:`method_color` is a fixed table lookup (:data:`METHOD_COLORS`), so "ewc" is the same
  red whether or not other methods are plotted. An unknown method gets a colour from :data:`_EXTRA_COLORS` picked
  by a CRC32 of its name, stable across runs and figures; drawn together, unknown methods never share one
  (:func:`method_colors` moves a collision to the next free colour).
* **Setting style** — a *setting* is a method plus hyperparameters ("ewc lam=1000"). Settings are ordered by
  method (as above), then by their label in natural order, so numbers compare as numbers ("lam=10" before
  "lam=1000") (:func:`order_settings`). The ``k``-th setting of a method (0-based, in that order, counted over
  the frame handed to :func:`setting_styles`) keeps the method's hue and gets

  - line style ``LINESTYLES[k % 4]``: solid, dashed, dash-dot, dotted (then dense dashes etc.);
  - marker ``MARKERS[k % 7]``: circle, square, triangle, diamond, ...;
  - the method colour blended towards white by ``min(0.22 · k, 0.55)`` (the first setting is the pure colour).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib as mpl
import matplotlib.colors as mcolors
import pandas as pd

METHOD_ORDER: list[str] = [
    "finetune",
    "feature_extraction",
    "partial",
    "lp_ft",
    "l2sp",
    "ewc",
    "online_ewc",
    "si",
    "mas",
    "lwf",
    "feature_distill",
    "replay",
    "agem",
    "der",
    "derpp",
    "joint",
    "wise_ft",
    "lora",
]

# Hand-picked: tab10 for the most common methods, darker tab20b shades for the rehearsal family; grey for plain
# fine-tuning (the baseline every figure compares to) and black for the joint-training upper bound.
METHOD_COLORS: dict[str, str] = {
    "finetune": "#7f7f7f",  # grey
    "feature_extraction": "#8c564b",  # brown
    "partial": "#bcbd22",  # olive
    "lp_ft": "#17becf",  # cyan
    "l2sp": "#1f77b4",  # blue
    "ewc": "#d62728",  # red
    "online_ewc": "#e377c2",  # pink
    "si": "#9467bd",  # purple
    "mas": "#ff7f0e",  # orange
    "lwf": "#2ca02c",  # green
    "feature_distill": "#98df8a",  # light green: LwF's label-free sibling
    "replay": "#393b79",  # navy
    "agem": "#637939",  # moss green
    "der": "#7b4173",  # plum
    "derpp": "#b8860b",  # dark goldenrod
    "joint": "#000000",  # black
    "wise_ft": "#00665e",  # dark teal
    "lora": "#c49c94",  # dusty rose
}

# For methods not in the table. Each is at least 23 CIELAB ΔE from every table colour and from each other (picked
# greedily from matplotlib's qualitative maps), so a new method never looks like an existing one.
_EXTRA_COLORS: list[str] = [
    "#f0027f",
    "#aec7e8",
    "#fc8d62",
    "#d6616b",
    "#1b9e77",
    "#e7cb94",
    "#a65628",
    "#8c6d31",
    "#f7b6d2",
    "#9c9ede",
]

# Rows that are not methods to rank: a frozen backbone (nothing can be forgotten) and joint training (the old
# tasks' data trained alongside, an upper bound). Tables keep them apart and never bold them.
REFERENCE_METHODS: tuple[str, ...] = ("feature_extraction", "joint")
# The baseline and the upper bound drawn in every panel of a per-family figure.
BASELINES: tuple[str, ...] = ("finetune", "joint")
# Method families, for figures drawn as small multiples (one panel per family); unknown methods go to "other".
METHOD_FAMILIES: dict[str, tuple[str, ...]] = {
    "regularisation": ("l2sp", "ewc", "online_ewc", "si", "mas"),
    "distillation": ("lwf", "feature_distill"),
    "rehearsal": ("replay", "agem", "der", "derpp"),
    "parameter-efficient and interpolation": ("partial", "lp_ft", "lora", "wise_ft"),
    "references": ("finetune", "feature_extraction", "joint"),
}


def method_family(method: str) -> str:
    """The family of :data:`METHOD_FAMILIES` a method belongs to; "other" for a method not listed."""
    return next((family for family, members in METHOD_FAMILIES.items() if method in members), "other")


LINESTYLES: list[str | tuple] = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2))]
MARKERS: list[str] = ["o", "s", "^", "D", "v", "P", "X"]

LIGHTEN_STEP = 0.22
LIGHTEN_MAX = 0.55

# Print sizes: every text at least 8 pt, thin but visible lines, TrueType fonts embedded in the PDF.
RC: dict[str, object] = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.35,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "legend.frameon": False,
    "legend.handlelength": 2.6,
    "errorbar.capsize": 1.5,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "savefig.dpi": 200,
    "figure.dpi": 100,
    "axes.formatter.useoffset": False,
}

PNG_DPI = 200
BAND_ALPHA = 0.15


@contextmanager
def paper_style() -> Iterator[None]:
    """The print rcParams, restored on exit (figures read rcParams when their artists are made)."""
    with mpl.rc_context(RC):
        yield


def _method_rank(method: str) -> tuple[int, str]:
    try:
        return (METHOD_ORDER.index(method), "")
    except ValueError:
        return (len(METHOD_ORDER), method)


def order_methods(methods: Iterable[str]) -> list[str]:
    """Unique methods in :data:`METHOD_ORDER`, unknown ones after it alphabetically."""
    return sorted({str(m) for m in methods}, key=_method_rank)


def method_color(method: str) -> str:
    """The method's colour as ``#rrggbb``; the same in every figure (see the module docstring)."""
    method = str(method)
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA_COLORS[zlib.crc32(method.encode("utf-8")) % len(_EXTRA_COLORS)]


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """Colours for methods drawn together: a table method keeps its :data:`METHOD_COLORS` colour; unknown
    methods, taken in alphabetical order, each get their :func:`method_color` slot, or the next slot no other
    unknown method took (so up to ``len(_EXTRA_COLORS)`` new methods never share a colour)."""
    methods = [str(m) for m in methods]  # read once: any iterable
    colours = {m: METHOD_COLORS[m] for m in methods if m in METHOD_COLORS}
    taken: set[int] = set()
    for method in sorted(set(methods) - set(METHOD_COLORS)):
        slot = zlib.crc32(method.encode("utf-8")) % len(_EXTRA_COLORS)
        for step in range(len(_EXTRA_COLORS)):
            if (slot + step) % len(_EXTRA_COLORS) not in taken:
                slot = (slot + step) % len(_EXTRA_COLORS)
                break
        taken.add(slot)
        colours[method] = _EXTRA_COLORS[slot]
    return colours


def lighten(color: str, amount: float) -> str:
    """``color`` blended towards white by ``amount`` in [0, 1] (0: unchanged)."""
    r, g, b = mcolors.to_rgb(color)
    return mcolors.to_hex((r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount))


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def natural_key(label: str) -> tuple:
    """Sort key that compares numbers inside a label as numbers: "lam=10" < "lam=1e3" < "lam=2000"."""
    key: list[tuple[int, float, str]] = []
    position = 0
    for match in _NUMBER.finditer(label):
        if match.start() > position:
            key.append((1, 0.0, label[position : match.start()]))
        key.append((0, float(match.group()), ""))
        position = match.end()
    if position < len(label):
        key.append((1, 0.0, label[position:]))
    return tuple(key)


def method_of(setting: str) -> str:
    """The method of a setting label when no ``method`` column says: its first word ("ewc lam=1000" → "ewc")."""
    return str(setting).split()[0] if str(setting).split() else str(setting)


def _setting_methods(frame: pd.DataFrame) -> dict[str, str]:
    if "setting" not in frame.columns:
        raise ValueError(f"ordering settings needs a 'setting' column; got {list(frame.columns)}")
    if "method" in frame.columns:
        pairs = frame[["setting", "method"]].drop_duplicates()
        methods: dict[str, str] = {}
        for setting, method in zip(pairs["setting"].astype(str), pairs["method"].astype(str), strict=True):
            if methods.setdefault(setting, method) != method:
                raise ValueError(f"setting '{setting}' belongs to two methods: '{methods[setting]}' and '{method}'")
        return methods
    return {str(s): method_of(s) for s in frame["setting"].unique()}


def order_settings(frame: pd.DataFrame) -> list[str]:
    """Unique settings of ``frame`` (columns ``setting`` and, optionally, ``method``) ordered by method
    (:func:`order_methods`), then by label in natural order. Without a ``method`` column the method is the
    setting's first word."""
    methods = _setting_methods(frame)
    return sorted(methods, key=lambda s: (_method_rank(methods[s]), natural_key(s)))


@dataclass(frozen=True)
class SettingStyle:
    method: str
    base: str  # the method's colour (edges of markers); ``color`` is it lightened for the k-th setting
    color: str
    linestyle: str | tuple
    marker: str
    index: int  # k: the setting's position among its method's settings


def setting_styles(frame: pd.DataFrame) -> dict[str, SettingStyle]:
    """Style of every setting in ``frame``, in :func:`order_settings` order (see the module docstring rule).
    Pass the full results frame, not a subset, so that a setting keeps its style across figures."""
    methods = _setting_methods(frame)
    colours = method_colors(methods.values())
    counts: dict[str, int] = {}
    styles: dict[str, SettingStyle] = {}
    for setting in order_settings(frame):
        method = methods[setting]
        k = counts.get(method, 0)
        counts[method] = k + 1
        styles[setting] = SettingStyle(
            method=method,
            base=colours[method],
            color=lighten(colours[method], min(LIGHTEN_STEP * k, LIGHTEN_MAX)),
            linestyle=LINESTYLES[k % len(LINESTYLES)],
            marker=MARKERS[k % len(MARKERS)],
            index=k,
        )
    return styles
