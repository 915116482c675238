"""Joint training: all pretraining data mixed into every step in proportion to the data sizes, each example
through its own task's head, old heads trained; the upper bound that keeps the old task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import prepare_method

from research.training import run

TWO_OLD_TASKS = (
    "pretrain.tasks=[{name: digits_0_2, source: digits, classes: [0, 1, 2]},"
    " {name: digits_3_4, source: digits, classes: [3, 4]}]"
)


def joint_method(make_cfg, *overrides: str):
    method, model, _, tasks = prepare_method(make_cfg("method.name=joint", *overrides))
    return method, tasks, model


def sizes(tasks) -> tuple[int, int]:
    n_old = sum(len(t.splits["train"][1]) for t in tasks.pretrain)
    return n_old, len(tasks.finetune[0].splits["train"][1])


def test_old_examples_per_step_are_proportional_to_the_data_sizes(make_cfg) -> None:
    method, tasks, _ = joint_method(make_cfg)
    n_old, n_new = sizes(tasks)
    assert (method.n_old, method.n_new) == (n_old, n_new)
    for batch_size in (1, 7, 32, 64, 100):
        extra = method.extra_batches(batch_size)
        assert sum(len(b.y) for b in extra) == round(batch_size * n_old / n_new), batch_size
        for b in extra:
            assert b.source == "joint" and b.head == "digits_0_4"
            assert len(b.x) == len(b.y) and b.y.max() < 5


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.8])
def test_old_data_ratio_overrides_the_share(ratio: float, make_cfg) -> None:
    method, _, _ = joint_method(make_cfg, f"method.old_data_ratio={ratio}")
    for batch_size in (1, 7, 32, 64):
        assert sum(len(b.y) for b in method.extra_batches(batch_size)) == round(batch_size * ratio / (1 - ratio))


def test_one_pass_visits_every_old_example_once_before_any_repeats(make_cfg) -> None:
    method, tasks, _ = joint_method(make_cfg)
    n_old, _ = sizes(tasks)
    drawn = torch.cat([method.draw(37) for _ in range(2 * n_old // 37 + 1)])
    first, second = drawn[:n_old], drawn[n_old : 2 * n_old]
    assert sorted(first.tolist()) == list(range(n_old))  # each example exactly once
    assert sorted(second.tolist()) == list(range(n_old))
    assert not torch.equal(first, second)  # reshuffled for the second pass
    assert method.passes == 2 and method.drawn == len(drawn)
    assert method.info()["old_passes"] == pytest.approx(len(drawn) / n_old)


def test_old_heads_train_and_ratio_zero_is_plain_finetuning(make_cfg) -> None:
    _, _, model = joint_method(make_cfg)
    assert all(p.requires_grad for p in model.heads["digits_0_4"].parameters())
    neutral, _, frozen = joint_method(make_cfg, "method.old_data_ratio=0")
    assert not any(p.requires_grad for p in frozen.heads["digits_0_4"].parameters())
    assert neutral.extra_batches(32) == []


def test_each_old_example_goes_to_its_own_head(make_cfg) -> None:
    method, tasks, _ = joint_method(make_cfg, TWO_OLD_TASKS)
    twin, _, _ = joint_method(make_cfg, TWO_OLD_TASKS)
    assert [t.head for t in tasks.pretrain] == ["digits_0_2", "digits_3_4"] == method.heads
    n_old, _ = sizes(tasks)
    per_head = {"digits_0_2": 0, "digits_3_4": 0}
    steps = 0
    while sum(per_head.values()) < n_old:
        extra = method.extra_batches(32)
        idx = twin.draw(twin.old_count(32))  # the same stream: the examples each batch must hold
        assert {b.head for b in extra} <= set(per_head) and len({b.head for b in extra}) == len(extra)
        for b in extra:
            own = idx[twin.head[idx] == twin.heads.index(b.head)]
            assert torch.equal(b.x, twin.x[own]) and torch.equal(b.y, twin.y[own])
            assert b.y.max() < (3 if b.head == "digits_0_2" else 2)
            per_head[b.head] += len(b.y)
        steps += 1
    # over one pass (up to the last step's overshoot), each task contributes its whole training split
    overshoot = sum(per_head.values()) - n_old
    for task in tasks.pretrain:
        assert 0 <= per_head[task.head] - len(task.splits["train"][1]) <= overshoot
    assert steps > 1


def test_draws_are_seeded(make_cfg) -> None:
    def draws(*overrides: str) -> list[list[int]]:
        method, _, _ = joint_method(make_cfg, *overrides)
        return [b.y.tolist() for _ in range(5) for b in method.extra_batches(16)]

    assert draws() == draws()
    assert draws() != draws("seed=1")


def test_joint_keeps_the_old_task_where_finetuning_forgets(make_cfg) -> None:
    robust = ("train.lr=0.02", "train.epochs=4", "logging.log_every_n_steps=1")
    joint = run(make_cfg("method.name=joint", *robust))
    finetune = run(make_cfg("method.name=finetune", *robust))
    assert joint.summary["status"] == "completed"

    logged = joint.metrics[joint.metrics.metric == "train_loss_task_joint"]
    assert len(logged) == joint.summary["steps"] and np.isfinite(logged.value).all()

    info = joint.summary["method_info"]
    assert info["n_old"] > 0 and info["n_new"] > 0
    assert info["old_passes"] == pytest.approx(4 * info["old_passes_per_new_epoch"], rel=0.05)

    initial, final = joint.summary["initial"], joint.summary["final"]
    old_joint, old_finetune = final["digits_0_4"]["acc"], finetune.summary["final"]["digits_0_4"]["acc"]
    assert old_joint >= old_finetune + 0.05, (old_joint, old_finetune)
    assert old_joint >= initial["digits_0_4"]["acc"] - 0.03, (old_joint, initial)
    assert final["digits_5_9"]["acc"] > 0.85


def test_ratio_zero_run_is_exactly_finetuning(make_cfg) -> None:
    common = ("model.batchnorm=true", "model.dropout=0.2", "logging.log_every_n_steps=1", "train.max_steps=12")
    neutral = run(make_cfg("method.name=joint", "method.old_data_ratio=0", *common)).metrics
    plain = run(make_cfg("method.name=finetune", *common)).metrics
    columns = ["step", "task", "metric", "value"]
    key = ["step", "task", "metric"]
    neutral = neutral[columns].sort_values(key).reset_index(drop=True)
    plain = plain[columns].sort_values(key).reset_index(drop=True)
    assert len(plain) > 0
    assert neutral.equals(plain)


def test_stream_state_round_trip_continues_the_same_draws(make_cfg) -> None:
    method, _, _ = joint_method(make_cfg)
    for _ in range(30):  # past the end of the first pass
        method.extra_batches(32)
    other, _, _ = joint_method(make_cfg, "seed=1")
    other.load_state_dict({k: v.clone() for k, v in method.state_dict().items()})
    for _ in range(30):
        ours, theirs = method.extra_batches(32), other.extra_batches(32)
        assert [b.y.tolist() for b in ours] == [b.y.tolist() for b in theirs]
    assert other.passes == method.passes >= 2
