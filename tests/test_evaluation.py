"""Scoring: accuracy and loss against a direct computation, mode restoration, fixed subsamples."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from research.config import ModelConfig
from research.data.tasks import Task
from research.evaluation import EvalSet, eval_sets, score
from research.models import MultiHeadNet, build_model


def task(name: str, x: torch.Tensor, y: torch.Tensor, head: str = "a", role: str = "pretrain") -> Task:
    return Task(
        name,
        role,
        head,
        tuple(str(i) for i in range(int(y.max()) + 1)),  # type: ignore[arg-type]
        {"train": (x, y), "val": (x[:0], y[:0]), "test": (x, y)},
    )


def data(n: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("batch_size", [1, 7, 50, 4096])
def test_score_matches_a_direct_computation(batch_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=[8]), (6,), {"a": 4, "b": 3})
    x, y = data()
    t = task("t", x, y)
    result = score(model, [EvalSet(t, x, y)], batch_size)
    with torch.no_grad():
        logits = model.eval()(x, "a")
    assert result["t"]["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-7)
    assert result["t"]["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_score_restores_modes_and_leaves_batchnorm_alone() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=[8, 8], batchnorm=True, dropout=0.3), (6,), {"a": 4})
    model.train()
    model.backbone[0].eval()
    modes = {n: m.training for n, m in model.named_modules()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x, y = data()
    first = score(model, [EvalSet(task("t", x, y), x, y)], 16)
    second = score(model, [EvalSet(task("t", x, y), x, y)], 16)
    assert first == second  # no dropout noise: eval mode
    assert {n: m.training for n, m in model.named_modules()} == modes
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n


def test_eval_sets_subsample_is_fixed_and_seeded() -> None:
    x, y = data(100)
    tasks = [task("one", x, y), task("two", x, y, head="b")]
    first = eval_sets(tasks, "test", 30, seed=0)
    again = eval_sets(tasks, "test", 30, seed=0)
    other = eval_sets(tasks, "test", 30, seed=1)
    assert [len(s.y) for s in first] == [30, 30]
    assert torch.equal(first[0].x, again[0].x) and torch.equal(first[1].y, again[1].y)
    assert not torch.equal(first[0].x, first[1].x)  # each task its own subsample
    assert not torch.equal(first[0].x, other[0].x)
    whole = eval_sets(tasks, "test", None, seed=0)
    assert torch.equal(whole[0].x, x)
    assert eval_sets(tasks, "test", 1000, seed=0)[0].x.shape == x.shape


def test_nan_loss_is_reported_not_dropped() -> None:
    model = MultiHeadNet(nn.Sequential(nn.Identity()), 1)
    head = model.add_head("a", 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head.bias.zero_()
    x = torch.tensor([[1.0], [2.0], [float("inf")], [3.0]])  # the third example's loss is NaN
    y = torch.tensor([0, 0, 1, 0])
    sets = [EvalSet(task("t", x, y), x, y)]
    whole = score(model, sets, 4)["t"]["loss"]
    assert whole != whole  # NaN when scored in one batch
    in_pairs = score(model, sets, 2)["t"]["loss"]
    assert in_pairs != in_pairs, f"NaN batch dropped: loss reported as {in_pairs}"


def test_a_task_whose_classes_the_shared_head_lacks_is_not_scored_yet() -> None:
    """Class-incremental protocol: a shared head with outputs for the classes seen so far cannot score a later
    task (its labels have no output); it is left out, and scored with the right number of classes once the
    head has grown."""
    model = MultiHeadNet(nn.Sequential(nn.Identity()), 6)
    model.add_head("shared", 2, generator=torch.Generator().manual_seed(0))
    x, y_old = data(40)
    y_old = y_old % 2
    y_new = y_old + 2
    sets = [
        EvalSet(task("old", x, y_old, head="shared"), x, y_old),
        EvalSet(task("new", x, y_new, head="shared"), x, y_new),
    ]
    assert set(score(model, sets, 16)) == {"old"}
    model.resize_head("shared", 4, torch.Generator().manual_seed(1))
    both = score(model, sets, 16)
    assert set(both) == {"old", "new"}
    logits = model(x, "shared")
    for name, labels in (("old", y_old), ("new", y_new)):
        assert both[name]["acc"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
