"""Fine-tuning sequences: several new tasks one after another on one step axis, and online EWC across them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import pytest

from research.cli import main
from research.methods.base import Method, MethodConfig
from research.methods.registry import register, unregister
from research.training import run

SEQUENCE = Path(__file__).resolve().parents[1] / "experiments" / "sequence_digits.yaml"
TASKS = {"digits_0_3", "digits_4_6", "digits_7_9"}


def _cfg(make_cfg, *overrides: str):
    return make_cfg("train.epochs=2", "logging.log_every_n_steps=1", *overrides, experiment="sequence_digits.yaml")


def test_sequence_runs_on_one_step_axis(make_cfg) -> None:
    result = run(_cfg(make_cfg, "method.name=finetune"))
    metrics = result.metrics
    evals = metrics[metrics.metric == "acc"]
    # Every task, earlier and later ones included, is scored at every evaluation, step 0 first.
    assert evals.groupby("step").task.apply(set).eq(TASKS).all()
    assert evals.step.min() == 0
    train = metrics[metrics.metric == "train_loss"]
    first, second = (train[train.task == t].step for t in ("digits_4_6", "digits_7_9"))
    assert first.min() == 0 and second.min() == first.max() + 1  # the second task's steps continue the first's
    steps_per_task = first.max() + 1
    assert result.summary["steps"] == second.max() + 1
    assert metrics.groupby("step").epoch.nunique().eq(1).all()
    assert metrics[metrics.step == metrics.step.max()].epoch.iloc[0] == 3  # 2 epochs per task, 0-based
    # While the second task trains, the first task's head is frozen: its drift stops changing.
    drift = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    head = drift[(drift.block == "heads.digits_4_6") & (drift.metric == "drift_l2")].set_index("step").value
    assert head[head.index >= steps_per_task].nunique() == 1 and head.iloc[-1] > 0


def test_online_ewc_restarts_its_anchor_and_accumulates_its_fisher(make_cfg) -> None:
    result = run(_cfg(make_cfg, "method.name=online_ewc", "method.gamma=0.5", "method.lam=50"))
    metrics = result.metrics
    penalty = metrics[metrics.metric == "train_loss_online_ewc"]
    for task in ("digits_4_6", "digits_7_9"):  # the anchor is the weights at each task's start
        rows = penalty[penalty.task == task]
        assert rows[rows.step == rows.step.min()].value.iloc[0] == 0.0
        assert rows.value.max() > 0
    history = result.summary["method_info"]["tasks"]
    assert [h["fisher_from"] for h in history] == [["digits_0_3"], ["digits_4_6"]]
    first, second = history
    assert second["running_fisher_trace"] == pytest.approx(
        0.5 * first["running_fisher_trace"] + second["new_fisher_trace"], rel=1e-5
    )


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_online_ewc_with_one_task_is_ewc(heads: str, make_cfg) -> None:
    """Exactly, in both head layouts: with a shared head online EWC used to leave the head unanchored."""
    settings = ["method.lam=300", "method.fisher_samples=200", "logging.log_every_n_steps=1", f"model.heads={heads}"]
    online = run(make_cfg("method.name=online_ewc", *settings)).metrics
    ewc = run(make_cfg("method.name=ewc", *settings)).metrics
    online["metric"] = online.metric.str.replace("online_ewc", "ewc")
    pd.testing.assert_frame_equal(online, ewc)


def test_online_ewc_forgets_less_than_finetune_over_the_sequence(make_cfg) -> None:
    settings = ["train.lr=0.02", "train.epochs=3"]
    finetune = run(_cfg(make_cfg, "method.name=finetune", *settings)).summary["final"]
    online = run(_cfg(make_cfg, "method.name=online_ewc", "method.lam=5000", *settings)).summary["final"]
    assert online["digits_0_3"]["acc"] > finetune["digits_0_3"]["acc"] + 0.03


class OneTaskOnlyConfig(MethodConfig):
    name: Literal["one_task_only"] = "one_task_only"


class OneTaskOnly(Method):
    """Test-only: a method whose hooks are defined for one fine-tuning task (every shipped method supports
    sequences, but a user's own may not)."""

    name = "one_task_only"
    Config = OneTaskOnlyConfig
    neutral: ClassVar[dict[str, Any] | None] = {}


@pytest.fixture
def one_task_only() -> Iterator[None]:
    register(OneTaskOnly)
    try:
        yield
    finally:
        unregister(OneTaskOnly.name)


def test_method_without_sequence_support_is_a_config_error(one_task_only: None, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["run", str(SEQUENCE), f"out={out}", "method.name=one_task_only"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "finetune.tasks" in err and "online_ewc" in err and "lp_ft" in err
    assert not out.exists()


def test_si_accumulates_its_importance_over_a_sequence(make_cfg) -> None:
    result = run(_cfg(make_cfg, "method.name=si", "method.lam=10"))
    penalty = result.metrics[result.metrics.metric == "train_loss_si"]
    for task in ("digits_4_6", "digits_7_9"):  # anchored at the weights each task starts from
        rows = penalty[penalty.task == task]
        assert rows[rows.step == rows.step.min()].value.iloc[0] == 0.0
        assert rows.value.max() > 0
    assert result.summary["status"] == "completed"


def test_si_importance_grows_by_the_first_tasks_path_integral(make_cfg) -> None:
    import torch

    from research.data import build_tasks
    from research.methods import build_method
    from research.methods.si import si_importance
    from research.training.finetune import finetune_model, start_task
    from research.training.pretrain import pretrained_weights

    cfg = _cfg(make_cfg, "method.name=si")
    tasks = build_tasks(cfg)
    pretrained = pretrained_weights(cfg, tasks)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, pretrained.state, pretrained.records)
    method.prepare(model, ctx)
    before = {n: t.clone() for n, t in method.importance.items()}
    trajectory = method._trajectory
    # Two plain SGD updates on the first fine-tuning task, recorded through the method's own hooks.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = ctx.task.splits["train"]
    for step in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:32], ctx.task.head), y[:32]).backward()
        method.after_backward(model, step)
        optimizer.step()
        method.after_step(model, step)
    start_task(model, ctx, method, 1)
    method.prepare(model, ctx)
    current = dict(model.named_parameters())
    for name, importance in method.importance.items():
        added = si_importance(trajectory.omega[name], current[name].detach() - trajectory.start[name], 0.1)
        torch.testing.assert_close(importance, before[name] + added)
        assert torch.equal(method.anchor[name], current[name].detach())


