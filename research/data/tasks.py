"""Tasks: named classification problems with seeded, stratified train/val/test splits.

Labels are stored in the coordinates of the head that scores the task: with per-task heads, class ``k`` of a
task is output ``k`` of that task's head; with a shared head, it is the class's position in the union of all
tasks' classes (keyed by source and class name, so "3" of the digits and of rotated digits is one output); in
the domain-incremental scenario, the one shared head's output ``k`` is every task's class ``k`` (van de Ven &
Tolias 2019: split MNIST's tasks all become "first or second digit of the pair").
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from research.config import DataConfig, ExperimentConfig, TaskConfig, TransformConfig
from research.data.inputs import Inputs, is_mapping, take
from research.data.sources import SourceData, load_source
from research.data.stream import LAZY, DiskExamples
from research.data.transforms import apply_transform
from research.errors import ConfigError
from research.models.adapters import InputEncoder, adapter

Role = Literal["pretrain", "finetune"]
SHARED_HEAD = "shared"


@dataclass
class Task:
    name: str
    role: Role
    head: str
    classes: tuple[str, ...]  # class names, in the task's own order
    splits: dict[str, tuple[Inputs, Tensor]]  # "train" | "val" | "test" -> (x, y in head coordinates)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One example's shape for tensor inputs; None for token inputs (a mapping of tensors)."""
        x = self.splits["train"][0]
        if isinstance(x, LAZY):  # on disk: the shape of one example as it is read
            x = take(x, slice(0, 1))
        return None if is_mapping(x) else tuple(x.shape[1:])

    def __repr__(self) -> str:
        sizes = {k: len(v[1]) for k, v in self.splits.items()}
        return f"Task({self.name!r}, role={self.role}, head={self.head!r}, classes={self.classes}, sizes={sizes})"


@dataclass
class TaskSet:
    pretrain: list[Task]
    finetune: list[Task]
    head_sizes: dict[str, int]  # every head the model needs by the end of fine-tuning, pretraining heads first
    shared_pretrain_sizes: dict[str, int] | None = None  # a shared head's size during pretraining
    # A shared head's size while each fine-tuning task trains: the classes seen so far (pretraining tasks and
    # fine-tuning tasks up to that one), so later tasks' classes have no outputs yet. None with per-task heads.
    shared_sizes_per_task: list[int] | None = None

    @property
    def all(self) -> list[Task]:
        return self.pretrain + self.finetune

    def learned_before(self, index: int) -> list[Task]:
        """The tasks learned before fine-tuning task ``index``: the pretraining tasks, then fine-tuning tasks
        0..index−1."""
        return [*self.pretrain, *self.finetune[:index]]

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One example's shape (every task has the same); None for token inputs."""
        return self.all[0].input_shape

    def pretrain_head_sizes(self) -> dict[str, int]:
        """Heads of the pretrained model. A shared head covers only the pretraining classes then; fine-tuning
        appends outputs for new classes."""
        heads = {t.head for t in self.pretrain}
        sizes = {h: n for h, n in self.head_sizes.items() if h in heads}
        return {**sizes, **(self.shared_pretrain_sizes or {})}

    def head_sizes_at(self, index: int) -> dict[str, int]:
        """Every head's size while fine-tuning task ``index`` trains. Per-task heads have their full size from the
        start; a shared head has outputs only for the classes seen so far (van de Ven et al. 2022's
        class-incremental protocol), so it grows at each task that brings new classes."""
        if self.shared_sizes_per_task is None:
            return dict(self.head_sizes)
        return {**self.head_sizes, SHARED_HEAD: self.shared_sizes_per_task[index]}


