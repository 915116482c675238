"""LP-FT and WiSE-FT on sequences of fine-tuning tasks, through the real pipeline, in every scenario.

LP-FT (Kumar et al. 2022) probes at the start of every task: for its first ``probe_steps`` updates the backbone
does not move and the task's head does; then everything trains. WiSE-FT (Wortsman et al. 2022) sweeps between
θ₀, the model before the sequence, and the sequence's final weights, and with ``sweep: every_task`` also after
each earlier task between θ₀ and the weights that task ended with; training itself stays plain fine-tuning.
"""

from __future__ import annotations

import pandas as pd
import pytest

from research.training import run

EXPERIMENT = "split_digits_task.yaml"  # digits_0_1 pretrained, then four tasks of two digits
FINETUNE = ["digits_2_3", "digits_4_5", "digits_6_7", "digits_8_9"]
STEPS = 8  # updates per task


def _cfg(make_cfg, scenario: str, *overrides: str):
    settings = [f"scenario={scenario}", f"train.max_steps={STEPS}", "train.lr=0.01", *overrides]
    return make_cfg(*settings, experiment=EXPERIMENT)


def _scores_at(metrics: pd.DataFrame, step: int) -> dict[tuple[str, str], float]:
    evals = metrics[metrics.metric.isin(["acc", "loss"]) & (metrics.step == step)]
    return {(r.task, r.metric): r.value for r in evals.itertuples()}


def _sweep_at(sweep: pd.DataFrame, after_task: str, alpha: float) -> dict[tuple[str, str], float]:
    rows = sweep[(sweep.after_task == after_task) & (sweep.alpha == alpha)]
    return {(r.task, r.metric): r.value for r in rows.itertuples()}


# --------------------------------------------------------------------------------------------- LP-FT


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_lp_ft_probes_at_the_start_of_every_task(scenario: str, make_cfg) -> None:
    probe = 3
    result = run(_cfg(make_cfg, scenario, "method.name=lp_ft", f"method.probe_steps={probe}", "eval.every_n_steps=1"))
    assert result.summary["status"] == "completed", result.summary.get("error")
    info = result.summary["method_info"]
    assert info["tasks"] == [{"task": t, "switched_at_step": probe} for t in FINETUNE]
    assert info["switched_at_step"] == probe
    drift = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    drift = drift[drift.metric == "drift_l2"]
    backbone = drift[drift.block.str.startswith("backbone")].groupby("step").value.sum()
    head_of = {t: t if scenario == "task" else "shared" for t in FINETUNE}
    for k, task in enumerate(FINETUNE):
        start = k * STEPS  # the evaluation at a task's start is the one at the previous task's end
        probing = backbone.loc[start : start + probe]
        assert probing.nunique() == 1, f"{task}: the backbone moved during its probe"
        assert backbone.loc[start + probe + 1] != backbone.loc[start + probe], f"{task}: no fine-tuning after it"
        head = drift[drift.block == f"heads.{head_of[task]}"].set_index("step").value
        assert head.loc[start + 1] != head.loc[start], f"{task}: its head did not train in the probe"


# --------------------------------------------------------------------------------------------- WiSE-FT


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_wise_ft_sweeps_from_the_model_before_the_sequence(scenario: str, make_cfg) -> None:
    result = run(_cfg(make_cfg, scenario, "method.name=wise_ft", "method.sweep=every_task", "eval.every_n_steps=4"))
    assert result.summary["status"] == "completed", result.summary.get("error")
    metrics = result.metrics
    sweep = pd.read_parquet(result.run_dir / "method.parquet")
    assert list(sweep.after_task.unique()) == FINETUNE  # one sweep after every task, in order
    assert sweep.final.tolist() == (sweep.after_task == FINETUNE[-1]).tolist()
    ends = {e["task"]: e["step"] for e in result.summary["task_ends"]}
    initial = _scores_at(metrics, 0)
    for task in FINETUNE:
        # α = 1 is the model as the task left it: exactly what the evaluation at the task's end scored, for
        # every task that model can score (in class-IL, only the classes seen so far).
        assert _sweep_at(sweep, task, 1.0) == _scores_at(metrics, ends[task])
        at_zero = _sweep_at(sweep, task, 0.0)
        if scenario == "domain":
            # Nothing is created in domain-IL: α = 0 is the model before the sequence itself, after every task.
            assert at_zero == initial
        elif scenario == "task":
            # The pretraining task's head never trains: with the backbone back at θ₀ it scores as at step 0.
            assert {k: v for k, v in at_zero.items() if k[0] == "digits_0_1"} == {
                k: v for k, v in initial.items() if k[0] == "digits_0_1"
            }
    # Measurements only: training is plain fine-tuning, evaluation for evaluation.
    finetune = run(_cfg(make_cfg, scenario, "method.name=finetune", "eval.every_n_steps=4")).metrics
    pd.testing.assert_frame_equal(metrics, finetune, check_exact=True)


def test_wise_ft_sweeps_once_by_default_and_the_report_draws_the_final_sweep(make_cfg) -> None:
    from analysis.load import RunSet, load_runs
    from analysis.report import _wise_ft

    result = run(_cfg(make_cfg, "task", "method.name=wise_ft"))
    sweep = pd.read_parquet(result.run_dir / "method.parquet")
    assert set(sweep.after_task) == {FINETUNE[-1]} and sweep.final.all()
    assert result.summary["method_info"]["sweep"] == "end" and result.summary["method_info"]["sweep_seconds"] > 0

    every = run(_cfg(make_cfg, "task", "method.name=wise_ft", "method.sweep=every_task"))
    runs = load_runs(every.run_dir.parent, cache=False)
    curve = _wise_ft(RunSet(runs.runs[runs.runs.run_id == every.run_id], runs.metrics, runs.method_tables))
    table = pd.read_parquet(every.run_dir / "method.parquet")
    final = table[table.final & (table.metric == "acc") & (table.role == "finetune")]
    assert len(final) < len(table[(table.metric == "acc") & (table.role == "finetune")])
    assert curve.set_index("alpha").new_mean.to_dict() == final.groupby("alpha").value.mean().to_dict()
