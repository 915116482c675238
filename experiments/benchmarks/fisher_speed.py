"""The exact diagonal Fisher with ``torch.func`` against a per-sample Python loop: speed and agreement.

The estimator is ``exact`` in ``research.methods.fisher.fisher_diagonal`` (what EWC uses by default):

    F = 1/N Σ_n Σ_y p(y|x_n) · (∇_θ log p(y|x_n))²      in eval mode, over the parameters named

The library computes it per chunk of examples: in closed form for linear layers (one batched backward pass per
class, then Σ_n (Σ_y p_y δ_y²)(a²)ᵀ), and with ``vmap(jacrev(log p))`` (one Jacobian row per class and example) for
every other layer. The reference here is the textbook loop: for every example, one forward pass, then one backward
pass per class (``torch.autograd.grad`` of log p(y|x), graph retained), each squared gradient weighted by p(y|x).
Both run on the same model, the same weights and the same examples (training inputs of the classes 0–4 task, a
5-class head, seeded random weights: the cost does not depend on the weight values), the library in minibatches of
64 as EWC calls it. Repetitions alternate between the two; the median times are compared, and the largest absolute
difference between the two Fisher diagonals is reported (target: at most 1e-5).

Models: on MNIST-1D the MLP 40-512-512 of overhead.py (286 k parameters) and the 1-D CNN 32-32-32 of
experiments/mnist1d.yaml (6.5 k); on split digits the demo's MLP 64-128-128 (26 k).

    uv run python experiments/benchmarks/fisher_speed.py [--examples 300] [--repeats 3]
    uv run python experiments/benchmarks/fisher_speed.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import Row, limit_threads, print_rows, spread, write_json
from torch import Tensor, nn
from torch.nn import functional as F

from research.config import ModelConfig, validate_config
from research.data import build_tasks
from research.methods.base import HeadBatch
from research.methods.fisher import eval_mode, fisher_diagonal
from research.models import build_model

BENCHMARK = "fisher_speed"
# label -> (model, data source): the MNIST-1D models of overhead.py and experiments/mnist1d.yaml, and the
# split-digits MLP of the demo.
MODELS = {
    "MLP 40-512-512 (MNIST-1D)": (ModelConfig(arch="mlp", hidden=[512, 512]), "mnist1d"),
    "CNN 1-D 32-32-32 (MNIST-1D)": (ModelConfig(arch="cnn", channels=[32, 32, 32]), "mnist1d"),
    "MLP 64-128-128 (split digits)": (ModelConfig(arch="mlp", hidden=[128, 128]), "digits"),
}


def task_inputs(source: str, count: int) -> Tensor:
    """Training inputs of the source's classes 0–4 task (the pretraining task of the experiments)."""
    cfg = validate_config(
        {
            "data": {"mnist1d_samples": 4000},
            "pretrain": {"tasks": [{"name": "old", "source": source, "classes": [0, 1, 2, 3, 4]}]},
            "finetune": {"tasks": [{"name": "new", "source": source, "classes": [5, 6, 7, 8, 9]}]},
        }
    )
    return build_tasks(cfg).pretrain[0].splits["train"][0][:count]


def loop_exact(model: nn.Module, head: str, x: Tensor, names: list[str]) -> dict[str, Tensor]:
    """Σ_y p(y|x) g_y² averaged over examples, one example and one class at a time."""
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    fisher = [torch.zeros_like(p) for p in params]
    with eval_mode(model):
        for xi in x:
            log_probs = F.log_softmax(model(xi.unsqueeze(0), head), dim=-1).squeeze(0)
            probs = log_probs.detach().exp()
            classes = len(log_probs)
            for c in range(classes):
                grads = torch.autograd.grad(log_probs[c], params, retain_graph=c < classes - 1)
                for total, g in zip(fisher, grads, strict=True):
                    total.add_(g.pow(2), alpha=float(probs[c]))
    return {n: f / len(x) for n, f in zip(names, fisher, strict=True)}


def library_exact(model: nn.Module, head: str, x: Tensor, names: list[str], batch_size: int) -> dict[str, Tensor]:
    y = torch.zeros(len(x), dtype=torch.long)  # unused by the exact estimator
    batches = [HeadBatch(head, x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return fisher_diagonal(model, batches, names, "exact")


def timed(fn, *args) -> tuple[float, dict[str, Tensor]]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def measure(label: str, model_cfg: ModelConfig, x: Tensor, repeats: int, batch_size: int) -> list[Row]:
    torch.manual_seed(0)
    model = build_model(model_cfg, tuple(x.shape[1:]), {"old": 5})
    names = [n for n, _ in model.named_parameters()]
    count = sum(p.numel() for p in model.parameters())
    library_exact(model, "old", x[:batch_size], names, batch_size)  # warm-up: first-call costs of torch.func
    loop_times, library_times = [], []
    for _ in range(repeats):  # alternate, so drifts in machine load hit both alike
        seconds, reference = timed(loop_exact, model, "old", x, names)
        loop_times.append(seconds)
        seconds, ours = timed(library_exact, model, "old", x, names, batch_size)
        library_times.append(seconds)
    max_abs = max(float((ours[n] - reference[n]).abs().max()) for n in names)
    scale = max(float(reference[n].abs().max()) for n in names)
    max_rel = max(
        float(((ours[n] - reference[n]).abs() / reference[n].abs().clamp_min(1e-12 * scale)).max()) for n in names
    )
    ratio = statistics.median(loop_times) / statistics.median(library_times)
    print(f"\n{label}: {count:,} parameters, {len(x)} examples, 5 classes ({len(x) * 5} backward passes in the loop)")
    print(f"  per-sample loop    : median {statistics.median(loop_times):7.3f} s  {spread(loop_times)}")
    print(f"  torch.func (vmap)  : median {statistics.median(library_times):7.3f} s  {spread(library_times)}")
    verdict = "faster" if ratio >= 1 else f"SLOWER than the loop ({1 / ratio:.1f}× its time)"
    print(f"  speed-up loop / torch.func: {ratio:.2f}×  (target >= 10): torch.func is {verdict}")
    print(f"  agreement: max |difference| {max_abs:.2e} (largest Fisher entry {scale:.2e}), max relative {max_rel:.2e}")
    details = {"parameters": count, "examples": len(x), "loop_seconds": loop_times, "vmap_seconds": library_times}
    return [
        Row(BENCHMARK, f"{label}: exact Fisher, per-sample loop / torch.func", ratio, "x", ">=", 10.0, details=details),
        Row(
            BENCHMARK,
            f"{label}: max |Fisher(torch.func) − Fisher(loop)|",
            max_abs,
            "",
            "<=",
            1e-5,
            details={"max_relative": max_rel, "largest_entry": scale},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="the library's minibatch (EWC's default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 examples, 1 repetition")
    parser.add_argument("--json", help="write the result rows to this file")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.repeats = 64, 1
    limit_threads(args.threads)
    rows = []
    for label, (model_cfg, source) in MODELS.items():
        rows += measure(label, model_cfg, task_inputs(source, args.examples), args.repeats, args.batch_size)
    print_rows(f"{BENCHMARK}: medians of {args.repeats} alternating repetitions", rows)
    write_json(args.json, BENCHMARK, rows, args.quick, settings=vars(args))


if __name__ == "__main__":
    main()
