"""Running grids: local worker processes, failures that do not stop the grid, resume after SIGKILL, two grid
processes on one output directory, and the SLURM path through submitit's local executor."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from conftest import EXPERIMENTS, ROOT, TINY

from research.config import validate_config
from research.errors import ConfigError
from research.grid.local import LocalExecutor
from research.grid.outcome import Outcome
from research.grid.progress import GridProgress
from research.grid.results import results_table
from research.grid.runner import run_grid
from research.grid.spec import load_grid
from research.store import read_summary
from research.training import run

# Tiny runs, a little longer than the conftest's so that a kill lands mid-run.
GRID_OVERRIDES = {o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in TINY} | {"train.epochs": 3}


def write_grid(path: Path, grid: list[dict], seeds: list[int], **extra) -> Path:
    spec = {"base": str(EXPERIMENTS / "split_digits.yaml"), "overrides": GRID_OVERRIDES, "seeds": seeds, "grid": grid}
    path.write_text(yaml.safe_dump({**spec, **extra}, sort_keys=False))
    return path


def grid_command(path: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "research", "grid", str(path), f"out={out}", *args]


def start_grid(grid_file: Path, out: Path, **popen: object) -> subprocess.Popen:
    """``research grid --workers 2`` in the background; output captured unless ``popen`` says otherwise."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(grid_command(grid_file, out, "--workers", "2"), cwd=ROOT, **popen)


