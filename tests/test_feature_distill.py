"""Feature distillation: the penalty against a hand computation on a linear backbone (value and gradient), the
frozen teacher through a real run (unchanged, never given a gradient, replaced at each task of a sequence), that
it keeps the features closer to the pretrained ones than plain fine-tuning, and that it runs on a model loaded
from outside (the tiny Hugging Face encoder) without pretraining tasks."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import small_model
from test_model_families import example_config
from torch import nn

from research.config import validate_config
from research.data.tasks import Task, TaskSet
from research.methods import FinetuneContext, HeadBatch, TrainStep, build_method
from research.methods.feature_distill import FeatureDistill, feature_penalty
from research.models.modes import eval_mode
from research.models.multihead import MultiHeadNet
from research.training import run

OLD = "digits_0_4"


def _task(name: str, role: str, n: int) -> Task:
    return Task(name, role, name, tuple(str(i) for i in range(n)), {})  # type: ignore[arg-type]


def prepared_by_hand(model: MultiHeadNet, lam: float) -> FeatureDistill:
    """The method prepared on ``model`` (head ``old`` pretrained, ``new`` being fine-tuned), as a run would."""
    tasks = TaskSet([_task("old", "pretrain", 2)], [_task("new", "finetune", 2)], {"old": 2, "new": 2})
    names = [n for n, _ in model.named_parameters()]
    ctx = FinetuneContext(model, tasks, tasks.finetune[0], 0, 16, names, [])
    method = build_method({"name": "feature_distill", "lam": lam})
    assert isinstance(method, FeatureDistill)
    method.prepare(model, ctx)
    return method


def linear_model() -> MultiHeadNet:
    """A backbone that is one linear map W (2×3, no bias): the features of x are W x, computable by hand."""
    model = MultiHeadNet(nn.Linear(3, 2, bias=False), feature_dim=2)
    with torch.no_grad():
        model.backbone.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    model.add_head("old", 2, generator=torch.Generator().manual_seed(0))
    model.add_head("new", 2, generator=torch.Generator().manual_seed(1))
    return model


def step_of(model: MultiHeadNet, x: torch.Tensor, head: str = "new") -> TrainStep:
    batch = HeadBatch(head, x, torch.zeros(len(x), dtype=torch.long))
    return TrainStep([batch], [model(x, head)], 0)


# --------------------------------------------------------------------------------------------- the formula


def test_the_penalty_is_zero_at_the_teacher_and_matches_a_hand_computation() -> None:
    lam = 2.0
    model = linear_model()
    method = prepared_by_hand(model, lam)
    x = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])

    term = method.loss_terms(model, step_of(model, x))["feature_distill"]
    term.backward()
    assert term.item() == 0.0 and torch.equal(model.backbone.weight.grad, torch.zeros(2, 3))

    # W = W₀ + Δ: the features move by Δ x, so the term is λ · mean_i ‖Δ x_i‖².
    delta = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, -1.0]])
    with torch.no_grad():
        model.backbone.weight.add_(delta)
    model.zero_grad()
    term = method.loss_terms(model, step_of(model, x))["feature_distill"]
    # Δ x₁ = (0.5, −3): 0.25 + 9 = 9.25; Δ x₂ = (1, −1): 2; mean 5.625; times λ = 2.
    assert term.item() == pytest.approx(11.25)
    term.backward()
    # d/dW λ · (1/n) Σ_i ‖Δ x_i‖² = λ · (2/n) Σ_i (Δ x_i) x_iᵀ
    expected = lam * 2 / len(x) * (x @ delta.T).T @ x
    torch.testing.assert_close(model.backbone.weight.grad, expected)
    # The teacher is the model before the change, frozen: it has no gradient and kept W₀.
    assert method.teacher is not None and method.teacher.weight.grad is None
    assert not method.teacher.weight.requires_grad and not method.teacher.training
    torch.testing.assert_close(method.teacher.weight, model.backbone.weight.detach() - delta)


def test_feature_penalty_sums_over_dimensions_and_averages_over_examples() -> None:
    features = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert feature_penalty(features, torch.zeros(2, 2)).item() == pytest.approx((25 + 1) / 2)
    maps = torch.ones(3, 2, 2, 2)  # more than one feature dimension: every one of them is summed
    assert feature_penalty(maps, torch.zeros_like(maps)).item() == pytest.approx(8.0)


def test_with_lam_zero_there_is_no_term_and_no_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    model = linear_model()
    method = prepared_by_hand(model, 0.0)
    assert method.teacher is not None
    monkeypatch.setattr(method.teacher, "forward", lambda x: pytest.fail("the teacher ran with lam=0"))
    monkeypatch.setattr(model, "features", lambda x: pytest.fail("a second student forward ran with lam=0"))
    assert method.loss_terms(model, step_of(model, torch.randn(4, 3))) == {}


def test_teacher_uses_running_statistics_and_the_student_does_not_move_them() -> None:
    """With BatchNorm: the teacher is in eval mode (running statistics), and the student's second forward
    normalises with the batch's statistics without folding them into the running ones again."""
    model = small_model(batchnorm=True)
    model.add_head("new", 2)
    method = prepared_by_hand(model, 1.0)
    pretrained = copy.deepcopy(model).eval()
    model.train()
    x = torch.randn(16, 4) * 2 + 1
    step = step_of(model, x)  # the module's own forward, which folds this batch into the statistics once
    running = [b.clone() for b in model.buffers()]
    term = method.loss_terms(model, step)["feature_distill"]
    assert all(torch.equal(a, b) for a, b in zip(running, model.buffers(), strict=True))
    with torch.no_grad():
        eval_features = pretrained.features(x)
        train_features = model.features(x)
    torch.testing.assert_close(term.detach(), feature_penalty(train_features, eval_features))
    assert term.item() > 0  # the same weights, but batch statistics against running ones


