"""Paper figures (analysis.figures) and the shared style (analysis.style) on small synthetic frames."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis import figures
from analysis.style import (
    LINESTYLES,
    METHOD_ORDER,
    lighten,
    method_color,
    order_methods,
    order_settings,
    setting_styles,
)

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SETTINGS = [("finetune", "finetune"), ("ewc lam=1000", "ewc"), ("ewc lam=10", "ewc")]


def make_curves(
    settings=SETTINGS, seeds: int = 3, steps: int = 5, pretrain=("task_a",), new=("task_b",), seed: int = 0
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for setting, method in settings:
        for s in range(seeds):
            for step in np.linspace(0, 100, steps).astype(int):
                for task in pretrain:
                    rows.append((setting, method, s, step, task, "pretrain", 0.9 - 0.004 * step + rng.normal(0, 0.01)))
                for task in new:
                    rows.append((setting, method, s, step, task, "finetune", 0.1 + 0.007 * step + rng.normal(0, 0.01)))
    return pd.DataFrame(rows, columns=["setting", "method", "seed", "step", "task", "role", "value"])


def make_points(n: int = 3) -> pd.DataFrame:
    std = 0.02 if n > 1 else np.nan
    return pd.DataFrame(
        {
            "setting": ["finetune", "ewc lam=10", "ewc lam=1000", "replay buf=100"],
            "method": ["finetune", "ewc", "ewc", "replay"],
            "n": n,
            "old_mean": [0.2, 0.5, 0.7, 0.6],
            "old_std": std,
            "new_mean": [0.9, 0.85, 0.6, 0.5],
            "new_std": std,
            "front": [True, True, True, False],
        }
    )


def make_sweep(n: int = 3, xs=(1.0, 10.0, 100.0, 1000.0), methods=("ewc",)) -> pd.DataFrame:
    std = 0.01 if n > 1 else np.nan
    rows = [(m, x, 0.3 + 0.1 * i, std, 0.9 - 0.05 * i, std, n) for m in methods for i, x in enumerate(xs)]
    return pd.DataFrame(rows, columns=["method", "x", "old_mean", "old_std", "new_mean", "new_std", "n"])


def make_wise(n: int = 3, points: int = 6) -> pd.DataFrame:
    alpha = np.linspace(0, 1, points)
    std = 0.01 if n > 1 else np.nan
    return pd.DataFrame(
        {"alpha": alpha, "old_mean": 0.9 - 0.5 * alpha**2, "old_std": std, "new_mean": 0.1 + 0.8 * np.sqrt(alpha)}
    ).assign(new_std=std, n=n)


MATRIX = pd.DataFrame([[0.9, 0.1], [0.5, 0.88]], index=["start", "after task_b"], columns=["task_a", "task_b"])


def assert_written(fig: figures.PaperFigure, out: Path, name: str) -> None:
    """The function returned its matplotlib Figure, which remembers the two files it wrote (and still reads as
    the ``[pdf, png]`` list these functions used to return)."""
    assert isinstance(fig, Figure) and fig.axes
    assert fig.paths == [out / f"{name}.pdf", out / f"{name}.png"] == list(fig)
    assert fig[-1] == fig.paths[-1] and len(fig) == 2
    pdf, png = fig.paths
    assert pdf.stat().st_size > 0 and png.stat().st_size > 0
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert png.read_bytes()[:8] == PNG_SIGNATURE


# --- Figures --------------------------------------------------------------------------------------------------


def test_forgetting_curves_one_pretraining_task(tmp_path):
    paths = figures.forgetting_curves(make_curves(), tmp_path)
    assert_written(paths, tmp_path, "forgetting_curves")


def test_forgetting_curves_two_pretraining_tasks_and_a_chosen_subset(tmp_path):
    curves = make_curves(pretrain=("task_a", "task_c"))
    out = tmp_path / "nested" / "dir"  # created on demand
    paths = figures.forgetting_curves(curves, out, name="two", settings=["ewc lam=10", "finetune"])
    assert_written(paths, out, "two")


def test_forgetting_curves_single_seed_and_many_settings(tmp_path):
    assert_written(figures.forgetting_curves(make_curves(seeds=1), tmp_path, name="n1"), tmp_path, "n1")
    many = [(f"ewc lam={10**k}", "ewc") for k in range(6)] + [(m, m) for m in METHOD_ORDER[:14]]
    assert len(many) == 20
    curves = make_curves(settings=many, seeds=2, steps=3)
    assert_written(figures.forgetting_curves(curves, tmp_path, name="many"), tmp_path, "many")


def test_forgetting_curves_rejects_unknown_settings_and_roles(tmp_path):
    with pytest.raises(ValueError, match="not in the frame"):
        figures.forgetting_curves(make_curves(), tmp_path, settings=["lwf"])
    bad = make_curves().assign(role="old")
    with pytest.raises(ValueError, match="role"):
        figures.forgetting_curves(bad, tmp_path)


def test_steps_that_differ_slightly_between_seeds_are_aligned():
    curves = make_curves(seeds=2, steps=3)
    shifted = curves["seed"] == 1
    curves.loc[shifted, "step"] = curves.loc[shifted, "step"] + 1  # 0, 50, 100 vs 1, 51, 101
    aligned = figures._align_steps(curves.astype({"step": float}))
    for _, group in aligned.groupby(["setting", "task"]):
        assert sorted(group["step"].unique()) == [0.0, 50.0, 100.0]


def test_stability_plasticity(tmp_path):
    paths = figures.stability_plasticity(make_points(), tmp_path)
    assert_written(paths, tmp_path, "stability_plasticity")


def test_stability_plasticity_single_seed_and_no_front(tmp_path):
    assert_written(figures.stability_plasticity(make_points(n=1), tmp_path, name="n1"), tmp_path, "n1")
    none = make_points().assign(front=False)
    assert_written(figures.stability_plasticity(none, tmp_path, name="nofront"), tmp_path, "nofront")


def test_stability_plasticity_rejects_duplicate_settings(tmp_path):
    points = make_points()
    with pytest.raises(ValueError, match="one row per setting"):
        figures.stability_plasticity(pd.concat([points, points.iloc[:1]]), tmp_path)


def test_accuracy_heatmap(tmp_path):
    paths = figures.accuracy_heatmap(MATRIX, tmp_path, title="finetune")
    assert_written(paths, tmp_path, "accuracy_matrix")
    long = pd.DataFrame(
        np.full((3, 4), 0.5), index=["start", "after a", "after b"], columns=[f"a_long_task_name_{i}" for i in range(4)]
    )
    long.iloc[0, 1] = np.nan  # a missing measurement is shown, not a crash
    assert_written(figures.accuracy_heatmap(long, tmp_path, name="long"), tmp_path, "long")


def test_accuracy_heatmap_titles_and_marks_unscored_cells(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, out_dir, name: drawn.append(fig) or [])
    sequence = pd.DataFrame(
        [[0.9, np.nan, np.nan], [0.8, 0.85, np.nan], [0.7, 0.6, 0.75]],
        index=["start", "after t1", "after t2"],
        columns=["old", "t1", "t2"],
    )
    figures.accuracy_heatmap(sequence, tmp_path, title="ewc lam=10")
    (ax, _) = drawn[0].axes  # the heatmap and its colour bar
    assert ax.get_title() == "ewc lam=10"
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("n/a") == 3 and "nan" not in texts and texts.count("0.85") == 1
    long = "finetune " + "model.heads=shared " * 8
    figures.accuracy_heatmap(sequence, tmp_path, title=long)
    assert drawn[1].axes[0].get_title().count("\n") >= 1  # a long setting label wraps


def test_sweep_plot_log_linear_and_zero(tmp_path):
    assert_written(figures.sweep_plot(make_sweep(), tmp_path), tmp_path, "sweep")
    linear = make_sweep(xs=(0.0, 0.1, 0.5, 1.0), methods=("ewc", "online_ewc"))
    assert_written(figures.sweep_plot(linear, tmp_path, name="lin", parameter="alpha"), tmp_path, "lin")
    zero = make_sweep(n=1, xs=(0.0, 1.0, 100.0, 1e4))
    assert_written(figures.sweep_plot(zero, tmp_path, name="zero"), tmp_path, "zero")


@pytest.mark.parametrize(
    ("xs", "scale"),
    [((1, 10, 100), "log"), ((1, 10, 99), "linear"), ((0, 1, 1000), "symlog"), ((0.1, 0.5, 1.0), "linear")],
)
def test_sweep_scale_rule(xs, scale):
    ax = Figure().subplots()
    assert figures._set_parameter_scale(ax, np.asarray(xs, dtype=float)) == scale
    assert ax.get_xscale() == scale


def test_wise_ft_curve(tmp_path):
    assert_written(figures.wise_ft_curve(make_wise(points=11), tmp_path), tmp_path, "wise_ft")
    assert_written(figures.wise_ft_curve(make_wise(n=1, points=3), tmp_path, name="n1"), tmp_path, "n1")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        figures.wise_ft_curve(make_wise().assign(alpha=np.linspace(0, 2, 6)), tmp_path)


CALLS = [
    (figures.forgetting_curves, make_curves),
    (figures.stability_plasticity, make_points),
    (figures.sweep_plot, make_sweep),
    (figures.wise_ft_curve, make_wise),
]


@pytest.mark.parametrize(("function", "make"), CALLS, ids=lambda v: getattr(v, "__name__", ""))
def test_empty_frames_and_missing_columns_are_errors(function, make, tmp_path):
    frame = make()
    with pytest.raises(ValueError, match="empty"):
        function(frame.iloc[:0], tmp_path)
    dropped = frame.columns[-1]
    with pytest.raises(ValueError, match=f"missing column.*{dropped}"):
        function(frame.drop(columns=[dropped]), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_heatmap_rejects_an_empty_matrix(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        figures.accuracy_heatmap(pd.DataFrame(), tmp_path)
    with pytest.raises(ValueError, match="empty"):
        figures.accuracy_heatmap(MATRIX.iloc[:0], tmp_path)


def test_analysis_imports_neither_torch_nor_research_nor_pyplot():
    code = (
        "import sys, analysis.figures, analysis.style\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'research') or m == 'matplotlib.pyplot']\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- Style ----------------------------------------------------------------------------------------------------


def test_method_color_is_fixed_per_method():
    alone = method_color("ewc")
    together = {m: method_color(m) for m in ["finetune", "ewc", "replay", "my_method"]}
    assert together["ewc"] == alone == method_color("ewc")
    assert method_color("my_method") == together["my_method"]  # unknown methods: stable too
    known = [method_color(m) for m in METHOD_ORDER]
    assert len(set(known)) == len(known)  # every known method has its own colour


def test_order_methods_follows_method_order_with_unknowns_last():
    assert order_methods(["zeta", "replay", "ewc", "alpha_method", "finetune", "ewc"]) == [
        "finetune",
        "ewc",
        "replay",
        "alpha_method",
        "zeta",
    ]
    assert order_methods(reversed(METHOD_ORDER)) == METHOD_ORDER


def test_order_settings_groups_by_method_and_sorts_numbers_as_numbers():
    frame = pd.DataFrame(
        {
            "setting": ["replay buf=100", "ewc lam=1000", "ewc lam=10", "finetune", "ewc lam=1e2", "zz new"],
            "method": ["replay", "ewc", "ewc", "finetune", "ewc", "zz"],
        }
    )
    assert order_settings(frame) == [
        "finetune",
        "ewc lam=10",
        "ewc lam=1e2",
        "ewc lam=1000",
        "replay buf=100",
        "zz new",
    ]
    # Without a method column, the method is the first word.
    assert order_settings(frame[["setting"]]) == order_settings(frame)


def test_settings_of_one_method_share_the_hue_and_differ_in_style():
    frame = pd.DataFrame({"setting": ["ewc lam=1000", "ewc lam=10", "lwf"], "method": ["ewc", "ewc", "lwf"]})
    styles = setting_styles(frame)
    first, second = styles["ewc lam=10"], styles["ewc lam=1000"]
    assert first.color == method_color("ewc") and first.linestyle == LINESTYLES[0]
    assert second.color == lighten(method_color("ewc"), 0.22) and second.linestyle == LINESTYLES[1]
    assert second.marker != first.marker
    assert styles["lwf"].color == method_color("lwf") and styles["lwf"].linestyle == LINESTYLES[0]


# --- Figures as objects, bands, labels, families, colours ----------------------------------------------------


def test_a_figure_can_be_restyled_and_saved_again_or_not_saved_at_all(tmp_path):
    fig = figures.forgetting_curves(make_curves(), None)  # a notebook's figure: nothing written
    assert fig.paths == [] and list(tmp_path.iterdir()) == []
    assert fig._repr_png_()[:8] == PNG_SIGNATURE  # what Jupyter displays
    fig.axes[0].set_title("restyled")
    assert fig.save(tmp_path, "again") == [tmp_path / "again.pdf", tmp_path / "again.png"]
    assert (tmp_path / "again.png").read_bytes()[:8] == PNG_SIGNATURE


def test_bands_never_leave_zero_to_one(tmp_path):
    curves = make_curves()
    curves.loc[curves["seed"] == 0, "value"] = 1.0  # seeds 1.0, 0.8, 0.6 at the top: mean + std > 1
    curves.loc[curves["seed"] == 1, "value"] = 0.8
    curves.loc[curves["seed"] == 2, "value"] = 0.6
    fig = figures.forgetting_curves(curves, None, sharey=False)
    for ax in fig.axes:
        for band in ax.collections:
            vertices = np.concatenate([path.vertices for path in band.get_paths()])
            assert vertices[:, 1].max() <= 1.0 and vertices[:, 1].min() >= 0.0


def test_clipped_error_bars_by_hand():
    assert figures._clipped_error(0.95, 0.1) == [[pytest.approx(0.1)], [pytest.approx(0.05)]]
    assert figures._clipped_error(0.05, 0.1) == [[pytest.approx(0.05)], [pytest.approx(0.1)]]
    assert figures._clipped_error(0.5, float("nan")) is None


def test_outliers_by_hand():
    # 1..7 and x: quartiles (linear interpolation) 2.75 and 6.25 whatever x > 7, IQR 3.5, upper fence 11.5.
    assert figures.outliers(np.array([1, 2, 3, 4, 5, 6, 7, 11.4])).tolist() == [False] * 8
    assert figures.outliers(np.array([1, 2, 3, 4, 5, 6, 7, 11.6])).tolist() == [False] * 7 + [True]
    assert figures.outliers(np.array([1, 2, 3, 4, 5, 6, 7, 11.6, np.nan])).tolist()[-1] is False  # NaN: never
    assert figures.outliers(np.array([1.0, 100.0, 3.0])).tolist() == [False] * 3  # fewer than 4 values


def test_every_point_of_the_plane_is_labelled_and_outliers_get_an_overview(tmp_path):
    names = [f"ewc lam={10**i}" for i in range(6)] + ["finetune"]
    rows = [(s, s.split()[0], 3, 0.9 + 0.01 * i, 0.01, 0.95 - 0.005 * i, 0.01) for i, s in enumerate(names)]
    points = pd.DataFrame(rows, columns=["setting", "method", "n", "old_mean", "old_std", "new_mean", "new_std"])
    points["front"] = [True] + [False] * 6
    fig = figures.stability_plasticity(points, tmp_path)
    (ax,) = fig.axes
    assert sorted(t.get_text() for t in ax.texts) == sorted(names)
    assert [t.get_fontweight() for t in ax.texts if t.get_text() == names[0]] == ["bold"]  # on the front
    far = points.copy()
    far.loc[6, ["old_mean", "new_mean"]] = [0.2, 0.3]  # finetune far from the rest
    overview, zoom = figures.stability_plasticity(far, tmp_path, name="far").axes
    assert [t.get_text() for t in overview.texts] == ["finetune"]
    assert sorted(t.get_text() for t in zoom.texts) == sorted(names[:6])
    assert zoom.get_xlim()[0] > 0.5  # zoomed past the outlier


def test_family_small_multiples_put_the_baselines_in_every_row(tmp_path):
    settings = [
        ("finetune", "finetune"),
        ("joint", "joint"),
        ("ewc lam=10", "ewc"),
        ("si", "si"),
        ("replay", "replay"),
        ("lwf", "lwf"),
        ("my_method", "my_method"),
    ]
    frame = pd.DataFrame(settings, columns=["setting", "method"])
    families = figures.family_panels(frame)
    assert list(families) == ["regularisation", "distillation", "rehearsal", "other"]
    assert families["regularisation"] == ["finetune", "ewc lam=10", "si", "joint"]
    assert all({"finetune", "joint"} <= set(members) for members in families.values())
    curves = make_curves(settings=settings)
    fig = figures.forgetting_curves_by_family(curves, tmp_path, same_as={"si": "ewc lam=10"})
    assert len(fig.subfigs) == 4
    legends = [[t.get_text() for t in sub.legends[0].get_texts()] for sub in fig.subfigs]
    assert "si (n=3) ≡ ewc lam=10" in legends[0] and all(any("finetune" in t for t in g) for g in legends)


def test_single_task_heatmap_shows_the_change_from_the_start(tmp_path):
    matrix = pd.DataFrame([[0.9, 0.2], [0.75, 0.95]], index=["before fine-tuning", "finetune"], columns=["a", "b"])
    fig = figures.accuracy_heatmap(matrix, tmp_path, delta_from="before fine-tuning")
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.20", "0.75\n−0.15", "0.90", "0.95\n+0.75"]
    with pytest.raises(ValueError, match="not a row"):
        figures.accuracy_heatmap(matrix, tmp_path, delta_from="start")


def _lab(colour: str) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour, to measure how far apart two colours look (ΔE76)."""
    import matplotlib.colors as mcolors

    rgb = np.array(mcolors.to_rgb(colour))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = matrix @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_new_methods_get_colours_distinct_from_the_others():
    from analysis.style import _EXTRA_COLORS, METHOD_COLORS, method_colors

    table = list(METHOD_COLORS.values())
    for i, extra in enumerate(_EXTRA_COLORS):
        others = table + _EXTRA_COLORS[:i] + _EXTRA_COLORS[i + 1 :]
        assert min(np.linalg.norm(_lab(extra) - _lab(o)) for o in others) > 20, extra
    new = [f"new_method_{i}" for i in range(len(_EXTRA_COLORS))]
    colours = method_colors(["ewc", *new])
    assert colours["ewc"] == METHOD_COLORS["ewc"]
    assert len({colours[m] for m in new}) == len(new)  # even where two names hash to one slot
    assert colours == method_colors(reversed(["ewc", *new]))  # the same whatever the order given


