"""The README's main job: ``research demo`` runs the shipped demo grid end to end (slow: full settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research.cli import DEMO_GRID, main
from research.grid.spec import load_grid
from research.methods import method_names


def test_demo_grid_covers_every_method_over_three_seeds(tmp_path: Path) -> None:
    grid = load_grid(DEMO_GRID, [f"out={tmp_path}"])
    assert {run.config.method["name"] for run in grid.runs} == set(method_names())
    assert {run.seed for run in grid.runs} == {0, 1, 2}
    assert {run.config.name for run in grid.runs} == {"split_digits"}
    assert not grid.duplicates and not grid.left_out
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # loading a grid writes nothing


@pytest.mark.slow
def test_demo_runs_the_demo_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    grid = load_grid(DEMO_GRID, [f"out={out}"])
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{len(grid.runs)} completed, 0 failed, 0 skipped" in text
    summaries = [json.loads((run.run_dir / "summary.json").read_text()) for run in grid.runs]
    assert all(s["status"] == "completed" for s in summaries)
    assert {s["method"] for s in summaries} == set(method_names())  # every registered method
    # The demo's point: plain fine-tuning forgets the old task, feature extraction cannot.
    old = "digits_0_4"
    for s in summaries:
        if s["method"] == "finetune":
            assert s["final"][old]["acc"] < s["initial"][old]["acc"] - 0.05
        if s["method"] == "feature_extraction":
            assert s["final"][old]["acc"] == s["initial"][old]["acc"]
    for s in summaries:  # W&B offline by default, one local W&B run per run directory
        assert s["wandb"]["mode"] == "offline" and s["wandb"]["problem"] is None
    assert len(list(out.glob("*/wandb/offline-run-*/run-*.wandb"))) == len(grid.runs)
    # One pretraining for the whole grid.
    assert sum(not s["pretrained"]["cached"] for s in summaries) == 1
    # The demo ends with the grid's report.
    assert f"report: {out / 'report' / 'report.html'}" in text
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # curves, stability-plasticity, matrix, EWC sweep, WiSE-FT
    assert (out / "report" / "figures" / "sweep_ewc_lam.pdf").stat().st_size > 0
    # Running the demo again finds every run completed.
    assert main(["demo", "--out", str(out)]) == 0
    assert f"0 completed, 0 failed, {len(grid.runs)} skipped" in capsys.readouterr().out


def test_the_text_demo_is_the_minilm_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``research demo --text`` runs experiments/grids/minilm.yaml into runs/minilm, then reports it; its grid
    has the issue's methods (LoRA at two ranks) over three seeds on the MiniLM study."""
    import research.cli as cli

    called = []
    monkeypatch.setattr(cli, "_run_grid", lambda grid, overrides, args: called.append((grid, overrides)) or 1)
    assert main(["demo", "--text"]) == 1  # the grid's status, passed on; no report after a failed grid
    assert called == [(cli.TEXT_GRID, ["out=runs/minilm"])]
    grid = load_grid(cli.TEXT_GRID, [f"out={tmp_path}"])
    methods = sorted({run.config.method["name"] for run in grid.runs})
    expected = ["feature_distill", "feature_extraction", "finetune", "l2sp", "lora", "lp_ft", "mas", "partial"]
    assert methods == sorted([*expected, "wise_ft"])
    assert sorted({run.config.method.get("r") for run in grid.runs if run.config.method["name"] == "lora"}) == [8, 64]
    assert len(grid.runs) == 30 and {run.config.name for run in grid.runs} == {"minilm_relations"}
    assert {a["name"] for a in grid.runs[0].config.abilities} == {"wordsim353", "simlex999", "lee"}
