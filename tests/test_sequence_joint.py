"""joint on a sequence: the cumulative upper bound. While task k trains, every earlier task's full training split
(pretraining tasks and fine-tuning tasks 1..k−1) is mixed in, through its own head, and those heads train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import prepare_method

from research.training import run
from research.training.finetune import start_task

SEQUENCE = "sequence_digits.yaml"  # pretrain digits 0-3, then fine-tune 4-6 and 7-9


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_task_two_mixes_in_the_pretraining_task_and_task_one(heads: str, make_cfg) -> None:
    method, model, ctx, tasks = prepare_method(
        make_cfg("method.name=joint", f"model.heads={heads}", experiment=SEQUENCE)
    )
    pretrain, first, second = tasks.pretrain[0], tasks.finetune[0], tasks.finetune[1]
    assert method.old_tasks == [pretrain.name] and method.n_old == len(pretrain.splits["train"][1])

    start_task(model, ctx, method, 1)
    method.prepare(model, ctx)
    assert method.old_tasks == [pretrain.name, first.name]
    # The pool is exactly the two earlier tasks' training examples, labels in their heads' coordinates.
    expected_x = torch.cat([pretrain.splits["train"][0], first.splits["train"][0]])
    expected_y = torch.cat([pretrain.splits["train"][1], first.splits["train"][1]])
    assert torch.equal(method.x, expected_x) and torch.equal(method.y, expected_y)
    assert method.n_new == len(second.splits["train"][1])
    drawn = method.extra_batches(32)
    n_old = len(expected_y)
    assert sum(len(b.y) for b in drawn) == round(32 * n_old / method.n_new)
    if heads == "per_task":
        assert {b.head for b in drawn} <= {pretrain.name, first.name}
        # Every head of a task learned so far trains, as does the current one.
        for name in (pretrain.name, first.name, second.name):
            assert all(p.requires_grad for p in model.heads[name].parameters()), name
    else:
        assert {b.head for b in drawn} == {"shared"}
        assert max(int(b.y.max()) for b in drawn) >= 4  # task 1's classes (outputs 4-6) are among them


def test_a_joint_sequence_keeps_the_earlier_tasks_better_than_finetune(make_cfg) -> None:
    final = {}
    for name in ("finetune", "joint"):
        result = run(make_cfg(f"method.name={name}", "train.epochs=3", experiment=SEQUENCE))
        acc = result.metrics[(result.metrics.metric == "acc")]
        last = acc[acc.step == acc.step.max()].set_index("task").value
        final[name] = last
        if name == "joint":
            info = result.summary["method_info"]
            assert info["old_tasks"] == ["digits_0_3", "digits_4_6"]  # while the last task trained
    earlier = ["digits_0_3", "digits_4_6"]
    assert np.mean(final["joint"][earlier]) > np.mean(final["finetune"][earlier]) + 0.05