def build_tasks(cfg: ExperimentConfig) -> TaskSet:
    """Load every source once, split it once, select each task's classes, transform. Raises ConfigError."""
    entries: list[tuple[str, Role, TaskConfig]] = [
        *((f"pretrain.tasks[{i}]", "pretrain", t) for i, t in enumerate(cfg.pretrain.tasks)),
        *((f"finetune.tasks[{i}]", "finetune", t) for i, t in enumerate(cfg.finetune.tasks)),
    ]
    encoder = adapter(cfg.model.arch).input_encoder(cfg.model)
    selected = []
    for where, role, tcfg in entries:
        columns = (tcfg.text_column, tcfg.text_pair_column, tcfg.label_column)
        source = load_source(
            tcfg.source,
            tcfg.path,
            cfg.data.mnist1d_samples,
            tcfg.scale,
            columns,
            cfg.data.stream,
            cfg.data.memory_budget_mb,
        )
        if source.kind not in encoder.kinds:
            raise ConfigError(
                f"{where}.source: '{tcfg.source}' gives {source.kind} examples, which model.arch={cfg.model.arch} "
                f"does not take (it takes {', '.join(encoder.kinds)}); "
                + ("use model.arch=hf for text" if source.kind == "text" else "use a numeric source")
            )
        class_ids = resolve_classes(source, tcfg, where)
        selected.append((where, role, tcfg, source, class_ids))

    shapes = {_example_shape(s) for _, _, _, s, _ in selected}
    if len(shapes) > 1:
        raise ConfigError(f"tasks: all tasks must share one input shape for one model; found {sorted(shapes)}")

    # With a shared head, outputs are the union of classes in order of first appearance. Pretraining tasks come
    # first, so the pretrained head covers exactly their classes and fine-tuning appends outputs for new ones:
    # the pretrained weights never depend on what is fine-tuned later.
    union: list[tuple[str, str, str]] = []  # (source, path, class name)
    pretrain_outputs = 0
    outputs_after: list[int] = []  # classes seen once each fine-tuning task has been added
    for _, role, tcfg, source, class_ids in selected:
        for c in class_ids:
            key = (tcfg.source, tcfg.path or "", source.class_names[c])
            if key not in union:
                union.append(key)
        if role == "pretrain":
            pretrain_outputs = len(union)
        else:
            outputs_after.append(len(union))

    check_scenario(cfg, [(w, tcfg, tuple(source.class_names[c] for c in ids)) for w, _, tcfg, source, ids in selected])
    if cfg.scenario == "domain":  # one output per within-task position, the same for every task
        pretrain_outputs = len(selected[0][4])
        outputs_after = [pretrain_outputs] * len(cfg.finetune.tasks)

    shared = cfg.model.heads == "shared"
    tasks: dict[Role, list[Task]] = {"pretrain": [], "finetune": []}
    head_sizes: dict[str, int] = {}
    for where, role, tcfg, source, class_ids in selected:
        names = tuple(source.class_names[c] for c in class_ids)
        if cfg.scenario == "domain":
            head = SHARED_HEAD
            outputs = list(range(len(class_ids)))
            head_sizes[head] = len(class_ids)
        elif shared:
            head = SHARED_HEAD
            outputs = [union.index((tcfg.source, tcfg.path or "", n)) for n in names]
            head_sizes[head] = len(union)
        else:
            head = tcfg.name
            outputs = list(range(len(class_ids)))
            head_sizes[head] = len(class_ids)
        splits = _task_splits(source, tcfg, class_ids, outputs, cfg.data, where, encoder, _text_on_disk(source, cfg))
        tasks[role].append(Task(tcfg.name, role, head, names, splits))
    # Only once every task has been built, so that a config that fails gets its error alone.
    _warn_about_shared_examples(
        [(tcfg, tuple(source.class_names[c] for c in ids)) for _, _, tcfg, source, ids in selected]
    )
    pretrain_heads = {SHARED_HEAD: pretrain_outputs} if shared else None
    return TaskSet(tasks["pretrain"], tasks["finetune"], head_sizes, pretrain_heads, outputs_after if shared else None)


def check_scenario(cfg: ExperimentConfig, tasks: list[tuple[str, TaskConfig, tuple[str, ...]]]) -> None:
    """Refuse tasks that do not form the chosen scenario (``where``, task config, class names). Domain-incremental:
    every task has as many classes (output ``k`` is each task's class ``k``). Class-incremental: every task brings
    classes of its own (a class in two tasks is one output, which makes it another scenario). Raises
    ConfigError."""
    if cfg.scenario == "domain":
        counts = {len(names) for _, _, names in tasks}
        if len(counts) > 1:
            sizes = ", ".join(f"{t.name}: {len(names)}" for _, t, names in tasks)
            raise ConfigError(
                f"scenario=domain: every task needs the same number of classes (one shared output per position in "
                f"a task); classes per task: {sizes}; use scenario=task or scenario=class for tasks of other sizes"
            )
    if cfg.scenario == "class":
        owner: dict[tuple[str, str, str], str] = {}
        for where, tcfg, names in tasks:
            for name in names:
                key = (tcfg.source, tcfg.path or "", name)
                if key in owner:
                    raise ConfigError(
                        f"{where}: scenario=class needs every task to bring new classes, but class {name!r} of "
                        f"source '{tcfg.source}' is in tasks '{owner[key]}' and '{tcfg.name}'; tasks on the same "
                        "classes (e.g. shifted inputs) are scenario=domain"
                    )
                owner[key] = tcfg.name


