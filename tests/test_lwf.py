"""LwF: the distillation term against a hand computation and against avalanche-lib's LearningWithoutForgetting,
where its gradient goes, and real tiny runs (per-task and shared heads, alpha=0 is fine-tuning, it forgets less).

One deliberate difference from Avalanche is pinned below: Avalanche's teacher (``prev_model``) is a deepcopy of
the model as it was after training, in train mode, so with BatchNorm its outputs use the batch's statistics
(and with dropout they are random); ours runs in eval mode. The two agree when Avalanche's teacher is in eval mode.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from avalanche.models import MultiTaskModule
from avalanche.training import LearningWithoutForgetting
from helpers import prepare_method
from torch import nn

import research.methods.lwf as lwf_module
from research.config import ModelConfig, load_config
from research.data.tasks import Task, TaskSet
from research.methods import FinetuneContext, HeadBatch, TrainStep, build_method
from research.models import build_model
from research.training import run

SPLIT = Path(__file__).resolve().parents[1] / "experiments" / "split_digits.yaml"
OLD, NEW = "digits_0_4", "digits_5_9"


def prepared(*overrides: str):
    cfg = load_config(SPLIT, ["model.hidden=[16, 8]", "logging.wandb=disabled", "method.name=lwf", *overrides])
    method, model, ctx, _ = prepare_method(cfg)
    return method, model, ctx


def perturb(module: nn.Module, scale: float = 0.3, seed: int = 7) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def new_step(model: nn.Module, ctx: FinetuneContext, n: int = 16) -> TrainStep:
    x, y = ctx.task.splits["train"]
    batch = HeadBatch(ctx.task.head, x[:n], y[:n])
    return TrainStep([batch], [model(batch.x, batch.head)], 0)


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Σ_k q_k (log q_k − log p_k), averaged over the rows, with q, p the tempered softmaxes, written out."""
    q = torch.exp(teacher / temperature)
    q = q / q.sum(1, keepdim=True)
    p = torch.exp(student / temperature)
    p = p / p.sum(1, keepdim=True)
    return (q * (q.log() - p.log())).sum(1).mean()


# --------------------------------------------------------------------------------------------- the formula


def test_lwf_is_zero_after_prepare_and_matches_a_hand_computation() -> None:
    alpha, temperature = 1.7, 3.0
    method, model, ctx = prepared(f"method.alpha={alpha}", f"method.temperature={temperature}")
    step = new_step(model, ctx)
    assert set(method.loss_terms(model, step)) == {"lwf"}
    assert method.loss_terms(model, step)["lwf"].item() == pytest.approx(0.0, abs=1e-6)  # student == teacher

    pretrained = copy.deepcopy(model).eval()
    perturb(model)
    step = new_step(model, ctx)
    x = step.batches[0].x
    term = method.loss_terms(model, step)["lwf"]
    with torch.no_grad():
        expected = alpha * hand_kl(model(x, OLD), pretrained(x, OLD), temperature)  # no T² factor
    assert term.item() > 0.01
    torch.testing.assert_close(term.detach(), expected, rtol=1e-5, atol=1e-7)


def test_lwf_with_alpha_zero_returns_no_term_and_runs_no_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    method, model, ctx = prepared("method.alpha=0")
    monkeypatch.setattr(method.teacher, "features", lambda x: pytest.fail("the teacher ran with alpha=0"))
    assert method.loss_terms(model, new_step(model, ctx)) == {}


# --------------------------------------------------------------------------------------------- Avalanche


class AvalancheHeads(MultiTaskModule):
    """Avalanche's multi-head convention: task label t -> our head ``heads[t]``."""

    def __init__(self, model: nn.Module, heads: list[str]) -> None:
        super().__init__()
        self.model, self.head_names = model, heads
        self.known_train_tasks_labels = set(range(len(heads)))

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.model(x, self.head_names[task_label])


def _hand_context(model: nn.Module, tasks: TaskSet) -> FinetuneContext:
    names = [n for n, _ in model.named_parameters()]
    return FinetuneContext(model, tasks, tasks.finetune[0], 0, 16, names, [])


def _task(name: str, role: str, head: str, n: int) -> Task:
    return Task(name, role, head, tuple(str(i) for i in range(n)), {})  # type: ignore[arg-type]


