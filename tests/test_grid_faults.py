"""A grid killed at random points again and again, then resumed: every run completes exactly once, from its last
checkpoint where it had one, with no corrupt or leftover files, and with exactly the numbers an uninterrupted
run in this process gives (so results do not depend on kills, resumes or which worker process ran them)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import psutil
import pytest
from test_grid_run import events, grid_command, resume_grid, write_grid

from research.config import validate_config
from research.grid.spec import load_grid
from research.store import read_summary
from research.training import run
from research.training.resume import CHECKPOINT_FILE

KILLS = 10
EVERY = 3  # eval.every_n_steps of the grid's runs


def kill(proc: subprocess.Popen, how: str) -> None:
    if how == "SIGKILL":  # the grid and its workers at once, no chance to clean up
        os.killpg(proc.pid, signal.SIGKILL)
    else:  # a polite stop: the grid tells its workers, which mark their runs failed and keep their checkpoints
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(p.info["ppid"] == proc.pid for p in psutil.process_iter(["ppid"])) and time.monotonic() < deadline:
        time.sleep(0.05)


def uninterrupted(grid_run, root: Path) -> pd.DataFrame:
    return run(validate_config({**grid_run.config.model_dump(mode="json"), "out": str(root)})).metrics


@pytest.mark.slow
def test_grid_killed_at_random_points_ten_times_completes_every_run_exactly_once(tmp_path: Path, out: Path) -> None:
    settings = {"train.epochs": 30, "checkpoint.every_n_steps": 5, "logging.log_every_n_steps": 1}
    settings["eval.every_n_steps"] = EVERY
    grid_file = write_grid(
        tmp_path / "kills.yaml",
        [{"method.name": m, **settings} for m in ("finetune", "ewc", "replay", "lwf")],
        seeds=[0, 1, 2],
    )
    grid = load_grid(grid_file, [f"out={out}"])
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "pretrained").symlink_to((out / "pretrained").resolve(), target_is_directory=True)
    # The reference for the first run also caches the pretrained model, so that the kills land in fine-tuning.
    references = {grid.runs[0].run_id: uninterrupted(grid.runs[0], reference)}
    chooser = random.Random(6)
    schedule = []
    for attempt in range(KILLS):
        how = "SIGKILL" if attempt % 2 == 0 else "SIGTERM"
        # A random point in the work itself (start-up is slow here and would absorb most kills otherwise): up to
        # 4 s after a run of this attempt opened its run directory, or a moment into start-up for every third.
        delay = chooser.uniform(0.0, 4.0)
        early = attempt % 3 == 2
        launched = time.time()
        proc = subprocess.Popen(
            grid_command(grid_file, out, "--workers", "2"),
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not early and time.monotonic() < deadline and proc.poll() is None:
            if any(p.stat().st_mtime > launched for p in out.glob("*/config.yaml")):
                break
            time.sleep(0.05)
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            kill(proc, how)
        done = sum(
            read_summary(r.run_dir) is not None and read_summary(r.run_dir)["status"] == "completed" for r in grid.runs
        )
        point = f"{delay:.1f}s into start-up" if early else f"{delay:.1f}s into a run"
        saved = len(list(out.glob(f"*/{CHECKPOINT_FILE}")))
        schedule.append(f"{how} {point}{' (had finished)' if finished else ''}: {done} completed, {saved} checkpoints")

    resumed = resume_grid(grid_file, out)
    assert "0 failed" in resumed.stdout, (schedule, resumed.stdout)

    # Every run completed, by exactly one attempt: no run reported completed twice, and each run either
    # completed under a grid or was found completed by a later one.
    log = events(out, grid.name)
    completed = Counter(e["run_id"] for e in log if e["event"] == "completed")
    assert max(completed.values()) == 1, (completed, schedule)
    found_done = {e["run_id"] for e in log if e["event"] == "skipped" and e.get("reason") == "already completed"}
    assert set(completed) | found_done == {r.run_id for r in grid.runs}, schedule

    # No half-written or leftover files; no run directories other than the grid's.
    assert not list(out.rglob(".*.tmp")), schedule
    assert not list(out.glob(f"*/{CHECKPOINT_FILE}")), "a completed run keeps no checkpoint"
    run_dirs = sorted(p.name for p in out.iterdir() if (p / "summary.json").exists())
    assert run_dirs == sorted(r.run_id for r in grid.runs)

    resumes = 0
    for r in grid.runs:
        summary = read_summary(r.run_dir)
        assert summary["status"] == "completed", (r.name, summary.get("error"), schedule)
        resumes += len(summary["resumes"])
        metrics = pd.read_parquet(r.run_dir / "metrics.parquet")
        steps = metrics[metrics.metric == "train_loss"].step
        assert list(steps) == list(range(summary["steps"])), (r.name, schedule)  # none missing, none twice
        evaluated = sorted(metrics[metrics.metric == "acc"].step.unique())
        assert evaluated == sorted({*range(0, summary["steps"] + 1, EVERY), summary["steps"]}), r.name

        # The numbers are those of an uninterrupted run of the same config in this process.
        here = references[r.run_id] if r.run_id in references else uninterrupted(r, reference)
        pd.testing.assert_frame_equal(here, metrics, check_exact=True, obj=r.name)
    print(f"kills: {schedule}; resumes from a checkpoint: {resumes}")
