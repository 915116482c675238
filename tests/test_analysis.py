"""analysis/: loading runs into tidy tables, per-run and per-setting metrics, tables and the report, on synthetic
run directories whose numbers are known (no training involved), plus the W&B loaders on a real offline run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.load import load_runs
from analysis.summarize import run_accuracy_matrix, run_summary, setting_summary
from analysis.tables import latex_table, markdown_table, table_cells

STEPS = [0, 5, 10]


def make_run(
    root: Path,
    run_id: str,
    method: str,
    seed: int,
    old: list[float],
    new: list[float] | list[list[float]],
    params: dict | None = None,
    status: str = "completed",
    new_tasks: list[str] | None = None,
    steps: list[int] = STEPS,
    task_ends: list[dict] | None = None,
    grid: str | None = None,
    experiment: str = "synthetic",
    summary_extra: dict | None = None,
) -> Path:
    """A run directory as `research run` writes it, with the given accuracy curves (one old task 'old'); a None
    in a new task's curve is an evaluation at which that task was not scored (no row)."""
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    new_tasks = new_tasks or ["new"]
    curves_new = new if isinstance(new[0], list) else [new]
    config = {
        "name": experiment,
        "seed": seed,
        "out": str(root),
        "method": {"name": method, **(params or {})},
        "train": {"lr": 0.01, "epochs": 2},
        "finetune": {"tasks": [{"name": t} for t in new_tasks]},
        "logging": {"wandb": "disabled", "group": grid, "grid": grid},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"status": status, "error": None if status == "completed" else "boom", "run_id": run_id}
    summary["task_ends"] = task_ends or [{"task": new_tasks[-1], "step": steps[-1]}]
    summary.update(summary_extra or {})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rows = [(s, 0, "old", "pretrain", "acc", a) for s, a in zip(steps, old, strict=True)]
    for task, curve in zip(new_tasks, curves_new, strict=True):
        rows += [(s, 0, task, "finetune", "acc", a) for s, a in zip(steps, curve, strict=True) if a is not None]
    rows += [(s, 0, "old", "pretrain", "loss", 1.0 - a) for s, a in zip(steps, old, strict=True)]
    frame = pd.DataFrame(rows, columns=["step", "epoch", "task", "role", "metric", "value"])
    frame.to_parquet(run_dir / "metrics.parquet", index=False)
    return run_dir


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_run(root, "a0", "finetune", 0, [0.9, 0.6, 0.8], [0.2, 0.5, 0.9])
    make_run(root, "a1", "finetune", 1, [0.9, 0.7, 0.7], [0.2, 0.6, 0.8])
    make_run(root, "b0", "ewc", 0, [0.9, 0.85, 0.9], [0.2, 0.4, 0.7], {"lam": 10.0})
    make_run(root, "b1", "ewc", 1, [0.9, 0.8, 0.88], [0.2, 0.5, 0.6], {"lam": 10.0})
    make_run(root, "c0", "ewc", 0, [0.9, 0.9, 0.9], [0.2, 0.3, 0.5], {"lam": 1000.0})
    make_run(root, "f0", "ewc", 2, [0.9, 0.1, 0.1], [0.2, 0.1, 0.1], {"lam": 10.0}, status="failed")
    return root


def test_load_runs_gives_tidy_tables_with_settings(runs_dir: Path) -> None:
    runs = load_runs(runs_dir)
    assert sorted(runs.runs["run_id"]) == ["a0", "a1", "b0", "b1", "c0", "f0"]
    by_id = runs.runs.set_index("run_id")
    assert by_id.loc["a0", "setting"] == "finetune"
    assert by_id.loc["b0", "setting"] == "ewc lam=10" and by_id.loc["c0", "setting"] == "ewc lam=1000"
    assert by_id.loc["b0", "setting_id"] == by_id.loc["b1", "setting_id"] != by_id.loc["c0", "setting_id"]
    assert by_id.loc["b0", "config.method.lam"] == 10.0 and by_id.loc["a0", "config.train.lr"] == 0.01
    assert list(runs.metrics.columns) == ["run_id", "step", "epoch", "task", "role", "metric", "value"]
    assert len(runs.metrics) == 6 * 9
    completed = runs.completed()
    assert "f0" not in set(completed.runs["run_id"]) and "f0" not in set(completed.metrics["run_id"])


def test_load_runs_cache_is_reused_and_invalidated(runs_dir: Path) -> None:
    first = load_runs(runs_dir)
    assert (runs_dir / ".analysis-cache" / "metrics.parquet").is_file()
    again = load_runs(runs_dir)
    pd.testing.assert_frame_equal(first.metrics, again.metrics)
    make_run(runs_dir, "d0", "finetune", 2, [0.9, 0.5, 0.5], [0.2, 0.9, 0.9])  # a new run appears
    assert "d0" in set(load_runs(runs_dir).runs["run_id"])