@pytest.mark.parametrize("teacher_mode", ["eval", "train"])
def test_lwf_equals_avalanche_with_two_old_heads(teacher_mode: str) -> None:
    """Per-task heads: Avalanche distils every old head it knows (task labels 0, 1) over its seen units."""
    alpha, temperature = 0.7, 2.5
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[12], batchnorm=True), (10,), {"a": 3, "b": 4})
    model.add_head("new", 5)
    with torch.no_grad():  # non-trivial BatchNorm running statistics, so eval and train mode differ
        model.backbone[0][2].running_mean.uniform_(-1, 1)
        model.backbone[0][2].running_var.uniform_(0.5, 2)
    tasks = TaskSet(
        [_task("a", "pretrain", "a", 3), _task("b", "pretrain", "b", 4)],
        [_task("new", "finetune", "new", 5)],
        {"a": 3, "b": 4, "new": 5},
    )
    method = build_method({"name": "lwf", "alpha": alpha, "temperature": temperature})
    method.prepare(model, _hand_context(model, tasks))

    theirs = LearningWithoutForgetting(alpha=alpha, temperature=temperature)
    previous = copy.deepcopy(model)
    theirs.prev_model = AvalancheHeads(previous.eval() if teacher_mode == "eval" else previous.train(), ["a", "b"])
    theirs.prev_classes_by_task.update({0: {0, 1, 2}, 1: {0, 1, 2, 3}})

    perturb(model)
    model.train()
    x = torch.randn(24, 10)
    logits = model(x, "new")
    running = model.backbone[0][2].running_mean.clone()
    ours = method.loss_terms(model, TrainStep([HeadBatch("new", x, torch.zeros(24, dtype=torch.long))], [logits], 0))
    # Our second forward for the old heads does not fold this batch into the running statistics again.
    assert torch.equal(model.backbone[0][2].running_mean, running)
    expected = theirs(x, logits, AvalancheHeads(model, ["a", "b", "new"]))
    if teacher_mode == "eval":
        torch.testing.assert_close(ours["lwf"], expected, rtol=1e-5, atol=1e-7)
    else:  # the deliberate difference: Avalanche's train-mode teacher normalises with the batch's statistics
        assert abs(ours["lwf"].item() - expected.item()) > 1e-3


def test_lwf_equals_avalanche_with_a_shared_head() -> None:
    """A shared head: Avalanche's single-task LwF distils the units of the classes seen before (0..5 of 9)."""
    alpha, temperature = 2.0, 2.0
    torch.manual_seed(1)
    model = build_model(ModelConfig(arch="mlp", hidden=[12]), (10,), {"shared": 6})
    model.resize_head("shared", 9, generator=torch.Generator().manual_seed(0))
    tasks = TaskSet(
        [_task("old", "pretrain", "shared", 6)], [_task("new", "finetune", "shared", 3)], {"shared": 9}, {"shared": 6}
    )
    method = build_method({"name": "lwf", "alpha": alpha, "temperature": temperature})
    method.prepare(model, _hand_context(model, tasks))
    theirs = LearningWithoutForgetting(alpha=alpha, temperature=temperature)
    theirs.prev_model = _OneHead(copy.deepcopy(model).eval(), "shared")
    theirs.prev_classes_by_task[0] = set(range(6))

    perturb(model)
    x = torch.randn(20, 10)
    logits = model(x, "shared")
    ours = method.loss_terms(model, TrainStep([HeadBatch("shared", x, torch.zeros(20, dtype=torch.long))], [logits], 0))
    expected = theirs(x, logits, _OneHead(model, "shared"))
    torch.testing.assert_close(ours["lwf"], expected, rtol=1e-5, atol=1e-7)


class _OneHead(nn.Module):
    """Avalanche calls a single-task model as ``model(x)``; ours takes the head by name."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.head)


# --------------------------------------------------------------------------------------------- gradients, teacher


@pytest.mark.parametrize("train_old_heads", [True, False])
def test_the_gradient_reaches_the_old_heads_only_when_they_train(train_old_heads: bool) -> None:
    method, model, ctx = prepared(f"method.train_old_heads={str(train_old_heads).lower()}")
    old_head = model.heads[OLD]
    assert old_head.weight.requires_grad is train_old_heads
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert set(method.teacher.heads) == {OLD}  # the teacher has no new head
    perturb(model.backbone)
    model.zero_grad()
    method.loss_terms(model, new_step(model, ctx))["lwf"].backward()
    if train_old_heads:
        assert old_head.weight.grad is not None and old_head.weight.grad.abs().sum() > 0
    else:
        assert old_head.weight.grad is None
    assert model.backbone[0][1].weight.grad.abs().sum() > 0
    # The new head plays no part in the distillation term.
    assert model.heads[NEW].weight.grad is None or model.heads[NEW].weight.grad.abs().sum() == 0
    assert all(p.grad is None for p in method.teacher.parameters())


def test_state_dict_round_trip_restores_the_teacher() -> None:
    method, model, ctx = prepared()
    state = {n: t.clone() for n, t in method.state_dict().items()}
    assert "teacher.heads.digits_0_4.weight" in state and "teacher.backbone.0.1.weight" in state
    perturb(model)
    fresh = build_method({"name": "lwf"})
    fresh.load_state_dict(state)  # before prepare: becomes the teacher there, not the (moved) current model
    fresh.prepare(model, ctx)
    step = new_step(model, ctx)
    torch.testing.assert_close(fresh.loss_terms(model, step)["lwf"], method.loss_terms(model, step)["lwf"])
    perturb(method.teacher, seed=3)
    method.load_state_dict(state)  # after prepare: loaded into the teacher
    assert all(torch.equal(t, state[f"teacher.{n}"]) for n, t in method.teacher.state_dict().items())


@pytest.fixture
def prepared_lwf(monkeypatch: pytest.MonkeyPatch) -> list[tuple[lwf_module.LwF, dict, nn.Module]]:
    """Records each LwF that ``run`` prepares, with its teacher's weights and the model at that moment."""
    seen: list = []
    original = lwf_module.LwF.prepare

    def recording(self, model, ctx):
        original(self, model, ctx)
        seen.append((self, {n: t.clone() for n, t in self.teacher.state_dict().items()}, model))

    monkeypatch.setattr(lwf_module.LwF, "prepare", recording)
    return seen


