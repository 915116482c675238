"""Our framework against avalanche-lib 0.6 on the same fine-tuning protocol: wall time and final accuracies.

Both sides fine-tune the same model (an MLP that ``research.models.build_model`` builds, one head per task), from
the same pretrained weights (cached by our pipeline and loaded into both), on the same new task with the same
new-head initialisation, epochs, batch size and Adam optimizer, and both score every task (accuracy and loss on
its test split) at step 0, every N optimizer steps and at the end. Two settings:

  mnist1d-mlp512  MNIST-1D classes 0–4 → 5–9, MLP 40-512-512, batch 64, 20 epochs (420 steps), N = 25
  split-digits    experiments/split_digits.yaml (digits 0–4 → 5–9, MLP 64-128-128, batch 32), 10 epochs
                  (190 steps), N = 6

and three methods:

  finetune   ours: method.name=finetune             avalanche: Naive
  ewc        ours: ewc, fisher=batched, λ = 2·λ_av  avalanche: Naive + EWCPlugin(ewc_lambda=λ_av)
  replay     ours: replay, 200 examples, ratio 0.5  avalanche: Naive + ReplayPlugin(mem_size=200)

How the avalanche side is made to do the same work:
- The two tasks are one avalanche benchmark (``benchmark_from_datasets``, ``with_task_labels``,
  ``with_classes_timeline``): experience 0 is the pretraining task (task label 0), experience 1 the new task
  (task label 1); our model is wrapped in a ``MultiTaskModule`` that sends task label t to head t. Training
  runs on experience 1 only, and ``eval_streams=[test_stream]`` scores both tasks. The old head is frozen on
  both sides.
- Evaluation schedule: avalanche's ``eval_every=N, peval_mode="iteration"`` is not our schedule: its
  PeriodicEval runs before the strategy's Clock counts the iteration, so it evaluates after updates 1, N+1,
  2N+1, … (plus before training and at the end). So the strategy gets ``eval_every=0`` (PeriodicEval then
  evaluates before training and at the end of the experience only) and a plugin that calls ``strategy.eval``
  on the evaluation streams after updates N, 2N, … (as PeriodicEval does). The final evaluation has no
  duplicate check, so N must not divide the number of steps; the script refuses such N and checks that both
  sides evaluated the same number of times.
- Batch order (finetune, ewc): the avalanche strategy's train loader yields the same index batches as our
  ``TensorBatches`` (same seed, same epochs), through a plain ``DataLoader`` over the avalanche dataset with
  its own collate function. That loader is a little faster than avalanche's default ``TaskBalancedDataLoader``
  (1.3 vs 1.8 ms per batch of 64 MNIST-1D examples, measured once), so the choice favours avalanche. Replay
  keeps avalanche's own ``ReplayDataLoader`` (its own shuffling and memory draws).
- EWC: avalanche computes importances after an experience, on that experience. Here the pretraining is
  experience 0: a subclass computes ``EWCPlugin.compute_importances`` on the pretraining training data before
  training (inside the timed ``train`` call, as our Fisher is inside our fine-tuning stage), stores it as
  experience 0's importance, and the strategy's clock counts one past experience, so avalanche's own
  ``before_backward`` adds its own penalty. Our ``batched`` estimator is avalanche's importance, and our λ is
  twice avalanche's (we add λ/2·ΣF(θ−θ*)², avalanche λ·ΣF(θ−θ*)²; see tests/test_avalanche_ewc.py).
- Replay: avalanche's buffer (a ``ReservoirSamplingBuffer`` of 200) is filled, before training, with exactly
  the 200 pretraining examples our replay buffer holds; avalanche then draws memory batches of the training
  batch size (our ratio 0.5: as many replayed as new examples per step; only on an epoch's short last batch
  does avalanche replay a full batch where we replay as many as the batch holds).
- Work that serves only a next task is skipped on the avalanche side, as we do not do it: computing EWC
  importances on the new task after training, and adding the new task to the replay buffer.

Timed: our ``research.training.run(cfg)`` (W&B disabled, and again with W&B offline) end to end, and its
fine-tuning stage (summary.json ``timings.finetune_seconds``); avalanche's ``strategy.train`` with its periodic
evaluations, and its end to end (tasks, cached weights, model, benchmark, strategy, train). Repetitions use
seeds 0, 1, …, alternate between the sides, and the medians are compared; final accuracies are averaged over
the seeds (replay's random draws differ between the sides, so its accuracies agree only on average).

    uv run python experiments/benchmarks/vs_avalanche.py [--settings ...] [--methods ...] [--repeats 3]
    uv run python experiments/benchmarks/vs_avalanche.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.models import MultiTaskModule
from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, ReplayPlugin, SupervisedPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.supervised import Naive
from avalanche.training.utils import copy_params_dict
from common import Row, limit_threads, mnist1d_mlp512, print_rows, scratch_out, spread, write_json
from torch import nn
from torch.utils.data import DataLoader

from research.config import ExperimentConfig, read_experiment, validate_config
from research.data import TensorBatches, build_tasks
from research.data.tasks import TaskSet
from research.methods import build_method
from research.models.multihead import MultiHeadNet
from research.training import run
from research.training.finetune import finetune_model
from research.training.pretrain import pretrained_weights

BENCHMARK = "vs_avalanche"
AVALANCHE_EWC_LAMBDA = 1e5  # strong enough to change the trajectory visibly (batched F is about F/B)
BUFFER_SIZE = 200

ROOT = Path(__file__).resolve().parents[2]

# The fixed part of each setting; epochs and the evaluation interval come from SETTINGS (or the command line).
MNIST1D: dict[str, Any] = mnist1d_mlp512("benchmark_vs_avalanche")
# (base experiment, epochs, eval every N steps, quick epochs, quick N). N must not divide the step count.
SETTINGS: dict[str, tuple[dict[str, Any] | Path, int, int, int, int]] = {
    # MNIST-1D, MLP 40-512-512, batch 64: 21 steps per epoch, most of a step is the model's own compute.
    "mnist1d-mlp512": (MNIST1D, 20, 25, 2, 10),
    # experiments/split_digits.yaml (the demo's setting), MLP 64-128-128, batch 32: 19 steps per epoch, a small
    # model, where the per-step cost of the framework around the model matters most.
    "split-digits": (ROOT / "experiments" / "split_digits.yaml", 10, 6, 2, 6),
}
COMMON: dict[str, Any] = {
    "device": "cpu",
    "train": {"optimizer": "adam", "weight_decay": 0.0},
    "eval": {"split": "test", "batch_size": 2048},
    "logging": {"progress": False},
}

OUR_METHODS: dict[str, dict[str, Any]] = {
    "finetune": {"name": "finetune"},
    "ewc": {
        "name": "ewc",
        "fisher": "batched",  # avalanche's importance: squared minibatch-mean gradients
        "lam": 2 * AVALANCHE_EWC_LAMBDA,  # λ/2·ΣF(θ−θ*)² here, λ·ΣF(θ−θ*)² there
        "fisher_samples": None,  # avalanche uses the whole experience
        "fisher_batch_size": None,  # set to the training batch size below (avalanche uses train_mb_size)
    },
    "replay": {"name": "replay", "buffer_size": BUFFER_SIZE, "selection": "reservoir", "ratio": 0.5},
}
AVALANCHE_NAMES = {"finetune": "Naive", "ewc": "Naive + EWCPlugin", "replay": "Naive + ReplayPlugin"}


# ------------------------------------------------------------------------------------------ avalanche side


class TaskHeads(MultiTaskModule):
    """Our multi-head model as avalanche sees one: task label t is scored by head ``heads[t]``."""

    def __init__(self, net: MultiHeadNet, heads: list[str]) -> None:
        super().__init__()
        self.net = net
        self.head_names = heads
        # MultiTaskModule sizes its output by the largest class label seen in adaptation; the step-0
        # evaluation comes before any training adaptation, so the size is set here.
        self.max_class_label = max(net.heads[h].out_features for h in heads)

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.net(x, self.head_names[task_label])


class SameOrder:
    """A batch sampler yielding the index batches our ``TensorBatches`` yields (same seed, same epochs)."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.batches = TensorBatches(torch.arange(size), batch_size=batch_size, seed=seed)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for (idx,) in self.batches:
            yield idx.tolist()