def test_run_summary_matches_hand_computed_values(runs_dir: Path) -> None:
    summary = run_summary(load_runs(runs_dir).completed()).set_index("run_id")
    a0 = summary.loc["a0"]
    # old curve 0.9, 0.6, 0.8 at steps 0, 5, 10; new curve ends at 0.9
    assert a0["old_acc"] == pytest.approx(0.8)
    assert a0["new_acc"] == pytest.approx(0.9)
    assert a0["final_drop"] == pytest.approx(0.1)
    assert a0["peak_drop"] == pytest.approx(0.1)  # best seen 0.9 (step 0) − 0.8
    assert a0["stability_gap"] == pytest.approx(0.3)  # 0.9 − 0.6
    assert a0["retention"] == pytest.approx(0.8 / 0.9)
    # (1/10)·[5·(0 + 0.3)/2 + 5·(0.3 + 0.1)/2] = (0.75 + 1.0)/10
    assert a0["forgetting_auc"] == pytest.approx(0.175)
    # One new task: boundaries are the start (old) and step 10 (new). Forgetting and BWT cover the old task:
    # 0.9 − 0.8 and 0.8 − 0.9. Plasticity is the new task's accuracy at its end.
    assert a0["forgetting"] == pytest.approx(0.1)
    assert a0["bwt"] == pytest.approx(-0.1)
    assert a0["plasticity"] == pytest.approx(0.9) == a0["last_task_plasticity"]
    assert a0["finetune_tasks"] == 1


def test_forgetting_takes_the_peak_at_task_boundaries_not_at_every_evaluation(tmp_path: Path) -> None:
    # The old task peaks at step 5, between the boundaries (start at 0, end at 10).
    make_run(tmp_path, "p0", "finetune", 0, [0.8, 0.9, 0.7], [0.2, 0.5, 0.9])
    row = run_summary(load_runs(tmp_path).completed()).iloc[0]
    assert row["peak_drop"] == pytest.approx(0.2)  # 0.9 − 0.7: peak over every evaluation
    assert row["forgetting"] == pytest.approx(0.1)  # Chaudhry et al.: 0.8 (start) − 0.7
    assert "max_drop" not in row


def test_setting_summary_aggregates_over_seeds(runs_dir: Path) -> None:
    settings = setting_summary(run_summary(load_runs(runs_dir).completed())).set_index("setting")
    finetune = settings.loc["finetune"]
    assert finetune["n"] == 2
    assert finetune["old_acc_mean"] == pytest.approx(0.75)  # 0.8 and 0.7
    assert finetune["old_acc_std"] == pytest.approx(0.0707106781)  # sample std of (0.8, 0.7)
    # Student-t, 1 degree of freedom: t = 12.7062047; half-width = t · 0.0707107 / √2 = 0.6353102
    assert finetune["old_acc_ci_low"] == pytest.approx(0.75 - 0.6353102, abs=1e-6)
    single = settings.loc["ewc lam=1000"]
    assert single["n"] == 1 and pd.isna(single["old_acc_std"])


def test_tables_say_what_the_tidy_data_says(runs_dir: Path) -> None:
    settings = setting_summary(run_summary(load_runs(runs_dir).completed()))
    markdown = markdown_table(settings)
    rows = {line.split("|")[1].strip(): line for line in markdown.splitlines()[2:]}
    assert "| ewc lam=1000 | 1 | **0.900** |" in rows["ewc lam=1000"]  # best old-task accuracy, no std for n=1
    # finetune's 95% interval over its 2 seeds, 0.75 ± 12.706 · 0.0707 / √2, holds the best 0.900: bold too.
    assert "| finetune | 2 | **0.750 ± 0.071** |" in rows["finetune"]
    # Every mean ± std cell equals the data, rounded.
    for record in settings.to_dict("records"):
        cells = [c.strip().strip("*") for c in rows[record["setting"]].split("|")[1:-1]]
        assert cells[2].split(" ± ")[0] == f"{record['old_acc_mean']:.3f}"
        assert cells[3].split(" ± ")[0] == f"{record['new_acc_mean']:.3f}"
    latex = latex_table(settings, caption="x")
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"\textbf{\boldmath{}0.900}" in latex
    assert r"0.750{\scriptsize$\pm$.071}" in latex  # std without its leading zero


