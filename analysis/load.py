"""Runs → tidy pandas: from run directories (the source of truth), from W&B offline run files, or from the W&B
public API. All three give the same :class:`RunSet`, so everything downstream works on any of them.

- ``runs``: one row per run: ``run_id, status, error, experiment, method, seed, setting, setting_id, group`` and
  the resolved config flattened into ``config.<dotted key>`` columns (lists as JSON text).
- ``metrics``: long format, one row per measurement: ``run_id, step, epoch, task, role, metric, value``
  (the run directory's ``metrics.parquet`` with the run id added).
- ``method_tables``: what methods measured after training (``wise_ft``'s α sweep), with the run id added.

A run directory that cannot be read (a truncated or malformed ``summary.json``, ``config.yaml`` or parquet file,
or a run whose summary says completed but whose ``metrics.parquet`` is missing) is not an error here: it becomes a
``runs`` row with status ``unreadable`` and the reason as its ``error``, so that one bad run leaves the others
analysable and is named wherever left-out runs are listed, instead of taking a report down or vanishing from n.

``setting`` is a label that tells the loaded runs apart without their seed: the method, then each method
hyperparameter that varies among that method's runs, then every other config key that varies among all runs
(e.g. ``ewc lam=1000``, ``finetune train.lr=0.01``). ``setting_id`` hashes the config without seed, output
folder and logging, so runs that differ only by seed share it.

This module reads files; it never imports the training code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from research.labels import flatten_config, is_missing, setting_id, setting_labels

METRIC_COLUMNS = ["run_id", "step", "epoch", "task", "role", "metric", "value"]
CACHE_FOLDER = ".analysis-cache"
UNREADABLE = "unreadable"  # the status of a run directory whose files cannot be read (see the module docstring)
CACHE_FORMAT = 7  # bump whenever the tables change shape, so an old cache is not read


@dataclass
class RunSet:
    runs: pd.DataFrame
    metrics: pd.DataFrame
    method_tables: pd.DataFrame

    def completed(self) -> RunSet:
        """Only the runs that completed (a failed run's partial measurements would bias every mean)."""
        keep = self.runs[self.runs["status"] == "completed"].copy()
        seeds = keep["seed"]
        # A left-out run whose config could not be read has no seed, which turned the column to float: undone.
        if seeds.dtype.kind == "f" and seeds.notna().all() and (seeds % 1 == 0).all():
            keep["seed"] = seeds.astype("int64")
        ids = set(keep["run_id"])
        return RunSet(
            keep.reset_index(drop=True),
            self.metrics[self.metrics["run_id"].isin(ids)].reset_index(drop=True),
            self.method_tables[self.method_tables["run_id"].isin(ids)].reset_index(drop=True)
            if len(self.method_tables)
            else self.method_tables,
        )

    def with_runs(self, frame: pd.DataFrame, columns: Iterable[str] = ("setting", "method", "seed")) -> pd.DataFrame:
        """``frame`` (with a ``run_id`` column) joined with the given per-run columns."""
        return frame.merge(self.runs[["run_id", *columns]], on="run_id", how="left")


# --------------------------------------------------------------------------------------------- run directories


def load_runs(runs_dir: str | Path, cache: bool = True) -> RunSet:
    """Every run directory directly under ``runs_dir`` (a folder with ``summary.json`` and ``config.yaml``).
    With ``cache``, the tidy tables are kept as parquet under ``<runs_dir>/.analysis-cache/`` and reused while no
    run's files have changed."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory not found: {root}")
    run_dirs = sorted(p for p in root.iterdir() if (p / "summary.json").is_file() and (p / "config.yaml").is_file())
    key = _cache_key(run_dirs)
    cached = _read_cache(root, key) if cache else None
    if cached is not None:
        return cached
    rows, metrics, method_tables = [], [], []
    for run_dir in run_dirs:
        row, frame, table = _read_run(run_dir)
        rows.append(row)
        if frame is not None:
            metrics.append(frame.assign(run_id=run_dir.name))
        if table is not None:
            method_tables.append(table.assign(run_id=run_dir.name))
    result = _assemble(rows, metrics, method_tables)
    # A folder with nothing to analyse stays untouched; one with unreadable runs is read afresh next time, since
    # what made a file unreadable (its permissions, a file system) may be fixed without changing its mtime.
    statuses = result.runs["status"]
    if cache and (statuses == "completed").any() and not (statuses == UNREADABLE).any():
        _write_cache(root, key, result)
    return result


class _Unreadable(Exception):
    """A run directory's file that cannot be used; the message is the reason the report shows."""


def _read_run(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame | None, pd.DataFrame | None]:
    """One run directory as its ``runs`` row, metrics and method table; a file that cannot be read gives an
    ``unreadable`` row naming why (and no tables), so the caller can go on with the other runs."""
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    try:
        config = _read_mapping(run_dir / "config.yaml", "config.yaml", "not valid YAML", _parse_yaml)
        summary = _read_mapping(run_dir / "summary.json", "summary.json", "not valid JSON", json.loads)
        row = _layout_checked_row(run_dir.name, summary, config)
    except _Unreadable as err:
        return _unreadable_row(run_dir.name, summary, config, str(err)), None, None
    if row["status"] != "completed":  # left out anyway, under its own status and error; its tables are not used
        return row, _optional(_read_metrics, run_dir), _optional(_read_method_table, run_dir)
    try:
        if not (run_dir / "metrics.parquet").is_file():
            raise _Unreadable("summary.json says completed but metrics.parquet is missing")
        return row, _read_metrics(run_dir), _read_method_table(run_dir)
    except _Unreadable as err:
        return _unreadable_row(run_dir.name, summary, config, str(err)), None, None


def _layout_checked_row(run_id: str, summary: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """:func:`_run_row`, with a summary or config whose fields have the wrong types (``method: ewc``,
    ``timings: 5``) as :class:`_Unreadable`."""
    try:
        return _run_row(run_id, summary, config)
    except (AttributeError, TypeError, ValueError) as err:
        raise _Unreadable(
            f"summary.json or config.yaml has an unexpected layout ({type(err).__name__}: {err})"
        ) from None


def _parse_yaml(text: str) -> Any:
    """``yaml.safe_load``, a syntax error as a ValueError saying where (the YAML message itself is long)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ValueError(f"line {mark.line + 1}" if mark is not None else "") from err


def _read_mapping(path: Path, name: str, invalid: str, parse: Callable[[str], Any]) -> dict[str, Any]:
    """The object in ``path`` (JSON or YAML by ``parse``); anything else is :class:`_Unreadable` with a reason."""
    try:
        value = parse(path.read_text())
    except OSError as err:
        raise _Unreadable(f"{name} unreadable: {err.strerror or type(err).__name__}") from None
    except ValueError as err:  # JSONDecodeError, a YAML error (_parse_yaml), bytes that are not UTF-8
        detail = str(err) if isinstance(err.__cause__, yaml.YAMLError) and str(err) else ""
        raise _Unreadable(f"{name} is {invalid}{f' ({detail})' if detail else ''}") from None
    if not isinstance(value, dict):
        kind = "empty" if value is None else f"a {type(value).__name__}"
        raise _Unreadable(f"{name} is not a mapping of keys to values ({kind})")
    return value


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise _Unreadable(f"{path.name} unreadable: {_short_reason(err, path)}") from None


def _read_metrics(run_dir: Path) -> pd.DataFrame | None:
    """``metrics.parquet`` (None if there is none); one without the tidy columns is :class:`_Unreadable`."""
    if not (run_dir / "metrics.parquet").is_file():
        return None
    frame = _read_table(run_dir / "metrics.parquet")
    lacking = [c for c in METRIC_COLUMNS if c != "run_id" and c not in frame.columns]
    if lacking:
        raise _Unreadable(f"metrics.parquet lacks column(s) {', '.join(lacking)}")
    return frame


def _read_method_table(run_dir: Path) -> pd.DataFrame | None:
    return _read_table(run_dir / "method.parquet") if (run_dir / "method.parquet").is_file() else None


def _optional(read: Callable[[Path], pd.DataFrame | None], run_dir: Path) -> pd.DataFrame | None:
    """A left-out run's table if it can be read (kept for whoever looks at failed runs), else none."""
    try:
        return read(run_dir)
    except _Unreadable:
        return None


def _short_reason(err: BaseException, path: Path) -> str:
    """The gist of an OS or Arrow error, without the path (the report names the run already) or advice:
    'Parquet magic bytes not found in footer' rather than two sentences around the full path."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).replace(f"'{path}'", "").replace(str(path), "").strip()
    text = text.splitlines()[0] if text else type(err).__name__
    text = re.split(r"(?<=[a-z0-9)])\. ", text.rsplit(": ", 1)[-1].strip())[0].rstrip(".")
    return text[:160] or type(err).__name__


def _unreadable_row(run_id: str, summary: dict[str, Any], config: dict[str, Any], reason: str) -> dict[str, Any]:
    """The row of a run that cannot be used: whatever its readable files tell (its setting and seed, so the
    report can say which run it was), status ``unreadable`` and the reason."""
    for known in ((summary, config), ({}, config), ({}, {})):  # as much as still fits the row's layout
        try:
            row = _run_row(run_id, *known)
            break
        except (AttributeError, TypeError, ValueError):
            continue
    return {**row, "status": UNREADABLE, "error": reason}


def _run_row(run_id: str, summary: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    method = config.get("method") or {}
    flat = flatten_config(config)
    return {
        "run_id": run_id,
        "setting_id": setting_id(flat),
        "status": summary.get("status", "unknown"),
        "error": summary.get("error"),
        "experiment": config.get("name"),
        "method": method.get("name"),
        "seed": config.get("seed"),
        "group": (config.get("logging") or {}).get("group"),
        "grid": grid_of(config),
        "steps": summary.get("steps"),
        # What the run cost (analysis.summarize.run_costs) and how big each task's splits were (the protocol).
        "finetune_seconds": (summary.get("timings") or {}).get("finetune_seconds"),
        "eval_seconds": (summary.get("timings") or {}).get("eval_seconds"),
        "prepare_seconds": (summary.get("timings") or {}).get("prepare_seconds"),
        "method_state_bytes": summary.get("method_state_bytes"),
        "method_info": json.dumps(summary.get("method_info") or {}, sort_keys=True, default=str),
        "task_sizes": json.dumps(
            {k: {"role": v.get("role"), **(v.get("sizes") or {})} for k, v in (summary.get("tasks") or {}).items()}
        ),
        # Where each fine-tuning task ended on the step axis (JSON list of {task, step}; absent in W&B data).
        "task_ends": json.dumps(summary.get("task_ends") or []),
        # Each ability's score metric ({ability: metric} as JSON; research.abilities; absent in W&B data).
        "ability_scores": json.dumps({k: v.get("score") for k, v in (summary.get("abilities") or {}).items()}),
        **flat,
    }


def grid_of(config: dict[str, Any]) -> str | None:
    """The grid a run belongs to: ``logging.grid`` (set by ``research grid``), else ``logging.group`` (older runs,
    whose grid set only the W&B group); None for a run started on its own."""
    logging = config.get("logging") or {}
    return logging.get("grid") or logging.get("group") or None


def study_of(grid: Any, experiment: Any) -> str:
    """What a run's results are compared within: its grid (``grid <name>``), or for a run started on its own its
    experiment (``experiment <name>``). Setting labels and the report's tables are made per study, so an
    unrelated run added to the folder changes neither."""
    return f"grid {grid}" if not is_missing(grid) and grid else f"experiment {experiment}"


def _assemble(rows: list[dict], metrics: list[pd.DataFrame], method_tables: list[pd.DataFrame]) -> RunSet:
    runs = pd.DataFrame(rows)
    if runs.empty:
        columns = ["run_id", "status", "error", "experiment", "method", "seed", "group", "task_ends", "ability_scores"]
        runs = pd.DataFrame(columns=columns)
    if "setting_id" not in runs:
        runs["setting_id"] = pd.Series(dtype="string")
    if "grid" not in runs:
        runs["grid"] = None
    runs["study"] = [study_of(g, e) for g, e in zip(runs["grid"], runs["experiment"], strict=True)]
    labels = pd.Series(index=runs.index, dtype=object)
    for _, members in runs.groupby("study", sort=False):  # within each study only (see study_of)
        members = members[[not is_missing(m) for m in members["method"]]]  # no config read: no setting to name
        if members.empty:
            continue
        # Columns no run of this study has would otherwise count as varying (NaN against a value elsewhere).
        own = members.dropna(axis="columns", how="all")
        labels[members.index] = setting_labels(own)
        # Configs that differ only where labels do not look (e.g. the logging interval) must not share a label.
        for label, ids in own.groupby(labels[members.index])["setting_id"]:
            if ids.nunique() > 1:
                labels[ids.index] = [f"{label} [{sid[:6]}]" for sid in ids]
    runs["setting"] = labels
    front = ["run_id", "status", "error", "experiment", "method", "seed", "setting", "setting_id", "study", "grid"]
    front += ["group", "task_ends"]
    if "ability_scores" in runs:
        front.append("ability_scores")
    runs = runs[front + sorted(c for c in runs.columns if c not in front)]
    frame = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(columns=METRIC_COLUMNS)
    frame = frame[METRIC_COLUMNS]
    extra = pd.concat(method_tables, ignore_index=True) if method_tables else pd.DataFrame(columns=["run_id"])
    return RunSet(runs.reset_index(drop=True), frame.reset_index(drop=True), extra)


# --------------------------------------------------------------------------------------------- cache


def _cache_key(run_dirs: list[Path]) -> str:
    """Changes whenever a run is added, removed, or any of its files is rewritten."""
    parts = [CACHE_FORMAT]
    for run_dir in run_dirs:
        for name in ("summary.json", "config.yaml", "metrics.parquet", "method.parquet"):
            path = run_dir / name
            if path.is_file():
                stat = path.stat()
                parts.append([run_dir.name, name, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _read_cache(root: Path, key: str) -> RunSet | None:
    folder = root / CACHE_FOLDER
    try:
        if json.loads((folder / "key.json").read_text())["key"] != key:
            return None
        return RunSet(*(pd.read_parquet(folder / f"{name}.parquet") for name in ("runs", "metrics", "method_tables")))
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(root: Path, key: str, result: RunSet) -> None:
    """Best effort: a read-only runs folder simply gets no cache."""
    folder = root / CACHE_FOLDER
    try:
        folder.mkdir(exist_ok=True)
        tables = {"runs": result.runs, "metrics": result.metrics, "method_tables": result.method_tables}
        for name, frame in tables.items():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, folder / f"{name}.parquet")
        (folder / "key.json").write_text(json.dumps({"key": key}))
    except OSError:
        pass
