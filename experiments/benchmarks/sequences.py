"""Sequences: what each method keeps per learned task, and the wall time of the three-scenarios grid.

Two measurements, each against a reference taken in the same run:

  memory   the bytes a method keeps beside the model (``summary.json``'s ``method_state_bytes``: anchors,
           Fisher, importances, buffers, teacher) while it trains fine-tuning task k (its state holds what it
           took from the pretraining task and tasks 1..k−1), for k = 1, 2, ... of the split MNIST-1D
           sequence (``split_mnist1d_task.yaml``, MLP 40-400-400, a head per task), as a ratio to the bytes of
           the model's parameters after the same tasks. One run per method and prefix of the sequence, a few
           updates per task (the state's size does not depend on how long a task trains). EWC keeps one
           Fisher and one anchor per learned task, so it grows by about 2× the backbone each task; online EWC
           and SI keep one running copy; the rehearsal buffers are fixed in size.
  grid     ``research grid experiments/grids/three_scenarios.yaml --workers 2`` end to end, pretraining
           included (a fresh run root), and every method's fine-tuning time (``timings.finetune_seconds``) as a
           ratio to finetune's in the same scenario and seed of the same grid: what the method costs over
           plain fine-tuning. Also the share of the wall time spent inside runs: the sum of the runs' own
           times (``timings.total_seconds``) over the workers, divided by the wall time; the rest is worker
           start-up, pretraining (the grid's first runs build the cache) and the grid's own bookkeeping.

    uv run python experiments/benchmarks/sequences.py [--workers 2] [--skip-grid]
    uv run python experiments/benchmarks/sequences.py --quick [--json PATH]

``--quick`` is a smoke test: memory for ewc, online_ewc and replay over 2 tasks, and a 9-run grid (finetune,
ewc and replay × 3 scenarios, 1 seed, 1 epoch per task).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import Row, print_rows, write_json

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = ROOT / "experiments" / "split_mnist1d_task.yaml"
GRID = ROOT / "experiments" / "grids" / "three_scenarios.yaml"
MEMORY_METHODS = ["finetune", "ewc", "online_ewc", "si", "mas", "lwf", "replay", "agem", "der", "derpp", "joint"]
MB = 1e6
QUIET = ["logging.wandb=disabled", "logging.progress=false"]


def state_sizes(methods: list[str], tasks: int, out: Path) -> dict[str, list[tuple[int, int]]]:
    """Per method, for k = 1..tasks fine-tuning tasks: (method state bytes, model parameter bytes)."""
    from research.config import load_config
    from research.training import run

    sizes: dict[str, list[tuple[int, int]]] = {}
    for method in methods:
        sizes[method] = []
        for k in range(1, tasks + 1):
            cfg = load_config(
                EXPERIMENT,
                [f"out={out}", f"method.name={method}", "train.max_steps=2", "eval.every_n_steps=1000", *QUIET],
            )
            cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"tasks": cfg.finetune.tasks[:k]})})
            result = run(cfg)
            assert result.summary["status"] == "completed", result.summary.get("error")
            params = parameter_bytes(cfg)
            sizes[method].append((result.summary["method_state_bytes"], params))
            state = sizes[method][-1][0]
            print(
                f"  {method:11s} after {k} task(s): state {state / MB:7.3f} MB, model {params / MB:.3f} MB", flush=True
            )
    return sizes


def parameter_bytes(cfg) -> int:
    """Bytes of the parameters of the model fine-tuned under ``cfg``: backbone and every task's head."""
    from research.data import build_tasks
    from research.methods import build_method
    from research.training.finetune import finetune_model

    model, _ = finetune_model(cfg, build_tasks(cfg), build_method(cfg.method), state=None)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def grid_times(grid: Path, workers: int, out: Path) -> tuple[float, list[dict]]:
    """The grid's wall time end to end, and each run's summary (method, scenario, seed, fine-tuning time)."""
    command = [sys.executable, "-m", "research", "grid", str(grid), f"out={out}", "--workers", str(workers)]
    print(f"$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"grid failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    runs = []
    for summary_path in out.glob("*/summary.json"):
        summary = json.loads(summary_path.read_text())
        config = yaml.safe_load((summary_path.parent / "config.yaml").read_text())
        runs.append(
            {
                "method": config["method"]["name"],
                "scenario": config["scenario"],
                "seed": config["seed"],
                "status": summary["status"],
                "finetune_seconds": summary["timings"]["finetune_seconds"],
                "total_seconds": summary["timings"]["total_seconds"],
            }
        )
    return wall, runs


def quick_grid(root: Path) -> Path:
    path = root / "three_scenarios_quick.yaml"
    path.write_text(
        f"name: three_scenarios_quick\nbase: {EXPERIMENT}\nseeds: [0]\noverrides:\n  train.epochs: 1\n"
        "grid:\n  - scenario: [task, domain, class]\n    method.name: [finetune, ewc, replay]\n"
    )
    return path


def memory_rows(sizes: dict[str, list[tuple[int, int]]]) -> list[Row]:
    rows = []
    for method, per_task in sizes.items():
        if method == "finetune":
            continue
        for k, (state, params) in enumerate(per_task, start=1):
            details = {"state_bytes": state, "parameter_bytes": params}
            rows.append(
                Row("sequences", f"{method}: state after {k} task(s) / model", state / params, "x", details=details)
            )
        if len(per_task) > 1:
            growth = (per_task[-1][0] - per_task[0][0]) / (len(per_task) - 1)
            rows.append(Row("sequences", f"{method}: state growth per task / model", growth / per_task[0][1], "x"))
    return rows


def grid_rows(wall: float, runs: list[dict], workers: int, label: str) -> list[Row]:
    completed = [r for r in runs if r["status"] == "completed"]
    rows = [
        Row("sequences", f"{label}: runs completed", float(len(completed)), "", "==", float(len(runs))),
        Row("sequences", f"{label}: wall time, {workers} workers, pretraining included", wall, "s"),
        Row(
            "sequences",
            f"{label}: Σ run times / {workers} workers / wall time (share of the wall time inside runs)",
            sum(r["total_seconds"] for r in completed) / workers / wall,
            "x",
        ),
    ]
    base = {(r["scenario"], r["seed"]): r["finetune_seconds"] for r in completed if r["method"] == "finetune"}
    for method in sorted({r["method"] for r in completed} - {"finetune"}):
        for scenario in ("task", "domain", "class"):
            ratios = [
                r["finetune_seconds"] / base[(scenario, r["seed"])]
                for r in completed
                if r["method"] == method and r["scenario"] == scenario and (scenario, r["seed"]) in base
            ]
            if ratios:
                rows.append(
                    Row(
                        "sequences",
                        f"{label}: {method} / finetune fine-tuning time, {scenario}-IL (median of {len(ratios)} seeds)",
                        statistics.median(ratios),
                        "x",
                    )
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-grid", action="store_true", help="measure the per-task memory only")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 methods over 2 tasks, a 9-run grid")
    parser.add_argument("--json", help="write the result rows to this file")
    args = parser.parse_args()
    methods, tasks = (["finetune", "ewc", "online_ewc", "replay"], 2) if args.quick else (MEMORY_METHODS, 4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("WANDB_DIR", str(root))
        print(f"memory: {', '.join(methods)} over 1..{tasks} tasks of {EXPERIMENT.name}", flush=True)
        rows = memory_rows(state_sizes(methods, tasks, root / "memory"))
        print_rows("per-task state, as a ratio to the model's parameter bytes", rows)
        if not args.skip_grid:
            grid = quick_grid(root) if args.quick else GRID
            wall, runs = grid_times(grid, args.workers, root / "grid")
            grid_result = grid_rows(wall, runs, args.workers, grid.stem)
            print_rows(f"{grid.stem}: wall time and each method's cost over finetune", grid_result)
            rows += grid_result
    write_json(args.json, "sequences", rows, args.quick, settings=vars(args))


if __name__ == "__main__":
    main()