def test_sequence_metrics_cover_the_pretraining_tasks_by_hand(tmp_path: Path) -> None:
    steps = [0, 5, 10, 15]
    make_run(
        tmp_path,
        "s0",
        "finetune",
        0,
        [0.8, 0.95, 0.9, 0.6],
        [[0.1, 0.5, 0.9, 0.6], [0.2, 0.2, 0.3, 0.8]],
        new_tasks=["t1", "t2"],
        steps=steps,
        task_ends=[{"task": "t1", "step": 10}, {"task": "t2", "step": 15}],
    )
    runs = load_runs(tmp_path).completed()
    matrix = run_accuracy_matrix(runs, "s0")
    assert list(matrix.index) == ["start", "after t1", "after t2"]
    assert list(matrix.columns) == ["old", "t1", "t2"]
    # old: 0.8, 0.9, 0.6; t1: 0.1, 0.9, 0.6; t2: 0.2, 0.3, 0.8 (rows start, after t1, after t2)
    assert matrix.loc["after t1", "t1"] == pytest.approx(0.9) and matrix.loc["after t2", "t1"] == pytest.approx(0.6)
    row = run_summary(runs).set_index("run_id").loc["s0"]
    # Tasks learned before the last: old (boundary: start) and t1 (boundary: after t1).
    # BWT: old 0.6 − 0.8 = −0.2, t1 0.6 − 0.9 = −0.3 → −0.25 (not t1's −0.3 alone).
    assert row["bwt"] == pytest.approx(-0.25)
    # Forgetting: old max(0.8, 0.9) − 0.6 = 0.3 (not the step-5 peak 0.95), t1 max(0.9) − 0.6 = 0.3 → 0.3.
    assert row["forgetting"] == pytest.approx(0.3)
    assert row["peak_drop"] == pytest.approx(0.35)  # old: 0.95 − 0.6
    # Plasticity: each new task right after it was learned, (0.9 + 0.8) / 2; new_acc is the mean final
    # accuracy (0.6 + 0.8) / 2; the last task's plasticity is t2 at its end.
    assert row["plasticity"] == pytest.approx(0.85)
    assert row["new_acc"] == pytest.approx(0.7)
    assert row["last_task_plasticity"] == pytest.approx(0.8)
    assert row["finetune_tasks"] == 2


def test_min_acc_and_wc_acc_read_every_evaluation_by_hand(tmp_path: Path, runs_dir: Path) -> None:
    """De Lange et al. 2023 over every evaluation, the pretraining task counted as learned at step 0."""
    make_run(
        tmp_path,
        "g0",
        "finetune",
        0,
        [0.9, 0.4, 0.7, 0.5, 0.8],  # old: dips to 0.4 at step 5, recovers
        [[0.2, 0.6, 0.9, 0.3, 0.7], [0.1, 0.1, 0.2, 0.6, 0.9]],
        new_tasks=["t1", "t2"],
        steps=[0, 5, 10, 15, 20],
        task_ends=[{"task": "t1", "step": 10}, {"task": "t2", "step": 20}],
    )
    row = run_summary(load_runs(tmp_path).completed()).set_index("run_id").loc["g0"]
    # After their boundaries: old min over steps 5..20 = 0.4; t1 (learned at 10) min over 15..20 = 0.3 (its
    # 0.2 at step 0 is before it was learned). min-ACC = 0.35. t2 learned last, final 0.9; k = 3 tasks:
    # WC-ACC = 0.9/3 + 2/3 · 0.35.
    assert row["min_acc"] == pytest.approx(0.35)
    assert row["wc_acc"] == pytest.approx(0.3 + 0.7 / 3)
    # The boundary-only metrics do not see the dips: forgetting = old max(0.9, 0.7) − 0.8, t1 0.9 − 0.7.
    assert row["forgetting"] == pytest.approx(0.15)
    # One new task (runs_dir's a0): old 0.9, 0.6, 0.8 → min-ACC 0.6 (step 0 is its boundary, not counted);
    # WC-ACC = (new task's 0.9 + 0.6) / 2.
    a0 = run_summary(load_runs(runs_dir).completed()).set_index("run_id").loc["a0"]
    assert a0["min_acc"] == pytest.approx(0.6) and a0["wc_acc"] == pytest.approx(0.75)


def test_min_acc_skips_a_class_incremental_task_before_it_is_scored(tmp_path: Path) -> None:
    make_class_incremental(tmp_path, "ci0", 0, 0.75)
    row = run_summary(load_runs(tmp_path).completed()).iloc[0]
    # old: min over steps 5..20 of 0.85, 0.8, 0.75, 0.7 = 0.7; t1 (unscored at 0, learned at 10): min of 0.7,
    # 0.6 = 0.6; t2 final 0.75: WC-ACC = 0.75/3 + 2/3 · 0.65.
    assert row["min_acc"] == pytest.approx(0.65)
    assert row["wc_acc"] == pytest.approx(0.25 + 1.3 / 3)