def resolve_classes(source: SourceData, tcfg: TaskConfig, where: str) -> list[int]:
    """Class indices into the source. Classes are named by their label (``3`` and ``"3"`` are the same class;
    a folder source's labels are its sub-folder names), never by position."""
    if tcfg.classes is None:
        ids = list(range(len(source.class_names)))
    else:
        ids = []
        for c in tcfg.classes:
            if str(c) not in source.class_names:
                valid = _describe_classes(source.class_names)
                raise ConfigError(
                    f"{where}.classes: class {c!r} is not in source '{tcfg.source}'; valid classes: {valid}"
                )
            ids.append(source.class_names.index(str(c)))  # duplicates were refused by TaskConfig
    present = set(np.unique(source.y).tolist())
    empty = [source.class_names[i] for i in ids if i not in present]
    if empty:
        raise ConfigError(f"{where}.classes: source '{tcfg.source}' has no examples of classes {empty}")
    if len(ids) < 2:
        raise ConfigError(
            f"{where}.classes: a task needs at least 2 classes (got {[source.class_names[i] for i in ids]})"
        )
    return ids


class SharedExamplesWarning(UserWarning):
    """Two tasks hold the very same examples of some class (see ``_warn_about_shared_examples``)."""


def _warn_about_shared_examples(tasks: list[tuple[TaskConfig, tuple[str, ...]]]) -> None:
    """Warn for every pair of tasks that take a class from the same view of the same data.

    Splits belong to source examples, so two tasks that take class "3" from one source hold the same examples of
    "3" in every split, train included: pretraining on digits 0-4 and fine-tuning on 3-6 trains both tasks on the
    same images of 3 and 4, which is rehearsal rather than new data and makes forgetting look smaller. That can
    be meant, so it is a warning, not an error; silence it with ``PYTHONWARNINGS="ignore:shared examples"`` or
    ``warnings.filterwarnings("ignore", category=SharedExamplesWarning)``.

    Tasks whose inputs differ (another ``transform``, such as rotated digits, or another ``scale``) show the same
    examples in another form: that is a domain shift on purpose, so they are not warned about.
    """
    for i, (first, first_classes) in enumerate(tasks):
        for second, second_classes in tasks[i + 1 :]:
            shared = [c for c in first_classes if c in second_classes]
            if shared and _view(first) == _view(second):
                where = f"source '{first.source}'" + (f" ({first.path})" if first.path else "")
                form = "untransformed" if first.transform is None else f"{first.transform.kind}d alike"
                warnings.warn(
                    f"shared examples: tasks '{first.name}' and '{second.name}' both take classes {shared} of "
                    f"{where}, {form}, so the same examples of those classes are in both tasks' splits, train "
                    "included; use disjoint classes (or a transform for a domain shift) unless that is meant",
                    SharedExamplesWarning,
                    stacklevel=3,  # the caller of build_tasks
                )


def _view(tcfg: TaskConfig) -> tuple:
    """What decides a task's inputs apart from its classes: the data behind it and how it is transformed."""
    path = str(Path(tcfg.path).resolve()) if tcfg.path else None  # "data/x.npz" and "./data/x.npz" are one file
    return tcfg.source, path, tcfg.scale, _effective_transform(tcfg.transform)


def _effective_transform(transform: TransformConfig | None) -> tuple | None:
    """A transform by what it does: a permutation's ``degrees`` and a rotation's ``seed`` are unused."""
    if transform is None:
        return None
    return (transform.kind, transform.seed if transform.kind == "permute" else transform.degrees)


