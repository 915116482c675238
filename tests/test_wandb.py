"""A real offline W&B run, read back without a server; W&B trouble never fails a run.

The records are read with W&B's own viewer (``wandb leet inspect --json``), independently of the in-process
reader of analysis.wandb_load, which is checked against it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.load import load_runs
from analysis.summarize import run_accuracy_matrix, run_summary, task_metrics
from analysis.wandb_load import UnreadableRunWarning, load_wandb_api, load_wandb_offline
from analysis.wandb_load import wandb_records as proto_records
from research.config import LoggingConfig, run_id
from research.errors import ConfigError, RunFailed
from research.grid.spec import load_grid
from research.store import git_commit
from research.sync import SyncError, offline_runs, sync_runs, wandb_executable
from research.tracking import replayed_drift, resolve_destination, setting_group, trained_drift
from research.training import run

WANDB = Path(sys.executable).parent / "wandb"
ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key (40 characters)


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


class ReadBack:
    """One offline W&B run as its files hold it."""

    def __init__(self, run_dir: Path) -> None:
        files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, list(run_dir.rglob("*"))
        self.file = files[0]
        self.records = wandb_records(self.file)
        self.run = next(r["run"] for r in self.records if r["type"] == "run")
        self.config = self.run["config"]["update"]
        self.summary: dict = {}
        for record in self.records:
            if record["type"] == "summary":
                self.summary.update(record["summary"].get("update", {}))
        self.history = [r["history"]["item"] for r in self.records if r["type"] == "history"]
        exits = [r["exit"] for r in self.records if r["type"] == "exit"]
        self.exit_code = exits[-1].get("exit_code", 0) if exits else None

    def table(self, key: str) -> pd.DataFrame:
        """A logged ``wandb.Table``, from the JSON file W&B wrote for it."""
        data = json.loads((self.file.parent / "files" / self.summary[f"{key}.path"]).read_text())
        return pd.DataFrame(data["data"], columns=data["columns"])


def test_offline_run_history_matches_metrics_parquet(make_cfg) -> None:
    assert "WANDB_API_KEY" not in os.environ
    result = run(make_cfg("logging.wandb=offline", "logging.log_every_n_steps=4", "eval.every_n_steps=6"))
    summary = result.summary
    assert summary["status"] == "completed"
    assert summary["wandb"]["mode"] == "offline" and summary["wandb"]["problem"] is None
    wandb_id = summary["wandb"]["run_id"]
    assert wandb_id

    back = ReadBack(result.run_dir)
    assert back.file.name == f"run-{wandb_id}.wandb"
    history: dict[int, dict[str, float]] = defaultdict(dict)
    for item in back.history:
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

    # The step axis is defined once (Lightning's WandbLogger defines it; nothing defines it again).
    defined = [r["metric"] for r in back.records if r["type"] == "metric"]
    assert sorted(d.get("name") or d.get("glob_name") for d in defined) == ["*", "trainer/global_step"]

    # The config: the resolved config, the local run id, the git commit; no display-only or destination keys.
    config = back.config
    assert config["seed"] == result.summary["seed"] and config["method"] == {"name": "finetune"}
    assert config["train"]["epochs"] == 2
    assert config["run_id"] == result.run_id == result.run_dir.name
    assert config["git"] == {"commit": summary["git"]["commit"], "dirty": summary["git"]["dirty"]}
    assert config["git"]["commit"] == git_commit()["commit"] and isinstance(config["git"]["dirty"], bool)
    assert config["logging"] == {"group": None, "grid": None, "setting": None, "log_every_n_steps": 4}
    assert back.run["project"] == "forgetting-lab" == summary["wandb"]["project"]

    # Final scores and the forgetting numbers, against metrics.parquet by hand.
    updates = back.summary
    for task, scores in summary["final"].items():
        for metric in ("acc", "loss"):
            assert updates[f"final/{task}/{metric}"] == pytest.approx(scores[metric], abs=1e-6)
    old = metrics[(metrics.task == "digits_0_4") & (metrics.metric == "acc")].sort_values("step").value.to_numpy()
    new = metrics[(metrics.task == "digits_5_9") & (metrics.metric == "acc")].sort_values("step").value.to_numpy()
    assert updates["old/digits_0_4/initial_acc"] == pytest.approx(old[0])
    assert updates["old/digits_0_4/final_acc"] == pytest.approx(old[-1])
    assert updates["old/digits_0_4/final_drop"] == pytest.approx(old[0] - old[-1])
    assert updates["old/digits_0_4/peak_drop"] == pytest.approx(old.max() - old[-1])
    assert updates["old/digits_0_4/stability_gap"] == pytest.approx(old[0] - old.min())
    assert updates["old/digits_0_4/retention"] == pytest.approx(old[-1] / old[0])
    assert updates["new/digits_5_9/final_acc"] == pytest.approx(new[-1])
    assert updates["report/forgetting"] == pytest.approx(old[0] - old[-1])  # one new task: the final drop
    assert updates["report/finetune_tasks"] == 1
    assert updates["task_ends"] == summary["task_ends"]
    # The same numbers as the report's, for every reported metric.
    _assert_same_as_report(updates, result.run_dir.parent, result.run_id)


REPORT_METRICS = (
    "finetune_tasks",
    "old_acc",
    "new_acc",
    "plasticity",
    "last_task_plasticity",
    "forgetting",
    "bwt",
    "final_drop",
    "peak_drop",
    "stability_gap",
    "retention",
    "forgetting_auc",
    "min_acc",
    "wc_acc",
)


def _assert_same_as_report(updates: dict, runs_dir: Path, rid: str) -> None:
    runs = load_runs(runs_dir, cache=False)
    row = run_summary(runs).set_index("run_id").loc[rid]
    # Every forgetting metric of the report (its cost columns come from summary.json, not from the curves).
    reported = [c for c in row.index if c in REPORT_METRICS]
    assert len(reported) == len(REPORT_METRICS)
    for column in reported:
        if pd.isna(row[column]):
            assert f"report/{column}" not in updates, column
        else:
            assert updates[f"report/{column}"] == pytest.approx(float(row[column]), abs=1e-12), column
    per_task = task_metrics(runs)
    for r in per_task[per_task.run_id == rid].itertuples():
        name = {"old_acc": "final_acc", "new_acc": "final_acc"}.get(r.metric, r.metric)
        prefix = "old" if r.role == "pretrain" else "new"
        assert updates[f"{prefix}/{r.task}/{name}"] == pytest.approx(r.value, abs=1e-12), (r.task, r.metric)


def test_sequence_run_logs_its_accuracy_matrix_as_a_table(make_cfg) -> None:
    result = run(make_cfg("logging.wandb=offline", "train.epochs=1", experiment="sequence_digits.yaml"))
    back = ReadBack(result.run_dir)
    assert back.exit_code == 0
    table = back.table("accuracy_matrix").set_index("measured")
    expected = run_accuracy_matrix(load_runs(result.run_dir.parent, cache=False), result.run_id)
    assert list(table.index) == ["start", "after digits_4_6", "after digits_7_9"] == list(expected.index)
    assert list(table.columns) == ["digits_0_3", "digits_4_6", "digits_7_9"] == list(expected.columns)
    np.testing.assert_allclose(table.to_numpy(dtype=float), expected.to_numpy(), atol=1e-12)
    assert back.summary["report/finetune_tasks"] == 2
    _assert_same_as_report(back.summary, result.run_dir.parent, result.run_id)

    # Read back from W&B, the run keeps its task boundaries: the same matrix as from the run directory.
    from_wandb = load_wandb_offline([result.run_dir / "wandb"])
    (wandb_id,) = from_wandb.runs.run_id
    matrix = run_accuracy_matrix(from_wandb, wandb_id)
    assert list(matrix.index) == list(expected.index)
    np.testing.assert_allclose(matrix[expected.columns].to_numpy(), expected.to_numpy())


def test_wise_ft_alpha_sweep_is_a_table(make_cfg) -> None:
    result = run(make_cfg("logging.wandb=offline", "method.name=wise_ft", "method.alphas=[0.0,0.5,1.0]"))
    table = ReadBack(result.run_dir).table("method_table")
    local = pd.read_parquet(result.run_dir / "method.parquet")
    assert set(local.alpha) == {0.0, 0.5, 1.0}
    pd.testing.assert_frame_equal(table, local, check_dtype=False, atol=1e-12)


def test_failed_run_carries_its_error_and_exit_code(make_cfg) -> None:
    cfg = make_cfg("logging.wandb=offline", "train.optimizer=sgd", "train.lr=1e20", "logging.log_every_n_steps=1")
    with pytest.raises(RunFailed, match="diverged"):
        run(cfg)
    run_dir = Path(cfg.out) / run_id(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    back = ReadBack(run_dir)
    assert back.exit_code == 1
    assert back.summary["error"] == summary["error"] and "diverged" in back.summary["error"]
    assert back.summary["status"] == "failed"
    (row,) = load_wandb_offline([run_dir / "wandb"]).runs.to_dict("records")
    assert row["status"] == "failed" and row["error"] == summary["error"]


def test_weight_drift_goes_to_wandb_only_for_blocks_that_train(make_cfg) -> None:
    result = run(make_cfg("logging.wandb=offline", "method.name=feature_extraction"))
    drift = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    assert set(drift.block) == {"backbone.0", "heads.digits_0_4", "heads.digits_5_9"}  # kept on disk
    keys = {k for item in ReadBack(result.run_dir).history for k in item if k.startswith("drift/")}
    # Only the new head trains; its name has no dot (W&B would nest it).
    assert keys == {"drift/heads_digits_5_9/drift_l2", "drift/heads_digits_5_9/drift_relative"}


def test_drift_filters() -> None:
    scores = {"drift/backbone_0/drift_l2": 1.0, "drift/heads_a/drift_l2": 2.0, "pretrain/a/acc": 0.5}
    assert trained_drift(scores, {"heads.a"}) == {"drift/heads_a/drift_l2": 2.0, "pretrain/a/acc": 0.5}
    # A replayed history keeps a block's rows while it trained: the frozen block none, the one that starts
    # training at step 10 from its last unmoved evaluation on, the one that stops after step 10 up to there.
    rows = [
        {"step": s, "block": b, "metric": "drift_l2", "value": v}
        for b, values in {"frozen": [0, 0, 0, 0], "late": [0, 0, 1, 2], "early": [0, 1, 1, 1]}.items()
        for s, v in zip([0, 5, 10, 15], values, strict=True)
    ]
    kept = {(r["block"], r["step"]) for r in replayed_drift(rows)}
    assert kept == {("late", 5), ("late", 10), ("late", 15), ("early", 0), ("early", 5)}


def test_the_command_line_is_stored_in_the_summary(
    make_cfg, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from research.cli import main

    argv = ["research", "run", str(ROOT / "experiments" / "split_digits.yaml"), *tiny_overrides, "seed=12"]
    monkeypatch.setattr(sys, "argv", [*argv, "logging.run_name=two words"])
    assert main(sys.argv[1:]) == 0
    summary = json.loads((Path(make_cfg().out) / run_id(make_cfg("seed=12")) / "summary.json").read_text())
    assert summary["command"] == shlex.join(argv) + " 'logging.run_name=two words'"  # quoted as a shell would
    assert shlex.split(summary["command"]) == sys.argv
    assert "command" not in run(make_cfg("seed=13")).summary  # started from Python: no command to repeat


def test_wandb_disabled_writes_no_wandb_files(make_cfg) -> None:
    result = run(make_cfg("logging.wandb=disabled", "seed=1"))
    assert result.summary["wandb"]["mode"] == "disabled" and result.summary["wandb"]["sources"]["mode"] == "config"
    assert result.summary["wandb"]["run_id"] is None and result.summary["wandb"]["problem"] is None
    assert not (result.run_dir / "wandb").exists()


def test_wandb_environment_variables_decide_unless_the_config_does(
    make_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # WANDB_MODE=disabled with nothing in the config: no W&B files at all.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = make_cfg("logging.wandb=null", "seed=3")
    assert cfg.logging.wandb is None
    result = run(cfg)
    assert result.summary["wandb"]["mode"] == "disabled" and result.summary["wandb"]["sources"]["mode"] == "WANDB_MODE"
    assert not (result.run_dir / "wandb").exists()

    # WANDB_MODE=dryrun (W&B's old word for offline) and WANDB_PROJECT / WANDB_ENTITY are picked up ...
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "someone")
    result = run(make_cfg("logging.wandb=null", "seed=4"))
    assert result.summary["wandb"]["mode"] == "offline"
    back = ReadBack(result.run_dir)
    assert back.run["project"] == "from-env" == result.summary["wandb"]["project"]
    assert back.run["entity"] == "someone" == result.summary["wandb"]["entity"]
    # ... and none of it is in the run id or the W&B config.
    assert result.run_id == run_id(make_cfg("logging.wandb=offline", "seed=4"))
    assert "project" not in back.config["logging"]

    # An explicit config beats the environment.
    result = run(make_cfg("logging.wandb=offline", "logging.project=from-config", "seed=5"))
    assert ReadBack(result.run_dir).run["project"] == "from-config"
    assert result.summary["wandb"]["sources"] == {"mode": "config", "project": "config", "entity": "WANDB_ENTITY"}
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_destination(LoggingConfig(wandb="disabled")).mode == "disabled"

    # A WANDB_MODE W&B does not know stops the run before anything is written (exit 2).
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        run(make_cfg("logging.wandb=null", "seed=6"))
    assert not (Path(make_cfg().out) / run_id(make_cfg("seed=6"))).exists()


def test_a_stored_wandb_login_makes_the_default_online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``wandb login`` keeps the key in a netrc file for the W&B host; W&B's own lookup reads it (no network)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_destination(LoggingConfig()).mode == "offline"  # no key anywhere
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    destination = resolve_destination(LoggingConfig())
    assert destination.mode == "online" and destination.sources["mode"] == "netrc"
    assert resolve_destination(LoggingConfig(wandb="offline")).mode == "offline"  # the config still wins

    # A self-hosted server named in W&B's settings file: the key must be for that host.
    config_dir = tmp_path / "wandb_config"
    config_dir.mkdir()
    (config_dir / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(config_dir))
    assert resolve_destination(LoggingConfig()).mode == "offline"
    netrc.write_text(f"machine wandb.example.org\n  login user\n  password {FAKE_KEY}\n")
    assert resolve_destination(LoggingConfig()).mode == "online"

    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_destination(LoggingConfig()).sources["mode"] == "WANDB_API_KEY"


def test_logging_keys_leave_the_run_id_alone(make_cfg) -> None:
    base = run_id(make_cfg())
    for override in (
        "logging.wandb=online",
        "logging.project=p",
        "logging.entity=e",
        "logging.group=g",
        "logging.grid=g",
        "logging.setting=ewc lam=1",
        "logging.run_name=n",
        "logging.tags=[a]",
        "logging.progress=true",
    ):
        assert run_id(make_cfg(override)) == base, override
    assert run_id(make_cfg("logging.log_every_n_steps=3")) != base  # it changes the recorded rows


def test_a_grid_groups_the_seeds_of_each_setting(tmp_path: Path, out: Path) -> None:
    grid_file = tmp_path / "two.yaml"
    tiny = {
        "model.hidden": [32],
        "pretrain.train.epochs": 10,
        "train.epochs": 1,
        "eval.every_n_steps": 5,
        "logging.wandb": "offline",
        "out": str(out),
    }
    grid_file.write_text(
        yaml.safe_dump(
            {
                "name": "two",
                "base": str(ROOT / "experiments" / "split_digits.yaml"),
                "overrides": tiny,
                "seeds": [0, 1],
                "grid": [{"method.name": "finetune"}, {"method.name": "ewc", "method.lam": 10.0}],
            }
        )
    )
    grid = load_grid(grid_file)
    assert len(grid.runs) == 4
    groups = {run.name: run.config.logging.group for run in grid.runs}
    # <grid>/<label> #<setting id>: the seeds of a setting share it, and no other setting can (see below).
    assert groups["finetune seed=0"] == groups["finetune seed=1"]
    assert groups["ewc lam=10 seed=0"] == groups["ewc lam=10 seed=1"]
    assert re.fullmatch(r"two/finetune #[0-9a-f]{6}", groups["finetune seed=0"])
    assert re.fullmatch(r"two/ewc #[0-9a-f]{6}", groups["ewc lam=10 seed=0"])
    # The grid file edited so that another finetune setting reads the same label: it gets another group.
    edited = yaml.safe_load(grid_file.read_text())
    edited["overrides"]["train.lr"] = 0.01
    edited_file = tmp_path / "edited" / "two.yaml"
    edited_file.parent.mkdir()
    edited_file.write_text(yaml.safe_dump(edited))
    finetune = next(r for r in load_grid(edited_file).runs if r.name == "finetune seed=0")
    assert finetune.config.logging.setting == "finetune"
    assert finetune.config.logging.group != groups["finetune seed=0"]
    read = {}
    for grid_run in grid.runs:
        assert grid_run.config.logging.grid == "two"
        result = run(grid_run.config)
        assert result.run_id == grid_run.run_id  # the logging keys the grid set are not part of the id
        back = ReadBack(result.run_dir)
        read[grid_run.name] = back.run["run_group"]
        assert back.config["logging"]["grid"] == "two" and back.config["run_id"] == grid_run.run_id
        assert back.config["logging"]["setting"] == grid_run.config.logging.setting
        assert "grid:two" in back.run["tags"]
    assert read == groups

    # The in-process reader gives the new keys back, and the same settings as the run directories.
    runs = load_wandb_offline([out]).runs
    assert set(runs["config.logging.grid"]) == {"two"}
    assert set(runs["local_run_id"]) == {r.run_id for r in grid.runs}
    assert set(runs["git_commit"]) == {git_commit()["commit"]}
    assert "config.run_id" not in runs and "config.git.commit" not in runs  # not settings
    assert sorted(runs["config.logging.setting"]) == ["ewc", "ewc", "finetune", "finetune"]
    local = load_runs(out, cache=False).runs
    assert sorted(runs["setting_id"]) == sorted(local["setting_id"])


def test_long_setting_groups_stay_within_wandb_limits() -> None:
    assert setting_group("g", "ewc lam=1") == "g/ewc lam=1"
    long_a, long_b = setting_group("g", "x" * 200 + "a"), setting_group("g", "x" * 200 + "b")
    assert len(long_a) == 128 and len(long_b) == 128 and long_a != long_b


# --------------------------------------------------------------------------------------------- W&B failures


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


# --------------------------------------------------------------------------------------------- reading back


def test_wandb_offline_and_api_loaders_match_the_run_directory(make_cfg) -> None:
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
    back = ReadBack(result.run_dir)

    class CloudRun:
        id = back.run["run_id"]
        state = "finished"
        config = {k: {"value": v} for k, v in back.config.items()}  # the API's wrapped form
        summary = back.summary

        def scan_history(self):
            return iter(back.history)

    class Api:
        def runs(self, path, filters):
            assert path == "me/forgetting-lab"
            return [CloudRun()]

    online = load_wandb_api("me/forgetting-lab", api=Api())
    pd.testing.assert_frame_equal(online.metrics, offline.metrics)
    assert re.fullmatch(r"ewc", online.runs.loc[0, "method"])


def test_in_process_reader_gives_what_wandb_itself_reads(make_cfg) -> None:
    result = run(make_cfg("logging.wandb=offline", "seed=7"))
    back = ReadBack(result.run_dir)
    records = list(proto_records(back.file))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds == [r["type"] for r in back.records]  # every record, in order
    history = [
        {(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert history == back.history
    # A file cut mid-record (a run still writing) reads up to its last whole record.
    cut = result.run_dir / "cut.wandb"
    data = back.file.read_bytes()
    cut.write_bytes(data[: len(data) - 10])
    assert 0 < len(list(proto_records(cut))) < len(records)
    cut.write_bytes(b"not a W&B file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        list(proto_records(cut))

    # In a folder, a file that cannot be read (a run that has just started: only the header) is left out with a
    # warning naming it, and the other runs still load.
    started = result.run_dir / "wandb" / "offline-run-started" / "run-started.wandb"
    started.parent.mkdir()
    started.write_bytes(data[:7])
    with pytest.warns(UnreadableRunWarning, match="run-started.wandb"):
        loaded = load_wandb_offline([result.run_dir])
    assert list(loaded.runs["run_id"]) == [back.run["run_id"]]


# --------------------------------------------------------------------------------------------- sync


def test_sync_lists_offline_runs_and_skips_synced_ones(make_cfg, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run(make_cfg("logging.wandb=offline", "seed=8"))
    second = run(make_cfg("logging.wandb=offline", "seed=9"))
    run(make_cfg("logging.wandb=disabled", "seed=10"))  # no W&B files: nothing to sync
    listed = sync_runs(out, dry_run=True)
    assert [r.run_dir for r in listed] == sorted([first.run_dir, second.run_dir])
    assert {r.wandb_id for r in listed} == {first.summary["wandb"]["run_id"], second.summary["wandb"]["run_id"]}
    assert all(r.file.is_file() for r in listed)
    # wandb sync marks what it uploaded with run-<id>.wandb.synced; those are skipped.
    marked = next(r for r in listed if r.run_dir == first.run_dir)
    marked.file.with_name(marked.file.name + ".synced").touch()
    assert [r.run_dir for r in sync_runs(out, dry_run=True)] == [second.run_dir]
    assert len(sync_runs(out, dry_run=True, include_synced=True)) == 2
    assert [r.synced for r in offline_runs(out)] == [r.run_dir == first.run_dir for r in offline_runs(out)]
    assert wandb_executable() == WANDB

    # A real upload without a W&B key fails with W&B's own message, at once.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(out / "no-netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(SyncError, match="No API key"):
        sync_runs(out, timeout=60)


@pytest.mark.slow
def test_sync_to_an_unreachable_server_stops_at_its_timeout(
    make_cfg, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(make_cfg("logging.wandb=offline", "seed=11"))
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: W&B retries for ever
    with pytest.raises(SyncError, match="did not finish within 5 s"):
        sync_runs(out, timeout=5)