def test_report_draws_the_stability_gap_for_sequences_and_explains_the_metrics(tmp_path: Path) -> None:
    from analysis.report import build_report

    root = tmp_path / "runs"
    make_class_incremental(root, "f0", 0, 0.75)
    make_class_incremental(root, "f1", 1, 0.65)
    built = build_report(root, tmp_path / "report")
    html = built.html.read_text()
    assert "<h2>Stability gap around each task switch</h2>" in html
    assert tmp_path / "report" / "figures" / "stability_gap.png" in built.figures
    glossary = html[html.index("What the metrics mean") :]
    assert "<dt>min-ACC</dt>" in glossary and "<dt>WC-ACC</dt>" in glossary and "De Lange" in glossary
    wide = (tmp_path / "report" / "results_wide.md").read_text()
    assert "| min-ACC | WC-ACC |" in wide and "min-ACC" not in (tmp_path / "report" / "results.md").read_text()
    # finetune: min-ACC 0.65 in both seeds; WC-ACC (0.75/3 + 2/3·0.65 and 0.65/3 + 2/3·0.65), mean 0.6.
    assert "0.650 ± 0.000" in wide and "0.667 ± 0.024" in wide


def test_report_skips_the_stability_gap_without_sequences(runs_dir: Path, tmp_path: Path) -> None:
    from analysis.report import build_report

    built = build_report(runs_dir, tmp_path / "report")
    assert not (tmp_path / "report" / "figures" / "stability_gap.png").exists()
    assert any(s.startswith("Stability gap") for s in built.skipped)


def make_class_incremental(root: Path, run_id: str, seed: int, t2_end: float, method: str = "finetune") -> Path:
    """A shared-head sequence: t1 is first scored at step 5 (inside its own training, steps 0–10), t2 at 15."""
    return make_run(
        root,
        run_id,
        method,
        seed,
        [0.9, 0.85, 0.8, 0.75, 0.7],
        [[None, 0.4, 0.85, 0.7, 0.6], [None, None, None, 0.5, t2_end]],
        new_tasks=["t1", "t2"],
        steps=[0, 5, 10, 15, 20],
        task_ends=[{"task": "t1", "step": 10}, {"task": "t2", "step": 20}],
    )


def test_class_incremental_tasks_unscored_before_their_boundary(tmp_path: Path) -> None:
    make_class_incremental(tmp_path, "ci0", 0, 0.75)
    runs = load_runs(tmp_path).completed()
    matrix = run_accuracy_matrix(runs, "ci0")
    assert matrix.loc["start", ["t1", "t2"]].isna().all() and pd.isna(matrix.loc["after t1", "t2"])
    assert matrix.loc["after t1", "t1"] == pytest.approx(0.85)
    row = run_summary(runs).iloc[0]
    # old: 0.9, 0.8, 0.7 at the boundaries; t1: 0.85 then 0.6; t2: 0.75.
    assert row["forgetting"] == pytest.approx(((0.9 - 0.7) + (0.85 - 0.6)) / 2)
    assert row["bwt"] == pytest.approx(((0.7 - 0.9) + (0.6 - 0.85)) / 2)
    assert row["plasticity"] == pytest.approx((0.85 + 0.75) / 2)
    assert row["new_acc"] == pytest.approx((0.6 + 0.75) / 2)


def test_a_missing_pretraining_score_at_a_boundary_is_still_an_error(tmp_path: Path) -> None:
    run_dir = make_class_incremental(tmp_path, "ci0", 0, 0.75)
    frame = pd.read_parquet(run_dir / "metrics.parquet")
    frame = frame[~((frame["task"] == "old") & (frame["step"] == 10) & (frame["metric"] == "acc"))]
    frame.to_parquet(run_dir / "metrics.parquet", index=False)
    with pytest.raises(ValueError, match=r"\('old', 10\)"):
        run_accuracy_matrix(load_runs(tmp_path).completed(), "ci0")