class SameOrderNaive(Naive):
    """avalanche's Naive strategy, its training batches in our order (see the module docstring)."""

    def __init__(self, *, order_seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order_seed = order_seed

    def make_train_dataloader(self, num_workers=0, shuffle=True, pin_memory=None, persistent_workers=False, **kw):
        data = self.adapted_dataset
        self.dataloader = DataLoader(
            data, batch_sampler=SameOrder(len(data), self.train_mb_size, self.order_seed), collate_fn=data.collate_fn
        )


class EveryNSteps(SupervisedPlugin):
    """Evaluates the strategy's evaluation streams after updates N, 2N, … (as PeriodicEval's ``_peval`` does).

    Plugins run before the strategy's Clock, which counts an iteration after every other plugin has seen it,
    so at ``after_training_iteration`` the update just made is number ``train_exp_iterations + 1``."""

    def __init__(self, every_n_steps: int) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps

    def after_training_iteration(self, strategy, **kwargs):
        if (strategy.clock.train_exp_iterations + 1) % self.every_n_steps == 0:
            for stream in strategy._eval_streams:
                strategy.eval(stream)


class PretrainedEWC(EWCPlugin):
    """EWCPlugin with the pretraining as experience 0: its importances are computed, by avalanche's own
    ``compute_importances``, on the pretraining data before training on the new task."""

    def __init__(self, ewc_lambda: float, pretrain_data) -> None:
        super().__init__(ewc_lambda=ewc_lambda)
        self.pretrain_data = pretrain_data

    def before_training(self, strategy, **kwargs):
        self.importances[0] = self.compute_importances(
            strategy.model,
            strategy._criterion,
            strategy.optimizer,
            self.pretrain_data,
            strategy.device,
            strategy.train_mb_size,
        )
        self.saved_params[0] = copy_params_dict(strategy.model)

    def after_training_exp(self, strategy, **kwargs):
        pass  # importances of the new task would serve a next task; there is none (ours skips it too)


class PretrainedReplay(ReplayPlugin):
    """ReplayPlugin whose buffer holds given pretraining examples before training on the new task."""

    def __init__(self, buffer_data) -> None:
        super().__init__(mem_size=BUFFER_SIZE, storage_policy=ReservoirSamplingBuffer(max_size=BUFFER_SIZE))
        self.buffer_data = buffer_data

    def before_training(self, strategy, **kwargs):
        self.storage_policy.update_from_dataset(self.buffer_data)

    def after_training_exp(self, strategy, **kwargs):
        pass  # adding the new task to the buffer would serve a next task; there is none (ours skips it too)


def avalanche_dataset(x: torch.Tensor, y: torch.Tensor, task: int | torch.Tensor):
    labels = task if isinstance(task, int) else task.tolist()
    return _make_taskaware_tensor_classification_dataset(x, y, targets=y.tolist(), task_labels=labels)


def our_buffer(cfg: ExperimentConfig, tasks: TaskSet, state: dict[str, torch.Tensor]):
    """The examples our replay buffer holds for this seed, as an avalanche dataset (task label = head index)."""
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state)
    method.prepare(model, ctx)
    return avalanche_dataset(method.buffer_x, method.buffer_y, method.buffer_head)


