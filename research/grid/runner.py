"""Running a grid: check every run, skip what is already completed, execute the rest, and record it all.

Records under ``<out>/grids/<grid name>/``:
    grid.json       the expansion: every run's id, name, sub-grid and seed
    events.jsonl    one line per run start and outcome, appended by every grid process that works on this out
    summary.json    the last invocation's outcome per run (completed / failed / skipped, with reasons)
    logs/           the local workers' output (Lightning and W&B messages, tracebacks)
The runs themselves are ordinary run directories under ``<out>/<run id>/``.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from research.errors import ConfigError, RunBusy
from research.grid.outcome import Executor, Outcome
from research.grid.progress import GridProgress, clock
from research.grid.spec import Grid, GridRun
from research.store import exclusive_lock, read_summary, write_json


@dataclass
class GridResult:
    grid: Grid
    outcomes: dict[str, Outcome]  # by run id, in the grid's order
    seconds: float

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    def runs_with(self, status: str) -> list[tuple[GridRun, Outcome]]:
        by_id = {run.run_id: run for run in self.grid.runs}
        return [(by_id[rid], o) for rid, o in self.outcomes.items() if o.status == status]


def check_grid(grid: Grid) -> int:
    """Every check a single run makes before writing anything, for every run of the grid. Returns the number of
    distinct pretraining setups (each is trained once, then shared)."""
    from research.config import resolved, stable_hash
    from research.training.pretrain import pretrain_key
    from research.training.run import check

    keys, checked = set(), set()
    for run in grid.runs:
        check_lock(run)
        # The checks do not depend on the seed: check each setting once.
        setting = stable_hash({**resolved(run.config), "seed": None, "logging": None})
        if setting in checked:
            continue
        checked.add(setting)
        try:
            tasks = check(run.config)
        except ConfigError as err:
            raise ConfigError(f"{grid.path}: run '{run.name}': {err}") from None
        if not run.config.pretrain.checkpoint:
            keys.add(pretrain_key(run.config, tasks))
    return len(keys)


def check_lock(run: GridRun) -> None:
    """Refuse a run whose lock file is a symbolic link now, before the grid writes its records: the run itself
    would refuse it (the lock is never followed), but only once the grid had started."""
    from research.training.run import run_lock_path

    lock = run_lock_path(run.run_dir.parent, run.run_id)
    if lock.is_symlink():
        raise ConfigError(f"lock file {lock} is a symbolic link, which is never followed; remove it")


def disk_status(run: GridRun) -> str:
    """completed | failed | running (another process holds it now) | interrupted | new."""
    summary = read_summary(run.run_dir)
    if summary is None:
        return "new"
    status = summary.get("status")
    if status == "completed" and (run.run_dir / "metrics.parquet").is_file():
        return "completed"
    if status == "running":
        from research.training.run import run_lock_path

        try:
            with exclusive_lock(run_lock_path(run.run_dir.parent, run.run_id), wait=False):
                return "interrupted"
        except RunBusy:
            return "running"
    return "failed"


def runs_to_do(grid: Grid, force: bool = False) -> list[GridRun]:
    """The runs an invocation would execute: every run not completed yet, or with ``force`` every run."""
    return list(grid.runs) if force else [run for run in grid.runs if disk_status(run) != "completed"]


def describe_plan(grid: Grid, pretrain_setups: int, force: bool = False) -> str:
    """What ``--dry-run`` prints: each run with its id and what a real invocation would do with it."""
    statuses = [disk_status(run) for run in grid.runs]
    width = max(len(run.name) for run in grid.runs)
    lines = [f"grid {grid.name} ({grid.path}): {len(grid.runs)} runs into {grid.out}"]
    lines.append(f"  {'run id':12s}  {'name':{width}s}  sub-grid  on disk      action")
    for run, status in zip(grid.runs, statuses, strict=True):
        if force:
            action = "wait, then rerun from the start" if status == "running" else "rerun from the start"
        else:
            action = "skip" if status == "completed" else ("wait, then skip or run" if status == "running" else "run")
        lines.append(f"  {run.run_id:12s}  {run.name:{width}s}  {run.subgrid:8d}  {status:11s}  {action}")
    to_run = len(grid.runs) if force else sum(s != "completed" for s in statuses)
    lines.append(
        f"{to_run} to run, {len(grid.runs) - to_run} already completed; "
        f"{pretrain_setups} pretraining setup{'s' * (pretrain_setups != 1)} shared by all runs"
    )
    for name, same_as in grid.duplicates:
        lines.append(f"  note: '{name}' resolves to the same config as '{same_as}' and is run once")
    for which, reason in grid.left_out:
        lines.append(f"  note: '{which}' is left out (method.name: all): {reason}")
    return "\n".join(lines)


def takes_force(executor: Executor) -> bool:
    """Whether the executor can rerun completed runs (its ``execute`` takes ``force``)."""
    return "force" in inspect.signature(executor.execute).parameters


def run_grid(
    grid: Grid,
    executor: Executor,
    workers: int,
    executor_name: str = "local",
    stream: TextIO | None = None,
    force: bool = False,
) -> GridResult:
    """Run every run of the grid that is not completed yet (every run, completed ones too, with ``force``: each
    starts over, as ``research run --force`` does). A failing run never stops the others."""
    if force and not takes_force(executor):
        raise ConfigError(f"--force: the {executor_name} executor cannot rerun completed runs")
    started = time.monotonic()
    stream = stream or sys.stdout
    try:
        grid.folder.mkdir(parents=True, exist_ok=True)
        write_json(grid.folder / "grid.json", _expansion(grid))
    except OSError as err:  # nothing has run yet: say so in one line
        raise ConfigError(f"out: cannot write the grid's records in {grid.folder} ({err.strerror or err})") from None
    events = _EventLog(grid.folder / "events.jsonl")

    outcomes: dict[str, Outcome] = {run.run_id: Outcome("skipped", "not run") for run in grid.runs}
    to_run = runs_to_do(grid, force)
    doing = {run.run_id for run in to_run}
    for run in grid.runs:
        if run.run_id not in doing:
            outcomes[run.run_id] = Outcome("skipped", "already completed")
            events.write(run, "skipped", "already completed")
    skipped = len(grid.runs) - len(to_run)
    logs = getattr(executor, "log_dir", None)
    what = f"{skipped} already completed, {len(to_run)} to run"
    if force:
        what = f"{len(to_run)} to run (--force: completed ones too)"
    print(
        f"grid {grid.name}: {len(grid.runs)} runs, {what} "
        f"({executor_name}, {workers} worker{'s' * (workers != 1)})" + (f"; worker logs in {logs}" if logs else ""),
        file=stream,
    )
    for name, same_as in grid.duplicates:
        print(f"  note: {name} resolves to the same run as {same_as}", file=stream)
    for which, reason in grid.left_out:
        print(f"  note: {which} is left out (method.name: all): {reason}", file=stream)
    stream.flush()
    # The bar starts after the header, on a line of its own (a bar drawn first would have the header glued on).
    progress = GridProgress(len(to_run), workers, stream)

    in_flight: set[str] = set()
    announced: set[str] = set()

    def on_start(run: GridRun) -> None:
        in_flight.add(run.run_id)
        if run.run_id not in announced:  # a run deferred because another process held it starts only once
            announced.add(run.run_id)
            events.write(run, "started")
        progress.started(run)

    def on_finish(run: GridRun, outcome: Outcome) -> None:
        in_flight.discard(run.run_id)
        outcomes[run.run_id] = outcome
        events.write(run, outcome.status, outcome.reason, outcome.seconds)
        progress.finished_run(run, outcome)

    interrupted = False
    try:
        if to_run:
            # Only a forced grid passes ``force``: an executor without it still runs ordinary grids.
            more = {"force": True} if force else {}
            executor.execute(to_run, on_start, on_finish, progress.tick, **more)
    except KeyboardInterrupt:
        interrupted = True
        for run in to_run:
            if outcomes[run.run_id].reason != "not run":
                continue
            # Finished just before the interrupt was handled (under --force: a rerun that got that far).
            if disk_status(run) == "completed" and (not force or run.run_id in announced):
                outcomes[run.run_id] = Outcome("completed", None)
                events.write(run, "completed", "finished as the grid was stopped")
            elif run.run_id in in_flight and run.run_dir.exists():
                outcomes[run.run_id] = Outcome("failed", "interrupted: the grid was stopped during this run")
            else:
                outcomes[run.run_id] = Outcome("skipped", "not started: the grid was stopped before it")
        raise
    finally:
        progress.close()
        result = GridResult(grid, outcomes, time.monotonic() - started)
        try:
            write_json(grid.folder / "summary.json", _summary(result, executor_name, workers, interrupted, force))
        except OSError as err:  # a full disk: the runs' own summaries still say how each ended
            print(
                f"warning: could not write {grid.folder / 'summary.json'} ({type(err).__name__}: {err}); "
                "each run's own summary.json says how it ended",
                file=sys.stderr,
            )
    return result


def describe_result(result: GridResult) -> str:
    """The closing summary: counts, then every failed and skipped run with its reason."""
    lines = [
        f"grid {result.grid.name} finished in {clock(result.seconds)}: {result.count('completed')} completed, "
        f"{result.count('failed')} failed, {result.count('skipped')} skipped"
    ]
    for run, outcome in result.runs_with("failed"):
        lines.append(f"  failed   {run.name} [{run.run_id}]: {outcome.reason}")
    reasons: dict[str, list[str]] = {}
    for run, outcome in result.runs_with("skipped"):
        reasons.setdefault(outcome.reason or "", []).append(run.name)
    for reason, names in reasons.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        lines.append(f"  skipped  {len(names)} run{'s' * (len(names) != 1)} ({reason}): {shown}")
    return "\n".join(lines)


def _expansion(grid: Grid) -> dict[str, Any]:
    return {
        "grid": grid.name,
        "file": str(grid.path),
        "runs": [
            {
                "run_id": run.run_id,
                "name": run.name,
                "setting": run.setting,
                "subgrid": run.subgrid,
                "seed": run.seed,
                "settings": run.settings,
            }
            for run in grid.runs
        ],
        "duplicates": [{"name": n, "same_as": s} for n, s in grid.duplicates],
        "left_out": [{"name": n, "reason": r} for n, r in grid.left_out],
    }


def _summary(result: GridResult, executor: str, workers: int, interrupted: bool, force: bool) -> dict[str, Any]:
    return {
        "grid": result.grid.name,
        "file": str(result.grid.path),
        "executor": executor,
        "workers": workers,
        "force": force,
        "interrupted": interrupted,
        "seconds": result.seconds,
        "counts": {s: result.count(s) for s in ("completed", "failed", "skipped")},
        "runs": [
            {
                "run_id": run.run_id,
                "name": run.name,
                "status": result.outcomes[run.run_id].status,
                "reason": result.outcomes[run.run_id].reason,
                "seconds": result.outcomes[run.run_id].seconds,
            }
            for run in result.grid.runs
        ],
    }


class _EventLog:
    """Appends one JSON line per event. Lines are written with a single O_APPEND write, so concurrent grid
    processes on the same out interleave whole lines, never parts of them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failed = False  # a write failed (a full disk): said once, and the grid goes on without its log

    def write(self, run: GridRun, event: str, reason: str | None = None, seconds: float | None = None) -> None:
        record = {
            "time": time.time(),
            "pid": os.getpid(),
            "run_id": run.run_id,
            "name": run.name,
            "event": event,
            "reason": reason,
            "seconds": seconds,
        }
        line = (json.dumps(record) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as err:
            if not self.failed:
                print(
                    f"warning: could not append to {self.path} ({err.strerror or err}); going on without it",
                    file=sys.stderr,
                )
            self.failed = True