def test_table_headers_name_each_metric_honestly(runs_dir: Path, tmp_path: Path) -> None:
    settings = setting_summary(run_summary(load_runs(runs_dir).completed()))
    headers, _, _ = table_cells(settings)
    # The main table: no column that repeats another for one new task (these runs recorded no timings).
    assert headers[2:] == ["old tasks: final acc", "new tasks: mean final acc", "forgetting", "stability gap"]
    wide, _, _ = table_cells(settings, wide=True)
    assert {"forgetting", "BWT", "final drop", "peak-to-final drop", "retention", "forgetting AUC"} <= set(wide)
    assert "plasticity" not in wide  # one new task: it would repeat the new task's final accuracy
    assert not [h for h in wide if "max drop" in h or "sequences" in h]
    make_class_incremental(tmp_path / "seq", "ci0", 0, 0.75)
    settings = setting_summary(run_summary(load_runs(tmp_path / "seq").completed()))
    headers, texts, _ = table_cells(settings)
    assert texts[0][headers.index("plasticity")] == "0.800"
    assert settings.loc[0, "last_task_plasticity_mean"] == pytest.approx(0.75)


def test_report_writes_tables_figures_data_and_html(runs_dir: Path, tmp_path: Path) -> None:
    from analysis.report import build_report

    out = tmp_path / "report"
    report = build_report(runs_dir, out)
    html = report.html.read_text()
    assert html.count("data:image/png;base64,") == len([p for p in report.figures if p.suffix == ".png"]) >= 3
    assert "f0" in html and "boom" in html  # the failed run is named, not silently dropped
    for path in report.figures:
        assert path.stat().st_size > 0
        assert path.read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    settings = pd.read_parquet(out / "data" / "settings.parquet")
    assert list(settings["setting"]) == ["finetune", "ewc lam=10", "ewc lam=1000"]  # method order, then natural
    assert (out / "results.md").read_text() == markdown_table(settings)


def test_report_draws_a_titled_accuracy_matrix_per_sequence_setting(tmp_path: Path, monkeypatch) -> None:
    from analysis import figures, report

    root = tmp_path / "runs"
    make_class_incremental(root, "f0", 0, 0.75)
    make_class_incremental(root, "f1", 1, 0.65)
    make_class_incremental(root, "e0", 0, 0.55, method="ewc")
    drawn = {}
    real = figures.accuracy_heatmap

    def spy(matrix, out_dir, name="accuracy_matrix", title=None, delta_from=None):
        drawn[name] = (title, matrix)
        return real(matrix, out_dir, name=name, title=title, delta_from=delta_from)

    monkeypatch.setattr(figures, "accuracy_heatmap", spy)
    built = report.build_report(root, tmp_path / "report")
    assert sorted(drawn) == ["accuracy_matrix_ewc", "accuracy_matrix_finetune"]  # no settings × tasks overview
    title, matrix = drawn["accuracy_matrix_finetune"]
    assert title == "finetune"
    assert matrix.loc["after t2", "t2"] == pytest.approx((0.75 + 0.65) / 2)  # mean over the two seeds
    assert matrix.loc["start", ["t1", "t2"]].isna().all()  # unscored before its own task: n/a, not 0
    assert drawn["accuracy_matrix_ewc"][0] == "ewc"
    html = built.html.read_text()
    for setting in ("finetune", "ewc"):
        assert f"<h2>Accuracy matrix: {setting}</h2>" in html
        assert f"href='figures/accuracy_matrix_{setting}.pdf'" in html
        assert tmp_path / "report" / "figures" / f"accuracy_matrix_{setting}.png" in built.figures
    assert "<th>plasticity</th>" in html  # a sequence: plasticity differs from the mean final accuracy


def test_report_explains_the_metrics_and_wise_ft_interpolation(runs_dir: Path, tmp_path: Path) -> None:
    from analysis.report import build_report

    run_dir = make_run(runs_dir, "w0", "wise_ft", 0, [0.9, 0.5, 0.4], [0.2, 0.6, 0.9])
    rows = [(a, "old", "pretrain", "acc", 0.9 - 0.5 * a) for a in (0.0, 0.5, 1.0)]
    rows += [(a, "new", "finetune", "acc", 0.2 + 0.7 * a) for a in (0.0, 0.5, 1.0)]
    method = pd.DataFrame(rows, columns=["alpha", "task", "role", "metric", "value"])
    method.to_parquet(run_dir / "method.parquet", index=False)
    html = build_report(runs_dir, tmp_path / "report").html.read_text()
    assert "<h2>WiSE-FT trade-off</h2>" in html
    assert "parameters created for fine-tuning" in html and "keep their fine-tuned values at every α" in html
    glossary = html[html.index("What the metrics mean") :]
    for term in ("forgetting", "BWT", "plasticity", "peak-to-final drop", "new tasks: mean final acc"):
        assert f"<dt>{term}</dt>" in glossary
    assert "Chaudhry et al. 2018" in glossary and "Lopez-Paz &amp; Ranzato 2017" in glossary
    assert "max drop" not in html and "forgetting (max drop)" not in html