def _describe_classes(names: tuple[str, ...]) -> str:
    if names == tuple(str(i) for i in range(len(names))):
        return f"0..{len(names) - 1}"
    shown = ", ".join(names[:20])
    return shown + (", ..." if len(names) > 20 else "")


def _task_splits(
    source: SourceData,
    tcfg: TaskConfig,
    class_ids: list[int],
    outputs: list[int],
    data: DataConfig,
    where: str,
    encoder: InputEncoder,
    text_on_disk: bool = False,
) -> dict[str, tuple[Inputs, Tensor]]:
    """The task's examples of each split, as model inputs. The split belongs to the source example, not to the
    task, so two tasks drawing from one source never see each other's test examples in training (and two tasks
    that take the same class hold the same examples of it: ``_warn_about_shared_examples``)."""
    to_output = dict(zip(class_ids, outputs, strict=True))
    in_memory_text = source.kind == "text" and not text_on_disk
    encoded = _encoded_pool(source, tcfg, encoder) if in_memory_text else None
    splits = {}
    for name, idx in source_splits(source, data).items():
        keep = idx[np.isin(source.y[idx], class_ids)]
        y = np.array([to_output[c] for c in source.y[keep]], dtype=np.int64)
        if source.on_disk or text_on_disk:  # read (images) and encoded when examples are taken
            load = source.load or _as_is
            transform = functools.partial(apply_transform, transform=tcfg.transform, where=where)
            x = DiskExamples(source.x[keep], lambda refs, load=load, t=transform: t(load(refs)), encoder.encode)
        elif encoded is not None:
            x = take(encoded, torch.from_numpy(keep))
        else:
            x = encoder.encode(apply_transform(source.x[keep], tcfg.transform, where))
        splits[name] = (x, torch.from_numpy(y))
    return splits


# Tokenised pools, by what they depend on: the source's content and the tokenizer with its settings. Every task
# drawing on one text source (and every run of a grid worker) tokenises it once.
_ENCODED: dict[str, Inputs] = {}


def _encoded_pool(source: SourceData, tcfg: TaskConfig, encoder: InputEncoder) -> Inputs:
    from research.config import stable_hash
    from research.data.fingerprint import path_fingerprint

    content = path_fingerprint(tcfg.path) if tcfg.path else "built-in"
    columns = (tcfg.text_column, tcfg.text_pair_column, tcfg.label_column)
    key = stable_hash([tcfg.source, content, columns, len(source.y), encoder.identity])
    if key not in _ENCODED:
        _ENCODED[key] = encoder.encode(source.x)
    return _ENCODED[key]


def _example_shape(source: SourceData) -> tuple:
    """What must agree between tasks of one model: the example shape of numeric sources; text is tokenised to
    one length for every task."""
    return ("text",) if source.kind == "text" else source.example_shape


def _text_on_disk(source: SourceData, cfg: ExperimentConfig) -> bool:
    """Whether a text source's tokens would exceed the memory budget (three int64 tensors of max_length per
    text, as a BERT tokenizer gives), so its texts are tokenised batch by batch instead."""
    if source.kind != "text" or cfg.data.stream == "never":
        return False
    stored_mb = len(source.y) * cfg.model.max_length * 3 * 8 / 2**20
    return cfg.data.stream == "always" or stored_mb > cfg.data.memory_budget_mb


def _as_is(refs: np.ndarray) -> np.ndarray:
    return refs


def source_splits(source: SourceData, data: DataConfig) -> dict[str, np.ndarray]:
    """Train/val/test example indices of a whole source pool, stratified by label and fixed by split_seed."""
    idx = np.arange(len(source.y))
    rest, test = _stratified(idx, source.y, data.test_fraction, data.split_seed)
    if data.val_fraction > 0:
        train, val = _stratified(rest, source.y[rest], data.val_fraction / (1 - data.test_fraction), data.split_seed)
    else:
        train, val = rest, rest[:0]
    return {"train": train, "val": val, "test": test}


def _stratified(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        first, second = train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)
    except ValueError:
        # Some class has too few examples to appear on both sides: a plain seeded split, said out loud.
        warnings.warn(
            "a class has too few examples for a stratified split; splitting without stratification", stacklevel=3
        )
        first, second = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(first), np.sort(second)
