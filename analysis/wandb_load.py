"""W&B runs → the same :class:`~analysis.load.RunSet` as run directories: from offline run files (no server) or
from the W&B public API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.load import METRIC_COLUMNS, RunSet, _assemble, _run_row


def load_wandb_offline(paths: Iterable[str | Path]) -> RunSet:
    """W&B offline run files (``run-*.wandb``, or folders searched for them) → a RunSet, read with W&B's own
    ``wandb leet inspect --json`` (no server). The run id is the W&B run id; ``epoch`` is not logged to W&B and
    is -1."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.rglob("run-*.wandb")) if path.is_dir() else [path])
    rows, metrics = [], []
    for file in files:
        records = list(_wandb_records(file))
        run = next(r["run"] for r in records if r["type"] == "run")
        config = _wandb_config(run["config"].get("update", {}))
        exit_code = next((r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"), None)
        status = "completed" if exit_code == 0 else ("running" if exit_code is None else "failed")
        rows.append(_run_row(run["run_id"], {"status": status}, config))
        history = (r["history"]["item"] for r in records if r["type"] == "history")
        metrics.append(history_frame(run["run_id"], history))
    return _assemble(rows, metrics, [])


def load_wandb_api(path: str, filters: dict[str, Any] | None = None, api: Any = None) -> RunSet:
    """Runs of a W&B project (``entity/project``) through the public API (needs a network and an API key).
    ``api`` defaults to ``wandb.Api()``; anything with the same ``runs(path, filters)`` interface works."""
    if api is None:
        import wandb

        api = wandb.Api()
    rows, metrics = [], []
    for run in api.runs(path, filters=filters or {}):
        config = _wandb_config(dict(run.config))
        status = {"finished": "completed", "running": "running"}.get(run.state, "failed")
        rows.append(_run_row(run.id, {"status": status}, config))
        metrics.append(history_frame(run.id, run.scan_history()))
    return _assemble(rows, metrics, [])


def history_frame(run_id: str, history: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """W&B history rows (``pretrain/<task>/acc`` etc. at ``trainer/global_step``) → the tidy metrics format.
    Only the evaluation scores are read; training scalars and drift stay in the run directory."""
    records = []
    for item in history:
        step = item.get("trainer/global_step")
        if step is None:
            continue
        for key, value in item.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] in ("pretrain", "finetune") and value is not None:
                records.append((run_id, int(step), -1, parts[1], parts[0], parts[2], float(value)))
    return pd.DataFrame.from_records(records, columns=METRIC_COLUMNS)


def _wandb_config(config: dict[str, Any]) -> dict[str, Any]:
    """W&B's config minus its own bookkeeping; the API wraps values as ``{"value": ...}`` in some versions."""
    clean = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict) and set(value) == {"value"}:
            value = value["value"]
        clean[key] = value
    return clean


def _wandb_records(file: Path) -> Iterator[dict[str, Any]]:
    executable = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    proc = subprocess.run(
        [executable, "leet", "inspect", "--json", str(file)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline"},
        check=False,
    )
    if proc.returncode != 0:
        raise ValueError(f"cannot read W&B run file {file}: {proc.stderr.strip()[:300]}")
    for line in proc.stdout.splitlines():
        if line.strip():
            yield json.loads(line)
