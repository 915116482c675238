"""experiments/stability_gap.yaml (De Lange, van de Ven & Tuytelaars 2023): a domain-incremental sequence of
rotated digits on one shared head, evaluated every few steps; it validates, runs on a tiny budget, and its report
has min-ACC, WC-ACC and the stability-gap figure."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from research.training import run


def test_the_experiment_is_a_domain_incremental_rotation_sequence(make_cfg) -> None:
    cfg = make_cfg(experiment="stability_gap.yaml")
    assert cfg.model.heads == "shared"
    tasks = [*cfg.pretrain.tasks, *cfg.finetune.tasks]
    assert len(tasks) == 3 and len(cfg.finetune.tasks) == 2
    assert {t.source for t in tasks} == {"digits"} and all(t.classes is None for t in tasks)  # same classes
    degrees = [t.transform.degrees if t.transform else 0 for t in tasks]
    assert degrees == sorted(degrees) and len(set(degrees)) == 3  # each task rotated further


def test_the_file_evaluates_every_few_steps() -> None:
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments" / "stability_gap.yaml").read_text())
    assert raw["eval"]["every_n_steps"] <= 2


def test_it_runs_and_its_report_has_min_acc_wc_acc_and_the_figure(make_cfg, out, tmp_path) -> None:
    from analysis.load import load_runs
    from analysis.report import build_report
    from analysis.summarize import run_summary

    result = run(make_cfg("train.epochs=1", "eval.every_n_steps=2", experiment="stability_gap.yaml"))
    assert result.summary["status"] == "completed"
    assert [e["task"] for e in result.summary["task_ends"]] == ["digits_rot45", "digits_rot90"]
    acc = result.metrics[result.metrics["metric"] == "acc"]
    assert acc.groupby("step")["task"].nunique().eq(3).all()  # every task at every evaluation
    row = run_summary(load_runs(out).completed()).iloc[0]
    assert not math.isnan(row["min_acc"]) and not math.isnan(row["wc_acc"])
    # min-ACC is each earlier task's minimum after its boundary: never above that task's final accuracy.
    final = acc[acc["step"] == acc["step"].max()].set_index("task")["value"]
    assert row["min_acc"] <= (final["digits"] + final["digits_rot45"]) / 2 + 1e-12
    assert row["wc_acc"] == pytest.approx(final["digits_rot90"] / 3 + 2 / 3 * row["min_acc"])
    built = build_report(out, tmp_path / "report")
    wide = (tmp_path / "report" / "results_wide.md").read_text()
    assert "min-ACC" in wide and "WC-ACC" in wide
    assert tmp_path / "report" / "figures" / "stability_gap.png" in built.figures
    assert "Stability gap around each task switch" in built.html.read_text()
    saved = pd.read_parquet(tmp_path / "report" / "data" / "run_summary.parquet").iloc[0]
    assert saved["min_acc"] == pytest.approx(row["min_acc"]) and saved["wc_acc"] == pytest.approx(row["wc_acc"])