# --- Stability gap around task switches -----------------------------------------------------------------------


def test_stability_gap_figure_marks_each_switch_and_draws_the_first_tasks(tmp_path):
    """Two seeds of one setting, tasks task_b (ends at step 50) then task_c (ends at 100): panels for the
    pretraining task and the first new task only, one dashed line at the switch (step 50; the last task's end
    is no switch), and the first new task's line is the mean over seeds at every evaluation."""
    curves = make_curves(settings=[("finetune", "finetune")], seeds=2, steps=11, new=("task_b", "task_c"))
    switches = pd.DataFrame(
        [("finetune", s, task, step) for s in range(2) for task, step in (("task_b", 50), ("task_c", 100))],
        columns=["setting", "seed", "task", "step"],
    )
    assert figures.task_switches(switches) == [50.0]
    fig = figures.stability_gap_figure(curves, switches, tmp_path)
    assert_written(fig, tmp_path, "stability_gap")
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in shown] == ["task_a (pretraining task)", "task_b (first new task)"]
    for ax in shown:
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert [tuple(line.get_xdata()) for line in dashed] == [(50.0, 50.0)]
    expected = curves[curves["task"] == "task_b"].groupby("step")["value"].mean()
    solid = [line for line in shown[1].get_lines() if len(line.get_xdata()) == len(expected)]
    np.testing.assert_allclose(solid[0].get_xdata(), expected.index.to_numpy(dtype=float))
    np.testing.assert_allclose(solid[0].get_ydata(), expected.to_numpy())
    assert len(shown[1].patches) == 1  # the span the first new task trained on (0 to the switch)


def test_stability_gap_figure_needs_a_sequence(tmp_path):
    switches = pd.DataFrame([("finetune", 0, "task_b", 100)], columns=["setting", "seed", "task", "step"])
    with pytest.raises(ValueError, match="sequence"):
        figures.stability_gap_figure(make_curves(), switches, tmp_path)
    with pytest.raises(ValueError, match="missing column"):
        figures.stability_gap_figure(make_curves(new=("b", "c")), switches.drop(columns="seed"), tmp_path)