# --------------------------------------------------------------------------------------------- real runs


def _eval(metrics):
    rows = metrics[~metrics.metric.str.startswith("train_")]
    return rows.sort_values(["step", "task", "metric"]).reset_index(drop=True)


def test_a_real_run_logs_lwf_and_never_moves_the_teacher(make_cfg, prepared_lwf) -> None:
    result = run(make_cfg("method.name=lwf", "model.batchnorm=true", "logging.log_every_n_steps=1"))
    assert result.summary["status"] == "completed"
    logged = result.metrics[result.metrics.metric == "train_loss_lwf"].value
    # Not 0 at step 0 even though the weights agree: with BatchNorm the training student normalises with the
    # batch's statistics, the eval-mode teacher with its running ones (as the paper's recorded responses do).
    assert len(logged) == result.summary["steps"] and (logged > 0).all()
    [(method, at_prepare, model)] = prepared_lwf
    # The teacher is the pretrained model (the student as it was before the first update) and stays so,
    # BatchNorm statistics included; the student's old head did move (driven by distillation alone).
    student_at_end = model.state_dict()
    for name, tensor in method.teacher.state_dict().items():
        assert torch.equal(tensor, at_prepare[name]), name
    assert not torch.equal(student_at_end[f"heads.{OLD}.weight"], at_prepare[f"heads.{OLD}.weight"])


def test_alpha_zero_without_old_heads_is_exactly_finetune(make_cfg) -> None:
    ours = run(make_cfg("method.name=lwf", "method.alpha=0", "method.train_old_heads=false"))
    finetune = run(make_cfg("method.name=finetune"))
    assert "train_loss_lwf" not in set(ours.metrics.metric)
    a, b = _eval(ours.metrics), _eval(finetune.metrics)
    assert len(a) > 10
    assert a[["step", "task", "metric"]].equals(b[["step", "task", "metric"]])
    assert (a.value.to_numpy() == b.value.to_numpy()).all()


def test_shared_head_distils_only_the_old_classes_units(make_cfg) -> None:
    method, model, ctx = prepared("model.heads=shared", "method.temperature=1.5")
    assert method.old_units == {"shared": 5}
    head = model.heads["shared"]
    assert head.out_features == 10
    step = new_step(model, ctx)
    assert method.loss_terms(model, step)["lwf"].item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # moving only the new classes' units leaves the distillation term at zero
        head.weight[5:] += 1.0
        head.bias[5:] -= 2.0
    assert method.loss_terms(model, new_step(model, ctx))["lwf"].item() == pytest.approx(0.0, abs=1e-6)

    pretrained = copy.deepcopy(model).eval()
    perturb(model.backbone)
    model.zero_grad()
    step = new_step(model, ctx)
    term = method.loss_terms(model, step)["lwf"]
    x = step.batches[0].x
    with torch.no_grad():
        expected = hand_kl(model(x, "shared")[:, :5], pretrained(x, "shared")[:, :5], 1.5)
    torch.testing.assert_close(term.detach(), expected, rtol=1e-5, atol=1e-7)
    term.backward()
    assert head.weight.grad[:5].abs().sum() > 0 and head.weight.grad[5:].abs().sum() == 0

    result = run(make_cfg("method.name=lwf", "model.heads=shared"))
    assert result.summary["status"] == "completed"
    assert "train_loss_lwf" in set(result.metrics.metric)


def test_strong_lwf_forgets_less_than_finetune(make_cfg) -> None:
    settings = ["train.lr=0.02", "train.epochs=4"]
    finetune = run(make_cfg("method.name=finetune", *settings)).summary["final"]
    lwf = run(make_cfg("method.name=lwf", "method.alpha=10", *settings)).summary["final"]
    assert lwf[OLD]["acc"] > finetune[OLD]["acc"] + 0.15, (lwf, finetune)  # seeds 0-2: 0.93+ vs 0.49-0.67
    assert lwf[NEW]["acc"] > 0.8  # and it still learns the new task
