"""Fingerprints of the user files a config names by path, so that run ids and the pretraining cache change
when the data or checkpoint behind a path changes, not only when the path does."""

from __future__ import annotations

import hashlib
from pathlib import Path

from research.config import ExperimentConfig, TaskConfig

# Digests by (path, and every file's name, size and modification time): a grid names the same data in every run,
# and hashing gigabytes once per run would dominate its start-up. Any change to a file changes the key.
_DIGESTS: dict[tuple, str] = {}


def path_fingerprint(path: str | Path) -> str:
    """SHA-256 over a file's bytes, or over a folder's relative file names and bytes (sorted)."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (str(root.resolve()), stats)
    if key not in _DIGESTS:
        _DIGESTS[key] = _digest(root, files)
    return _DIGESTS[key]


def _digest(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root) if file != root else file.name).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def task_fingerprints(tasks: list[TaskConfig]) -> dict[str, str]:
    """Each user-data task's contents, by task name (task names are unique; the path is not part of a run's
    identity, see research.config.without_file_paths)."""
    return {f"data:{t.name}": path_fingerprint(t.path) for t in tasks if t.path}


def content_fingerprints(cfg: ExperimentConfig) -> dict[str, str]:
    """Everything outside the config that changes a run's numbers: user data, a user checkpoint, and the weights
    (or code) of a model loaded from outside (research.models.adapters)."""
    from research.models.adapters import adapter

    prints = task_fingerprints(cfg.pretrain.tasks + cfg.finetune.tasks)
    if cfg.pretrain.checkpoint:
        prints["checkpoint"] = path_fingerprint(cfg.pretrain.checkpoint)
    prints.update({f"model:{k}": v for k, v in adapter(cfg.model.arch).fingerprint(cfg.model).items()})
    return prints