def resume_grid(grid_file: Path, out: Path) -> subprocess.CompletedProcess:
    """The same command again, to the end: it must finish the grid."""
    proc = subprocess.run(grid_command(grid_file, out, "--workers", "2"), capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def events(out: Path, grid: str) -> list[dict]:
    path = out / "grids" / grid / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def completed_once(out: Path, grid_name: str, run_ids: list[str]) -> None:
    """Every run is completed on disk, was completed by exactly one attempt, and nothing is half-written."""
    counts = Counter(e["run_id"] for e in events(out, grid_name) if e["event"] == "completed")
    assert counts == Counter(run_ids), counts
    for rid in run_ids:
        summary = read_summary(out / rid)
        assert summary is not None and summary["status"] == "completed", (rid, summary)
        frame = pd.read_parquet(out / rid / "metrics.parquet")
        assert frame.step.min() == 0 and len(frame) > 0
    leftovers = [p for p in out.rglob(".*.tmp")]
    assert not leftovers, leftovers
    run_dirs = [p for p in out.iterdir() if p.is_dir() and (p / "summary.json").exists()]
    assert sorted(p.name for p in run_dirs) == sorted(run_ids)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_local_grid_isolates_failures_reuses_workers_and_resumes(tmp_path: Path, out: Path) -> None:
    grid_file = write_grid(
        tmp_path / "mixed.yaml",
        [
            {"method.name": "finetune"},
            {"method.name": "ewc", "method.lam": [10.0, 1000.0]},
            # Diverges: fails, and must not stop the other runs.
            {"method.name": "finetune", "train.optimizer": "sgd", "train.lr": 1e20, "logging.log_every_n_steps": 1},
        ],
        seeds=[0],
    )
    grid = load_grid(grid_file, [f"out={out}"])
    stream = io.StringIO()
    result = run_grid(grid, LocalExecutor(2, grid.folder / "logs"), 2, stream=stream)

    assert result.count("completed") == 3 and result.count("failed") == 1, result.outcomes
    ((failed, outcome),) = result.runs_with("failed")
    assert failed.name == "finetune train.optimizer=sgd train.lr=1e+20 logging.log_every_n_steps=1 seed=0"
    assert "diverged" in outcome.reason
    assert read_summary(failed.run_dir)["status"] == "failed"

    # Runs executed in worker processes, and a worker ran more than one run (imports are paid once per worker).
    pids = [read_summary(r.run_dir)["process"]["pid"] for r in grid.runs]
    assert os.getpid() not in pids and len(set(pids)) <= 2 and len(pids) == 4

    # The grid's own records.
    summary = json.loads((grid.folder / "summary.json").read_text())
    assert summary["counts"] == {"completed": 3, "failed": 1, "skipped": 0}
    assert [r["run_id"] for r in summary["runs"]] == [r.run_id for r in grid.runs]
    expansion = json.loads((grid.folder / "grid.json").read_text())
    assert [r["name"] for r in expansion["runs"]] == [r.name for r in grid.runs]
    text = stream.getvalue()
    assert "[4/4]" in text and "failed" in text and "left" in text and "elapsed" in text

    # The same config run in this process gives the same numbers as in the worker.
    ewc = next(r for r in grid.runs if r.name == "ewc lam=1000 seed=0")
    here = run(validate_config({**ewc.config.model_dump(mode="json"), "out": str(tmp_path / "here")}))
    pd.testing.assert_frame_equal(here.metrics, pd.read_parquet(ewc.run_dir / "metrics.parquet"))

    # The closing table: one row per setting, mean over its seeds.
    table = results_table(grid)
    assert "ewc lam=1000" in table and "optimizer=sgd" not in table  # the failed run has no row

    # Rerunning the grid skips what completed and reruns what failed.
    again = run_grid(grid, LocalExecutor(2, grid.folder / "logs"), 2, stream=io.StringIO())
    assert again.count("skipped") == 3 and again.count("failed") == 1
    assert {o.reason for o in again.outcomes.values() if o.status == "skipped"} == {"already completed"}
    assert Counter(e["event"] for e in events(out, grid.name))["completed"] == 3


def test_a_worker_that_dies_before_taking_a_run_does_not_fail_it(tmp_path: Path, out: Path) -> None:
    grid = load_grid(write_grid(tmp_path / "dead.yaml", [{"method.name": "finetune"}], [0, 1]), [f"out={out}"])
    with LocalExecutor(1, grid.folder / "logs") as executor:
        executor.start()
        (worker,) = executor._started
        worker.process.kill()  # dies before it is handed anything
        worker.process.join()
        result = run_grid(grid, executor, 1, stream=io.StringIO())
    assert result.count("completed") == 2, result.outcomes


def test_grid_runs_share_a_wandb_group_with_readable_names(tmp_path: Path, out: Path) -> None:
    from test_wandb import wandb_records

    grid_file = write_grid(tmp_path / "wb.yaml", [{"method.name": "ewc", "method.lam": 10.0}], seeds=[1], name="wbgrid")
    grid = load_grid(grid_file, [f"out={out}", "logging.wandb=offline"])
    result = run_grid(grid, LocalExecutor(1, grid.folder / "logs"), 1, stream=io.StringIO())
    assert result.count("completed") == 1
    (path,) = grid.runs[0].run_dir.glob("wandb/offline-run-*/run-*.wandb")
    info = next(r["run"] for r in wandb_records(path) if r["type"] == "run")
    # <grid>/<setting> #<setting id>: the seeds of one setting form a W&B group
    assert re.fullmatch(r"wbgrid/ewc #[0-9a-f]{6}", info["run_group"])
    assert info["job_type"] == "ewc"
    assert info["display_name"] == "ewc lam=10 seed=1"
    assert {"ewc", "subgrid-0", "setting:method.lam"} <= set(info["tags"])


@pytest.mark.slow  # whole grids in worker processes, 35-50 s each: CI runs them with -m slow
def test_sigkill_of_a_worker_fails_only_its_run_and_the_grid_resumes(tmp_path: Path, out: Path) -> None:
    grid_file = write_grid(tmp_path / "kw.yaml", [{"method.name": "finetune"}, {"method.name": "l2sp"}], [0, 1, 2])
    grid = load_grid(grid_file, [f"out={out}"])
    proc = start_grid(grid_file, out)

    def a_running_run():
        # A run whose directory says "running" and names a live worker of this grid as its process.
        workers = {p.pid for p in psutil.Process(proc.pid).children()}
        for r in grid.runs:
            summary = read_summary(r.run_dir)
            if summary and summary["status"] == "running" and summary["process"]["pid"] in workers:
                return r, summary["process"]["pid"]
        return None

    victim, pid = wait_for(a_running_run, 120, "a run in progress")
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout + stderr  # one run failed, the others went on
    assert f"failed   {victim.name} [{victim.run_id}]: worker process {pid} was killed by SIGKILL" in stdout, stdout
    assert "5 completed, 1 failed" in stdout
    summary = read_summary(victim.run_dir)
    assert summary["status"] == "failed" and "SIGKILL" in summary["error"]

    resumed = resume_grid(grid_file, out)
    assert "1 completed, 0 failed, 5 skipped" in resumed.stdout
    completed_once(out, grid.name, [r.run_id for r in grid.runs])


@pytest.mark.slow  # whole grids in worker processes, 35-50 s each: CI runs them with -m slow
def test_grid_killed_outright_resumes_without_duplicates(tmp_path: Path, out: Path) -> None:
    grid_file = write_grid(tmp_path / "kg.yaml", [{"method.name": "finetune"}, {"method.name": "l2sp"}], [0, 1, 2])
    grid = load_grid(grid_file, [f"out={out}"])
    # Its own process group: the kill takes the grid and its workers at once.
    proc = start_grid(grid_file, out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: sum(e["event"] == "completed" for e in events(out, grid.name)) >= 2, 120, "two runs done")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(lambda: not any(p.info["ppid"] == proc.pid for p in psutil.process_iter(["ppid"])), 30, "workers gone")
    done_before = {e["run_id"] for e in events(out, grid.name) if e["event"] == "completed"}
    assert 2 <= len(done_before) < len(grid.runs)

    resumed = resume_grid(grid_file, out)
    assert f"{len(done_before)} already completed" in resumed.stdout
    completed_once(out, grid.name, [r.run_id for r in grid.runs])


@pytest.mark.slow  # whole grids in worker processes, 35-50 s each: CI runs them with -m slow
def test_two_grid_processes_on_one_out_share_the_work(tmp_path: Path) -> None:
    """Both start at once on a fresh out (no pretrained cache yet): pretraining happens once, every run
    completes exactly once, and neither process corrupts the other's files."""
    out = tmp_path / "shared"
    grid_file = write_grid(tmp_path / "two.yaml", [{"method.name": "finetune"}, {"method.name": "ewc"}], [0, 1])
    grid = load_grid(grid_file, [f"out={out}"])
    procs = [start_grid(grid_file, out) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stdout + stderr
    completed_once(out, grid.name, [r.run_id for r in grid.runs])
    trained = [r for r in grid.runs if not read_summary(r.run_dir)["pretrained"]["cached"]]
    assert len(trained) <= 1  # the one run that trained the shared model (0 if the other process's run did)
    entries = [p for p in (out / "pretrained").iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "model.safetensors").is_file()
    skipped = sum("completed by another process" in stdout or "already completed" in stdout for stdout, _ in outputs)
    assert skipped >= 1  # at least one process found work the other had done


@pytest.mark.slow  # whole grids in worker processes, 35-50 s each: CI runs them with -m slow
def test_submitit_local_executor_runs_a_grid(tmp_path: Path, out: Path) -> None:
    grid_file = write_grid(tmp_path / "sub.yaml", [{"method.name": "finetune"}, {"method.name": "l2sp"}], [0])
    proc = subprocess.run(
        grid_command(
            grid_file, out, "--executor", "slurm", "--submitit-cluster", "local", "--time", "10", "--workers", "1"
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 completed, 0 failed, 0 skipped" in proc.stdout
    grid = load_grid(grid_file, [f"out={out}"])
    completed_once(out, grid.name, [r.run_id for r in grid.runs])
    # Each run was a submitit job with its own process and logs.
    pids = {read_summary(r.run_dir)["process"]["pid"] for r in grid.runs}
    assert len(pids) == 2
    assert list((grid.folder / "submitit").glob("*_log.out"))
    # --workers 1 caps the jobs running at once: the second started after the first ended.
    log = events(out, grid.name)
    first_end = min(e["time"] for e in log if e["event"] == "completed")
    assert sorted(e["time"] for e in log if e["event"] == "started")[1] >= first_end

    # --force reruns the completed runs as new submitit jobs.
    forced = subprocess.run(
        grid_command(grid_file, out, "--executor", "slurm", "--submitit-cluster", "local", "--time", "10", "--force"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "2 completed, 0 failed, 0 skipped" in forced.stdout
    assert not pids & {read_summary(r.run_dir)["process"]["pid"] for r in grid.runs}


def test_slurm_submission_carries_the_grid_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sbatch script submitit writes for our options. There is no SLURM here, so this stops at the script:
    an ``srun`` stub on PATH satisfies submitit's cluster detection, and nothing is submitted."""
    from research.grid.slurm import SlurmExecutor, SlurmOptions

    stub = tmp_path / "bin"
    stub.mkdir()
    for tool in ("srun", "sbatch"):
        (stub / tool).write_text("#!/bin/sh\nexit 1\n")
        (stub / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions(partition="gpu", time_min=30, gpus=1, cpus=4, mem_gb=8)
    options.check()
    executor = SlurmExecutor(options, tmp_path / "submitit", max_parallel=5, job_name="research-g")
    submitit_executor = executor.submitit_executor()
    script = submitit_executor._executor._make_submission_file_text("python -m job", "uid")
    for line in (
        "--partition=gpu",
        "--time=30",
        "--gpus-per-node=1",
        "--cpus-per-task=4",
        "--mem=8GB",
        "--job-name=research-g",
    ):
        assert f"#SBATCH {line}\n" in script, script
    assert submitit_executor._executor.parameters["array_parallelism"] == 5


def test_slurm_executor_without_slurm_is_a_usage_error(tmp_path: Path) -> None:
    grid_file = write_grid(tmp_path / "s.yaml", [{"method.name": "finetune"}], [0])
    out = tmp_path / "runs"
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"}
    proc = subprocess.run(grid_command(grid_file, out, "--executor", "slurm"), capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "sbatch and srun are not on PATH" in proc.stderr and "--executor local" in proc.stderr
    assert not out.exists()


@pytest.mark.slow  # whole grids in worker processes, 35-50 s each: CI runs them with -m slow
def test_interrupting_a_grid_marks_its_runs_and_resumes(tmp_path: Path, out: Path) -> None:
    grid_file = write_grid(tmp_path / "int.yaml", [{"method.name": "finetune"}, {"method.name": "l2sp"}], [0, 1])
    grid = load_grid(grid_file, [f"out={out}"])
    proc = start_grid(grid_file, out)
    wait_for(lambda: any((read_summary(r.run_dir) or {}).get("status") == "running" for r in grid.runs), 120, "a run")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "run the same command again to resume" in stderr
    summaries = [read_summary(r.run_dir) or {} for r in grid.runs]
    assert "running" not in {s.get("status") for s in summaries}  # every started run says how it ended
    for summary in summaries:
        if summary.get("status") == "failed":
            assert "stopped by the grid" in summary["error"] or "interrupted" in summary["error"], summary["error"]
    # The grid's own summary fails only runs that had started; the others were not started.
    recorded = json.loads((grid.folder / "summary.json").read_text())
    assert recorded["interrupted"] is True
    for entry in recorded["runs"]:
        if entry["status"] == "failed":
            assert (out / entry["run_id"] / "summary.json").exists(), entry
        elif entry["status"] == "skipped":
            assert entry["reason"] == "not started: the grid was stopped before it", entry
    resume_grid(grid_file, out)
    completed_once(out, grid.name, [r.run_id for r in grid.runs])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Instant:
    """An executor that completes every run at once, without running it, and cannot force."""

    def execute(self, runs, on_start, on_finish, on_tick) -> None:
        for run_ in runs:
            on_start(run_)
            on_finish(run_, Outcome("completed", None, 0.0))
            on_tick()


def test_the_grid_header_is_a_line_of_its_own_above_the_bar(tmp_path: Path, out: Path) -> None:
    grid = load_grid(write_grid(tmp_path / "hd.yaml", [{"method.name": "finetune"}], [0, 1]), [f"out={out}"])
    screen = _Terminal()
    run_grid(grid, _Instant(), 1, stream=screen)
    header, rest = screen.getvalue().split("\n", 1)
    # The header first, whole: the bar (drawn with "\r") starts below it, not on it.
    assert header == "grid hd: 2 runs, 0 already completed, 2 to run (local, 1 worker)", header
    assert "\r" in rest and "1/2 runs | done 1, running 0" in rest and "| , done" not in rest
    assert GridProgress(0, 1, screen).bar is None  # nothing to run: no bar


def test_force_needs_an_executor_that_takes_it(tmp_path: Path, out: Path) -> None:
    grid = load_grid(write_grid(tmp_path / "nf.yaml", [{"method.name": "finetune"}], [0]), [f"out={out}"])
    with pytest.raises(ConfigError, match="--force: the instant executor cannot rerun completed runs"):
        run_grid(grid, _Instant(), 1, "instant", stream=io.StringIO(), force=True)
    assert not grid.folder.exists()  # refused before anything was written


def test_a_completed_grid_starts_no_worker_and_force_reruns_it(
    tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import research.grid.runner as runner
    from research.cli import main

    grid_file = write_grid(tmp_path / "done.yaml", [{"method.name": "finetune"}], [0])
    (done,) = load_grid(grid_file, [f"out={out}"]).runs
    run(done.config)  # completed here, in this process
    order: list[str] = []
    start, check = LocalExecutor.start, runner.check_grid
    monkeypatch.setattr(LocalExecutor, "start", lambda self: (order.append("workers"), start(self))[1])
    monkeypatch.setattr(runner, "check_grid", lambda grid: (order.append("checks"), check(grid))[1])

    assert main(["grid", str(grid_file), f"out={out}"]) == 0
    assert "1 runs, 1 already completed, 0 to run" in capsys.readouterr().out
    assert order == []  # no worker started, nothing checked: there was nothing to run

    assert main(["grid", str(grid_file), f"out={out}", "--dry-run", "--force"]) == 0
    assert "completed    rerun from the start" in capsys.readouterr().out
    order.clear()

    assert main(["grid", str(grid_file), f"out={out}", "--force"]) == 0
    printed = capsys.readouterr().out
    assert "1 to run (--force: completed ones too)" in printed and "1 completed, 0 failed, 0 skipped" in printed
    assert order == ["checks", "workers"]  # with work to do, workers start once the grid passed its checks
    summary = read_summary(done.run_dir)
    assert summary["status"] == "completed" and summary["process"]["pid"] != os.getpid()  # rerun by a worker
    assert [e["event"] for e in events(out, "done")][-2:] == ["started", "completed"]
    assert json.loads((out / "grids" / "done" / "summary.json").read_text())["force"] is True
