"""Resuming a run killed mid-training: it goes on from its last checkpoint, and ends with exactly the metrics of
an uninterrupted run (for every registered method, and for a sequence of tasks), without a duplicate or
missing step. Kills are simulated in-process by an exception at a chosen update, and once for real: a SIGKILL
to a ``research run`` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY

from research.errors import RunFailed
from research.methods import method_class, method_names
from research.store import read_summary
from research.training import run
from research.training.module import ClassifierModule
from research.training.resume import CHECKPOINT_FILE

# Dropout and BatchNorm make the random streams and running statistics part of what must be restored; logging
# every step makes a missing or repeated training step visible in the metrics.
SETTINGS = (
    "model.dropout=0.2",
    "model.batchnorm=true",
    "logging.log_every_n_steps=1",
    "eval.every_n_steps=3",
    "train.epochs=3",
    "checkpoint.every_n_steps=4",
    "checkpoint.every_n_seconds=0",  # checkpoints at fixed steps only, so the tests know where a resume starts
)
# Settings that give a method something to do within a few steps.
METHOD_SETTINGS = {
    "lp_ft": ["method.probe_steps=5"],
    "wise_ft": ["method.sweep=every_task"],  # in a sequence, the first task's sweep must survive the kill
    "agem": ["method.memory_size=40", "method.reference_batch_size=8"],
}


class SimulatedKill(RuntimeError):
    """Stands in for the process dying (Lightning turns a real KeyboardInterrupt into SystemExit)."""


def interrupt_at(monkeypatch: pytest.MonkeyPatch, update: int) -> None:
    """Make training stop just before update number ``update + 1`` of the run."""
    original = ClassifierModule.training_step
    seen = {"steps": 0}

    def step(self: ClassifierModule, batch, batch_idx: int):
        if self.method is None:  # pretraining (cached or not) is not what is being killed
            return original(self, batch, batch_idx)
        if seen["steps"] == update:
            raise SimulatedKill(f"killed after {update} updates")
        seen["steps"] += 1
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", step)


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("step", "task", "block", "metric") if c in frame.columns]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def assert_same_run(resumed: Path, reference: Path) -> None:
    for table in ("metrics.parquet", "diagnostics.parquet", "method.parquet"):
        if (reference / table).exists():
            pd.testing.assert_frame_equal(
                pd.read_parquet(resumed / table), pd.read_parquet(reference / table), check_exact=True
            )
    a, b = read_summary(resumed), read_summary(reference)
    assert a["final"] == b["final"] and a["steps"] == b["steps"] and a["method_info"].keys() == b["method_info"].keys()


@pytest.fixture
def reference_root(tmp_path: Path, out: Path) -> Path:
    """A second run root sharing the session's pretrained cache: the same run id, run there uninterrupted."""
    root = tmp_path / "reference"
    root.mkdir()
    (root / "pretrained").symlink_to((out / "pretrained").resolve(), target_is_directory=True)
    return root


def run_interrupted(cfg, monkeypatch: pytest.MonkeyPatch, update: int):
    interrupt_at(monkeypatch, update)
    with pytest.raises(RunFailed):
        run(cfg)
    monkeypatch.undo()