# --------------------------------------------------------------------------------------------- real runs


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Records, for every ``prepare`` of a run, the backbone it saw and the teacher it made, and at ``finish``
    the teacher and the fine-tuned model, with the features of each on the pretraining task's test inputs."""
    seen: dict[str, list] = {"starts": [], "teachers": [], "end": []}
    prepare, finish = FeatureDistill.prepare, FeatureDistill.finish

    def watched_prepare(self, model, ctx):
        seen["starts"].append(copy.deepcopy(model.backbone).cpu())
        prepare(self, model, ctx)
        seen["teachers"].append(self.teacher)

    def watched_finish(self, model, ctx, score):
        x_old = ctx.tasks.pretrain[0].splits["test"][0]
        with torch.no_grad(), eval_mode(model), eval_mode(seen["starts"][0]) as pretrained:
            distance = feature_penalty(model.features(x_old), pretrained(x_old))
        seen["end"].append({"teacher": self.teacher, "model": model, "old_feature_distance": float(distance)})
        return finish(self, model, ctx, score)

    monkeypatch.setattr(FeatureDistill, "prepare", watched_prepare)
    monkeypatch.setattr(FeatureDistill, "finish", watched_finish)
    return seen


def test_the_teacher_stays_the_pretrained_backbone_and_gets_no_gradient(make_cfg, watched) -> None:
    result = run(make_cfg("method.name=feature_distill", "method.lam=1.0", "logging.log_every_n_steps=1"))
    assert result.summary["status"] == "completed"
    (start,), (teacher,) = watched["starts"], watched["teachers"]
    end = watched["end"][0]
    assert end["teacher"] is teacher  # one teacher for the whole task, never replaced
    pretrained = start.state_dict()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value.cpu(), pretrained[name]), name
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())
    moved = end["model"].backbone.state_dict()
    assert any(not torch.equal(moved[n].cpu(), v) for n, v in pretrained.items())  # the student did train

    logged = result.metrics
    term = logged[logged.metric == "train_loss_feature_distill"].set_index("step").value
    assert len(term) == result.summary["steps"] and term.iloc[0] == 0.0 and (term.iloc[1:] > 0).all()
    info = result.summary["method_info"]
    assert info["lam"] == 1.0 and info["feature_dim"] == 32
    assert info["teacher_parameters"] == sum(p.numel() for p in teacher.parameters())
    assert info["teachers"] == [{"task_index": 0, "task": "digits_5_9"}]


