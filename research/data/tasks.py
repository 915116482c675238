"""Tasks: named classification problems with seeded, stratified train/val/test splits.

Labels are stored in the coordinates of the head that scores the task: with per-task heads, class ``k`` of a
task is output ``k`` of that task's head; with a shared head, it is the class's position in the union of all
tasks' classes (keyed by source and class name, so "3" of the digits and of rotated digits is one output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from research.config import DataConfig, ExperimentConfig, TaskConfig
from research.data.sources import SourceData, load_source
from research.data.transforms import apply_transform
from research.errors import ConfigError

Role = Literal["pretrain", "finetune"]
SHARED_HEAD = "shared"


@dataclass
class Task:
    name: str
    role: Role
    head: str
    classes: tuple[str, ...]  # class names, in the task's own order
    splits: dict[str, tuple[Tensor, Tensor]]  # "train" | "val" | "test" -> (x, y in head coordinates)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"][0].shape[1:])

    def __repr__(self) -> str:
        sizes = {k: len(v[1]) for k, v in self.splits.items()}
        return f"Task({self.name!r}, role={self.role}, head={self.head!r}, classes={self.classes}, sizes={sizes})"


@dataclass
class TaskSet:
    pretrain: list[Task]
    finetune: list[Task]
    head_sizes: dict[str, int]  # every head the model needs, pretraining heads first

    @property
    def all(self) -> list[Task]:
        return self.pretrain + self.finetune

    def pretrain_head_sizes(self) -> dict[str, int]:
        heads = {t.head for t in self.pretrain}
        return {h: n for h, n in self.head_sizes.items() if h in heads}


def build_tasks(cfg: ExperimentConfig) -> TaskSet:
    """Load every source once, select classes, transform, split. Raises ConfigError on bad task specs."""
    entries: list[tuple[str, Role, TaskConfig]] = [
        *((f"pretrain.tasks[{i}]", "pretrain", t) for i, t in enumerate(cfg.pretrain.tasks)),
        *((f"finetune.tasks[{i}]", "finetune", t) for i, t in enumerate(cfg.finetune.tasks)),
    ]
    selected = []
    for where, role, tcfg in entries:
        source = load_source(tcfg.source, tcfg.path, cfg.data.mnist1d_samples)
        class_ids = _resolve_classes(source, tcfg, where)
        selected.append((where, role, tcfg, source, class_ids))

    shapes = {s.x.shape[1:] for _, _, _, s, _ in selected}
    if len(shapes) > 1:
        raise ConfigError(f"tasks: all tasks must share one input shape for one model; found {sorted(shapes)}")

    shared = cfg.model.heads == "shared"
    union: list[tuple[str, str, str]] = []  # (source, path, class name) in order of first appearance
    for _, _, tcfg, source, class_ids in selected:
        for c in class_ids:
            key = (tcfg.source, tcfg.path or "", source.class_names[c])
            if key not in union:
                union.append(key)

    tasks: dict[Role, list[Task]] = {"pretrain": [], "finetune": []}
    head_sizes: dict[str, int] = {}
    for where, role, tcfg, source, class_ids in selected:
        names = tuple(source.class_names[c] for c in class_ids)
        if shared:
            head = SHARED_HEAD
            outputs = [union.index((tcfg.source, tcfg.path or "", n)) for n in names]
            head_sizes[head] = len(union)
        else:
            head = tcfg.name
            outputs = list(range(len(class_ids)))
            head_sizes[head] = len(class_ids)
        splits = _split(source, tcfg, class_ids, outputs, cfg.data, where)
        tasks[role].append(Task(tcfg.name, role, head, names, splits))
    return TaskSet(tasks["pretrain"], tasks["finetune"], head_sizes)


def _resolve_classes(source: SourceData, tcfg: TaskConfig, where: str) -> list[int]:
    """Class indices into the source; ints are indices, strings are class names."""
    if tcfg.classes is None:
        return list(range(len(source.class_names)))
    ids = []
    for c in tcfg.classes:
        if isinstance(c, int) and 0 <= c < len(source.class_names):
            ids.append(c)
        elif isinstance(c, str) and c in source.class_names:
            ids.append(source.class_names.index(c))
        else:
            valid = _describe_classes(source.class_names)
            raise ConfigError(f"{where}.classes: class {c!r} is not in source '{tcfg.source}'; valid classes: {valid}")
    return ids


def _describe_classes(names: tuple[str, ...]) -> str:
    if names == tuple(str(i) for i in range(len(names))):
        return f"0..{len(names) - 1}"
    shown = ", ".join(names[:20])
    return shown + (", ..." if len(names) > 20 else "")


def _split(
    source: SourceData,
    tcfg: TaskConfig,
    class_ids: list[int],
    outputs: list[int],
    data: DataConfig,
    where: str,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Stratified train/val/test split, seeded by ``data.split_seed`` (the same for every run seed)."""
    keep = np.isin(source.y, class_ids)
    x = apply_transform(source.x[keep], tcfg.transform, where)
    to_output = dict(zip(class_ids, outputs, strict=True))
    y = np.array([to_output[c] for c in source.y[keep]], dtype=np.int64)
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if counts.min() < 3:
        raise ConfigError(f"{where}: every class needs at least 3 examples to split; smallest has {counts.min()}")
    idx = np.arange(len(y))
    rest, test = _stratified(idx, y, data.test_fraction, data.split_seed)
    if data.val_fraction > 0:
        train, val = _stratified(rest, y[rest], data.val_fraction / (1 - data.test_fraction), data.split_seed)
    else:
        train, val = rest, rest[:0]
    return {
        name: (torch.from_numpy(x[i]), torch.from_numpy(y[i]))
        for name, i in (("train", train), ("val", val), ("test", test))
    }


def _stratified(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        first, second = train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)
    except ValueError:  # too few examples per class for stratification: fall back to a plain seeded split
        first, second = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(first), np.sort(second)
