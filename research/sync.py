"""Upload a runs folder's offline W&B runs: ``research sync RUNS_DIR``.

Each run directory keeps its own W&B run under ``<run dir>/wandb/offline-run-*/run-<id>.wandb``, so plain
``wandb sync --sync-all`` (which looks in one ``./wandb`` folder) finds none of them. This finds them all and
hands them to W&B's own ``wandb sync`` (the wandb installed with this project, not whichever is first on PATH),
skipping runs already uploaded: ``wandb sync`` leaves ``run-<id>.wandb.synced`` beside a file it uploaded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SYNCED_SUFFIX = ".synced"  # wandb sync marks an uploaded run-<id>.wandb with run-<id>.wandb.synced


@dataclass(frozen=True)
class OfflineRun:
    """One offline W&B run of a run directory."""

    run_dir: Path  # the local run directory (<runs dir>/<run id>)
    path: Path  # its W&B run folder, <run dir>/wandb/offline-run-<time>-<W&B id>
    wandb_id: str
    synced: bool

    @property
    def file(self) -> Path:
        return self.path / f"run-{self.wandb_id}.wandb"


class SyncError(RuntimeError):
    """``wandb sync`` failed or did not finish in time; the message says what it printed."""


def offline_runs(runs_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run under the run directories directly inside ``runs_dir`` (and of ``runs_dir`` itself
    when it is one run directory), in path order."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory not found: {root}")
    found = []
    for wandb_dir in sorted({*root.glob("wandb"), *root.glob("*/wandb")}):
        for path in sorted(wandb_dir.glob("offline-run-*")):
            for file in sorted(path.glob("run-*.wandb")):
                wandb_id = file.stem.removeprefix("run-")
                synced = file.with_name(file.name + SYNCED_SUFFIX).exists()
                found.append(OfflineRun(wandb_dir.parent, path, wandb_id, synced))
    return found


def sync_runs(
    runs_dir: Path,
    *,
    dry_run: bool = False,
    include_synced: bool = False,
    project: str | None = None,
    entity: str | None = None,
    timeout: float | None = 3600.0,
) -> list[OfflineRun]:
    """Upload the offline W&B runs under ``runs_dir`` with ``wandb sync`` and return the runs it was given
    (with ``dry_run``, the runs it would upload, and nothing is sent). Runs already synced are skipped unless
    ``include_synced``. ``project`` / ``entity`` override where they go (default: where each run was logged
    for, which W&B records in the file). Raises :class:`SyncError` when ``wandb sync`` exits non-zero or runs
    past ``timeout`` seconds (it is stopped then), with what it printed."""
    runs = [r for r in offline_runs(runs_dir) if include_synced or not r.synced]
    if dry_run or not runs:
        return runs
    command = [str(wandb_executable()), "sync", "--yes"]
    if include_synced:
        command.append("--include-synced")
    if project:
        command += ["--project", project]
    if entity:
        command += ["--entity", entity]
    command += [str(r.path) for r in runs]
    # Its own process group, so that a timeout stops wandb sync and the W&B service it starts, not only the
    # former; stdin closed, so that it never waits for a login prompt.
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise SyncError(
            f"wandb sync did not finish within {timeout:g} s (is the W&B server reachable? "
            f"WANDB_BASE_URL={os.environ.get('WANDB_BASE_URL', 'default')}); {_tail(stdout, stderr)}"
        ) from None
    if proc.returncode != 0:
        raise SyncError(f"wandb sync failed (exit code {proc.returncode}): {_tail(stdout, stderr)}")
    return runs


def wandb_executable() -> Path:
    """The ``wandb`` command of the environment this code runs in (next to its Python)."""
    return Path(sys.executable).parent / "wandb"


def _tail(stdout: str | bytes | None, stderr: str | bytes | None, limit: int = 600) -> str:
    text = "\n".join(s.decode(errors="replace") if isinstance(s, bytes) else s for s in (stdout, stderr) if s)
    text = " ".join(text.split())
    return text[-limit:] or "it printed nothing"
