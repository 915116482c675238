"""Fine-tuning checkpoints: what a run killed mid-training needs to go on exactly where it was.

A checkpoint is one file, ``<run dir>/checkpoint.pt``, written every ``checkpoint.every_n_steps`` optimizer steps
to a temporary name and renamed into place (a kill never leaves half of one). It holds only tensors and plain
data, and is read with ``torch.load(weights_only=True)``, so loading it never runs code.

Resuming must give exactly the numbers an uninterrupted run gives, for every method, without each method having
to know about resuming. The method's own ``prepare`` is deterministic given the model it sees, so the
checkpoint keeps the weights each fine-tuning task started from and replays the methods' preparation on them:

    for every task before the current one:  its start weights → prepare → the method's state at that task's end
    the current task:                       its start weights → prepare → the weights, optimizer and method
                                            state of the checkpoint step → the random number generators

Everything else that shapes the rest of the run is in the checkpoint too: the measurements so far (so metrics
continue without a duplicate or missing step), the drift reference, the batch position within the epoch, and
the elapsed time.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from research.store import temporary_beside

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1


@dataclass
class TaskHistory:
    """What the finished part of a run leaves for a resume: per task, the weights it started from and the random
    streams its preparation drew from, and, for each finished task, the method's state when it ended."""

    starts: list[dict[str, Tensor]] = field(default_factory=list)
    method_ends: list[dict[str, Tensor]] = field(default_factory=list)
    rngs: list[dict[str, Any]] = field(default_factory=list)  # the random streams as each task's preparation began


def cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def rng_state() -> dict[str, Any]:
    """Every global random stream training may draw from (dropout, a method's sampling)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> None:
    """Atomically replace the run's checkpoint."""
    path = run_dir / CHECKPOINT_FILE
    with temporary_beside(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)


SET_ASIDE = ".unusable"  # an unusable checkpoint is renamed to checkpoint.pt.unusable


class UnusableCheckpoint(RuntimeError):
    """A checkpoint that loaded and passed :func:`checkpoint_problem`, but that the run still could not resume
    from (e.g. a method state that does not fit the method); the run fails and the checkpoint is set aside."""


@dataclass
class Expected:
    """What a checkpoint of this run must match: the number of fine-tuning tasks, each task's updates, and the
    name and shape of every tensor of the model as the first task starts (``state_dict``)."""

    task_updates: list[int]
    model: dict[str, tuple[int, ...]]


def load_checkpoint(run_dir: Path, run_id: str, expected: Expected | None = None) -> dict[str, Any] | None:
    """The run's checkpoint, or None when there is none or it cannot be used. An unusable one (unreadable,
    another format or run, incomplete, inconsistent, or not matching ``expected``) is set aside and reported
    once, and the run starts over: a checkpoint that is kept would fail every later attempt the same way."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unreadable checkpoint costs the progress, never the run
        set_aside(path, f"unreadable: {type(err).__name__}")
        return None
    problem = checkpoint_problem(payload, run_id, expected)
    if problem is not None:
        set_aside(path, problem)
        return None
    return payload


def set_aside(path: Path, reason: str) -> Path:
    """Rename an unusable checkpoint out of the way (kept for inspection, never read again) and say so."""
    target = path.with_name(path.name + SET_ASIDE)
    os.replace(path, target)
    print(
        f"warning: cannot resume from checkpoint {path} ({reason}); set aside as {target.name}, starting over",
        file=sys.stderr,
    )
    return target


# Every key a checkpoint holds (FinetuneStage.save_checkpoint), with the types its values must have.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "run_id": str,
    "task_index": int,
    "task_step": int,
    "global_step": int,
    "steps_before": int,
    "epochs_before": int,
    "task_ends": list,
    "records": list,
    "drift": list,
    "evaluator": dict,
    "finetune_seconds": (int, float),
    "model": dict,
    "optimizer": dict,
    "method": dict,
    "task_starts": list,
    "method_ends": list,
    "task_rngs": list,
    "rng": dict,
    "resumes": list,
}


def checkpoint_problem(payload: Any, run_id: str, expected: Expected | None = None) -> str | None:
    """What makes ``payload`` unusable as this run's checkpoint, in a few words, or None when it is usable:
    another format or run, a missing or mistyped field, positions that contradict each other (the step
    arithmetic, one start per task begun, one method state per task ended), or, with ``expected``, a task or
    step the run does not have or model tensors of other names or shapes."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return "another format"
    if payload.get("run_id") != run_id:
        return "another run's"
    for key, kind in _FIELDS.items():
        if key not in payload:
            return f"no {key}"
        if not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            return f"{key} is a {type(payload[key]).__name__}"
    index, step = payload["task_index"], payload["task_step"]
    if index < 0 or step < 0 or payload["steps_before"] < 0:
        return "a negative position"
    if payload["global_step"] != payload["steps_before"] + step:
        return f"global_step {payload['global_step']} is not steps_before + task_step"
    begun = {"task_starts": index + 1, "task_rngs": index + 1, "method_ends": index, "task_ends": index}
    for key, count in begun.items():
        if len(payload[key]) != count:
            return f"{len(payload[key])} {key} for task {index}"
    if index > 0 and payload["task_ends"][-1].get("step") != payload["steps_before"]:
        return "steps_before is not where the previous task ended"
    if "start" not in payload["evaluator"] or not all(isinstance(r, dict) for r in payload["records"]):
        return "incomplete evaluator state or records"
    states = [payload["model"], *payload["task_starts"], *payload["method_ends"], payload["method"]]
    if not all(isinstance(s, dict) and all(isinstance(t, Tensor) for t in s.values()) for s in states):
        return "a model or method state that is not all tensors"
    if expected is None:
        return None
    if index >= len(expected.task_updates):
        return f"task {index} of a run with {len(expected.task_updates)} fine-tuning tasks"
    if step >= expected.task_updates[index]:
        return f"step {step} of task {index}, which has {expected.task_updates[index]} updates"
    first = _shapes(payload["task_starts"][0])
    if first != expected.model:
        return "model tensors of other names or shapes than this run's"
    for state in [*payload["task_starts"][1:], payload["model"]]:
        shapes = _shapes(state)
        if shapes.keys() != first.keys() or any(
            shapes[n] != first[n] and not (n.startswith("heads.") and shapes[n][1:] == first[n][1:]) for n in first
        ):  # only a shared head may have grown (rows for new classes) since the first task
            return "model tensors of other names or shapes than this run's"
    if _shapes(payload["model"]) != _shapes(payload["task_starts"][index]):
        return "model tensors of other shapes than at the start of their task"
    return None


def _shapes(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def remove_checkpoint(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
