"""Generated from the method registry: every method on a 5-task split-digits sequence in each of the three
scenarios (van de Ven & Tolias 2019), through the real pipeline. A method that supports sequences must complete
and score every task at the end; one that does not must be refused up front, naming the ones that do. A new
method file is tested here the moment it is registered."""

from __future__ import annotations

import numpy as np
import pytest

from research.errors import ConfigError
from research.methods import method_class, method_names
from research.training import run

SCENARIOS = ("task", "domain", "class")
TASKS = ["digits_0_1", "digits_2_3", "digits_4_5", "digits_6_7", "digits_8_9"]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("method", method_names())
def test_every_method_in_every_scenario(method: str, scenario: str, make_cfg) -> None:
    overrides = [f"scenario={scenario}", f"method.name={method}", "train.max_steps=3", "eval.every_n_steps=3"]
    if not method_class(method).supports_sequences:
        with pytest.raises(ConfigError, match="methods that support sequences"):
            run(make_cfg(*overrides, experiment="split_digits_task.yaml"))
        return
    result = run(make_cfg(*overrides, experiment="split_digits_task.yaml"))
    assert result.summary["status"] == "completed", result.summary.get("error")
    acc = result.metrics[result.metrics.metric == "acc"]
    assert result.summary["steps"] == 3 * 4
    final = acc[acc.step == 12]
    assert sorted(final.task) == sorted(TASKS)  # every task, old and new, scored after the last one
    assert np.isfinite(acc.value).all() and ((acc.value >= 0) & (acc.value <= 1)).all()
    heads = {t["head"] for t in result.summary["tasks"].values()}
    assert heads == (set(TASKS) if scenario == "task" else {"shared"})