def test_it_keeps_features_closer_to_the_pretrained_ones_than_finetune(make_cfg, watched) -> None:
    free = run(make_cfg("method.name=feature_distill", "method.lam=0"))
    pulled = run(make_cfg("method.name=feature_distill", "method.lam=1.0"))
    loose, tight = (e["old_feature_distance"] for e in watched["end"])
    assert loose > 0.5 and tight < 0.2 * loose
    # ... and with them the old task's head keeps working better.
    assert pulled.summary["final"][OLD]["acc"] > free.summary["final"][OLD]["acc"]


def test_in_a_sequence_the_teacher_is_the_model_each_task_starts_from(make_cfg, watched) -> None:
    cfg = make_cfg("method.name=feature_distill", "train.epochs=1", experiment="sequence_digits.yaml")
    result = run(cfg)
    assert result.summary["status"] == "completed"
    starts, teachers = watched["starts"], watched["teachers"]
    assert len(starts) == len(teachers) == 2
    for start, teacher in zip(starts, teachers, strict=True):  # each teacher: the backbone as its task began
        for name, value in teacher.state_dict().items():
            assert torch.equal(value.cpu(), start.state_dict()[name]), name
    first, second = (t.state_dict() for t in teachers)
    assert any(not torch.equal(first[n], second[n]) for n in first)  # the second is not the pretrained model
    tasks = [t.name for t in cfg.finetune.tasks]
    assert result.summary["method_info"]["teachers"] == [
        {"task_index": i, "task": name} for i, name in enumerate(tasks)
    ]


def test_it_runs_on_a_loaded_hf_model_without_pretraining_tasks(family_example, out: Path) -> None:
    example = family_example("hf")
    cfg = example_config(example, out, "feature_distill", pretrain=False)
    cfg = validate_config({**cfg.model_dump(mode="json"), "method": {"name": "feature_distill", "lam": 1.0}})
    assert not cfg.pretrain.tasks
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    metrics = result.metrics
    assert set(metrics.task) == {t["name"] for t in example.finetune_tasks}
    term = metrics[metrics.metric == "train_loss_feature_distill"].value.to_numpy()
    assert len(term) == result.summary["steps"] and np.isfinite(term).all() and term[-1] > 0
    info = result.summary["method_info"]
    assert info["teacher_parameters"] > 0 and info["feature_dim"] > 0


@pytest.mark.slow
def test_two_ddp_processes_measure_what_one_does(tmp_path: Path) -> None:
    """Each process pulls the features of its own half of every batch toward the same teacher; DDP averages the
    gradients: every measurement equals the single-process run's to float rounding (as for ``lwf``, ``l2sp``)."""
    from test_ddp import DDP, SPLIT, only_run, research_run

    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir()
    double.mkdir()
    one = research_run(SPLIT, single, "method.name=feature_distill", "method.lam=1.0")
    assert one.returncode == 0, one.stderr[-2000:]
    two = research_run(SPLIT, double, "method.name=feature_distill", "method.lam=1.0", *DDP)
    assert two.returncode == 0, two.stderr[-2000:]
    a = pd.read_parquet(only_run(single) / "metrics.parquet")
    b = pd.read_parquet(only_run(double) / "metrics.parquet")
    assert a[["step", "task", "metric"]].equals(b[["step", "task", "metric"]])
    assert "train_loss_feature_distill" in set(a.metric)
    np.testing.assert_allclose(b.value, a.value, rtol=1e-5, atol=1e-6)
