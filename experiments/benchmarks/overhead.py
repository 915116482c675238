"""Framework overhead: a full ``research run`` fine-tuning stage against a bare PyTorch loop.

Both sides do the same updates (same pretrained weights, same new-head initialisation, same batch order, same
optimizer) and the same evaluations (every task at step 0, every N steps and at the end); the framework side
also writes the run directory and a W&B offline run. Pretraining is cached before timing, so only the
fine-tuning stage is compared. Repetitions alternate between the two sides, and the median ratio is printed.
W&B's one-off service start (the first ``wandb.init`` of a process) is measured and reported on its own. Both
sides compute with the same CPU threads: the run's ``threads`` (``--threads``, default 1), which a research run
sets for itself.

    uv run python experiments/benchmarks/overhead.py [--epochs 40] [--repeats 5] [--json PATH]
    uv run python experiments/benchmarks/overhead.py --quick     # smoke test: 2 epochs, 1 repetition

The two sides must end with the same final accuracies: the benchmark checks that it compared equal work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from common import Row, mnist1d_mlp512, write_json
from torch.nn import functional as F

from research.config import ExperimentConfig, validate_config
from research.data import TensorBatches, build_tasks
from research.training import run
from research.training.checkpoints import load_into
from research.training.pretrain import pretrained_skeleton, pretrained_weights
from research.training.trainer import cpu_threads

CONFIG = {
    **mnist1d_mlp512("benchmark_overhead"),
    "method": {"name": "finetune"},
    "eval": {"every_n_steps": 50},
    "logging": {"wandb": "offline", "progress": False},
}


def bare_loop(cfg: ExperimentConfig) -> tuple[float, dict[str, float]]:
    """The same fine-tuning and evaluations written as a plain PyTorch loop."""
    started = time.perf_counter()
    tasks = build_tasks(cfg)
    state = pretrained_weights(cfg, tasks).state
    torch.manual_seed(cfg.seed)
    model = pretrained_skeleton(cfg, tasks)
    load_into(model, state, "cache")
    task = tasks.finetune[0]
    model.add_head(task.head, tasks.head_sizes[task.head], generator=torch.Generator().manual_seed(cfg.seed))
    for name, head in model.heads.items():
        head.requires_grad_(name == task.head)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    x, y = task.splits["train"]
    batches = TensorBatches(x, y, torch.zeros(len(y), dtype=torch.long), batch_size=cfg.train.batch_size, seed=cfg.seed)
    evals = [(t, *t.splits[cfg.eval.split]) for t in tasks.all]

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.inference_mode():
            scores = {}
            for t, ex, ey in evals:
                logits = model(ex, t.head)
                scores[t.name] = float((logits.argmax(1) == ey).float().mean())
                scores[t.name + "_loss"] = float(F.cross_entropy(logits, ey))
        model.train()
        return scores

    scores = evaluate()
    step = 0
    for _ in range(cfg.train.epochs):
        for xb, yb, _ in batches:
            loss = F.cross_entropy(model(xb, task.head), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % cfg.eval.every_n_steps == 0:
                scores = evaluate()
    if step % cfg.eval.every_n_steps != 0:
        scores = evaluate()
    return time.perf_counter() - started, scores


def framework(cfg: ExperimentConfig) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    result = run(cfg, force=True)
    seconds = time.perf_counter() - started
    return seconds, {task: values["acc"] for task, values in result.summary["final"].items()}


# (label, MLP widths, batch size): the first is the design guide's reference size, where the per-step path
# dominates; the second does more work per step, as most real fine-tuning does.
SIZES = [("MLP 40-512-512, batch 64", [512, 512], 64), ("MLP 40-1024-1024, batch 256", [1024, 1024], 256)]


def measure(label: str, hidden: list[int], batch_size: int, epochs: int, repeats: int, out: str, threads: int) -> dict:
    raw = {
        **CONFIG,
        "out": out,
        "threads": threads,
        "model": {"arch": "mlp", "hidden": hidden},
        "train": {**CONFIG["train"], "epochs": epochs, "batch_size": batch_size},
    }
    cfg = validate_config(raw)
    tasks = build_tasks(cfg)
    pretrained_weights(cfg, tasks)  # cache pretraining outside the timings
    framework(cfg)  # warm-up: the first W&B init in a process starts its service (reported separately below)
    bare_times, framework_times = [], []
    for _ in range(repeats):  # alternate, so drifts in machine load hit both sides alike
        with cpu_threads(cfg.threads):  # the run's own thread count, which research run sets for itself
            t_bare, bare_scores = bare_loop(cfg)
        t_fw, fw_scores = framework(cfg)
        bare_times.append(t_bare)
        framework_times.append(t_fw)
    steps = epochs * -(-len(tasks.finetune[0].splits["train"][1]) // batch_size)
    ratio = statistics.median(framework_times) / statistics.median(bare_times)
    same = all(abs(fw_scores[t] - bare_scores[t]) < 1e-6 for t in fw_scores)
    print(f"\n{label}: {steps} steps, every task scored every {cfg.eval.every_n_steps} steps, W&B offline")
    print(f"  bare PyTorch loop : median {statistics.median(bare_times):6.2f} s  {_fmt(bare_times)}")
    print(f"  research run      : median {statistics.median(framework_times):6.2f} s  {_fmt(framework_times)}")
    print(f"  ratio research/bare (medians): {ratio:.3f}   best-of ratio: {min(framework_times) / min(bare_times):.3f}")
    print(f"  final accuracies identical on both sides: {same}  {_acc(bare_scores)}")
    return {
        "label": label,
        "steps": steps,
        "ratio": ratio,
        "best_ratio": min(framework_times) / min(bare_times),
        "same": same,
        "bare_seconds": bare_times,
        "framework_seconds": framework_times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="the runs' threads (the config key), both sides")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 epochs, 1 repetition")
    parser.add_argument("--json", help="write the result rows to this file")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.repeats = 2, 1
    with tempfile.TemporaryDirectory() as out:
        os.environ.setdefault("WANDB_DIR", out)
        cold = time.perf_counter()
        import wandb

        run_ = wandb.init(mode="offline", dir=out, project="benchmark-cold-start")
        run_.finish()
        service = time.perf_counter() - cold
        print(f"one-off cost per process: starting W&B's service took {service:.2f} s")
        results = [
            measure(label, hidden, batch, args.epochs, args.repeats, out, args.threads)
            for label, hidden, batch in SIZES
        ]
        print(
            "\nfine-tuning stage, research run / bare loop: "
            + ", ".join(f"{r['ratio']:.3f}" for r in results)
            + "  (target <= 1.15)"
        )
    rows = []
    for r in results:
        what = f"{r['label']}, {r['steps']} steps"
        rows.append(Row("overhead", f"{what}: research run / bare loop", r["ratio"], "x", "<=", 1.15, details=r))
        rows.append(Row("overhead", f"{what}: same final accuracies as the bare loop", r["same"], "", "==", True))
    rows.append(Row("overhead", "one-off per process: W&B service start", service, "s"))
    write_json(args.json, "overhead", rows, args.quick, settings=vars(args))


def _fmt(times: list[float]) -> str:
    return "[" + ", ".join(f"{t:.2f}" for t in times) + "]"


def _acc(scores: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if not k.endswith("_loss")}


if __name__ == "__main__":
    main()
