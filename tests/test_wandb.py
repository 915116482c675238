"""A real offline W&B run, read back without a server; W&B trouble never fails a run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.wandb_load import load_wandb_api, load_wandb_offline
from research.training import run

WANDB = Path(sys.executable).parent / "wandb"


def wandb_records(path: Path) -> list[dict]:
    """Every record of a .wandb transaction log, via ``wandb leet inspect --json`` (no server involved)."""
    proc = subprocess.run(
        [str(WANDB), "leet", "inspect", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_offline_run_history_matches_metrics_parquet(make_cfg) -> None:
    assert "WANDB_API_KEY" not in os.environ
    result = run(make_cfg("logging.wandb=offline", "logging.log_every_n_steps=4", "eval.every_n_steps=6"))
    summary = result.summary
    assert summary["status"] == "completed"
    assert summary["wandb"]["mode"] == "offline" and summary["wandb"]["problem"] is None
    wandb_id = summary["wandb"]["run_id"]
    assert wandb_id

    files = list(result.run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, list(result.run_dir.rglob("*"))
    assert files[0].name == f"run-{wandb_id}.wandb"

    records = wandb_records(files[0])
    assert any(r["type"] == "run" for r in records)
    history: dict[int, dict[str, float]] = defaultdict(dict)
    for record in records:
        if record["type"] != "history":
            continue
        item = record["history"]["item"]
        assert "trainer/global_step" in item, item
        step = int(item["trainer/global_step"])
        history[step].update({k: v for k, v in item.items() if not k.startswith("_") and k != "trainer/global_step"})

    metrics = result.metrics
    evals = metrics[metrics.metric.isin(["acc", "loss"])]
    expected = {(int(r.step), f"{r.role}/{r.task}/{r.metric}"): r.value for r in evals.itertuples()}
    logged = {
        (step, key): value
        for step, items in history.items()
        for key, value in items.items()
        if key.startswith(("pretrain/", "finetune/"))
    }
    assert set(logged) == set(expected)
    assert {key for _, key in expected} == {
        "pretrain/digits_0_4/acc",
        "pretrain/digits_0_4/loss",
        "finetune/digits_5_9/acc",
        "finetune/digits_5_9/loss",
    }
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-6), key

    # Training scalars too: train_<name> in the parquet is train/<name> in W&B, at the same steps.
    train = metrics[metrics.metric.str.startswith("train_")]
    assert len(train) > 0
    for r in train.itertuples():
        name = "train/" + r.metric.removeprefix("train_")
        assert history[int(r.step)][name] == pytest.approx(r.value, rel=1e-6, abs=1e-6), (r.step, name)

    # The run's config and final scores went to W&B as well.
    config = next(r["run"]["config"]["update"] for r in records if r["type"] == "run")
    assert config["seed"] == result.summary["seed"] and config["method"] == {"name": "finetune"}
    assert config["train"]["epochs"] == 2
    updates: dict[str, float] = {}
    for record in records:
        if record["type"] == "summary":
            updates.update(record["summary"].get("update", {}))
    for task, scores in summary["final"].items():
        for metric in ("acc", "loss"):
            assert updates[f"final/{task}/{metric}"] == pytest.approx(scores[metric], abs=1e-6)


def test_wandb_disabled_writes_no_wandb_files(make_cfg) -> None:
    result = run(make_cfg("logging.wandb=disabled", "seed=1"))
    assert result.summary["wandb"] == {"mode": "disabled", "run_id": None, "problem": None}
    assert not (result.run_dir / "wandb").exists()


@pytest.mark.parametrize("project", ["not/a#valid?project", "p" * 200])
def test_wandb_failure_at_init_leaves_the_run_completed(
    project: str, make_cfg, capsys: pytest.CaptureFixture[str]
) -> None:
    """W&B rejects the project name (bad characters; over 128 characters) when the run starts."""
    result = run(make_cfg("logging.wandb=offline", "seed=2", f"logging.project={project}"))
    summary = result.summary
    assert summary["status"] == "completed" and summary["error"] is None
    problem = summary["wandb"]["problem"]
    assert problem and "init" in problem
    assert summary["wandb"]["run_id"] is None
    assert "W&B init failed" in capsys.readouterr().err
    on_disk = json.loads((result.run_dir / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["wandb"]["problem"] == problem
    metrics = result.metrics
    assert np.isfinite(metrics.value).all()
    assert set(metrics[metrics.step == 0].task) == {"digits_0_4", "digits_5_9"}


def test_wandb_offline_and_api_loaders_match_the_run_directory(make_cfg) -> None:
    from research.training import run

    result = run(make_cfg("logging.wandb=offline", "method.name=ewc"))
    local = result.metrics
    local = local[local["metric"] == "acc"][["step", "task", "role", "value"]].reset_index(drop=True)

    offline = load_wandb_offline([result.run_dir / "wandb"])
    (row,) = offline.runs.to_dict("records")
    assert row["status"] == "completed" and row["method"] == "ewc" and row["config.method.lam"] == 100.0
    got = offline.metrics[offline.metrics["metric"] == "acc"][["step", "task", "role", "value"]]
    pd.testing.assert_frame_equal(
        got.sort_values(["step", "task"]).reset_index(drop=True),
        local.sort_values(["step", "task"]).reset_index(drop=True),
        check_dtype=False,
        atol=1e-6,
    )

    # The public-API loader, against a stand-in for the W&B cloud built from the same offline records.
    (path,) = result.run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(path)
    info = next(r["run"] for r in records if r["type"] == "run")
    history = [r["history"]["item"] for r in records if r["type"] == "history"]

    class CloudRun:
        id = info["run_id"]
        state = "finished"
        config = {k: {"value": v} for k, v in info["config"]["update"].items()}  # the API's wrapped form

        def scan_history(self):
            return iter(history)

    class Api:
        def runs(self, path, filters):
            assert path == "me/forgetting-lab"
            return [CloudRun()]

    online = load_wandb_api("me/forgetting-lab", api=Api())
    pd.testing.assert_frame_equal(online.metrics, offline.metrics)
    assert re.fullmatch(r"ewc", online.runs.loc[0, "method"])
