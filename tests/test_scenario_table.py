"""The scenario of a run (van de Ven & Tolias 2019): set by ``scenario``, or derived from the heads and tasks."""

from __future__ import annotations

import json

import pytest

from analysis.protocol import scenario_of


def row(heads: str | None, pretrain: list[dict], finetune: list[dict], scenario: str | None = None) -> dict:
    return {
        "config.scenario": scenario,
        "config.model.heads": heads,
        "config.pretrain.tasks": json.dumps(pretrain),
        "config.finetune.tasks": json.dumps(finetune),
    }


DIGITS_01 = {"name": "a", "source": "digits", "classes": [0, 1]}
DIGITS_23 = {"name": "b", "source": "digits", "classes": [2, 3]}
ROTATED_01 = {"name": "c", "source": "digits", "classes": ["0", "1"], "transform": {"kind": "rotate"}}


@pytest.mark.parametrize(
    ("heads", "pretrain", "finetune", "expected"),
    [
        ("per_task", [DIGITS_01], [DIGITS_23], "task"),
        ("shared", [DIGITS_01], [DIGITS_23], "class"),  # new classes grow the shared head
        ("shared", [DIGITS_01], [ROTATED_01], "domain"),  # the same classes ("1" is 1) under a shift
        ("shared", [], [DIGITS_01, ROTATED_01], "domain"),  # the first task is new against nothing
        ("shared", [], [DIGITS_01, DIGITS_23], "class"),
        ("shared", [{"name": "all", "source": "digits"}], [DIGITS_23], "domain"),  # every class already there
        ("shared", [DIGITS_01], [{"name": "m", "source": "mnist1d", "classes": [0, 1]}], "class"),  # other source
        (None, [DIGITS_01], [DIGITS_23], None),  # heads not recorded: unknown, not guessed
    ],
)
def test_scenario_is_derived_from_heads_and_classes(heads, pretrain, finetune, expected) -> None:
    assert scenario_of(row(heads, pretrain, finetune)) == expected


def test_a_set_scenario_wins_over_the_derivation() -> None:
    # scenario=domain on split tasks: relabelled to within-task positions, although the classes differ.
    assert scenario_of(row("shared", [DIGITS_01], [DIGITS_23], scenario="domain")) == "domain"
    assert scenario_of(row("shared", [DIGITS_01], [DIGITS_23], scenario=float("nan"))) == "class"


def test_protocol_names_each_scenario_with_the_same_rule() -> None:
    import pandas as pd

    from analysis.protocol import protocol

    runs = pd.DataFrame([row("per_task", [DIGITS_01], [DIGITS_23]), row("shared", [DIGITS_01], [DIGITS_23])])
    runs["seed"] = 0
    items = dict(protocol(runs))
    assert items["scenario"].startswith("task-incremental (Task-IL), class-incremental (Class-IL) (varies")


# --------------------------------------------------------------------------------------------- the table


def test_final_average_accuracy_is_the_mean_of_the_last_row() -> None:
    from analysis.metrics import final_average_accuracy

    # After task 3: (0.5 + 0.7 + 0.9) / 3 = 0.7; earlier rows (NaN for tasks not yet scored) do not count.
    matrix = [[0.9, float("nan"), float("nan")], [0.6, 0.8, float("nan")], [0.5, 0.7, 0.9]]
    assert final_average_accuracy(matrix) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="unscored"):
        final_average_accuracy([[0.9, float("nan")]])


def test_cells_are_mean_and_sem_over_seeds_in_the_grouped_order() -> None:
    import pandas as pd

    from analysis.scenarios import scenario_latex, scenario_markdown, scenario_table

    acc = pd.DataFrame(
        [
            # (setting, method, scenario, acc): ewc task-IL seeds 0.80, 0.90 → mean 85.00, SEM 0.0707/√2 = 5.00 %
            ("ewc", "ewc", "task", 0.80),
            ("ewc", "ewc", "task", 0.90),
            ("ewc", "ewc", "class", 0.20),
            ("ewc", "ewc", "class", 0.30),
            ("joint", "joint", "task", 0.95),
            ("joint", "joint", "task", 0.97),
            ("finetune", "finetune", "class", 0.10),  # one seed: no ±
            ("replay", "replay", "task", 0.70),
            ("replay", "replay", "task", 0.74),
        ],
        columns=["setting", "method", "scenario", "acc"],
    )
    table = scenario_table(acc)
    assert list(dict.fromkeys(table["setting"])) == ["finetune", "ewc", "replay", "joint"]
    ewc = table.set_index(["setting", "scenario"]).loc[("ewc", "task")]
    assert ewc["mean"] == pytest.approx(0.85) and ewc["sem"] == pytest.approx(0.05) and ewc["n"] == 2
    md = scenario_markdown(table)
    assert "| Task-IL | Class-IL |" in md  # columns in scenario order, only those present
    assert "| regularization | ewc | 85.00 ± 5.00 | 25.00 ± 5.00 |" in md
    assert "| baseline | finetune | – | 10.00 |" in md
    assert "| reference | joint † | 96.00 ± 1.00 | – |" in md
    tex = scenario_latex(table)
    assert "85.00$\\pm$5.00" in tex and "joint$^\\dagger$" in tex


def test_a_report_over_two_scenarios_has_the_table(make_cfg, out) -> None:
    from analysis.report import build_report
    from research.training import run

    for scenario in ("task", "class"):
        for seed in (0, 1):
            cfg = make_cfg(
                f"scenario={scenario}", f"seed={seed}", "train.max_steps=3", experiment="split_digits_task.yaml"
            )
            assert run(cfg).summary["status"] == "completed"
    report = out / "report"
    build_report(out, report)
    md = (report / "scenarios.md").read_text()
    assert "| Task-IL | Class-IL |" in md and "over 2 seeds" in md
    assert "Results by scenario" in (report / "report.html").read_text()
    # One scenario: no such table (and a later report clears the earlier one's).
    only_task = out / "only_task"
    make = make_cfg("scenario=task", "train.max_steps=3", experiment="split_digits_task.yaml", root=only_task)
    run(make)
    build_report(only_task, report)
    assert not list(report.glob("scenarios*"))
