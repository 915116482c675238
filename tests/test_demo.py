"""The README's main job: ``research demo`` runs the shipped experiments end to end (slow: full settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research.cli import demo_runs, main
from research.methods import method_names


@pytest.mark.slow
def test_demo_runs_every_shipped_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    DEMO_RUNS = demo_runs()
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"Forgetting in {len(DEMO_RUNS)} runs" in text
    summaries = [json.loads(p.read_text()) for p in out.glob("*/summary.json")]
    assert len(summaries) == len(DEMO_RUNS)
    assert all(s["status"] == "completed" for s in summaries)
    by_method = {s["method"]: s for s in summaries if s["name"] == "split_digits"}
    assert set(by_method) == set(method_names())  # every registered method
    # The demo's point: plain fine-tuning forgets the old task, feature extraction cannot.
    old = "digits_0_4"
    finetune, frozen = by_method["finetune"], by_method["feature_extraction"]
    assert finetune["final"][old]["acc"] < finetune["initial"][old]["acc"] - 0.05
    assert frozen["final"][old]["acc"] == frozen["initial"][old]["acc"]
    for s in summaries:  # W&B offline by default, one local W&B run per run directory
        assert s["wandb"]["mode"] == "offline" and s["wandb"]["problem"] is None
    assert len(list(out.glob("*/wandb/offline-run-*/run-*.wandb"))) == len(DEMO_RUNS)