@pytest.mark.parametrize("name", method_names())
def test_every_method_resumes_to_exactly_the_uninterrupted_run(
    name: str, make_cfg, reference_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = [f"method.name={name}", *SETTINGS, *METHOD_SETTINGS.get(name, [])]
    reference = run(make_cfg(*settings, root=reference_root))
    cfg = make_cfg(*settings)
    run_interrupted(cfg, monkeypatch, update=10)  # killed after 10 updates: the checkpoint of step 8 is the last

    summary = read_summary(Path(cfg.out) / reference.run_id)
    assert summary["status"] == "failed" and "SimulatedKill" in summary["error"]
    assert (Path(cfg.out) / reference.run_id / CHECKPOINT_FILE).is_file()

    resumed = run(cfg)
    assert resumed.run_id == reference.run_id and not resumed.skipped
    assert resumed.summary["status"] == "completed"
    assert resumed.summary["resumed_from_step"] == 8
    assert resumed.summary["resumes"] == [{"from_step": 8}]
    assert not (resumed.run_dir / CHECKPOINT_FILE).exists()  # a completed run needs none
    assert_same_run(resumed.run_dir, reference.run_dir)
    metrics = resumed.metrics
    steps = metrics[metrics.metric == "train_loss"].step
    assert steps.is_unique and list(steps) == list(range(reference.summary["steps"]))


@pytest.mark.parametrize(
    ("task", "heads"),
    [(0, "per_task"), (1, "per_task"), (1, "shared")],
    ids=["killed_in_first_task", "killed_in_second_task", "class_incremental_killed_in_second_task"],
)
@pytest.mark.parametrize("name", [n for n in method_names() if method_class(n).supports_sequences])
def test_a_sequence_resumes_in_either_task(
    name: str, task: int, heads: str, make_cfg, reference_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also in a class-incremental sequence, whose shared head grows at the second task: the resume replays
    that growth before it loads the checkpoint's weights."""
    settings = [*SETTINGS, f"method.name={name}", "train.epochs=2", f"model.heads={heads}"]
    experiment = "sequence_digits.yaml"
    reference = run(make_cfg(*settings, experiment=experiment, root=reference_root))
    first_task_steps = reference.summary["task_ends"][0]["step"]
    assert first_task_steps > 10
    cfg = make_cfg(*settings, experiment=experiment)
    run_interrupted(cfg, monkeypatch, update=[9, first_task_steps + 6][task])

    resumed = run(cfg)
    from_step = resumed.summary["resumed_from_step"]
    assert (from_step > first_task_steps) == (task == 1) and from_step > 0
    assert resumed.summary["task_ends"] == reference.summary["task_ends"]
    assert_same_run(resumed.run_dir, reference.run_dir)


def test_resuming_twice_and_force_starts_over(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(*SETTINGS, "method.name=ewc")
    run_interrupted(cfg, monkeypatch, update=5)
    run_interrupted(cfg, monkeypatch, update=6)  # the second attempt starts at step 4, dies at 4 + 6 = 10
    resumed = run(cfg)
    assert [r["from_step"] for r in resumed.summary["resumes"]] == [4, 8]
    forced = run(cfg, force=True)
    assert forced.summary["resumes"] == [] and "resumed_from_step" not in forced.summary


def test_an_unusable_checkpoint_means_starting_over(make_cfg, monkeypatch, capsys) -> None:
    cfg = make_cfg(*SETTINGS)
    run_interrupted(cfg, monkeypatch, update=5)
    summary = read_summary(next(p for p in Path(cfg.out).iterdir() if (p / "summary.json").exists()))
    checkpoint = Path(cfg.out) / summary["run_id"] / CHECKPOINT_FILE
    checkpoint.write_bytes(b"not a checkpoint")
    result = run(cfg)
    assert result.summary["status"] == "completed" and result.summary["resumes"] == []
    err = capsys.readouterr().err
    assert "cannot resume from checkpoint" in err and "unreadable" in err and "set aside" in err
    assert (checkpoint.parent / f"{CHECKPOINT_FILE}.unusable").read_bytes() == b"not a checkpoint"


def test_checkpoint_is_loaded_without_unpickling_code(make_cfg, monkeypatch, tmp_path: Path) -> None:
    cfg = make_cfg(*SETTINGS)
    run_interrupted(cfg, monkeypatch, update=5)
    run_dir = next(p for p in Path(cfg.out).iterdir() if (p / CHECKPOINT_FILE).exists())
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 1, "run_id": run_dir.name, "evil": Payload()}, run_dir / CHECKPOINT_FILE)
    result = run(cfg)
    assert not marker.exists()
    assert result.summary["status"] == "completed" and result.summary["resumes"] == []


def wait_for_checkpoint(process: subprocess.Popen, out: Path, seconds: float = 120) -> list[Path]:
    """The checkpoints under ``out`` once one appears while ``process`` runs (fails if none does in time)."""
    deadline = time.monotonic() + seconds
    checkpoints: list[Path] = []
    while not checkpoints and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        checkpoints = list(out.glob(f"*/{CHECKPOINT_FILE}"))
    assert checkpoints, "no checkpoint appeared"
    return checkpoints


def test_a_killed_run_process_resumes_from_its_checkpoint(tmp_path: Path, tiny_overrides: list[str]) -> None:
    """SIGKILL, no chance to clean up: the next ``research run`` resumes, and the metrics are complete."""
    overrides = [*tiny_overrides, *SETTINGS, "train.epochs=40", "checkpoint.every_n_steps=20"]
    command = [sys.executable, "-m", "research", "run", "experiments/split_digits.yaml", *overrides]
    root = Path(__file__).resolve().parents[1]
    out = Path(next(o for o in overrides if o.startswith("out=")).removeprefix("out="))
    victim = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = wait_for_checkpoint(victim, out)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    run_dir = checkpoints[0].parent
    assert read_summary(run_dir)["status"] == "running"  # killed outright: never looks completed

    finished = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] > 0
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    steps = metrics[metrics.metric == "train_loss"].step
    assert steps.is_unique and list(steps) == list(range(summary["steps"]))
    evaluated = sorted(metrics[metrics.metric == "acc"].step.unique())
    expected = sorted({*range(0, summary["steps"] + 1, 3), summary["steps"]})
    assert evaluated == expected