@pytest.mark.parametrize("selection", ["reservoir", "class_balanced"])
def test_replay_buffer_takes_in_each_learned_task(selection: str, make_cfg) -> None:
    import torch

    from research.data import build_tasks
    from research.methods import build_method
    from research.training.finetune import finetune_model, start_task

    cfg = _cfg(make_cfg, "method.name=replay", f"method.selection={selection}", "method.buffer_size=120")
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None)
    method.prepare(model, ctx)
    assert method.heads == ["digits_0_3"] and len(method.buffer_y) == 120
    start_task(model, ctx, method, 1)
    method.prepare(model, ctx)
    assert method.heads == ["digits_0_3", "digits_4_6"] and len(method.buffer_y) == 120
    learned = len(tasks.finetune[0].splits["train"][1])
    pretrain = len(tasks.pretrain[0].splits["train"][1])
    share = float((method.buffer_head == 1).float().mean())
    if selection == "class_balanced":  # 4 + 3 classes seen: counts differ by at most one
        counts = torch.unique(method.buffer_head * 10 + method.buffer_y, return_counts=True)[1]
        assert len(counts) == 7 and int(counts.max() - counts.min()) <= 1
    else:  # every streamed example equally likely to be kept: the new task's share is about its share of the stream
        expected = learned / (learned + pretrain)
        assert abs(share - expected) < 0.15
    # The new task's examples are its own, scored by its head.
    new = method.buffer_x[method.buffer_head == 1]
    own = {row.numpy().tobytes() for row in tasks.finetune[0].splits["train"][0].flatten(1)}
    assert all(row.numpy().tobytes() in own for row in new.flatten(1))


def test_replay_over_a_sequence_runs(make_cfg) -> None:
    result = run(_cfg(make_cfg, "method.name=replay"))
    assert result.summary["status"] == "completed"
    train = result.metrics[result.metrics.metric == "train_loss_task_replay"]
    assert set(train.task) == {"digits_4_6", "digits_7_9"}
