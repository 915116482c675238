"""EWC and MAS over a sequence of fine-tuning tasks, as their papers define them: EWC keeps one penalty per learned
task (Kirkpatrick et al. 2017), MAS sums each learned task's importance and moves its anchor (Aljundi et al. 2018).
Each is checked through the real pipeline (``research.training.run``) against values computed here by hand from
the weights every task ended with, in both head layouts."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from research.methods.base import HeadBatch, TrainStep
from research.methods.ewc import EWC, EWCConfig, Penalty
from research.methods.fisher import fisher_diagonal
from research.methods.mas import MAS, mas_importance
from research.models.extent import pad_rows
from research.training import run

PRETRAIN, FIRST, SECOND = "digits_0_3", "digits_4_6", "digits_7_9"
SEEN_ROWS = {0: 4, 1: 7}  # a shared head's outputs before fine-tuning task k grows it: the classes learned so far


def _cfg(make_cfg, method: str, heads: str, *overrides: str):
    return make_cfg(
        f"method.name={method}",
        f"model.heads={heads}",
        "train.epochs=1",
        "logging.log_every_n_steps=1",
        *overrides,
        experiment="sequence_digits.yaml",
    )


def _capture(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[dict[str, Any]]:
    """Record, at every ``prepare`` of ``cls``: the method, the model (live) and a copy of it as the task starts
    (the weights the previous task ended with)."""
    seen: list[dict[str, Any]] = []
    original = cls.prepare

    def prepare(self, model, ctx):
        seen.append({"method": self, "model": model, "start": copy.deepcopy(model), "index": ctx.task_index})
        original(self, model, ctx)

    monkeypatch.setattr(cls, "prepare", prepare)
    return seen


def _reference(start: nn.Module, heads: str, index: int) -> nn.Module:
    """The model as the task before fine-tuning task ``index`` left it: with a shared head, only the outputs of
    the classes seen until then (the rows grown for task ``index`` dropped)."""
    model = copy.deepcopy(start)
    if heads == "shared":
        model.resize_head("shared", SEEN_ROWS[index], generator=torch.Generator())
    return model


def _learned_batches(cfg, index: int, heads: str) -> list[HeadBatch]:
    """All training examples of the task learned before fine-tuning task ``index``, through its own head."""
    from research.data import build_tasks

    tasks = build_tasks(cfg)
    task = tasks.pretrain[0] if index == 0 else tasks.finetune[index - 1]
    x, y = task.splits["train"]
    return [HeadBatch(task.head, x, y)]


def _anchored_names(model: nn.Module, heads: str) -> list[str]:
    """What trains and existed before each task: the backbone, and a shared head (per-task heads are new)."""
    names = [n for n, _ in model.named_parameters() if n.startswith("backbone.")]
    return names + (["heads.shared.weight", "heads.shared.bias"] if heads == "shared" else [])


def _first_logged(metrics, term: str, task: str) -> float:
    rows = metrics[(metrics.metric == f"train_loss_{term}") & (metrics.task == task)]
    return float(rows[rows.step == rows.step.min()].value.iloc[0])


# --------------------------------------------------------------------------------------------------- EWC


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_ewc_keeps_one_penalty_per_learned_task(heads: str, make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    lam = 50.0
    cfg = _cfg(make_cfg, "ewc", heads, f"method.lam={lam}", "method.fisher_samples=null")
    seen = _capture(monkeypatch, EWC)
    result = run(cfg)
    assert result.summary["status"] == "completed"
    assert [s["index"] for s in seen] == [0, 1]
    method: EWC = seen[0]["method"]
    assert seen[1]["method"] is method
    names = _anchored_names(seen[0]["model"], heads)
    state = method.state_dict()
    fishers = [{n: state[f"penalty.{t}.fisher.{n}"] for n in names} for t in (0, 1)]
    anchors = [{n: state[f"penalty.{t}.anchor.{n}"] for n in names} for t in (0, 1)]
    assert sorted(state) == sorted(
        f"penalty.{t}.{kind}.{n}" for t in (0, 1) for kind in ("anchor", "fisher") for n in names
    )

    # Each penalty: the Fisher of the task learned before it (the pretraining task, then the first fine-tuning
    # task), estimated as single-task EWC does, on all of that task's data at the weights it ended with, which
    # are also its anchor. Rows a shared head grew since get F = 0.
    for t in (0, 1):
        reference = _reference(seen[t]["start"], heads, t)
        expected = fisher_diagonal(reference, _learned_batches(cfg, t, heads), names, "exact")
        start = dict(seen[t]["start"].named_parameters())
        for n in names:
            rows = expected[n].shape[0]
            torch.testing.assert_close(fishers[t][n][:rows], expected[n], rtol=1e-4, atol=1e-9)
            assert float(fishers[t][n][rows:].abs().sum()) == 0.0, (t, n)
            assert torch.equal(anchors[t][n][:rows], start[n].detach()[:rows]), (t, n)
        assert sum(float(f.sum()) for f in expected.values()) > 0
    if heads == "shared":
        assert fishers[0]["heads.shared.weight"].shape[0] == 10  # padded as the head grew, twice
    assert not torch.equal(anchors[0][names[0]], anchors[1][names[0]])  # the second anchor is not the first

    # The penalty is the sum of the two single-task penalties, at the final weights and at other weights.
    model = seen[0]["model"]

    def by_hand(params: dict[str, torch.Tensor]) -> list[float]:
        return [
            float(sum((fishers[t][n] * (params[n].detach() - anchors[t][n]) ** 2).sum() for n in names)) for t in (0, 1)
        ]

    for shift in (0.0, 0.01):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(shift * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape))
        single = by_hand(dict(moved.named_parameters()))
        assert min(single) > 0
        value = method.loss_terms(moved, TrainStep([], [], 0))["ewc"]
        assert float(value.detach()) == pytest.approx(0.5 * lam * sum(single), rel=1e-5)

    # The pipeline's own loss at the second fine-tuning task's first step: the first penalty, at its start
    # weights (the second is zero there). A running variant anchored at the start would log 0.
    start_loss = by_hand(dict(seen[1]["start"].named_parameters()))
    assert start_loss[1] == pytest.approx(0.0, abs=1e-12)
    assert _first_logged(result.metrics, "ewc", SECOND) == pytest.approx(0.5 * lam * start_loss[0], rel=1e-4)
    assert start_loss[0] > 0

    info = result.summary["method_info"]
    assert [p["fisher_from"] for p in info["penalties"]] == [[PRETRAIN], [FIRST]]
    for t, p in enumerate(info["penalties"]):
        assert p["fisher_trace"] == pytest.approx(float(sum(f.sum() for f in fishers[t].values())), rel=1e-6)
        assert p["fisher_examples"] == len(_learned_batches(cfg, t, heads)[0].y)
        assert p["fisher_seconds"] > 0
    assert info["fisher_trace"] == pytest.approx(sum(p["fisher_trace"] for p in info["penalties"]))


def _toy() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    return model, dict(model.named_parameters())


def test_ewc_sums_its_penalties_and_their_gradients() -> None:
    """Unit level: two hand-made penalties give the sum of both quadratic forms, and ``term_gradient`` is the
    gradient autograd finds for it."""
    torch.manual_seed(0)
    model, params = _toy()
    lam = 3.0
    method = EWC(EWCConfig(lam=lam))
    penalties = []
    for t in range(2):
        fisher = {n: torch.rand_like(p) for n, p in params.items() if n != "1.bias" or t == 1}
        anchor = {n: torch.randn_like(params[n]) for n in fisher}
        penalties.append(Penalty([f"task{t}"], t, fisher, anchor, 10, 0.1))
    method.penalties = penalties
    expected = sum(
        0.5 * lam * (p.fisher[n] * (params[n] - p.anchor[n]) ** 2).sum() for p in penalties for n in p.fisher
    )
    value = method.loss_terms(model, TrainStep([], [], 0))["ewc"]
    torch.testing.assert_close(value, expected)
    value.backward()
    gradient = method.term_gradient(model)
    assert set(gradient) == set(params)
    for n, p in params.items():
        torch.testing.assert_close(gradient[n], p.grad)


def test_ewc_state_restores_every_penalty_on_a_fresh_instance() -> None:
    torch.manual_seed(0)
    _, params = _toy()
    method = EWC(EWCConfig())
    method.penalties = [
        Penalty(
            [f"task{t}"],
            t,
            {n: torch.rand_like(p) for n, p in params.items()},
            {n: torch.randn_like(p) for n, p in params.items()},
            5,
            0.1,
        )
        for t in range(3)
    ]
    fresh = EWC(EWCConfig())
    fresh.load_state_dict(method.state_dict())
    assert len(fresh.penalties) == 3
    for ours, theirs in zip(method.penalties, fresh.penalties, strict=True):
        for n in params:
            assert torch.equal(ours.fisher[n], theirs.fisher[n]) and torch.equal(ours.anchor[n], theirs.anchor[n])
    assert fresh.fisher is fresh.penalties[-1].fisher and fresh.anchor is fresh.penalties[-1].anchor
    # A single-task checkpoint written before sequences: its one penalty.
    legacy = EWC(EWCConfig())
    legacy.load_state_dict(
        {
            **{f"anchor.{n}": p.detach() for n, p in params.items()},
            **{f"fisher.{n}": p.detach() for n, p in params.items()},
        }
    )
    assert len(legacy.penalties) == 1 and set(legacy.fisher) == set(params)


# --------------------------------------------------------------------------------------------------- MAS


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_mas_accumulates_its_importance_and_moves_its_anchor(
    heads: str, make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(make_cfg, "mas", heads, "method.lam=10", "method.importance_samples=null")
    seen = _capture(monkeypatch, MAS)
    result = run(cfg)
    assert result.summary["status"] == "completed"
    assert [s["index"] for s in seen] == [0, 1]
    method: MAS = seen[0]["method"]
    names = _anchored_names(seen[0]["model"], heads)
    assert sorted(method.importance) == sorted(method.anchor) == sorted(names)

    # Ω after the first fine-tuning task = Ω(pretraining task, pretrained weights) + Ω(first fine-tuning task,
    # the weights it ended with), each estimated as single-task MAS does; each zero on rows grown after it.
    parts = []
    for t in (0, 1):
        reference = _reference(seen[t]["start"], heads, t)
        part = mas_importance(reference, _learned_batches(cfg, t, heads), names, "per_sample")
        parts.append({n: pad_rows(v, method.importance[n].shape) for n, v in part.items()})
        assert sum(float(v.sum()) for v in part.values()) > 0
    for n in names:
        torch.testing.assert_close(method.importance[n], parts[0][n] + parts[1][n], rtol=1e-4, atol=1e-9)
    assert not torch.allclose(method.importance[names[0]], parts[1][names[0]])  # the first task's part is kept

    # The anchor: the weights the first fine-tuning task ended with (not the pretrained ones).
    ended = dict(seen[1]["start"].named_parameters())
    pretrained = dict(seen[0]["start"].named_parameters())
    for n in names:
        assert torch.equal(method.anchor[n], ended[n].detach()), n
    assert not torch.equal(method.anchor[names[0]], pretrained[names[0]].detach())
    assert _first_logged(result.metrics, "mas", SECOND) == 0.0  # anchored where the second task starts

    tasks = result.summary["method_info"]["tasks"]
    assert [t["importance_from"] for t in tasks] == [[PRETRAIN], [FIRST]]
    assert tasks[1]["importance_trace"] == pytest.approx(
        tasks[0]["importance_trace"] + tasks[1]["new_importance_trace"], rel=1e-5
    )
