"""Forgetting metrics as pure functions over accuracy matrices.

An accuracy matrix ``A`` has one row per point in time and one column per task: ``A[t, k]`` is the accuracy on
task ``k`` measured at time ``t``. Each task ``k`` has a *boundary* ``b_k``: the row measured right after it was
learned. In the square case, row ``t`` is measured right after learning task ``t`` (``b_k = k``); otherwise the
boundaries are given, e.g. the pretraining tasks of a fine-tuning run have their boundary at the "start" row
(before any fine-tuning update) and fine-tuning task ``k`` at the row taken when its training ended. Every matrix
metric reads only cells at or after each task's boundary, so cells before it may be NaN (a task that was not
scored yet); a NaN at or after a boundary is an error.

Also: metrics of one task's accuracy curve over training steps (final and peak-to-final drop, stability gap,
retention, forgetting area, final accuracy), the continual-evaluation metrics min-ACC and WC-ACC over every
evaluation of a run (De Lange et al. 2023), the Pareto front of runs, reading an accuracy matrix out of a tidy
table, and mean ± Student-t confidence intervals over seeds. numpy, pandas and scipy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

Matrix = Sequence[Sequence[float]] | np.ndarray


def _matrix(accuracy: Matrix) -> np.ndarray:
    matrix = np.asarray(accuracy, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"an accuracy matrix is 2-D and non-empty; got shape {matrix.shape}")
    return matrix


def _boundaries(matrix: np.ndarray, boundaries: Sequence[int] | None) -> list[int]:
    """Each task's boundary row (``k`` in the square case), checked to lie in the matrix, with every cell at or
    after it measured (not NaN)."""
    if boundaries is None:
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"a non-square accuracy matrix {matrix.shape} needs the time index of each task")
        rows = list(range(matrix.shape[1]))
    elif len(boundaries) != matrix.shape[1]:
        raise ValueError(f"{len(boundaries)} boundaries for {matrix.shape[1]} tasks")
    else:
        rows = [int(b) for b in boundaries]
    for k, b in enumerate(rows):
        if not 0 <= b < matrix.shape[0]:
            raise ValueError(f"task {k}: boundary row {b} is outside the matrix's {matrix.shape[0]} rows")
        if np.isnan(matrix[b:, k]).any():
            raise ValueError(f"task {k}: accuracy missing (NaN) at or after its boundary row {b}")
    return rows


def _before_last(matrix: np.ndarray, rows: list[int], what: str) -> list[int]:
    """The tasks learned before the last row (boundary < last row); the metric averages over them."""
    last = matrix.shape[0] - 1
    tasks = [k for k, b in enumerate(rows) if b < last]
    if not tasks:
        raise ValueError(f"{what} needs a task learned before the last row; boundaries {rows}, last row {last}")
    return tasks


def forgetting_matrix(accuracy: Matrix, boundaries: Sequence[int] | None = None) -> np.ndarray:
    """``F[t, k] = A[b_k, k] − A[t, k]`` for ``t > b_k`` and 0 up to ``b_k``, where ``b_k`` is the time right
    after task ``k`` was learned (``k`` in the square case). The same definition as
    ``avalanche.evaluation.functional.forgetting`` (tested equal)."""
    matrix = _matrix(accuracy)
    result = np.zeros_like(matrix)
    for k, b in enumerate(_boundaries(matrix, boundaries)):
        result[b + 1 :, k] = matrix[b, k] - matrix[b + 1 :, k]
    return result


def average_forgetting(accuracy: Matrix, boundaries: Sequence[int] | None = None) -> float:
    """Forgetting as Chaudhry et al. 2018 define it ("Riemannian Walk for Incremental Learning"): at the
    last row ``T``, the mean over the tasks learned before it (``b_k < T``) of the largest drop from a task
    boundary, ``max_{b_k ≤ t < T} A[t, k] − A[T, k]``. The peak is taken over the boundary rows from the task's
    own boundary on (every row of the matrix is a boundary), not over every evaluation, so it does not depend
    on how often the model was evaluated. With one fine-tuning task after pretraining (rows: start, end) it is
    the mean final drop of the pretraining tasks."""
    matrix = _matrix(accuracy)
    rows = _boundaries(matrix, boundaries)
    last = matrix.shape[0] - 1
    drops = [matrix[rows[k] : last, k].max() - matrix[last, k] for k in _before_last(matrix, rows, "forgetting")]
    return float(np.mean(drops))


def backward_transfer(accuracy: Matrix, boundaries: Sequence[int] | None = None) -> float:
    """Lopez-Paz & Ranzato 2017 (GEM, "Gradient Episodic Memory for Continual Learning"): the mean over the
    tasks learned before the last row ``T`` of ``A[T, k] − A[b_k, k]``; on a square matrix of T tasks,
    ``1/(T−1) Σ_{k<T−1} A[T−1, k] − A[k, k]``. Negative values are forgetting. With one fine-tuning task after
    pretraining (rows: start, end) it is minus the mean final drop of the pretraining tasks."""
    matrix = _matrix(accuracy)
    rows = _boundaries(matrix, boundaries)
    last = matrix.shape[0] - 1
    tasks = _before_last(matrix, rows, "backward transfer")
    return float(np.mean([matrix[last, k] - matrix[rows[k], k] for k in tasks]))


def plasticity(accuracy: Matrix, boundaries: Sequence[int] | None = None) -> float:
    """The mean over tasks of the accuracy right after each was learned, ``A[b_k, k]`` (the diagonal in the
    square case; the "learning accuracy" of Riemer et al. 2019, "Learning to Learn without Forgetting by
    Maximizing Transfer and Minimizing Interference"). Unlike the final accuracy it does not include what was
    forgotten of a task while later tasks were learned."""
    matrix = _matrix(accuracy)
    rows = _boundaries(matrix, boundaries)
    return float(np.mean([matrix[b, k] for k, b in enumerate(rows)]))


# --- Per-task accuracy curves -------------------------------------------------------------------------------
# A curve is the accuracy of ONE task over training: ``acc[i]`` measured at optimiser step ``steps[i]``, with
# ``steps[0]`` the measurement before any fine-tuning update (normally step 0).


def _curve(steps: Sequence[float] | np.ndarray, acc: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    step_array = np.asarray(steps, dtype=float)
    acc_array = np.asarray(acc, dtype=float)
    if step_array.ndim != 1 or acc_array.ndim != 1:
        raise ValueError(f"a curve is 1-D steps and 1-D acc; got shapes {step_array.shape} and {acc_array.shape}")
    if step_array.size == 0:
        raise ValueError("a curve needs at least one measurement; got none")
    if step_array.size != acc_array.size:
        raise ValueError(f"steps and acc differ in length: {step_array.size} steps, {acc_array.size} accuracies")
    if not np.all(np.isfinite(step_array)):
        raise ValueError(f"steps must be finite; got {step_array.tolist()}")
    if not np.all(np.diff(step_array) > 0):
        raise ValueError(f"steps must be strictly increasing; got {step_array.tolist()}")
    if not np.all(np.isfinite(acc_array)):
        raise ValueError(f"acc must be finite (a missing measurement is not a curve point); got {acc_array.tolist()}")
    return step_array, acc_array


def final_drop(steps: Sequence[float] | np.ndarray, acc: Sequence[float] | np.ndarray) -> float:
    """Forgetting relative to the score before fine-tuning: ``acc[0] − acc[-1]``. Negative values are an
    improvement."""
    _, values = _curve(steps, acc)
    return float(values[0] - values[-1])


def peak_drop(steps: Sequence[float] | np.ndarray, acc: Sequence[float] | np.ndarray) -> float:
    """Peak-to-final drop: the best accuracy seen at ANY evaluation minus the final one, ``max_t acc[t] −
    acc[-1]``, step 0 included, so it is never negative. This is not Chaudhry et al. 2018's forgetting
    (:func:`average_forgetting`), which takes the peak over task boundaries only: over every evaluation the peak
    also picks up evaluation noise and depends on how often the model was evaluated, so this is ≥ theirs."""
    _, values = _curve(steps, acc)
    return float(values.max() - values[-1])


def stability_gap(steps: Sequence[float] | np.ndarray, acc: Sequence[float] | np.ndarray) -> float:
    """The worst transient drop during training relative to the start: ``acc[0] − min_t acc[t]`` (De Lange,
    van de Ven & Tuytelaars 2023, "Continual evaluation for lifelong learning: identifying the stability gap").
    Never negative (0 when the curve never went below its start) and never less than :func:`final_drop`."""
    _, values = _curve(steps, acc)
    return float(values[0] - values.min())


def retention(steps: Sequence[float] | np.ndarray, acc: Sequence[float] | np.ndarray) -> float:
    """The fraction of the starting accuracy kept at the end: ``acc[-1] / acc[0]`` (1 = nothing lost; above 1
    = improved). Undefined, and a ValueError, when ``acc[0] == 0``."""
    _, values = _curve(steps, acc)
    if values[0] == 0:
        raise ValueError("retention is undefined when the starting accuracy acc[0] is 0")
    return float(values[-1] / values[0])


def forgetting_auc(steps: Sequence[float] | np.ndarray, acc: Sequence[float] | np.ndarray) -> float:
    """The mean drop below the start over training, in accuracy units:
    ``1/(s_N − s_0) · ∫_{s_0}^{s_N} (acc[0] − acc(s)) ds``, the integral by the trapezoid rule over the measured
    steps, ``Σ_i (s_{i+1} − s_i) · (d_i + d_{i+1}) / 2`` with ``d_i = acc[0] − acc[i]`` (uneven spacing weighs
    each interval by its length). Negative when the task was above its start on average. Needs at least two
    measurements."""
    step_array, values = _curve(steps, acc)
    if step_array.size < 2:
        raise ValueError("forgetting_auc needs at least two measurements (one interval of training)")
    drops = values[0] - values
    area = float(np.sum(np.diff(step_array) * (drops[1:] + drops[:-1]) / 2))
    return area / float(step_array[-1] - step_array[0])


def final_accuracy(steps: Sequence[float] | np.ndarray, acc: Sequence[float] | np.ndarray) -> float:
    """The accuracy at the last measurement, ``acc[-1]``. For a task of a sequence this includes what was
    forgotten of it while later tasks were learned; the accuracy right after learning it is :func:`plasticity`."""
    _, values = _curve(steps, acc)
    return float(values[-1])


# --- Continual evaluation (De Lange, van de Ven & Tuytelaars 2023) -----------------------------------------
# De Lange, van de Ven & Tuytelaars 2023, "Continual evaluation for lifelong learning: identifying the stability
# gap" (ICLR 2023), Section 3: with tasks T_1..T_k learned in order and the model f_n evaluated at iteration n,
#     min-ACC_{T_k} = 1/(k−1) · Σ_{i<k} min_n A(E_i, f_n)  over |T_i| < n ≤ t  (the evaluations after T_i was
#                     learned, up to now),
#     WC-ACC_t      = 1/k · A(E_k, f_t) + (1 − 1/k) · min-ACC_{T_k}  (T_k: the task being learned at t).
# The authors' code (Mattdl/ContinualEvaluation, src/eval/continual_eval_metrics.py) computes WC-ACC the same way,
# as the mean of the current task's accuracy and the k−1 earlier tasks' minima. Here the input is every
# evaluation of a run: ``steps`` (N, strictly increasing), ``accuracy`` (N × K, column k = task k) and each
# task's boundary *step* ``b_k`` (the step at which it was learned). Pretraining tasks count as learned tasks
# with their boundary at the first evaluation (step 0: learned before fine-tuning began), so with P pretraining
# tasks and F fine-tuning tasks k = P + F at the end of the run.


def _evaluations(
    steps: Sequence[float] | np.ndarray, accuracy: Matrix, boundaries: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    step_array = np.asarray(steps, dtype=float)
    matrix = _matrix(accuracy)
    bounds = np.asarray(boundaries, dtype=float)
    if step_array.ndim != 1 or step_array.size != matrix.shape[0]:
        raise ValueError(f"steps must be 1-D with one entry per accuracy row; got {step_array.shape}, {matrix.shape}")
    if not np.all(np.isfinite(step_array)) or not np.all(np.diff(step_array) > 0):
        raise ValueError(f"steps must be finite and strictly increasing; got {step_array.tolist()}")
    if bounds.ndim != 1 or bounds.size != matrix.shape[1]:
        raise ValueError(f"{bounds.size} boundaries for {matrix.shape[1]} tasks")
    for k, b in enumerate(bounds):
        if not step_array[0] <= b <= step_array[-1]:
            raise ValueError(f"task {k}: boundary step {b} is outside the evaluated steps {step_array[[0, -1]]}")
        if np.isnan(matrix[step_array >= b, k]).any():
            raise ValueError(f"task {k}: accuracy missing (NaN) at or after its boundary step {b}")
    return step_array, matrix, bounds


def _learned_and_current(
    step_array: np.ndarray, bounds: np.ndarray, at: float | None
) -> tuple[float, list[int], int | None]:
    """The evaluation step ``t`` (default the last), the tasks learned before it (``b_k < t``) and the task being
    learned at it: the one with the earliest boundary at or after ``t`` (None when every task was learned)."""
    t = float(step_array[-1] if at is None else at)
    if t not in set(step_array.tolist()):
        raise ValueError(f"at={at} is not an evaluated step")
    learned = [k for k, b in enumerate(bounds) if b < t]
    later = [b for b in bounds if b >= t]
    if not later:
        return t, learned, None
    current = [k for k, b in enumerate(bounds) if b == min(later)]
    if len(current) > 1:
        raise ValueError(f"tasks {current} share the boundary step {min(later)}: which one is being learned is unknown")
    return t, learned, current[0]


def task_minima(
    steps: Sequence[float] | np.ndarray, accuracy: Matrix, boundaries: Sequence[float], at: float | None = None
) -> np.ndarray:
    """Each task's minimum accuracy over the evaluations strictly after its boundary step and up to step ``at``
    (default: the last evaluation), ``min_{b_k < s ≤ at} A[s, k]`` (the inner term of min-ACC); NaN for a task not
    learned before ``at`` (``b_k ≥ at``). Excluding the boundary itself follows the paper's ``n > |T_i|``: the
    model that just finished learning a task is not yet one that could forget it."""
    step_array, matrix, bounds = _evaluations(steps, accuracy, boundaries)
    t, learned, _ = _learned_and_current(step_array, bounds, at)
    result = np.full(matrix.shape[1], np.nan)
    for k in learned:
        window = (step_array > bounds[k]) & (step_array <= t)
        result[k] = matrix[window, k].min()
    return result


def min_accuracy(
    steps: Sequence[float] | np.ndarray, accuracy: Matrix, boundaries: Sequence[float], at: float | None = None
) -> float:
    """min-ACC (De Lange et al. 2023, the average minimum accuracy): the mean over the tasks learned before step
    ``at`` (default the last evaluation; pretraining tasks included, learned at step 0) of :func:`task_minima`,
    the lowest accuracy each fell to at any evaluation after it was learned. Higher is better; it is never above
    the same tasks' mean accuracy at ``at``. Raises ValueError when no task was learned before ``at``."""
    minima = task_minima(steps, accuracy, boundaries, at)
    if np.isnan(minima).all():
        raise ValueError("min-ACC needs a task learned before the evaluation step; none was")
    return float(np.nanmean(minima))


def worst_case_accuracy(
    steps: Sequence[float] | np.ndarray, accuracy: Matrix, boundaries: Sequence[float], at: float | None = None
) -> float:
    """WC-ACC (De Lange et al. 2023) at step ``at`` (default the last evaluation): ``1/k · A[at, c] + (1 − 1/k)
    · min-ACC``, with ``c`` the task being learned at ``at`` (the earliest boundary at or after it; at the last
    evaluation, the task learned last) and ``k`` = the tasks learned before ``at`` plus ``c``; pretraining tasks
    count as learned at step 0. With no earlier task it is ``A[at, c]``. Raises ValueError when every task was
    learned before ``at`` (no current task) or when several tasks share ``c``'s boundary."""
    step_array, matrix, bounds = _evaluations(steps, accuracy, boundaries)
    t, learned, current = _learned_and_current(step_array, bounds, at)
    if current is None:
        raise ValueError(f"WC-ACC needs the task being learned at step {t}; every task was learned before it")
    now = float(matrix[step_array == t, current][0])
    if np.isnan(now):
        raise ValueError(f"task {current}: accuracy missing (NaN) at step {t}")
    if not learned:
        return now
    k = len(learned) + 1
    return now / k + (1 - 1 / k) * min_accuracy(step_array, matrix, bounds, t)


# --- Across runs ----------------------------------------------------------------------------------------------


def final_average_accuracy(accuracy: Matrix) -> float:
    """ACC (Lopez-Paz & Ranzato 2017; van de Ven & Tolias 2019's tables): the mean accuracy over every task of
    the last row of the accuracy matrix, i.e. after the last task has been learned. Raises ValueError when that
    row has a NaN (a task not scored at the end)."""
    last = _matrix(accuracy)[-1]
    if np.isnan(last).any():
        raise ValueError(f"the last row of the accuracy matrix has unscored tasks: {last.tolist()}")
    return float(last.mean())


def pareto_front(stability: Sequence[float] | np.ndarray, plasticity: Sequence[float] | np.ndarray) -> np.ndarray:
    """Boolean mask of the points on the Pareto front when both coordinates are maximised. Point ``i`` is
    dominated when some ``j`` has ``stability[j] ≥ stability[i]`` and ``plasticity[j] ≥ plasticity[i]`` with at
    least one strict; the front is the non-dominated points. Exact duplicates do not dominate each other (both
    stay on the front). A point with NaN in either coordinate is never on the front and dominates nothing."""
    s = np.asarray(stability, dtype=float)
    p = np.asarray(plasticity, dtype=float)
    if s.ndim != 1 or p.ndim != 1:
        raise ValueError(f"stability and plasticity are 1-D; got shapes {s.shape} and {p.shape}")
    if s.size != p.size:
        raise ValueError(f"stability and plasticity differ in length: {s.size} and {p.size}")
    valid = ~(np.isnan(s) | np.isnan(p))
    # dominates[j, i]: point j dominates point i (NaN comparisons are False, so NaN points dominate nothing).
    at_least = (s[:, None] >= s[None, :]) & (p[:, None] >= p[None, :])
    strictly = (s[:, None] > s[None, :]) | (p[:, None] > p[None, :])
    dominated = (at_least & strictly).any(axis=0)
    return valid & ~dominated


def accuracy_matrix(
    frame: pd.DataFrame, boundaries: Sequence[tuple[str, int]], task_boundaries: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """An accuracy matrix read from a tidy table with columns ``step, task, acc`` (one row per task per
    evaluation step) at the given points in time. ``boundaries`` is a list of ``(label, step)`` pairs, e.g.
    ``[("start", 0), ("after digits_5_9", 190)]``. The result has one row per label (in the given order, index
    named ``boundary``) and one column per task (in order of first appearance in ``frame``, columns named
    ``task``): ``A[label, task]`` is ``acc`` at exactly that step.

    ``task_boundaries`` maps a task to the label of its own boundary (the row right after it was learned). Such
    a task may be unmeasured at rows whose step comes before that boundary's step (e.g. a class-incremental
    task is not scored before its classes exist): those cells are NaN. Every other missing row or NaN ``acc``
    (a task without an entry, or at or after its own boundary) raises ValueError naming the (task, step); so do
    duplicate (step, task) rows, duplicate labels and a ``task_boundaries`` label that is not in ``boundaries``."""
    missing_columns = [column for column in ("step", "task", "acc") if column not in frame.columns]
    if missing_columns:
        raise ValueError(f"the frame lacks column(s) {missing_columns}; it has {list(frame.columns)}")
    if len(boundaries) == 0:
        raise ValueError("no boundaries given: pass (label, step) pairs to read")
    labels = [label for label, _ in boundaries]
    repeated = sorted({str(label) for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"boundary labels must be unique; repeated: {repeated}")
    steps_of = dict(boundaries)
    unknown = {task: label for task, label in (task_boundaries or {}).items() if label not in steps_of}
    if unknown:
        raise ValueError(f"task boundaries {unknown} name labels that are not among {labels}")
    learned = {task: steps_of[label] for task, label in (task_boundaries or {}).items()}
    duplicated = frame.duplicated(subset=["step", "task"], keep=False)
    if duplicated.any():
        pairs = frame.loc[duplicated, ["task", "step"]].drop_duplicates().itertuples(index=False, name=None)
        raise ValueError(f"more than one row for (task, step): {list(pairs)}")
    tasks = list(pd.unique(frame["task"]))
    lookup = {(task, step): value for step, task, value in frame[["step", "task", "acc"]].itertuples(index=False)}
    rows = []
    for _, step in boundaries:
        row = []
        for task in tasks:
            value = lookup.get((task, step), np.nan)
            if pd.isna(value) and not (task in learned and step < learned[task]):
                raise ValueError(f"no accuracy for (task, step) = ({task!r}, {step!r})")
            row.append(float(value))
        rows.append(row)
    return pd.DataFrame(
        rows, index=pd.Index(labels, name="boundary"), columns=pd.Index(tasks, name="task"), dtype=float
    )


# --- Aggregation over seeds -----------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("mean", "std", "n", "ci_low", "ci_high")


def seed_summary(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict[str, float | int]:
    """Mean, spread and a Student-t confidence interval of one metric over seeds. NaN values are dropped first;
    ``n`` counts the rest. ``std`` is the sample standard deviation (ddof=1) and the interval is
    ``mean ± t_{(1+confidence)/2, n−1} · std / √n`` with the quantile from ``scipy.stats.t.ppf`` (the usual
    t-interval for a mean, assuming roughly normal seed-to-seed variation). With n == 1 the std and both interval
    ends are NaN. Returns ``{"mean", "std", "n", "ci_low", "ci_high"}``. Raises ValueError for no non-NaN values,
    infinite values or a confidence outside (0, 1)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1; got {confidence}")
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"values are 1-D; got shape {array.shape}")
    array = array[~np.isnan(array)]
    if array.size == 0:
        raise ValueError("no values to summarise (empty, or all NaN)")
    if np.isinf(array).any():
        raise ValueError(f"values must be finite or NaN; got {array.tolist()}")
    n = int(array.size)
    mean = float(array.mean())
    if n == 1:
        return {"mean": mean, "std": float("nan"), "n": 1, "ci_low": float("nan"), "ci_high": float("nan")}
    std = float(array.std(ddof=1))
    half_width = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / np.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half_width, "ci_high": mean + half_width}


def aggregate_seeds(frame: pd.DataFrame, by: str | Sequence[str], value: str, confidence: float = 0.95) -> pd.DataFrame:
    """:func:`seed_summary` of column ``value`` within each group of the ``by`` columns: one row per group, in
    order of first appearance (NaN group keys form their own group), with the ``by`` columns followed by
    ``mean, std, n, ci_low, ci_high``. Raises ValueError for missing columns, an empty frame, or a group with
    no non-NaN value (naming the group)."""
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise ValueError("by names no columns")
    if value in keys:
        raise ValueError(f"value column {value!r} is also a by column")
    missing_columns = [column for column in [*keys, value] if column not in frame.columns]
    if missing_columns:
        raise ValueError(f"the frame lacks column(s) {missing_columns}; it has {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError("the frame has no rows to aggregate")
    rows = []
    for group, part in frame.groupby(keys, sort=False, dropna=False):
        try:
            summary = seed_summary(pd.to_numeric(part[value]).to_numpy(dtype=float), confidence)
        except ValueError as error:
            raise ValueError(f"group {dict(zip(keys, group, strict=True))}: {error}") from error
        rows.append({**dict(zip(keys, group, strict=True)), **summary})
    result = pd.DataFrame(rows, columns=[*keys, *SUMMARY_COLUMNS])
    result["n"] = result["n"].astype(int)
    return result


def overlaps_best(
    means: Sequence[float] | np.ndarray,
    lows: Sequence[float] | np.ndarray,
    highs: Sequence[float] | np.ndarray,
    higher: bool = True,
) -> np.ndarray:
    """Boolean mask of the entries the seeds cannot tell apart from the best one: the best is the highest mean
    (``higher``) or the lowest; an entry is marked when its interval ``[lows[i], highs[i]]`` intersects the best
    one's (closed intervals, so touching counts). An entry without an interval (NaN ends, e.g. a single seed)
    counts as the point ``[mean, mean]``. Entries with a NaN mean are never marked; with no finite mean nothing
    is. Ties for the best mean are all marked (each contains its own mean)."""
    mean = np.asarray(means, dtype=float)
    low = np.asarray(lows, dtype=float)
    high = np.asarray(highs, dtype=float)
    if not mean.shape == low.shape == high.shape or mean.ndim != 1:
        raise ValueError(f"means, lows and highs are 1-D of one length; got {mean.shape}, {low.shape}, {high.shape}")
    valid = np.isfinite(mean)
    if not valid.any():
        return np.zeros(mean.shape, dtype=bool)
    no_interval = ~(np.isfinite(low) & np.isfinite(high))
    low = np.where(no_interval, mean, low)
    high = np.where(no_interval, mean, high)
    best = int(np.nanargmax(mean) if higher else np.nanargmin(mean))
    return valid & (low <= high[best]) & (high >= low[best])