def avalanche_run(cfg: ExperimentConfig, method: str, buffer_data=None) -> dict[str, Any]:
    """One avalanche run of the protocol; the same seed gives the same new head and (finetune, ewc) batch order."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)  # avalanche's own random draws (replay memory, buffer weights)
    tasks = build_tasks(cfg)
    state = pretrained_weights(cfg, tasks).state
    net, _ = finetune_model(cfg, tasks, build_method({"name": "finetune"}), state)  # seeded new head, old frozen
    (old,), (new,) = tasks.pretrain, tasks.finetune
    model = TaskHeads(net, [old.head, new.head])
    benchmark = with_classes_timeline(  # class and task attributes of each experience, as MultiTaskModule needs
        with_task_labels(
            benchmark_from_datasets(
                train=[avalanche_dataset(*old.splits["train"], 0), avalanche_dataset(*new.splits["train"], 1)],
                test=[avalanche_dataset(*t.splits[cfg.eval.split], i) for i, t in enumerate([old, new])],
            )
        )
    )
    plugins: list[SupervisedPlugin] = [EveryNSteps(cfg.eval.every_n_steps)]
    if method == "ewc":
        plugins.append(PretrainedEWC(AVALANCHE_EWC_LAMBDA, benchmark.train_stream[0].dataset))
    elif method == "replay":
        plugins.append(PretrainedReplay(buffer_data))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loss_metrics(experience=True), loggers=[])
    strategy = SameOrderNaive(
        order_seed=cfg.seed,
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=cfg.train.lr),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=cfg.train.batch_size,
        train_epochs=cfg.train.epochs,
        eval_mb_size=cfg.eval.batch_size,
        device=cfg.device,
        plugins=plugins,
        evaluator=evaluator,
        eval_every=0,  # PeriodicEval: before training and at the end; EveryNSteps: every N steps
    )
    strategy.clock.train_exp_counter = 1  # the pretraining was experience 0 (EWC penalises from experience 1 on)
    train_started = time.perf_counter()
    strategy.train(benchmark.train_stream[1], eval_streams=[benchmark.test_stream])
    finished = time.perf_counter()
    metrics = evaluator.get_all_metrics()
    accs = {}
    evaluations = set()
    for i, task in enumerate([old, new]):
        key = f"Top1_Acc_Exp/eval_phase/test_stream/Task{i:03d}/Exp{i:03d}"
        accs[task.name] = metrics[key][1][-1]
        evaluations.add(len(metrics[key][1]))
    (count,) = evaluations
    return {
        "train": finished - train_started,
        "end_to_end": finished - started,
        "acc": accs,
        "evaluations": count,
        "steps": strategy.clock.train_exp_iterations,
    }


# ------------------------------------------------------------------------------------------ our side


def our_run(cfg: ExperimentConfig) -> dict[str, Any]:
    started = time.perf_counter()
    result = run(cfg, force=True)
    seconds = time.perf_counter() - started
    summary = result.summary
    return {
        "finetune": summary["timings"]["finetune_seconds"],
        "end_to_end": seconds,
        "acc": {task: values["acc"] for task, values in summary["final"].items()},
        "evaluations": summary["evaluations"],
        "steps": summary["steps"],
    }


def make_config(setting: Setting, out: str, method: str, seed: int, wandb: str) -> ExperimentConfig:
    base = setting.base
    raw = read_experiment(base) if isinstance(base, Path) else copy.deepcopy(base)
    for section, values in COMMON.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    # Ours computes with as many CPU threads as avalanche's side, which runs with the process's own.
    raw.update(out=out, seed=seed, device=COMMON["device"], threads=torch.get_num_threads())
    raw["train"]["epochs"] = setting.epochs
    raw["eval"]["every_n_steps"] = setting.eval_every
    raw["logging"]["wandb"] = wandb
    raw["method"] = dict(OUR_METHODS[method])
    if method == "ewc":
        raw["method"]["fisher_batch_size"] = raw["train"]["batch_size"]
    return validate_config(raw)


@dataclass
class Setting:
    name: str
    base: dict[str, Any] | Path
    epochs: int
    eval_every: int
    repeats: int


def measure(setting: Setting, out: str, method: str) -> tuple[list[Row], dict[str, Any]]:
    sides: dict[str, list[dict[str, Any]]] = {"ours": [], "ours_offline": [], "avalanche": []}
    for seed in range(setting.repeats):  # alternate the sides, so drifts in machine load hit all alike
        cfg = make_config(setting, out, method, seed, "disabled")
        buffer = None
        if method == "replay":
            tasks = build_tasks(cfg)
            buffer = our_buffer(cfg, tasks, pretrained_weights(cfg, tasks).state)
        sides["ours"].append(our_run(cfg))
        sides["ours_offline"].append(our_run(make_config(setting, out, method, seed, "offline")))
        sides["avalanche"].append(avalanche_run(cfg, method, buffer))

    first = sides["ours"][0]
    for side, results in sides.items():
        for r in results:
            if r["evaluations"] != first["evaluations"] or r["steps"] != first["steps"]:
                raise SystemExit(
                    f"{method}: {side} did {r['steps']} steps / {r['evaluations']} evaluations, ours "
                    f"{first['steps']} / {first['evaluations']}: not the same protocol"
                )

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in sides[side])

    def times(side: str, key: str) -> str:
        return spread([r[key] for r in sides[side]])

    def mean_acc(side: str, task: str) -> float:
        return 100 * statistics.fmean(r["acc"][task] for r in sides[side])

    tasks = list(first["acc"])
    label = f"{setting.name}, {method} (ours) vs {AVALANCHE_NAMES[method]}"
    print(
        f"\n{label}: {first['steps']} steps, {first['evaluations']} evaluations of every task, "
        f"{setting.repeats} seed(s)"
    )
    print(
        f"  ours, W&B disabled : fine-tuning stage {med('ours', 'finetune'):6.2f} s {times('ours', 'finetune')}"
        f"   end to end {med('ours', 'end_to_end'):6.2f} s {times('ours', 'end_to_end')}"
    )
    print(
        f"  ours, W&B offline  : fine-tuning stage {med('ours_offline', 'finetune'):6.2f} s "
        f"{times('ours_offline', 'finetune')}   end to end {med('ours_offline', 'end_to_end'):6.2f} s "
        f"{times('ours_offline', 'end_to_end')}"
    )
    print(
        f"  avalanche          : train + evals     {med('avalanche', 'train'):6.2f} s {times('avalanche', 'train')}"
        f"   end to end {med('avalanche', 'end_to_end'):6.2f} s {times('avalanche', 'end_to_end')}"
    )
    stage = med("avalanche", "train") / med("ours", "finetune")
    stage_offline = med("avalanche", "train") / med("ours_offline", "finetune")
    e2e = med("avalanche", "end_to_end") / med("ours", "end_to_end")
    e2e_offline = med("avalanche", "end_to_end") / med("ours_offline", "end_to_end")
    print(
        f"  avalanche / ours (medians): fine-tuning stage {stage:.2f} (W&B offline {stage_offline:.2f}), "
        f"end to end {e2e:.2f} (W&B offline {e2e_offline:.2f})   target >= 1.5"
    )
    what = f"{setting.name}, {method}"
    rows = [
        Row(BENCHMARK, f"{what}: fine-tuning stage, avalanche / ours (W&B disabled)", stage, "x", ">=", 1.5),
        Row(BENCHMARK, f"{what}: end to end, avalanche / ours (W&B disabled)", e2e, "x", ">=", 1.5),
        Row(BENCHMARK, f"{what}: end to end, avalanche / ours (W&B offline)", e2e_offline, "x", ">=", 1.5),
    ]
    rows[0].details["with_wandb_offline"] = stage_offline
    print("  final accuracy (mean over seeds), ours vs avalanche:")
    for task in tasks:
        role = "old" if task == tasks[0] else "new"
        ours_acc, theirs = mean_acc("ours", task), mean_acc("avalanche", task)
        pairs = zip(sides["ours"], sides["avalanche"], strict=True)
        per_seed = [100 * (a["acc"][task] - b["acc"][task]) for a, b in pairs]
        print(
            f"    {role} task {task}: {ours_acc:6.2f} % vs {theirs:6.2f} %  (difference per seed, points: "
            f"{spread(per_seed)})"
        )
        rows.append(
            Row(
                BENCHMARK,
                f"{what}: {role} task final accuracy, |ours − avalanche| ({ours_acc:.1f} vs {theirs:.1f} %)",
                abs(ours_acc - theirs),
                "pts",
                "<=",
                1.0,
                details={"ours": ours_acc, "avalanche": theirs, "per_seed_difference": per_seed},
            )
        )
    details = {side: results for side, results in sides.items()}
    return rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", choices=list(OUR_METHODS), default=list(OUR_METHODS))
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the setting's)")
    parser.add_argument("--eval-every", type=int, help="evaluate every task every N steps (default: the setting's)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per side, with seeds 0, 1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 epochs, 1 repetition")
    parser.add_argument("--json", help="write the result rows to this file")
    args = parser.parse_args()
    limit_threads(args.threads)
    rows: list[Row] = []
    details: dict[str, Any] = {}
    with scratch_out() as out:
        for name in args.settings:
            base, epochs, every, quick_epochs, quick_every = SETTINGS[name]
            if args.quick:
                epochs, every = quick_epochs, quick_every
            setting = Setting(
                name, base, args.epochs or epochs, args.eval_every or every, 1 if args.quick else args.repeats
            )
            cfg = make_config(setting, out, "finetune", 0, "offline")
            tasks = build_tasks(cfg)
            steps = setting.epochs * len(
                TensorBatches(tasks.finetune[0].splits["train"][1], batch_size=cfg.train.batch_size)
            )
            if steps % setting.eval_every == 0:
                parser.error(
                    f"{name}: evaluating every {setting.eval_every} steps divides the {steps} steps: avalanche's "
                    "PeriodicEval would evaluate twice at the end (it has no duplicate check); choose another N"
                )
            pretrained_weights(cfg, tasks)  # cache pretraining outside every timing
            our_run(cfg)  # warm-up: W&B's service start (once per process) and first-call costs stay out of timings
            avalanche_run(cfg, "finetune")
            for method in args.methods:
                method_rows, details[f"{name}/{method}"] = measure(setting, out, method)
                rows += method_rows
    print_rows(f"{BENCHMARK}: ratios are avalanche's time over ours (medians); accuracies are means over seeds", rows)
    write_json(args.json, BENCHMARK, rows, args.quick, settings=vars(args), runs=details)


if __name__ == "__main__":
    main()