def test_the_resumed_wandb_run_holds_the_whole_history(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interrupted attempt's partial W&B run is replaced by one that has every step, the earlier ones
    replayed from the checkpoint."""
    from test_wandb import wandb_records

    cfg = make_cfg(*SETTINGS, "logging.wandb=offline")
    run_interrupted(cfg, monkeypatch, update=10)
    resumed = run(cfg)
    files = list(resumed.run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    logged: set[tuple[int, str]] = set()
    for record in wandb_records(files[0]):
        if record["type"] == "history":
            item = record["history"]["item"]
            step = int(item["trainer/global_step"])
            logged |= {(step, k) for k in item if not k.startswith("_") and k != "trainer/global_step"}
    metrics = resumed.metrics
    expected = {
        (
            int(r.step),
            f"train/{r.metric.removeprefix('train_')}"
            if r.metric.startswith("train_")
            else f"{r.role}/{r.task}/{r.metric}",
        )
        for r in metrics.itertuples()
    }
    assert expected <= logged
    assert {s for s, _ in logged} == set(metrics.step)


def test_resuming_under_other_code_is_recorded_and_reported(make_cfg, monkeypatch, capsys) -> None:
    cfg = make_cfg(*SETTINGS)
    run_interrupted(cfg, monkeypatch, update=5)
    path = next(Path(cfg.out).glob(f"*/{CHECKPOINT_FILE}"))
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "commit": "0123abc"}, path)
    result = run(cfg)
    assert result.summary["checkpoint_commit"] == "0123abc" and result.summary["resumes"] == [{"from_step": 4}]
    assert "resumes from a checkpoint written by commit 0123abc" in capsys.readouterr().err


def test_time_based_checkpoints_resume_exactly(make_cfg, reference_root: Path, monkeypatch) -> None:
    """The default trigger is time: a checkpoint once ``every_n_seconds`` of training have passed, whatever the
    step; resuming from one is as exact as from a step-based one."""
    settings = [*SETTINGS, "method.name=replay", "checkpoint.every_n_steps=0", "checkpoint.every_n_seconds=0.001"]
    reference = run(make_cfg(*settings, root=reference_root))
    cfg = make_cfg(*settings)
    run_interrupted(cfg, monkeypatch, update=10)
    resumed = run(cfg)
    assert 0 < resumed.summary["resumed_from_step"] <= 10
    assert_same_run(resumed.run_dir, reference.run_dir)


def test_short_runs_take_no_checkpoint_by_default(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    import research.training.finetune as finetune

    cfg = make_cfg()
    assert cfg.checkpoint.every_n_seconds == 60 and cfg.checkpoint.every_n_steps == 0
    saved = []
    monkeypatch.setattr(finetune, "save_checkpoint", lambda *args: saved.append(args))
    result = run(cfg)
    assert result.summary["status"] == "completed" and saved == []


def test_a_sequence_killed_in_its_second_task_resumes_with_identical_numbers(tmp_path: Path, make_cfg) -> None:
    """SIGKILL to a real ``research run`` of a sequence while it trains its second task (EWC: one penalty per
    learned task, so the resume must replay the first task's end): the next run finishes it with exactly the
    numbers of an uninterrupted run."""
    overrides = [*SETTINGS, "method.name=ewc", "train.epochs=30", "checkpoint.every_n_steps=20"]
    experiment = Path(__file__).resolve().parents[1] / "experiments" / "sequence_digits.yaml"
    reference = run(make_cfg(*overrides, experiment="sequence_digits.yaml"))
    first_task_steps = reference.summary["task_ends"][0]["step"]
    out = tmp_path / "victim"  # the reference ran in tmp_path / "out"
    command = [sys.executable, "-m", "research", "run", str(experiment), *TINY, f"out={out}", *overrides]
    root = Path(__file__).resolve().parents[1]
    log = (tmp_path / "victim.log").open("w")
    victim = subprocess.Popen(command, cwd=root, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    step = -1
    while step <= first_task_steps and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
        for path in out.glob(f"*/{CHECKPOINT_FILE}"):
            with contextlib.suppress(Exception):  # replaced between the glob and the read: look again
                step = torch.load(path, weights_only=True)["global_step"]
    assert step > first_task_steps, (
        f"no checkpoint in task 2 (last: step {step}): {(tmp_path / 'victim.log').read_text()}"
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    finished = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    run_dir = out / reference.run_id
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["resumed_from_step"] > first_task_steps
    assert_same_run(run_dir, reference.run_dir)
