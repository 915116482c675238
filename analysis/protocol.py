"""What a set of runs did, in words a methods section can take: the model and its head layout (and so how old
tasks are scored), the tasks, the evaluation split and its size, the training schedule and the seeds, read from
the runs' resolved configs and summaries (:func:`analysis.load.load_runs` columns). A value that differs
between runs is listed with every value it takes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from research.labels import is_missing

HEADS = {
    "per_task": "one output layer per task (task-incremental): each task, old or new, is scored by its own head "
    "over its own classes; the old tasks' heads stay frozen unless the method trains them (e.g. LwF, joint "
    "training)",
    "shared": "one output layer over the classes seen so far: a task is scored by argmax over every output that "
    "exists at that step. Fine-tuning tasks that bring new classes grow it (class-incremental: old classes compete "
    "with the new ones); tasks on the same classes, e.g. shifted inputs, share its outputs (domain-incremental)",
}
SCENARIO_NAMES = {
    "task": "task-incremental (Task-IL)",
    "domain": "domain-incremental (Domain-IL)",
    "class": "class-incremental (Class-IL)",
}
# Model families loaded from outside (research.models.adapters): their backbone is never trained by pretraining.
LOADED = ("hf", "timm", "torchvision", "custom")


def scenario_of(row: Mapping[str, Any]) -> str | None:
    """The continual-learning scenario of one run (van de Ven & Tolias 2019, "Three scenarios for continual
    learning"): ``task``, ``domain`` or ``class``, from a :func:`analysis.load.load_runs` row. The run's own
    ``config.scenario`` when it set one; else derived from its head layout: ``per_task`` heads are task-incremental;
    a ``shared`` head is class-incremental when some fine-tuning task brings classes no earlier task had (the head
    grows), else domain-incremental (every task on classes already there). Classes are keyed by source, path and
    class name, as research.data.tasks keys a shared head's outputs; a task without ``classes`` takes every class
    of its source. The very first task of a run (no pretraining task) has no earlier task to be new against.
    None when the heads are not recorded."""
    chosen = row.get("config.scenario")
    if not is_missing(chosen):
        return str(chosen)
    heads = row.get("config.model.heads")
    if heads == "per_task":
        return "task"
    if heads != "shared":
        return None
    tasks = [*_task_list(row.get("config.pretrain.tasks")), *_task_list(row.get("config.finetune.tasks"))]
    first_finetune = len(_task_list(row.get("config.pretrain.tasks")))
    seen: set[tuple[str, str, str]] = set()
    whole: set[tuple[str, str]] = set()  # sources of which a task took every class
    for i, task in enumerate(tasks):
        source = (str(task.get("source")), str(task.get("path") or ""))
        classes = task.get("classes")
        keys = {(*source, "*")} if classes is None else {(*source, str(c)) for c in classes}
        new = source not in whole and not keys <= seen
        if i >= max(first_finetune, 1) and new:
            return "class"
        seen |= keys
        if classes is None:
            whole.add(source)
    return "domain"


def _task_list(value: object) -> list[dict]:
    tasks = json.loads(value) if isinstance(value, str) else value
    return [t for t in tasks if isinstance(t, dict)] if isinstance(tasks, list) else []


def _values(runs: pd.DataFrame, column: str) -> list:
    """The distinct values of a config column among the runs, in order of appearance (missing ones left out)."""
    if column not in runs:
        return []
    return [v for v in dict.fromkeys(runs[column].tolist()) if not is_missing(v)]


def _text(values: Iterable, unit: str = "") -> str:
    shown = [f"{_plain(v)}{unit}" for v in values]
    if not shown:
        return "not recorded"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown)} (varies between runs)"


def _plain(value: object) -> str:
    if isinstance(value, str) and value.startswith("["):
        try:
            return ", ".join(str(v) for v in json.loads(value))
        except ValueError:
            return value
    return f"{value:g}" if isinstance(value, float) else str(value)


def eval_sizes(runs: pd.DataFrame) -> dict[str, list[int]]:
    """Examples each task is scored on (the eval split's size, capped by ``eval.max_samples``), as the distinct
    values among the runs, per task; tasks of runs without recorded sizes are absent."""
    sizes: dict[str, list[int]] = {}
    for row in runs.to_dict("records"):
        split = row.get("config.eval.split") or "test"
        cap = row.get("config.eval.max_samples")
        recorded = json.loads(row["task_sizes"]) if isinstance(row.get("task_sizes"), str) else {}
        for task, info in recorded.items():
            if split in info:
                n = int(info[split]) if is_missing(cap) else min(int(info[split]), int(cap))
                if n not in sizes.setdefault(task, []):
                    sizes[task].append(n)
    return sizes


def protocol(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """``(item, description)`` pairs: model, heads, tasks, evaluation, fine-tuning schedule, seeds."""
    items = []
    arch = _values(runs, "config.model.arch")
    detail = _values(runs, "config.model.name") or [f"hidden {_plain(v)}" for v in _values(runs, "config.model.hidden")]
    items.append(("model", f"{_text(arch)}" + (f" ({_text(detail)})" if detail else "")))
    heads = _values(runs, "config.model.heads")
    items.append(("heads", "; ".join(f"{h}: {HEADS.get(h, h)}" for h in heads) or "not recorded"))
    scenarios = [s for s in dict.fromkeys(scenario_of(r) for r in runs.to_dict("records")) if s]
    if scenarios:  # scenario_of: the one rule, for any table by scenario too
        items.append(("scenario", f"{_text(SCENARIO_NAMES[s] for s in scenarios)} (van de Ven & Tolias 2019)"))
    old = _task_names(runs, "config.pretrain.tasks")
    new = _task_names(runs, "config.finetune.tasks")
    loaded = [a for a in arch if a in LOADED]
    if not old:
        pretrained = "nothing of ours (a model loaded from outside)"
    elif loaded:
        pretrained = f"{_text(old)} (the {_text(loaded)} model is loaded from outside: only these tasks' heads "
        pretrained += "were trained, on its frozen features)"
    else:
        pretrained = _text(old)
    items.append(
        (
            "tasks",
            f"pretrained on {pretrained}; fine-tuned on {_text(new)} (in this order). Step 0 is the pretrained "
            "model, before any fine-tuning update.",
        )
    )
    split = _text(_values(runs, "config.eval.split")) if _values(runs, "config.eval.split") else "test (the default)"
    sizes = eval_sizes(runs)
    every = _values(runs, "config.eval.every_n_steps")
    schedule_text = f" Scored at step 0, every {_text(every)} steps and at the end of each task." if every else ""
    if sizes:
        per_task = "; ".join(f"{task}: {_text(n)}" for task, n in sizes.items())
        smallest = min(n for values in sizes.values() for n in values)
        resolution = (
            f"; one example of the smallest set is 1/{smallest} = {1 / smallest:.4f} accuracy, so differences "
            "below that are not differences in examples"
        )
    else:
        per_task, resolution = "sizes not recorded", ""
    items.append(("evaluation", f"{split} split, examples per task: {per_task}{resolution}.{schedule_text}"))
    steps = _text(_values(runs, "steps"))
    epochs = f"{_text(_values(runs, 'config.train.epochs'))} epochs per task"
    cap = _values(runs, "config.train.max_steps")
    if cap:
        epochs += f" (at most {_text(cap)} steps per task)"
    batch = f"batch size {_text(_values(runs, 'config.train.batch_size'))}"
    accumulated = [v for v in _values(runs, "config.train.accumulate_grad_batches") if v != 1]
    if accumulated:
        batch += f", gradients of {_text(accumulated)} batches summed into each update"
    schedule = [
        f"{steps} optimizer steps in all",
        epochs,
        batch,
        f"{_text(_values(runs, 'config.train.optimizer'))}",
        f"learning rate {_text(_values(runs, 'config.train.lr'))}",
    ]
    decay = _values(runs, "config.train.weight_decay")
    if any(v for v in decay):
        schedule.append(f"weight decay {_text(decay)}")
    items.append(("fine-tuning", ", ".join(schedule)))
    seeds = sorted({int(s) for s in runs["seed"] if not is_missing(s)})
    split_seed = _text(_values(runs, "config.data.split_seed"))
    items.append(
        (
            "seeds",
            f"{', '.join(map(str, seeds))} ({len(seeds)} per setting at most); each seed changes the fine-tuning's "
            f"initialisation and data order, not the data split (split seed {split_seed}) nor the pretrained model",
        )
    )
    return items


def _task_names(runs: pd.DataFrame, column: str) -> list[str]:
    names = []
    for value in _values(runs, column):
        tasks = json.loads(value) if isinstance(value, str) else value
        text = " → ".join(str(t.get("name")) for t in tasks) if isinstance(tasks, list) else str(tasks)
        if text and text not in names:
            names.append(text)
    return names
