"""Evaluator overhead: scoring every task ~50 times during fine-tuning, as a share of the training time.

The same ``research run`` twice, differing only in ``eval.every_n_steps``:
  dense   N chosen so that every task (old and new) is scored about 50 times (step 0, every N steps, the end)
  sparse  N larger than the number of steps: every task scored at step 0 and at the end only (2 evaluations)
Pretraining is cached beforehand; repetitions alternate between the two and the medians are compared.

Two figures, both against training time measured in the same run:
  from the dense run's own clock   eval_seconds / (finetune_seconds − eval_seconds)      (summary.json timings;
                                   eval_seconds is the evaluator's time inside the fine-tuning stage:
                                   scoring and weight drift, not the W&B logging of the scores)
  from the two runs' difference    (finetune_seconds[dense] − finetune_seconds[sparse]) / finetune_seconds[sparse]
                                   (everything the extra evaluations cost, W&B logging included)
The target for both is at most 20 %. W&B disabled, and again with W&B offline (where every evaluation is also
logged to the W&B run). Settings: the MNIST-1D MLP 40-512-512 of overhead.py (20 epochs, 420 steps) and split
digits (the demo's experiment, 30 epochs, 570 steps).

    uv run python experiments/benchmarks/evaluator_overhead.py [--evaluations 50] [--repeats 5]
    uv run python experiments/benchmarks/evaluator_overhead.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

from common import Row, limit_threads, mnist1d_mlp512, print_rows, scratch_out, spread, write_json

from research.config import ExperimentConfig, read_experiment, validate_config
from research.data import TensorBatches, build_tasks
from research.training import run
from research.training.pretrain import pretrained_weights

BENCHMARK = "evaluator_overhead"
ROOT = Path(__file__).resolve().parents[2]
MNIST1D: dict[str, Any] = {**mnist1d_mlp512("benchmark_evaluator"), "method": {"name": "finetune"}}
# name: (base experiment, fine-tuning epochs, quick epochs)
SETTINGS: dict[str, tuple[dict[str, Any] | Path, int, int]] = {
    "mnist1d-mlp512": (MNIST1D, 20, 2),  # 21 steps per epoch
    "split-digits": (ROOT / "experiments" / "split_digits.yaml", 30, 2),  # 19 steps per epoch; a tiny model
}


def evaluations(steps: int, every: int) -> int:
    """How many times the evaluator scores the tasks: step 0, every ``every`` steps, and the end (once)."""
    return 1 + steps // every + (1 if steps % every else 0)


def interval_for(steps: int, wanted: int) -> int:
    """The evaluation interval whose count of evaluations is closest to ``wanted``."""
    return min(range(1, steps + 1), key=lambda n: (abs(evaluations(steps, n) - wanted), n))


def make_config(base: dict[str, Any] | Path, out: str, epochs: int, every: int, wandb: str) -> ExperimentConfig:
    raw = read_experiment(base) if isinstance(base, Path) else copy.deepcopy(base)
    raw.update(out=out, device="cpu")
    raw["train"] = {**raw.get("train", {}), "epochs": epochs}
    raw["eval"] = {**raw.get("eval", {}), "every_n_steps": every}
    raw["logging"] = {**raw.get("logging", {}), "wandb": wandb, "progress": False}
    return validate_config(raw)


def one_run(cfg: ExperimentConfig) -> dict[str, float]:
    started = time.perf_counter()
    summary = run(cfg, force=True).summary
    timings = summary["timings"]
    return {
        "finetune": timings["finetune_seconds"],
        "eval": timings["eval_seconds"],
        "evaluations": summary["evaluations"],
        "end_to_end": time.perf_counter() - started,
    }


def measure(name: str, args: argparse.Namespace, out: str, wandb: str) -> tuple[list[Row], dict[str, Any]]:
    base, epochs, quick_epochs = SETTINGS[name]
    wanted = args.evaluations
    if args.quick:  # fewer steps: keep the evaluations as dense as in the full run
        wanted = max(3, round(args.evaluations * quick_epochs / epochs))
        epochs = quick_epochs
    probe = make_config(base, out, epochs, 1, wandb)
    tasks = build_tasks(probe)
    steps = epochs * len(TensorBatches(tasks.finetune[0].splits["train"][1], batch_size=probe.train.batch_size))
    every = interval_for(steps, wanted)
    dense_cfg = make_config(base, out, epochs, every, wandb)
    sparse_cfg = make_config(base, out, epochs, steps + 1, wandb)
    pretrained_weights(dense_cfg, tasks)  # cache pretraining outside the timings
    one_run(sparse_cfg)  # warm-up (W&B's service start, first calls)
    dense, sparse = [], []
    for _ in range(args.repeats):  # alternate, so drifts in machine load hit both alike
        dense.append(one_run(dense_cfg))
        sparse.append(one_run(sparse_cfg))

    def med(results: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in results)

    own = [100 * r["eval"] / (r["finetune"] - r["eval"]) for r in dense]
    own_share = statistics.median(own)
    difference = 100 * (med(dense, "finetune") - med(sparse, "finetune")) / med(sparse, "finetune")
    n_dense, n_sparse = dense[0]["evaluations"], sparse[0]["evaluations"]
    per_eval_ms = 1000 * med(dense, "eval") / n_dense
    print(
        f"\n{name}, W&B {wandb}: {steps} steps; {len(tasks.all)} tasks scored {n_dense} times (every {every} steps) "
        f"vs {n_sparse} times"
    )
    print(
        f"  dense : fine-tuning stage {med(dense, 'finetune'):6.2f} s {spread([r['finetune'] for r in dense])}, "
        f"of which evaluating {med(dense, 'eval'):5.2f} s ({per_eval_ms:.1f} ms per evaluation)"
    )
    print(
        f"  sparse: fine-tuning stage {med(sparse, 'finetune'):6.2f} s {spread([r['finetune'] for r in sparse])}, "
        f"of which evaluating {med(sparse, 'eval'):5.2f} s"
    )
    print(f"  evaluator time / training time, dense run's own clock: {own_share:.1f} %  {spread(own)}")
    best = 100 * (min(r["finetune"] for r in dense) / min(r["finetune"] for r in sparse) - 1)
    print(
        f"  (dense − sparse) / sparse fine-tuning stage          : {difference:.1f} %   (target <= 20 %; best-of: "
        f"{best:.1f} %)"
    )
    what = f"{name}, W&B {wandb}, {n_dense} evaluations"
    details = {"steps": steps, "every_n_steps": every, "dense": dense, "sparse": sparse, "per_eval_ms": per_eval_ms}
    details["difference_best_of"] = best
    rows = [
        Row(BENCHMARK, f"{what}: eval time / training time (own clock)", own_share, "%", "<=", 20.0, details=details),
        Row(BENCHMARK, f"{what}: fine-tuning stage, (dense − sparse) / sparse", difference, "%", "<=", 20.0),
    ]
    return rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--wandb", nargs="+", choices=["disabled", "offline"], default=["disabled", "offline"])
    parser.add_argument("--evaluations", type=int, default=50, help="evaluations in the dense run (about)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 2 epochs, evaluations as dense as in full, 1 repetition"
    )
    parser.add_argument("--json", help="write the result rows to this file")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    limit_threads(args.threads)
    rows: list[Row] = []
    details: dict[str, Any] = {}
    with scratch_out() as out:
        for name in args.settings:
            for wandb in args.wandb:
                setting_rows, details[f"{name}/{wandb}"] = measure(name, args, out, wandb)
                rows += setting_rows
    print_rows(f"{BENCHMARK}: medians of {args.repeats} alternating repetitions", rows)
    write_json(args.json, BENCHMARK, rows, args.quick, settings=vars(args), runs=details)


if __name__ == "__main__":
    main()
