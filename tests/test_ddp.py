"""Distributed data parallel on the CPU (gloo), 2 processes, started as a user starts it: ``research run`` on the
command line, which Lightning runs once more for the second process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_resume import assert_same_run

from research.errors import ConfigError
from research.store import read_summary
from research.training import run
from research.training.resume import CHECKPOINT_FILE

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "experiments" / "split_digits.yaml"
SEQUENCE = ROOT / "experiments" / "sequence_digits.yaml"
SMALL = [
    "logging.wandb=disabled",
    "logging.progress=false",
    "model.hidden=[32]",
    "pretrain.train.epochs=5",
    "train.epochs=1",
    "eval.every_n_steps=4",
    "logging.log_every_n_steps=1",
]
DDP = ["train.devices=2", "train.strategy=ddp"]


def research_run(experiment: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).with_name("research")),
        "run",
        str(experiment),
        *SMALL,
        f"out={out}",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=out)


def only_run(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and p.name not in ("pretrained", ".locks", "grids")]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    ("experiment", "method"),
    [(SPLIT, "finetune"), (SPLIT, "ewc"), (SPLIT, "replay"), (SEQUENCE, "online_ewc")],
    ids=["finetune", "ewc", "replay", "sequence-online_ewc"],
)
def test_two_processes_measure_what_one_does(tmp_path: Path, experiment: Path, method: str) -> None:
    """Each process takes half of every global batch (and of replay's extra examples), DDP averages the
    gradients, rank 0 writes: every measurement equals the single-process run's to float rounding, and only one
    run directory, with one W&B-free summary, exists per run."""
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir()
    double.mkdir()
    one = research_run(experiment, single, f"method.name={method}")
    assert one.returncode == 0, one.stderr[-2000:]
    two = research_run(experiment, double, f"method.name={method}", *DDP)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("completed") == 1  # rank 1 reports nothing
    a = pd.read_parquet(only_run(single) / "metrics.parquet")
    b = pd.read_parquet(only_run(double) / "metrics.parquet")
    assert a[["step", "task", "metric"]].equals(b[["step", "task", "metric"]])
    np.testing.assert_allclose(b.value, a.value, rtol=1e-5, atol=1e-6)
    assert read_summary(only_run(double))["status"] == "completed"
    assert not list(only_run(double).glob("*.tmp"))


@pytest.mark.slow
def test_a_method_that_ddp_cannot_follow_exits_2(tmp_path: Path) -> None:
    result = research_run(SPLIT, tmp_path, "method.name=lp_ft", *DDP)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "method lp_ft is not correct under ddp" in lines[0] and "finetune" in lines[0]
    assert not [p for p in tmp_path.iterdir()]


def test_ddp_from_python_is_refused_with_the_reason(make_cfg) -> None:
    with pytest.raises(ConfigError, match="ddp runs start from the command line"):
        run(make_cfg(*DDP))


def test_pretraining_stays_in_one_process(make_cfg) -> None:
    with pytest.raises(ConfigError, match="pretraining runs in one process"):
        make_cfg("pretrain.train.strategy=ddp")


def test_several_devices_need_ddp(make_cfg) -> None:
    with pytest.raises(ConfigError, match="devices=2 needs strategy=ddp"):
        make_cfg("train.devices=2")


# Run as a script (``python kill_rank0.py run EXPERIMENT ...``), so that Lightning starts the second process
# with the same script: rank 0 dies by SIGKILL, as on a node failure, just before its update KILL_AT + 1.
KILL_RANK0 = """
import os, signal, sys

from research.cli import main
from research.training.module import ClassifierModule
from research.training.run import distributed_rank

original = ClassifierModule.training_step
updates = {"done": 0}


def training_step(self, batch, batch_idx):
    if self.method is not None and distributed_rank() == 0:
        if updates["done"] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        updates["done"] += 1
    return original(self, batch, batch_idx)


ClassifierModule.training_step = training_step
sys.exit(main(sys.argv[1:]))
"""
RESUMABLE = ["train.epochs=2", "checkpoint.every_n_steps=4", "checkpoint.every_n_seconds=0", "model.dropout=0.2"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["finetune", "ewc", "replay"])
def test_a_killed_ddp_run_resumes_to_the_uninterrupted_one(tmp_path: Path, method: str) -> None:
    """Rank 0 is killed after 10 updates (its last checkpoint is step 8) and the other process goes down with
    the group; run again, both processes go on from that checkpoint (rank 1 loads the same file and the random
    streams rank 0 saved), and every measurement equals the uninterrupted two-process run's."""
    settings = [f"method.name={method}", *RESUMABLE, *DDP]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir()
    killed.mkdir()
    whole = research_run(SPLIT, reference, *settings)
    assert whole.returncode == 0, whole.stderr[-2000:]

    script = tmp_path / "kill_rank0.py"
    script.write_text(KILL_RANK0)
    command = [sys.executable, str(script), "run", str(SPLIT), *SMALL, f"out={killed}", *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": "10"}
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=killed, env=env, start_new_session=True, stdout=log, stderr=log)
        try:
            proc.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # rank 1, if it outlived rank 0
    assert proc.returncode == -signal.SIGKILL
    run_dir = only_run(killed)
    assert read_summary(run_dir)["status"] == "running"  # died without a word, as a killed process does
    assert (run_dir / CHECKPOINT_FILE).is_file()

    again = research_run(SPLIT, killed, *settings)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["resumed_from_step"] == 8
    assert run_dir.name == only_run(reference).name
    assert_same_run(run_dir, only_run(reference))
