"""The run directory: the local source of truth for one run (design guide §4).

    <out>/<run id>/config.yaml       the fully resolved config
                   metrics.parquet   tidy: step, epoch, task, role, metric, value
                   summary.json      status (running | completed | failed), error, final metrics, timings, versions
                   wandb/            the W&B run's own files (offline mode)

Every file is written to a temporary name and renamed into place, and summary.json says ``running`` until the
very end, so a crash at any point leaves a run that does not look completed.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from research.errors import ConfigError, RunBusy

METRIC_COLUMNS = ["step", "epoch", "task", "role", "metric", "value"]
PACKAGES = (
    "torch",
    "lightning",
    "torchmetrics",
    "wandb",
    "avalanche-lib",
    "numpy",
    "pandas",
    "forgetting-lab",
)


@contextmanager
def exclusive_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the duration; other processes asking for it wait, or with
    ``wait=False`` get :class:`~research.errors.RunBusy` at once. The kernel releases it when the holder dies,
    so a killed process never leaves a stale lock behind.

    The lock file is never followed through a symbolic link, nor truncated: a link planted at its path would
    otherwise create or clobber a file anywhere the user can write. Such a path raises ConfigError naming it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise ConfigError(f"lock file {path} is a symbolic link, which is never followed; remove it") from None
    with os.fdopen(fd, "r+") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"lock file {path} is not a regular file; remove it")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(f"{path} is held by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to before renaming it into place; removed if the write fails
    (a full disk, a file-size limit), so a failed write leaves no ``.tmp`` file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with temporary_beside(path) as tmp:
        tmp.write_text(text)
        os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def is_completed(run_dir: Path) -> bool:
    summary = read_summary(run_dir)
    return bool(summary and summary.get("status") == "completed" and (run_dir / "metrics.parquet").is_file())


def start_run_dir(run_dir: Path, config: dict[str, Any], summary: dict[str, Any]) -> None:
    """Create a fresh run directory (removing what an earlier failed or interrupted attempt left, except a
    checkpoint set aside as unusable, ``checkpoint.pt.unusable``, kept for inspection)."""
    if run_dir.is_dir() and not run_dir.is_symlink():
        for child in run_dir.iterdir():
            if child.name.endswith(".unusable") and child.is_file() and not child.is_symlink():
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    elif run_dir.exists() or run_dir.is_symlink():
        run_dir.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "summary.json", {**summary, "status": "running", "error": None})
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def reopen_run_dir(run_dir: Path, config: dict[str, Any], summary: dict[str, Any]) -> None:
    """Reuse an interrupted run's directory to resume it: its checkpoint stays; what the earlier attempt wrote
    at its end (tables, its partial W&B run) goes, since the resumed attempt writes all of it again."""
    write_json(run_dir / "summary.json", {**summary, "status": "running", "error": None})
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    for name in ("metrics.parquet", "diagnostics.parquet", "method.parquet"):
        (run_dir / name).unlink(missing_ok=True)
    for partial in run_dir.glob(".*.tmp"):  # a write the kill interrupted before its rename
        partial.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "wandb", ignore_errors=True)


def metrics_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=METRIC_COLUMNS)
    return frame.astype(
        {
            "step": "int64",
            "epoch": "int64",
            "task": "string",
            "role": "string",
            "metric": "string",
            "value": "float64",
        }
    )


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = metrics_frame(records)
    write_frame(run_dir / "metrics.parquet", frame)
    return frame


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Any other tidy table of a run (e.g. a method's own measurements)."""
    write_frame(path, pd.DataFrame.from_records(rows))


def write_frame(path: Path, frame: pd.DataFrame) -> None:
    """Parquet written to a temporary name and renamed into place: readers never see half a file."""
    with temporary_beside(path) as tmp:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(root: Path | None = None) -> dict[str, Any]:
    """The commit of the code that produced a run, and whether the working tree differed from it: modified,
    staged or untracked files (a new method file that is not committed yet changes results as much as an edit;
    ignored files, such as run directories, do not count). ``changed`` counts those files. ``root``: the
    repository (default: the one this code is in)."""
    root = root or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            # Read only: `git status` otherwise refreshes the index under .git/index.lock, which races with the
            # user's own git commands while a grid's workers start runs, and which a full disk leaves behind.
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        ).stdout
        changed = [line for line in status.splitlines() if line.strip()]
        return {"commit": commit, "dirty": bool(changed), "changed": len(changed)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "changed": None}
