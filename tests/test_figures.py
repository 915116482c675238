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


def assert_written(paths: list[Path], out: Path, name: str) -> None:
    assert paths == [out / f"{name}.pdf", out / f"{name}.png"]
    pdf, png = paths
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
