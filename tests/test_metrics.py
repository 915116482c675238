"""Forgetting metrics: hand-computed cases and avalanche-lib's functional forgetting on random matrices (square,
and with per-task boundaries and unmeasured cells before them); curve metrics, the Pareto front, accuracy
matrices from tidy tables and seed aggregation on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from avalanche.evaluation.functional import forgetting as avalanche_forgetting

from analysis.metrics import (
    accuracy_matrix,
    aggregate_seeds,
    average_forgetting,
    backward_transfer,
    final_accuracy,
    final_drop,
    forgetting_auc,
    forgetting_matrix,
    min_accuracy,
    pareto_front,
    peak_drop,
    plasticity,
    retention,
    seed_summary,
    stability_gap,
    task_minima,
    worst_case_accuracy,
)

# Rows: after learning task 0, 1, 2; columns: tasks 0, 1, 2.
A = [
    [0.90, 0.10, 0.20],
    [0.70, 0.80, 0.30],
    [0.60, 0.85, 0.95],
]


def test_forgetting_matrix_by_hand() -> None:
    expected = [
        [0.0, 0.0, 0.0],
        [0.90 - 0.70, 0.0, 0.0],
        [0.90 - 0.60, 0.80 - 0.85, 0.0],
    ]
    np.testing.assert_allclose(forgetting_matrix(A), expected, atol=1e-12)


def test_average_forgetting_by_hand() -> None:
    # Task 0: max(0.90, 0.70) − 0.60 = 0.30; task 1: max(0.80) − 0.85 = −0.05; mean = 0.125.
    assert average_forgetting(A) == pytest.approx(0.125)
    # The peak is the best value at any boundary from the task's own on, not the value right after learning:
    tall = [[0.5, 0.0], [0.9, 0.9], [0.4, 0.9]]
    assert average_forgetting(tall, boundaries=[0, 1]) == pytest.approx(((0.9 - 0.4) + 0.0) / 2)
    with pytest.raises(ValueError, match="time index"):
        average_forgetting(tall)


def test_backward_transfer_by_hand() -> None:
    # ((0.60 − 0.90) + (0.85 − 0.80)) / 2 = −0.125
    assert backward_transfer(A) == pytest.approx(-0.125)
    with pytest.raises(ValueError, match="before the last row"):
        backward_transfer([[0.9]])


def test_plasticity_is_the_accuracy_right_after_learning_by_hand() -> None:
    # Square: the diagonal (0.90 + 0.80 + 0.95) / 3, not the last row's mean final accuracy (0.60 + 0.85 + 0.95) / 3.
    assert plasticity(A) == pytest.approx(2.65 / 3)


# Pretraining task p learned before fine-tuning (boundary: the start row), then fine-tuning tasks t1 and t2
# (boundaries: the rows after each). NaN: t1 and t2 not scored before their own boundary (class-incremental).
NAN = float("nan")
SEQUENCE = [
    [0.90, NAN, NAN],  # start
    [0.95, 0.80, NAN],  # after t1
    [0.60, 0.60, 0.70],  # after t2
]
SEQUENCE_BOUNDARIES = [0, 1, 2]


def test_matrix_metrics_with_task_boundaries_by_hand() -> None:
    # Forgetting over the tasks learned before the last (p, t1), peak over boundary rows from their own:
    # p: max(0.90, 0.95) − 0.60 = 0.35; t1: max(0.80) − 0.60 = 0.20; mean 0.275.
    assert average_forgetting(SEQUENCE, SEQUENCE_BOUNDARIES) == pytest.approx(0.275)
    # BWT over p and t1, each from its own boundary: p: 0.60 − 0.90 = −0.30; t1: 0.60 − 0.80 = −0.20; mean −0.25.
    assert backward_transfer(SEQUENCE, SEQUENCE_BOUNDARIES) == pytest.approx(-0.25)
    # Plasticity of the fine-tuning tasks (columns t1, t2 at their own boundaries): (0.80 + 0.70) / 2.
    fine_tuning = np.asarray(SEQUENCE)[:, 1:]
    assert plasticity(fine_tuning, SEQUENCE_BOUNDARIES[1:]) == pytest.approx(0.75)
    assert forgetting_matrix(SEQUENCE, SEQUENCE_BOUNDARIES)[2].tolist() == pytest.approx([0.30, 0.20, 0.0])


def test_matrix_metrics_for_one_fine_tuning_task_are_the_final_drop_by_hand() -> None:
    # Rows start, end; pretraining tasks p1, p2 (boundary 0), the fine-tuning task t (boundary 1, unscored at 0).
    matrix = [[0.9, 0.8, NAN], [0.7, 0.85, 0.6]]
    boundaries = [0, 0, 1]
    # Mean final drop of p1, p2: ((0.9 − 0.7) + (0.8 − 0.85)) / 2 = 0.075.
    assert average_forgetting(matrix, boundaries) == pytest.approx(0.075)
    assert backward_transfer(matrix, boundaries) == pytest.approx(-0.075)
    assert plasticity(np.asarray(matrix)[:, 2:], [1]) == pytest.approx(0.6)


def test_matrix_metrics_never_read_a_cell_before_its_boundary() -> None:
    filled = np.nan_to_num(np.asarray(SEQUENCE), nan=0.99)  # any value before a boundary changes nothing
    for metric in (average_forgetting, backward_transfer, plasticity):
        assert metric(filled, SEQUENCE_BOUNDARIES) == pytest.approx(metric(SEQUENCE, SEQUENCE_BOUNDARIES))
    broken = np.asarray(SEQUENCE)
    broken[2, 1] = NAN  # t1 unmeasured after its boundary: an error, not a silent NaN
    for metric in (average_forgetting, backward_transfer, plasticity, forgetting_matrix):
        with pytest.raises(ValueError, match=r"task 1: accuracy missing"):
            metric(broken, SEQUENCE_BOUNDARIES)
    with pytest.raises(ValueError, match="outside the matrix"):
        plasticity(SEQUENCE, [0, 1, 3])


def test_non_square_matrix_needs_boundaries() -> None:
    matrix = [[0.9, 0.1], [0.8, 0.2], [0.7, 0.9], [0.6, 0.8]]
    with pytest.raises(ValueError, match="time index"):
        forgetting_matrix(matrix)
    np.testing.assert_allclose(
        forgetting_matrix(matrix, boundaries=[0, 2]), [[0, 0], [0.1, 0], [0.2, 0], [0.3, 0.1]], atol=1e-12
    )


@pytest.mark.parametrize("seed", range(5))
def test_forgetting_and_bwt_match_avalanche_on_random_matrices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 7))
    matrix = rng.random((size, size))
    theirs = avalanche_forgetting(matrix)
    np.testing.assert_allclose(forgetting_matrix(matrix), theirs, atol=1e-12)
    # Avalanche's BWT is the negative of its forgetting; averaged over the tasks before the last it is GEM's BWT.
    assert backward_transfer(matrix) == pytest.approx(-theirs[-1, :-1].mean(), abs=1e-12)
    boundaries = sorted(rng.integers(0, size + 2, size=size).tolist())
    tall = rng.random((size + 2, size))
    theirs = avalanche_forgetting(tall, boundaries)
    np.testing.assert_allclose(forgetting_matrix(tall, boundaries), theirs, atol=1e-12)
    # With boundaries, BWT is minus avalanche's last-row forgetting over the tasks learned before the last row,
    # and cells before each boundary are never read.
    before_last = np.asarray(boundaries) < size + 1
    for k, b in enumerate(boundaries):
        tall[:b, k] = np.nan
    if before_last.any():
        assert backward_transfer(tall, boundaries) == pytest.approx(-theirs[-1, before_last].mean(), abs=1e-12)


# --- Per-task accuracy curves -------------------------------------------------------------------------------

CURVE_FUNCTIONS = [final_drop, peak_drop, stability_gap, retention, forgetting_auc, final_accuracy]


def test_curve_that_dips_and_recovers_by_hand() -> None:
    steps, acc = [0, 10, 20, 40], [0.9, 0.6, 0.7, 0.8]
    assert final_drop(steps, acc) == pytest.approx(0.1)  # 0.9 − 0.8
    assert peak_drop(steps, acc) == pytest.approx(0.1)  # max = 0.9 (the start), 0.9 − 0.8
    assert stability_gap(steps, acc) == pytest.approx(0.3)  # 0.9 − min 0.6
    assert retention(steps, acc) == pytest.approx(0.8 / 0.9)  # 0.888…
    # Drops below the start: 0, 0.3, 0.2, 0.1 on intervals of 10, 10, 20 steps:
    # (1/40)·[10·(0+0.3)/2 + 10·(0.3+0.2)/2 + 20·(0.2+0.1)/2] = (1/40)·(1.5 + 2.5 + 3.0) = 0.175
    assert forgetting_auc(steps, acc) == pytest.approx(0.175)
    assert final_accuracy(steps, acc) == pytest.approx(0.8)


def test_curve_that_improves_then_drops_by_hand() -> None:
    steps, acc = [0, 5, 10], [0.5, 0.9, 0.6]
    assert final_drop(steps, acc) == pytest.approx(-0.1)  # 0.5 − 0.6: above the start at the end
    assert peak_drop(steps, acc) == pytest.approx(0.3)  # best 0.9 − final 0.6, not the final drop
    assert stability_gap(steps, acc) == pytest.approx(0.0)  # never below 0.5
    assert retention(steps, acc) == pytest.approx(1.2)  # 0.6 / 0.5
    # Drops 0, −0.4, −0.1: (1/10)·[5·(0−0.4)/2 + 5·(−0.4−0.1)/2] = (1/10)·(−1.0 − 1.25) = −0.225
    assert forgetting_auc(steps, acc) == pytest.approx(-0.225)
    assert final_accuracy(steps, acc) == pytest.approx(0.6)


def test_forgetting_auc_weighs_intervals_by_length() -> None:
    # Drops 0, 1, 1 on intervals of 1 and 10 steps: (1/11)·[1·(0+1)/2 + 10·(1+1)/2] = 10.5/11;
    # a mean over the measurements ignoring spacing would give 2/3.
    assert forgetting_auc([0, 1, 11], [1.0, 0.0, 0.0]) == pytest.approx(10.5 / 11)
    # A curve that starts after step 0 (steps[0] is the reference): drops 0, 0.2, 0 on intervals of 10 and 20:
    # (1/30)·[10·0.1 + 20·0.1] = 0.1
    assert forgetting_auc(np.array([100, 110, 130]), np.array([0.8, 0.6, 0.8])) == pytest.approx(0.1)


def test_peak_drop_is_not_chaudhry_forgetting_by_hand() -> None:
    # A pretraining task peaks between two evaluations of the run's only boundaries (start at step 0, end at 10).
    steps, acc = [0, 5, 10], [0.8, 0.9, 0.7]
    assert peak_drop(steps, acc) == pytest.approx(0.2)  # 0.9 (step 5, not a boundary) − 0.7
    assert average_forgetting([[0.8], [0.7]], boundaries=[0]) == pytest.approx(0.1)  # boundaries only: 0.8 − 0.7


def test_single_measurement_curve() -> None:
    assert final_drop([0], [0.7]) == 0.0
    assert peak_drop([0], [0.7]) == 0.0
    assert stability_gap([0], [0.7]) == 0.0
    assert retention([0], [0.7]) == 1.0
    assert final_accuracy([0], [0.7]) == 0.7
    with pytest.raises(ValueError, match="at least two measurements"):
        forgetting_auc([0], [0.7])


@pytest.mark.parametrize("seed", range(3))
def test_curve_metric_orderings_on_random_curves(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps = np.cumsum(rng.integers(1, 20, size=12)) - 1
    steps[0] = 0
    acc = rng.random(12)
    # min ≤ final ≤ max, so the gap and the peak-to-final drop bound the final drop and neither is negative.
    assert stability_gap(steps, acc) >= final_drop(steps, acc)
    assert stability_gap(steps, acc) >= 0
    assert peak_drop(steps, acc) >= max(final_drop(steps, acc), 0)
    # The mean drop lies between the smallest drop (acc[0] − max acc) and the largest (the stability gap).
    assert acc[0] - acc.max() <= forgetting_auc(steps, acc) <= stability_gap(steps, acc)


@pytest.mark.parametrize("metric", CURVE_FUNCTIONS)
@pytest.mark.parametrize(
    ("steps", "acc", "message"),
    [
        ([], [], "at least one measurement"),
        ([0, 10], [0.9], "differ in length"),
        ([[0, 10]], [[0.9, 0.8]], "1-D"),
        ([0, 10, 10], [0.9, 0.8, 0.7], "strictly increasing"),
        ([0, 20, 10], [0.9, 0.8, 0.7], "strictly increasing"),
        ([0, 10], [0.9, float("nan")], "acc must be finite"),
        ([0, float("nan")], [0.9, 0.8], "steps must be finite"),
    ],
)
def test_curve_functions_reject_bad_curves(metric, steps, acc, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metric(steps, acc)


def test_retention_needs_a_nonzero_start() -> None:
    with pytest.raises(ValueError, match=r"acc\[0\] is 0"):
        retention([0, 10], [0.0, 0.5])


# --- Pareto front -------------------------------------------------------------------------------------------


def test_pareto_front_by_hand() -> None:
    stability = [0.9, 0.5, 0.5, 0.4, float("nan"), 0.95, 0.3, 0.9]
    plasticity_ = [0.5, 0.8, 0.8, 0.7, 0.99, 0.2, 0.3, 0.4]
    # 0 (0.9, 0.5): nothing has both ≥ with one > (only 5 has more stability, with less plasticity) → front
    # 1, 2 (0.5, 0.8): exact duplicates, neither strictly better; nothing else has plasticity ≥ 0.8 → both front
    # 3 (0.4, 0.7): dominated by 1 (0.5 > 0.4, 0.8 > 0.7)
    # 4 (NaN, 0.99): NaN is never on the front, and does not dominate 1 and 2 despite its higher plasticity
    # 5 (0.95, 0.2): highest stability → front
    # 6 (0.3, 0.3): dominated by 0, 1, 2, 3
    # 7 (0.9, 0.4): tied with 0 in stability, lower plasticity → dominated by 0
    expected = [True, True, True, False, False, True, False, False]
    mask = pareto_front(stability, plasticity_)
    assert mask.dtype == bool
    assert mask.tolist() == expected


def test_pareto_front_edge_cases() -> None:
    assert pareto_front([], []).tolist() == []
    assert pareto_front([0.3], [0.4]).tolist() == [True]
    assert pareto_front([0.3, float("nan")], [float("nan"), 0.4]).tolist() == [False, False]
    with pytest.raises(ValueError, match="differ in length"):
        pareto_front([0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="1-D"):
        pareto_front([[0.1, 0.2]], [[0.3, 0.4]])


# --- Accuracy matrix from a tidy table ----------------------------------------------------------------------


def _tidy() -> pd.DataFrame:
    # "pretrain" appears before "finetune" (the reverse of alphabetical order); step 100 is not a boundary.
    return pd.DataFrame(
        {
            "step": [0, 0, 100, 100, 190, 190],
            "task": ["pretrain", "finetune", "pretrain", "finetune", "finetune", "pretrain"],
            "acc": [0.95, 0.10, 0.70, 0.80, 0.90, 0.60],
        }
    )


def test_accuracy_matrix_by_hand() -> None:
    matrix = accuracy_matrix(_tidy(), [("start", 0), ("after finetune", 190)])
    assert list(matrix.index) == ["start", "after finetune"]
    assert list(matrix.columns) == ["pretrain", "finetune"]
    np.testing.assert_allclose(matrix.to_numpy(), [[0.95, 0.10], [0.60, 0.90]])
    # Rows in the order given, not sorted by step; the same step may be read twice under different labels.
    reordered = accuracy_matrix(_tidy(), [("end", 190), ("middle", 100), ("again", 190)])
    np.testing.assert_allclose(reordered.to_numpy(), [[0.60, 0.90], [0.70, 0.80], [0.60, 0.90]])
    # It feeds the matrix metrics: column 0 learned at row 0, so F = 0.95 − 0.60 = 0.35 at the end.
    assert forgetting_matrix(matrix, boundaries=[0, 1])[1, 0] == pytest.approx(0.35)


def test_accuracy_matrix_names_the_missing_value() -> None:
    frame = _tidy()
    without = frame[~((frame["task"] == "finetune") & (frame["step"] == 190))]
    with pytest.raises(ValueError, match=r"\('finetune', 190\)"):
        accuracy_matrix(without, [("start", 0), ("end", 190)])
    with pytest.raises(ValueError, match=r"\('pretrain', 50\)"):
        accuracy_matrix(frame, [("start", 0), ("never measured", 50)])
    with_nan = frame.copy()
    with_nan.loc[0, "acc"] = float("nan")
    with pytest.raises(ValueError, match=r"\('pretrain', 0\)"):
        accuracy_matrix(with_nan, [("start", 0)])


def _class_incremental() -> pd.DataFrame:
    # p is scored throughout; t1 (learned in steps 0–10) and t2 (10–20) only from their first evaluation during
    # their own training (steps 5 and 15): a shared head has no outputs for their classes before.
    return pd.DataFrame(
        {
            "step": [0, 5, 10, 15, 20, 5, 10, 15, 20, 15, 20],
            "task": ["p"] * 5 + ["t1"] * 4 + ["t2"] * 2,
            "acc": [0.9, 0.85, 0.8, 0.75, 0.7, 0.4, 0.85, 0.7, 0.6, 0.5, 0.75],
        }
    )


CI_BOUNDARIES = [("start", 0), ("after t1", 10), ("after t2", 20)]
CI_OWN = {"t1": "after t1", "t2": "after t2"}


def test_accuracy_matrix_leaves_cells_before_a_task_boundary_empty() -> None:
    matrix = accuracy_matrix(_class_incremental(), CI_BOUNDARIES, task_boundaries=CI_OWN)
    np.testing.assert_allclose(
        matrix.to_numpy(), [[0.9, NAN, NAN], [0.8, 0.85, NAN], [0.7, 0.6, 0.75]], equal_nan=True, atol=1e-12
    )
    # The metrics read only cells at or after each boundary: p at row 0, t1 at row 1, t2 at row 2.
    # Forgetting: p max(0.9, 0.8) − 0.7 = 0.2, t1 0.85 − 0.6 = 0.25; BWT: p −0.2, t1 −0.25; plasticity (0.85+0.75)/2.
    assert average_forgetting(matrix, [0, 1, 2]) == pytest.approx(0.225)
    assert backward_transfer(matrix, [0, 1, 2]) == pytest.approx(-0.225)
    assert plasticity(matrix[["t1", "t2"]], [1, 2]) == pytest.approx(0.8)
    # A measured value before a task's boundary is kept.
    scored = pd.concat([_class_incremental(), pd.DataFrame({"step": [0], "task": ["t2"], "acc": [0.1]})])
    assert accuracy_matrix(scored, CI_BOUNDARIES, task_boundaries=CI_OWN).loc["start", "t2"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("task", "step"),
    [("p", 10), ("t1", 10), ("t1", 20), ("t2", 20)],  # a pretraining task, or a task at/after its own boundary
)
def test_accuracy_matrix_still_rejects_other_missing_cells(task: str, step: int) -> None:
    frame = _class_incremental()
    without = frame[~((frame["task"] == task) & (frame["step"] == step))]
    with pytest.raises(ValueError, match=rf"\('{task}', {step}\)"):
        accuracy_matrix(without, CI_BOUNDARIES, task_boundaries=CI_OWN)


def test_accuracy_matrix_without_task_boundaries_allows_no_gap() -> None:
    with pytest.raises(ValueError, match=r"\('t1', 0\)"):
        accuracy_matrix(_class_incremental(), CI_BOUNDARIES)
    with pytest.raises(ValueError, match="not among"):
        accuracy_matrix(_class_incremental(), CI_BOUNDARIES, task_boundaries={"t1": "after t3"})


def test_accuracy_matrix_rejects_bad_input() -> None:
    frame = _tidy()
    with pytest.raises(ValueError, match="lacks column"):
        accuracy_matrix(frame.drop(columns="acc"), [("start", 0)])
    with pytest.raises(ValueError, match="no boundaries"):
        accuracy_matrix(frame, [])
    with pytest.raises(ValueError, match="unique"):
        accuracy_matrix(frame, [("start", 0), ("start", 190)])
    with pytest.raises(ValueError, match="more than one row"):
        accuracy_matrix(pd.concat([frame, frame.iloc[:1]]), [("start", 0)])


# --- Seed aggregation ---------------------------------------------------------------------------------------

# Student-t quantiles by hand, from closed forms (not scipy): with 2 degrees of freedom
# t_p = (2p − 1) / √(2p(1 − p)), so t_{0.975,2} = 0.95 / √0.04875 = 4.302652729749464; with 1 degree of freedom
# the t distribution is Cauchy, t_p = tan(π(p − 1/2)), so t_{0.975,1} = tan(0.475π) ≈ 12.7062.
T_975_2 = 4.302652729749464
T_975_1 = math.tan(0.475 * math.pi)


def test_seed_summary_by_hand() -> None:
    summary = seed_summary([0.8, 0.9, 1.0])
    # mean 0.9; deviations −0.1, 0, 0.1 → sample variance (0.01 + 0 + 0.01)/2 = 0.01 → std 0.1
    # half-width = 4.3026527·0.1/√3 ≈ 0.248414
    half = T_975_2 * 0.1 / math.sqrt(3)
    assert half == pytest.approx(0.248414, abs=1e-6)
    assert summary["n"] == 3
    assert summary["mean"] == pytest.approx(0.9)
    assert summary["std"] == pytest.approx(0.1)
    assert summary["ci_low"] == pytest.approx(0.9 - half)
    assert summary["ci_high"] == pytest.approx(0.9 + half)
    # NaN values are dropped before counting.
    assert seed_summary([0.8, float("nan"), 0.9, 1.0]) == pytest.approx(summary, nan_ok=True)


def test_seed_summary_other_confidence_by_hand() -> None:
    # [1, 3]: mean 2, std √2, std/√n = 1; at 90 %, t_{0.95,1} = tan(0.45π) ≈ 6.3138 → CI 2 ± 6.3138
    summary = seed_summary(np.array([1.0, 3.0]), confidence=0.90)
    assert summary["std"] == pytest.approx(math.sqrt(2))
    assert summary["ci_low"] == pytest.approx(2 - math.tan(0.45 * math.pi))
    assert summary["ci_high"] == pytest.approx(2 + math.tan(0.45 * math.pi))


def test_seed_summary_single_value() -> None:
    summary = seed_summary([0.7, float("nan")])
    assert summary["n"] == 1
    assert summary["mean"] == pytest.approx(0.7)
    assert math.isnan(summary["std"]) and math.isnan(summary["ci_low"]) and math.isnan(summary["ci_high"])


def test_seed_summary_identical_values_have_a_zero_width_interval() -> None:
    summary = seed_summary([0.5, 0.5, 0.5])
    assert (summary["std"], summary["ci_low"], summary["ci_high"]) == pytest.approx((0.0, 0.5, 0.5))


@pytest.mark.parametrize(
    ("values", "confidence", "message"),
    [
        ([], 0.95, "no values"),
        ([float("nan"), float("nan")], 0.95, "no values"),
        ([0.1, float("inf")], 0.95, "finite"),
        ([[0.1, 0.2]], 0.95, "1-D"),
        ([0.1, 0.2], 1.0, "confidence"),
        ([0.1, 0.2], 0.0, "confidence"),
        ([0.1, 0.2], 95, "confidence"),
    ],
)
def test_seed_summary_rejects_bad_input(values, confidence: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seed_summary(values, confidence)


def _runs() -> pd.DataFrame:
    # Groups first appear in the order sgd, ewc, lwf (not alphabetical); one ewc value is NaN.
    return pd.DataFrame(
        {
            "method": ["sgd", "ewc", "ewc", "sgd", "lwf", "ewc", "ewc"],
            "lr": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
            "seed": [0, 0, 1, 1, 0, 2, 3],
            "forgetting": [1.0, 0.8, 0.9, 3.0, 0.5, 1.0, float("nan")],
        }
    )


def test_aggregate_seeds_by_hand() -> None:
    table = aggregate_seeds(_runs(), "method", "forgetting")
    assert list(table.columns) == ["method", "mean", "std", "n", "ci_low", "ci_high"]
    assert table["method"].tolist() == ["sgd", "ewc", "lwf"]
    assert table["n"].tolist() == [2, 3, 1]
    # sgd [1, 3]: mean 2, std √2, std/√2 = 1 → 2 ± t_{0.975,1} ≈ 2 ± 12.7062
    sgd = table.iloc[0]
    assert (sgd["mean"], sgd["std"]) == pytest.approx((2.0, math.sqrt(2)))
    assert (sgd["ci_low"], sgd["ci_high"]) == pytest.approx((2 - T_975_1, 2 + T_975_1))
    # ewc [0.8, 0.9, 1.0] (NaN dropped): as in test_seed_summary_by_hand
    ewc = table.iloc[1]
    half = T_975_2 * 0.1 / math.sqrt(3)
    assert (ewc["mean"], ewc["std"], ewc["ci_low"], ewc["ci_high"]) == pytest.approx((0.9, 0.1, 0.9 - half, 0.9 + half))
    # lwf: one seed → no spread, no interval
    lwf = table.iloc[2]
    assert lwf["mean"] == pytest.approx(0.5)
    assert math.isnan(lwf["std"]) and math.isnan(lwf["ci_low"]) and math.isnan(lwf["ci_high"])


def test_aggregate_seeds_by_several_columns() -> None:
    runs = _runs()
    runs.loc[runs["seed"] == 1, "lr"] = 0.01  # splits sgd and ewc into (lr 0.1) and (lr 0.01) groups
    table = aggregate_seeds(runs, ["method", "lr"], "forgetting", confidence=0.9)
    assert list(table.columns) == ["method", "lr", "mean", "std", "n", "ci_low", "ci_high"]
    assert list(zip(table["method"], table["lr"], strict=True)) == [
        ("sgd", 0.1),
        ("ewc", 0.1),
        ("ewc", 0.01),
        ("sgd", 0.01),
        ("lwf", 0.1),
    ]
    # (ewc, 0.1) holds 0.8 and 1.0 (NaN dropped): mean 0.9, std √0.02, std/√2 = 0.1 → 0.9 ± tan(0.45π)·0.1
    ewc = table.iloc[1]
    assert ewc["n"] == 2
    assert (ewc["ci_low"], ewc["ci_high"]) == pytest.approx(
        (0.9 - 0.1 * math.tan(0.45 * math.pi), 0.9 + 0.1 * math.tan(0.45 * math.pi))
    )


def test_aggregate_seeds_rejects_bad_input() -> None:
    runs = _runs()
    with pytest.raises(ValueError, match="lacks column"):
        aggregate_seeds(runs, "optimizer", "forgetting")
    with pytest.raises(ValueError, match="lacks column"):
        aggregate_seeds(runs, "method", "bwt")
    with pytest.raises(ValueError, match="also a by column"):
        aggregate_seeds(runs, ["method", "forgetting"], "forgetting")
    with pytest.raises(ValueError, match="no rows"):
        aggregate_seeds(runs.iloc[:0], "method", "forgetting")
    runs.loc[runs["method"] == "lwf", "forgetting"] = float("nan")
    with pytest.raises(ValueError, match=r"'lwf'.*no values"):
        aggregate_seeds(runs, "method", "forgetting")


def test_overlaps_best_by_hand() -> None:
    from analysis.metrics import overlaps_best

    means = [0.90, 0.86, 0.80, np.nan, 0.87]
    lows = [0.88, 0.84, 0.70, np.nan, np.nan]  # the last: one seed, no interval → the point 0.87
    highs = [0.92, 0.88, 0.85, np.nan, np.nan]
    # Best 0.90, interval [0.88, 0.92]: [0.84, 0.88] touches it, [0.70, 0.85] does not, 0.87 lies outside it.
    assert overlaps_best(means, lows, highs).tolist() == [True, True, False, False, False]
    # Lower is better: best 0.80 [0.70, 0.85]; 0.86's [0.84, 0.88] overlaps; 0.90's [0.88, 0.92] does not.
    assert overlaps_best(means, lows, highs, higher=False).tolist() == [False, True, True, False, False]
    assert overlaps_best([np.nan], [np.nan], [np.nan]).tolist() == [False]
    with pytest.raises(ValueError, match="one length"):
        overlaps_best([0.1, 0.2], [0.1], [0.2])


# --- min-ACC and WC-ACC (De Lange, van de Ven & Tuytelaars 2023) ----------------------------------------------
# Every evaluation of a run: one pretraining task (learned at step 0) and two fine-tuning tasks ending at steps 4
# and 8. ft1 is not scored at step 0 (NaN: before its boundary, as in class-incremental runs).
#   step:          0     2     4     6     8
#   pre  (b=0):  0.90  0.60  0.80  0.50  0.70
#   ft1  (b=4):   nan  0.30  0.35  0.40  0.75
#   ft2  (b=8):  0.10  0.10  0.20  0.60  0.95
CE_STEPS = [0, 2, 4, 6, 8]
CE_ACC = [
    [0.90, np.nan, 0.10],
    [0.60, 0.30, 0.10],
    [0.80, 0.35, 0.20],
    [0.50, 0.40, 0.60],
    [0.70, 0.75, 0.95],
]
CE_BOUNDARIES = [0, 4, 8]


def test_min_acc_and_wc_acc_at_the_end_by_hand() -> None:
    # After its own boundary: pre's minimum over steps 2..8 is 0.50 (step 6); ft1's over steps 6..8 is 0.40 (its
    # boundary value 0.35 at step 4 does not count: the paper's n > |T_i|). ft2 is the task learned last.
    np.testing.assert_allclose(task_minima(CE_STEPS, CE_ACC, CE_BOUNDARIES), [0.50, 0.40, np.nan])
    assert min_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES) == pytest.approx((0.50 + 0.40) / 2)  # 0.45
    # k = 3 tasks (the pretraining task counts): 1/3 · 0.95 + 2/3 · 0.45 = 0.31667 + 0.30
    assert worst_case_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES) == pytest.approx(0.95 / 3 + 0.30)
    # The authors' code form: the mean of the current task's accuracy and each earlier task's minimum.
    assert worst_case_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES) == pytest.approx(np.mean([0.95, 0.50, 0.40]))


def test_min_acc_and_wc_acc_during_the_sequence_by_hand() -> None:
    # At step 4 (the end of ft1): only pre was learned before; its minimum over steps 2..4 is 0.60; ft1 is
    # current, k = 2: 0.35 / 2 + 0.60 / 2.
    assert min_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES, at=4) == pytest.approx(0.60)
    assert worst_case_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES, at=4) == pytest.approx(0.475)
    # At step 6 (during ft2): pre's minimum over 2..6 is 0.50, ft1's over 6..6 is 0.40; 0.60 / 3 + 2/3 · 0.45.
    assert min_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES, at=6) == pytest.approx(0.45)
    assert worst_case_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES, at=6) == pytest.approx(0.20 + 0.30)
    # At step 2 (during ft1): pre has only step 2 after its boundary.
    assert min_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES, at=2) == pytest.approx(0.60)
    assert worst_case_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES, at=2) == pytest.approx(0.30 / 2 + 0.60 / 2)


def test_wc_acc_of_a_first_task_is_its_accuracy_and_min_acc_is_undefined() -> None:
    # Step 0: nothing was learned before it (pre's boundary is step 0 itself); k = 1, the current task is pre.
    assert worst_case_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES, at=0) == pytest.approx(0.90)
    with pytest.raises(ValueError, match="needs a task learned"):
        min_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES, at=0)


def test_min_acc_is_never_above_the_final_accuracy_of_the_same_tasks() -> None:
    rng = np.random.default_rng(0)
    acc = rng.uniform(size=(12, 4))
    steps, bounds = np.arange(12) * 3, [0, 0, 15, 33]
    assert min_accuracy(steps, acc, bounds) <= acc[-1, :3].mean()
    assert worst_case_accuracy(steps, acc, bounds) <= acc[-1].mean()  # each earlier task at its minimum


def test_min_acc_and_wc_acc_refuse_bad_input() -> None:
    unscored = np.array(CE_ACC)
    unscored[3, 1] = np.nan  # ft1 not scored at step 6, after its boundary
    with pytest.raises(ValueError, match="NaN"):
        min_accuracy(CE_STEPS, unscored, CE_BOUNDARIES)
    with pytest.raises(ValueError, match="share the boundary"):  # which task is learned last is unknown
        worst_case_accuracy(CE_STEPS, CE_ACC, [0, 8, 8])
    with pytest.raises(ValueError, match="not an evaluated step"):
        worst_case_accuracy(CE_STEPS, CE_ACC, CE_BOUNDARIES, at=5)
    with pytest.raises(ValueError, match="every task was learned"):
        worst_case_accuracy(CE_STEPS, CE_ACC, [0, 2, 4], at=6)
    with pytest.raises(ValueError, match="outside"):
        min_accuracy(CE_STEPS, CE_ACC, [0, 4, 9])
    with pytest.raises(ValueError, match="increasing"):
        min_accuracy([0, 2, 2, 6, 8], CE_ACC, CE_BOUNDARIES)
    with pytest.raises(ValueError, match="boundaries for"):
        min_accuracy(CE_STEPS, CE_ACC, [0, 4])
