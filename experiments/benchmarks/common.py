"""What every benchmark script shares: result rows, their JSON file, and the printed tables.

A row is one measured figure: the benchmark it belongs to, what it compares, the value (a ratio, a share, a
size or a difference, each measured against a reference taken in the same run), its unit, and, where there is
one, the target it is held to and whether the value met it. ``suite.py`` reads the JSON files and prints one
Markdown table of all rows.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# "x" for ratios, "%" for shares, "MB", "s", "pts" (accuracy points), "" for yes/no facts.
OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "==": lambda v, t: v == t}


@dataclass
class Row:
    benchmark: str
    compared: str
    value: float | bool | None
    unit: str = ""
    op: str | None = None  # ">=", "<=", "==" or None (reported, no target)
    target: float | bool | None = None
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.op is not None and self.met is None and self.value is not None:
            self.met = bool(OPS[self.op](self.value, self.target))

    def value_text(self) -> str:
        return format_value(self.value, self.unit)

    def target_text(self) -> str:
        if self.op is None:
            return "—"
        if isinstance(self.target, bool):
            return "yes" if self.target else "no"
        return f"{self.op} {format_value(self.target, self.unit)}"

    def met_text(self) -> str:
        return "—" if self.met is None else ("yes" if self.met else "no")


def format_value(value: float | bool | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if unit == "x":
        return f"{value:.2f}×"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "pts":
        return f"{value:.2f} pts"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.3g} {unit}".strip()


def print_rows(title: str, rows: Sequence[Row]) -> None:
    """The benchmark's own summary table, in plain text."""
    print(f"\n{title}")
    width = max([len(r.compared) for r in rows] + [10])
    print(f"  {'compared':{width}s}  {'value':>12s}  {'target':>10s}  met")
    for r in rows:
        print(f"  {r.compared:{width}s}  {r.value_text():>12s}  {r.target_text():>10s}  {r.met_text()}")


def write_json(path: str | os.PathLike[str] | None, benchmark: str, rows: Sequence[Row], quick: bool, **info: Any):
    """Write the rows (and what produced them) to ``path``, if one was given."""
    if not path:
        return
    payload = {
        "benchmark": benchmark,
        "quick": quick,
        "argv": sys.argv,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        **info,
        "rows": [asdict(r) for r in rows],
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def read_rows(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Row]]:
    payload = json.loads(Path(path).read_text())
    return payload, [Row(**r) for r in payload["rows"]]


def spread(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def limit_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (and OpenMP's, for child processes) when asked."""
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def mnist1d_mlp512(name: str) -> dict[str, Any]:
    """The MNIST-1D setting several benchmarks share (one pretraining cache entry for all of them): an MLP
    40-512-512 pretrained on classes 0–4, fine-tuned on 5–9 with Adam, lr 1e-3, batch 64."""
    return {
        "name": name,
        "data": {"mnist1d_samples": 4000},
        "model": {"arch": "mlp", "hidden": [512, 512]},
        "pretrain": {
            "tasks": [{"name": "m1d_0_4", "source": "mnist1d", "classes": [0, 1, 2, 3, 4]}],
            "train": {"epochs": 5, "lr": 1e-3, "batch_size": 64},
        },
        "finetune": {"tasks": [{"name": "m1d_5_9", "source": "mnist1d", "classes": [5, 6, 7, 8, 9]}]},
        "train": {"lr": 1e-3, "batch_size": 64},
    }


@contextmanager
def scratch_out() -> Iterator[str]:
    """A temporary run root for a benchmark, which also holds W&B's offline files unless WANDB_DIR is set."""
    with tempfile.TemporaryDirectory() as out:
        os.environ.setdefault("WANDB_DIR", out)
        os.environ.setdefault("WANDB_SILENT", "true")
        yield out
