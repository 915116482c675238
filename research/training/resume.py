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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The run's checkpoint, or None when there is none or it cannot be used (then the run starts over, and a
    checkpoint that exists but is unusable is reported)."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unreadable checkpoint costs the progress, never the run
        print(f"warning: ignoring unreadable checkpoint {path} ({type(err).__name__}); starting over", file=sys.stderr)
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("run_id") != run_id:
        print(f"warning: ignoring checkpoint {path} (another format or run); starting over", file=sys.stderr)
        return None
    return payload


def remove_checkpoint(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
