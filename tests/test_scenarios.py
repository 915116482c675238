"""The ``scenario`` key (van de Ven & Tolias 2019): the head layout it sets, the labels each scenario gives a
task, the task lists it refuses, and whole sequences run in each scenario through the real pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from research.config import run_id
from research.data.tasks import SHARED_HEAD, build_tasks
from research.errors import ConfigError
from research.training import run

SPLIT = "split_digits_task.yaml"


@pytest.mark.parametrize(("scenario", "heads"), [("task", "per_task"), ("domain", "shared"), ("class", "shared")])
def test_scenario_sets_the_head_layout(scenario: str, heads: str, make_cfg) -> None:
    assert make_cfg(f"scenario={scenario}", experiment=SPLIT).model.heads == heads


def test_a_head_layout_that_contradicts_the_scenario_is_refused(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"scenario=class uses model.heads=shared.*choose scenario task"):
        make_cfg("scenario=class", "model.heads=per_task", experiment=SPLIT)
    # Agreeing with it is fine (a config.yaml written by a run holds both).
    assert make_cfg("scenario=domain", "model.heads=shared", experiment=SPLIT).model.heads == "shared"


def test_domain_labels_are_positions_within_the_task(make_cfg) -> None:
    # Output k of the one shared head is every task's class k: exactly the labels per-task heads give.
    per_task = build_tasks(make_cfg("scenario=task", experiment=SPLIT))
    domain = build_tasks(make_cfg("scenario=domain", experiment=SPLIT))
    assert domain.head_sizes == {SHARED_HEAD: 2}
    assert domain.pretrain_head_sizes() == {SHARED_HEAD: 2}
    assert [domain.head_sizes_at(i)[SHARED_HEAD] for i in range(4)] == [2, 2, 2, 2]
    for own, shared in zip(per_task.all, domain.all, strict=True):
        assert shared.head == SHARED_HEAD and own.classes == shared.classes
        for split in ("train", "test"):
            assert torch.equal(own.splits[split][0], shared.splits[split][0])
            assert torch.equal(own.splits[split][1], shared.splits[split][1])
        assert set(shared.splits["train"][1].tolist()) == {0, 1}


def test_class_labels_are_positions_among_all_classes(make_cfg) -> None:
    tasks = build_tasks(make_cfg("scenario=class", experiment=SPLIT))
    assert tasks.pretrain_head_sizes() == {SHARED_HEAD: 2}
    assert [tasks.head_sizes_at(i)[SHARED_HEAD] for i in range(4)] == [4, 6, 8, 10]
    for k, task in enumerate(tasks.all):  # task k holds digits 2k and 2k+1: outputs 2k and 2k+1
        assert set(task.splits["train"][1].tolist()) == {2 * k, 2 * k + 1}


def test_class_scenario_refuses_a_class_in_two_tasks(make_cfg) -> None:
    cfg = make_cfg("scenario=class", "finetune.tasks.1.classes=[3,4]", experiment=SPLIT)
    with pytest.raises(ConfigError, match=r"finetune.tasks\[1\]: scenario=class .* class '3' .*scenario=domain"):
        build_tasks(cfg)


def test_domain_scenario_refuses_tasks_of_other_sizes(make_cfg) -> None:
    cfg = make_cfg("scenario=domain", "finetune.tasks.0.classes=[2,3,4]", experiment=SPLIT)
    with pytest.raises(ConfigError, match=r"same number of classes.*digits_2_3: 3"):
        build_tasks(cfg)


def test_an_unset_scenario_leaves_run_ids_as_they_were(make_cfg) -> None:
    # Run ids made before the key existed stay valid: a null scenario is not hashed; a set one is.
    plain = make_cfg("model.heads=shared", experiment="split_digits.yaml")
    assert plain.scenario is None
    assert run_id(plain) != run_id(make_cfg("scenario=class", "model.heads=shared", experiment="split_digits.yaml"))


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_a_sequence_runs_in_every_scenario(scenario: str, make_cfg) -> None:
    result = run(make_cfg(f"scenario={scenario}", "train.max_steps=4", "eval.every_n_steps=2", experiment=SPLIT))
    assert result.summary["status"] == "completed"
    acc = result.metrics[result.metrics.metric == "acc"]
    first_scored = acc.groupby("task").step.min()
    names = ["digits_0_1", "digits_2_3", "digits_4_5", "digits_6_7", "digits_8_9"]
    if scenario == "class":
        # A task has outputs once its own training starts: the evaluation at step 4 ends task 1 (before the head
        # grows for task 2's classes), so task 2 is first scored at step 6, task 3 at 10, task 4 at 14.
        assert [first_scored[n] for n in names] == [0, 0, 6, 10, 14]
    else:
        assert (first_scored == 0).all()
    heads = {t["head"] for t in result.summary["tasks"].values()}
    assert heads == ({SHARED_HEAD} if scenario != "task" else set(names))
    assert np.isfinite(acc.value).all()


def test_the_three_scenarios_grid_covers_every_method_in_every_scenario() -> None:
    from conftest import EXPERIMENTS

    from research.grid.spec import load_grid

    grid = load_grid(EXPERIMENTS / "grids" / "three_scenarios.yaml")
    assert grid.left_out == []  # no method is silently dropped from the comparison
    cells = {(r.config.method["name"], r.config.scenario, r.config.seed) for r in grid.runs}
    methods = {"finetune", "ewc", "online_ewc", "si", "lwf", "replay", "agem", "derpp", "joint"}
    assert cells == {(m, s, seed) for m in methods for s in ("task", "domain", "class") for seed in (0, 1, 2)}
    assert {r.config.model.heads for r in grid.runs if r.config.scenario == "task"} == {"per_task"}
    assert all(r.config.model.hidden == [400, 400] and r.config.train.batch_size == 128 for r in grid.runs)


def test_a_class_incremental_grid_closes_with_its_table(tmp_path, out) -> None:
    # A later class-IL task has no score at step 0; the grid's closing table once failed on that (KeyError).
    import subprocess
    import sys

    import yaml
    from conftest import EXPERIMENTS, TINY

    spec = {
        "name": "class_il",
        "base": str(EXPERIMENTS / SPLIT),
        "overrides": {
            **{o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in TINY},
            "train.max_steps": 2,
            "scenario": "class",
        },
        "seeds": [0],
        "grid": [{"method.name": ["finetune", "replay"]}],
    }
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "research", "grid", str(grid_file), f"out={out}", "--workers=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "final accuracy, mean ± std over seeds" in proc.stdout and "replay" in proc.stdout