def test_report_command_refuses_a_folder_without_runs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "missing"):
        proc = subprocess.run([sys.executable, "-m", "research", "report", str(target)], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "research: error:" in proc.stderr
    assert list(empty.iterdir()) == []


def test_bold_follows_the_printed_value_and_latex_is_escaped() -> None:
    from analysis.tables import _latex

    settings = pd.DataFrame(
        {
            "setting": ["A", "B"],
            "method": ["a", "b"],
            "n": [3, 3],
            "old_acc_mean": [0.9125, 0.9115],  # both print as 0.91x; A reads best
            "old_acc_std": [0.01, 0.01],
            "final_drop_mean": [0.0025, 0.0030],  # both print as 0.003: both bold
            "final_drop_std": [0.001, 0.001],
        }
    )
    rows = markdown_table(settings, wide=True).splitlines()[2:]
    assert "**0.912 ± 0.010**" in rows[0] and "**0.911" not in rows[1]
    assert rows[0].count("**0.003") == 1 and rows[1].count("**0.003") == 1
    assert _latex(r"a_b {x} \ 5% $") == r"a\_b \{x\} \textbackslash{} 5\% \$"


def test_setting_ids_do_not_depend_on_the_other_runs_and_repeats_are_counted(tmp_path: Path) -> None:
    from analysis.summarize import repeated_seeds

    alone = tmp_path / "alone"
    make_run(alone, "b0", "ewc", 0, [0.9, 0.85, 0.9], [0.2, 0.4, 0.7], {"lam": 10})
    mixed = tmp_path / "mixed"
    make_run(mixed, "b0", "ewc", 0, [0.9, 0.85, 0.9], [0.2, 0.4, 0.7], {"lam": 10})
    make_run(mixed, "c0", "ewc", 0, [0.9, 0.9, 0.9], [0.2, 0.3, 0.5], {"lam": 1000.5})
    make_run(mixed, "b0bis", "ewc", 0, [0.9, 0.8, 0.8], [0.2, 0.4, 0.7], {"lam": 10})  # seed 0 again
    first = load_runs(alone).runs.set_index("run_id").loc["b0", "setting_id"]
    runs = load_runs(mixed)
    assert runs.runs.set_index("run_id").loc["b0", "setting_id"] == first
    summary = run_summary(runs.completed())
    settings = setting_summary(summary).set_index("setting")
    assert settings.loc["ewc lam=10", "n"] == 2 == settings.loc["ewc lam=10", "old_acc_n"]
    assert repeated_seeds(summary).to_dict("records") == [{"setting": "ewc lam=10", "seed": 0, "runs": 2}]


# --- what a report covers, what it costs, what it says about the protocol ----------------------------------


def test_overlapping_confidence_intervals_are_bold_together() -> None:
    settings = pd.DataFrame(
        {
            "setting": ["A", "B", "C", "joint"],
            "method": ["a", "b", "c", "joint"],
            "n": [3, 3, 3, 3],
            # A is best; B's interval [0.86, 0.90] touches A's [0.90, 0.94]; C's [0.70, 0.80] does not.
            "old_acc_mean": [0.92, 0.88, 0.75, 0.99],
            "old_acc_std": [0.01, 0.01, 0.02, 0.0],
            "old_acc_ci_low": [0.90, 0.86, 0.70, 0.99],
            "old_acc_ci_high": [0.94, 0.90, 0.80, 0.99],
        }
    )
    _, texts, bold = table_cells(settings)
    marks = {cells[0]: b[2] for cells, b in zip(texts, bold, strict=True)}
    assert marks == {"A": True, "B": True, "C": False, "joint": False}  # the reference is never bold...
    assert [cells[0] for cells in texts][-1] == "joint"  # ...and comes last


def test_run_costs_by_hand() -> None:
    from analysis.summarize import run_costs

    info = {"fisher_seconds": 0.5, "fisher_trace": 3.0, "buffer_size": 200, "teacher_bytes": 2_000_000}
    costs = run_costs({"finetune_seconds": 10.0, "eval_seconds": 2.5, "method_info": json.dumps(info)})
    assert costs == {"train_seconds": 7.5, "prepare_seconds": 0.5, "kept_examples": 200.0, "kept_megabytes": 2.0}
    bare = run_costs({"finetune_seconds": None, "eval_seconds": None, "method_info": "{}"})
    assert all(pd.isna(v) for v in bare.values())


def test_recorded_preparation_and_state_take_precedence() -> None:
    from analysis.summarize import run_costs

    row = {"finetune_seconds": 10.0, "eval_seconds": 2.5, "prepare_seconds": 1.25, "method_state_bytes": 3_000_000}
    costs = run_costs({**row, "method_info": json.dumps({"fisher_seconds": 0.5, "teacher_bytes": 2_000_000})})
    assert costs["prepare_seconds"] == 1.25 and costs["kept_megabytes"] == 3.0


@pytest.mark.parametrize("method", ["l2sp", "lwf"])
def test_a_run_records_its_preparation_time_and_what_the_method_keeps(make_cfg, method: str) -> None:
    from research.training import run

    result = run(make_cfg(f"method.name={method}", "logging.wandb=disabled"))
    summary = result.summary
    assert 0 < summary["timings"]["prepare_seconds"] < summary["timings"]["finetune_seconds"]
    # By hand, from the tiny MLP's shapes (64 inputs, hidden [32], 5 classes per task), float32: L2-SP anchors the
    # backbone; LwF's teacher is the backbone and the old task's head.
    backbone = 64 * 32 + 32
    old_head = 32 * 5 + 5
    expected = {"l2sp": 4 * backbone, "lwf": 4 * (backbone + old_head)}[method]
    assert summary["method_state_bytes"] == expected


def test_costs_reach_the_table(tmp_path: Path) -> None:
    timings = {"timings": {"finetune_seconds": 4.0, "eval_seconds": 1.0}, "method_info": {"fisher_seconds": 0.25}}
    make_run(tmp_path, "e0", "ewc", 0, [0.9, 0.8, 0.8], [0.2, 0.5, 0.9], summary_extra=timings)
    make_run(tmp_path, "e1", "ewc", 1, [0.9, 0.8, 0.8], [0.2, 0.5, 0.9], summary_extra=timings)
    settings = setting_summary(run_summary(load_runs(tmp_path).completed()))
    headers, texts, bold = table_cells(settings)
    assert texts[0][headers.index("time (s)")] == "3.0" and not bold[0][headers.index("time (s)")]
    wide, texts, _ = table_cells(settings, wide=True)
    assert texts[0][wide.index("preparation (s)")] == "0.2"  # 0.25 printed at one decimal


def test_identical_settings_are_found() -> None:
    from analysis.load import RunSet
    from analysis.summarize import identical_settings

    runs = pd.DataFrame(
        {"run_id": ["a", "b", "c"], "setting": ["ewc", "online_ewc", "si"], "method": ["ewc", "online_ewc", "si"]}
    ).assign(seed=0)
    rows = [(r, 0, "old", "pretrain", "acc", v) for r, v in (("a", 0.9), ("b", 0.9), ("c", 0.8))]
    rows += [(r, 5, "old", "pretrain", "acc", v) for r, v in (("a", 0.7), ("b", 0.7), ("c", 0.7))]
    metrics = pd.DataFrame(rows, columns=["run_id", "step", "task", "role", "metric", "value"]).assign(epoch=0)
    assert identical_settings(RunSet(runs, metrics, pd.DataFrame())) == {"online_ewc": "ewc"}
    assert identical_settings(RunSet(runs, metrics, pd.DataFrame()), ["online_ewc", "ewc"]) == {"ewc": "online_ewc"}


def test_labels_do_not_change_when_an_unrelated_run_is_added(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "a0", "ewc", 0, [0.9, 0.8, 0.8], [0.2, 0.5, 0.9], {"lam": 10.0}, grid="g1")
    make_run(root, "a1", "finetune", 0, [0.9, 0.7, 0.7], [0.2, 0.5, 0.9], grid="g1")
    before = load_runs(root).runs.set_index("run_id")["setting"].to_dict()
    # Another grid's run with another lam and another learning rate: pooled, both would enter every label.
    other = make_run(root, "b0", "ewc", 0, [0.9, 0.8, 0.8], [0.2, 0.5, 0.9], {"lam": 99.0}, grid="g2")
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["train"]["lr"] = 0.5
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    after = load_runs(root).runs.set_index("run_id")
    assert {k: after.loc[k, "setting"] for k in before} == before == {"a0": "ewc", "a1": "finetune"}
    assert after.loc["b0", "study"] == "grid g2" and after.loc["a0", "grid"] == "g1"


def test_report_selects_runs_and_never_pools_studies(tmp_path: Path) -> None:
    from analysis.report import NoRuns, build_report

    root = tmp_path / "runs"
    make_run(root, "a0", "finetune", 0, [0.9, 0.7, 0.7], [0.2, 0.5, 0.9], grid="g1")
    make_run(root, "a1", "ewc", 0, [0.9, 0.9, 0.9], [0.2, 0.5, 0.6], {"lam": 10.0}, grid="g1")
    make_run(root, "b0", "finetune", 0, [0.9, 0.2, 0.2], [0.2, 0.5, 0.99], grid="g2", experiment="other")
    make_run(root, "c0", "finetune", 0, [0.9, 0.5, 0.5], [0.2, 0.5, 0.5], experiment="alone")  # no grid
    report = build_report(root, tmp_path / "all")
    assert report.studies == ["grid g1", "grid g2", "experiment alone"]
    names = sorted(p.name for p in report.tables)
    assert "results_g1.tex" in names and "results_g2.tex" in names and "results.tex" not in names
    g2 = (tmp_path / "all" / "results_g2.md").read_text()
    assert "**0.990**" in g2  # g2's finetune is best of its own study, not compared with g1's runs
    assert r"\label{tab:results-g1}" in (tmp_path / "all" / "results_g1.tex").read_text()
    html = report.html.read_text()
    assert html.count("<h3>Results</h3>") == 3 and "grid g2" in html
    one = build_report(root, tmp_path / "one", grid="g1")
    assert one.studies == ["grid g1"] and (tmp_path / "one" / "results.tex").is_file()
    assert sorted(pd.read_parquet(tmp_path / "one" / "data" / "runs.parquet")["run_id"]) == ["a0", "a1"]
    assert build_report(root, tmp_path / "ids", run_ids=["b0", "c0"]).studies == ["grid g2", "experiment alone"]
    assert build_report(root, tmp_path / "exp", experiment="alone").studies == ["experiment alone"]
    with pytest.raises(NoRuns, match=r"grids there: g1 \(2 runs\), g2 \(1 runs\); experiments there: synthetic"):
        build_report(root, tmp_path / "x", grid="nope")
    with pytest.raises(NoRuns, match="no run directory zz"):
        build_report(root, tmp_path / "x", run_ids=["a0", "zz"])


def test_protocol_states_heads_split_sizes_and_schedule(tmp_path: Path) -> None:
    from analysis.protocol import protocol

    old = {"role": "pretrain", "sizes": {"train": 500, "test": 180}}
    sizes = {"tasks": {"old": old, "new": {"sizes": {"test": 90}}}}
    for seed in (0, 1):
        make_run(tmp_path, f"r{seed}", "finetune", seed, [0.9, 0.8, 0.8], [0.2, 0.5, 0.9], summary_extra=sizes)
    runs = load_runs(tmp_path).runs
    config = yaml.safe_load((tmp_path / "r0" / "config.yaml").read_text())
    assert "eval" not in config  # the synthetic config relies on the defaults for what it does not say
    items = dict(protocol(runs))
    assert items["evaluation"].startswith("test (the default) split, examples per task: old: 180; new: 90")
    assert "1/90 = 0.0111 accuracy" in items["evaluation"]
    assert "learning rate 0.01" in items["fine-tuning"] and "2 epochs" in items["fine-tuning"]
    assert items["seeds"].startswith("0, 1 (2 per setting at most)")


def test_protocol_says_per_task_schedules_shared_heads_and_loaded_models() -> None:
    from analysis.protocol import protocol

    tasks = json.dumps([{"name": "old"}])
    runs = pd.DataFrame(
        [
            {
                "seed": 0,
                "steps": 400,
                "config.model.arch": "hf",
                "config.model.heads": "shared",
                "config.pretrain.tasks": tasks,
                "config.finetune.tasks": json.dumps([{"name": "a"}, {"name": "b"}]),
                "config.eval.every_n_steps": 10,
                "config.train.epochs": 5,
                "config.train.max_steps": 50,
                "config.train.batch_size": 32,
                "config.train.accumulate_grad_batches": 4,
            }
        ]
    )
    items = dict(protocol(runs))
    assert "400 optimizer steps in all, 5 epochs per task (at most 50 steps per task)" in items["fine-tuning"]
    assert "batch size 32, gradients of 4 batches summed into each update" in items["fine-tuning"]
    assert "only these tasks' heads were trained, on its frozen features" in items["tasks"]
    assert "a → b" in items["tasks"]
    assert "class-incremental" in items["heads"] and "domain-incremental" in items["heads"]
    assert "at the end of each task" in items["evaluation"]


def test_a_two_value_sweep_gets_its_plot(tmp_path: Path) -> None:
    from analysis.report import build_report

    for seed in (0, 1):
        make_run(tmp_path / "runs", f"l{seed}", "ewc", seed, [0.9, 0.8, 0.8], [0.2, 0.5, 0.9], {"lam": 10.0})
        make_run(tmp_path / "runs", f"h{seed}", "ewc", seed, [0.9, 0.9, 0.9], [0.2, 0.4, 0.6], {"lam": 1000.0})
    report = build_report(tmp_path / "runs", tmp_path / "report")
    assert any(p.name == "sweep_ewc_lam.png" for p in report.figures)
