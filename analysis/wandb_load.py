"""W&B runs → the same :class:`~analysis.load.RunSet` as run directories: from offline run files (no server) or
from the W&B public API.

Offline files are read in this process with W&B's own record format: a ``.wandb`` file is a LevelDB-style log
(a 7-byte ``:W&B`` header, then 32 KiB blocks of CRC-checked chunks) whose records are ``wandb.proto``
``Record`` protobufs. W&B 0.31 keeps its reader in its Go core, so the few lines of framing are here; the
protobuf classes are the installed wandb's, so the records are decoded exactly as W&B decodes them.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.load import METRIC_COLUMNS, RunSet, _assemble, _run_row

# The log framing of a .wandb file (the LevelDB log format, with W&B's own file header).
_FILE_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
_CHUNK_HEADER = struct.Struct("<IHB")  # CRC-32 of the chunk (seeded with its type), length, type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_CRC_SEED = {kind: zlib.crc32(bytes([kind])) for kind in (_FULL, _FIRST, _MIDDLE, _LAST)}


class UnreadableRunWarning(UserWarning):
    """A W&B run file that cannot be read (too short, no run record yet, corrupt) was left out."""


def load_wandb_offline(paths: Iterable[str | Path]) -> RunSet:
    """W&B offline run files (``run-*.wandb``, or folders searched for them) → a RunSet, read in this process (no
    server, no subprocess). The run id is the W&B run id; ``epoch`` is not logged to W&B and is -1; the local
    run directory's id is ``config.run_id``. A file that cannot be read (a run that has only just started and
    has no run record yet, a damaged file) is left out with an :class:`UnreadableRunWarning` naming it."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.rglob("run-*.wandb")) if path.is_dir() else [path])
    rows, metrics = [], []
    for file in files:
        try:
            run, config, summary, history, exit_code = _read_run(file)
        except ValueError as err:  # a run that has only just started, or a damaged file: the others still load
            warnings.warn(f"W&B run file left out: {err}", UnreadableRunWarning, stacklevel=2)
            continue
        status = "completed" if exit_code == 0 else ("running" if exit_code is None else "failed")
        rows.append(_wandb_row(run.run_id, status, summary, _wandb_config(config)))
        metrics.append(history_frame(run.run_id, history))
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
        summary = dict(getattr(run, "summary", None) or {})
        rows.append(_wandb_row(run.id, status, summary, config))
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


def _wandb_row(run_id: str, status: str, summary: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A run row as from a run directory. From the W&B summary: a failed run's error and the task boundaries
    (research.training.run logs both), so a sequence's accuracy matrix reads as from the run directory. From
    the config: the local run directory's id (``local_run_id``) and the code's commit (``git_commit``,
    ``git_dirty``), kept out of the ``config.*`` columns, where they would count as settings."""
    config = dict(config)
    local_id = config.pop("run_id", None)
    git = config.pop("git", None) or {}
    ends = summary.get("task_ends")
    row = _run_row(
        run_id,
        {"status": status, "error": summary.get("error"), "task_ends": ends if isinstance(ends, list) else []},
        config,
    )
    if local_id is not None:
        row.update(local_run_id=local_id, git_commit=git.get("commit"), git_dirty=git.get("dirty"))
    return row


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


# --------------------------------------------------------------------------------------------- .wandb files


def _read_run(file: Path) -> tuple[Any, dict[str, Any], dict[str, Any], list[dict[str, Any]], int | None]:
    """The run record, its config (updates merged in order), summary (updates applied in order), history rows
    and exit code (None without an exit record: the run did not finish) of one .wandb file."""
    run = None
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    exit_code: int | None = None
    for record in wandb_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            # Keys in sorted order, as W&B's own viewer (``wandb leet inspect``) gives them: the tidy rows then come
            # out in the same order whichever way the file was read.
            history.append(dict(sorted((_key(item), _value(item)) for item in record.history.item)))
        elif kind == "run":
            run = record.run
            config.update(_items(record.run.config.update))
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
            for item in record.summary.remove:
                summary.pop(_key(item), None)
        elif kind == "exit":
            exit_code = record.exit.exit_code
    if run is None:
        raise ValueError(f"W&B run file {file} holds no run record")
    return run, config, summary, history, exit_code


def wandb_records(file: str | Path) -> Iterator[Any]:
    """Every record of a .wandb file as a ``wandb.proto.wandb_internal_pb2.Record``, in the order written. A
    bad header, a chunk whose checksum does not match or a record split across a missing chunk is an error; a
    file cut short inside its last record (a run still writing, or killed) ends at the last whole record."""
    from wandb.proto import wandb_internal_pb2

    for data in _chunks(Path(file)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        yield record


def _chunks(file: Path) -> Iterator[bytes]:
    data = file.read_bytes()
    if len(data) < _FILE_HEADER.size:
        raise ValueError(f"{file} is not a W&B run file (too short)")
    ident, magic, _ = _FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{file} is not a W&B run file (header {data[:7]!r})")
    pos, pending = _FILE_HEADER.size, None
    while True:
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER.size:  # a block's tail too short for a chunk header is zero padding
            pos += left
        if pos + _CHUNK_HEADER.size > len(data):
            return
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zeros at the end of a preallocated or cut file
            return
        chunk = data[pos + _CHUNK_HEADER.size : pos + _CHUNK_HEADER.size + length]
        if len(chunk) < length:
            return  # the last record was still being written
        if kind not in _CRC_SEED or zlib.crc32(chunk, _CRC_SEED[kind]) != crc:
            raise ValueError(f"{file}: corrupt record at byte {pos} (checksum or type {kind} does not match)")
        pos += _CHUNK_HEADER.size + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif pending is None:
            raise ValueError(f"{file}: record continued at byte {pos} without its first part")
        elif kind == _MIDDLE:
            pending += chunk
        else:
            yield pending + chunk
            pending = None


def _items(items: Iterable[Any]) -> dict[str, Any]:
    return {_key(item): json.loads(item.value_json) for item in items}


def _key(item: Any) -> str:
    """A config, summary or history key; W&B nests keys on '.', which its own viewer joins back with '.'."""
    return item.key or ".".join(item.nested_key)


def _value(item: Any) -> Any:
    """A history value: W&B writes ``value_json``; newer writers may use the typed fields instead."""
    if item.value_json:
        return json.loads(item.value_json)
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    value = getattr(item, kind)
    return json.loads(value) if kind == "json" else value
