"""Forgetting metrics as pure functions over accuracy matrices.

An accuracy matrix ``A`` has one row per point in time and one column per task: ``A[t, k]`` is the accuracy on
task ``k`` measured after training stage ``t``. In the common square case, row ``t`` is measured right after
learning task ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _matrix(accuracy: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    matrix = np.asarray(accuracy, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"an accuracy matrix is 2-D and non-empty; got shape {matrix.shape}")
    return matrix


def _boundaries(matrix: np.ndarray, boundaries: Sequence[int] | None) -> list[int]:
    if boundaries is None:
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"a non-square accuracy matrix {matrix.shape} needs the time index of each task")
        return list(range(matrix.shape[1]))
    if len(boundaries) != matrix.shape[1]:
        raise ValueError(f"{len(boundaries)} boundaries for {matrix.shape[1]} tasks")
    return list(boundaries)


def forgetting_matrix(
    accuracy: Sequence[Sequence[float]] | np.ndarray, boundaries: Sequence[int] | None = None
) -> np.ndarray:
    """``F[t, k] = A[b_k, k] − A[t, k]`` for ``t > b_k`` and 0 up to ``b_k``, where ``b_k`` is the time right
    after task ``k`` was learned (``k`` in the square case). The same definition as
    ``avalanche.evaluation.functional.forgetting`` (tested equal)."""
    matrix = _matrix(accuracy)
    result = np.zeros_like(matrix)
    for k, b in enumerate(_boundaries(matrix, boundaries)):
        result[b + 1 :, k] = matrix[b, k] - matrix[b + 1 :, k]
    return result


def average_forgetting(accuracy: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Chaudhry et al. 2018 (RWalk): at the last time T, the mean over tasks k < T of the largest drop,
    ``max_{t < T} A[t, k] − A[T, k]``, using every earlier measurement (max-drop, not drop-since-learned)."""
    matrix = _matrix(accuracy)
    last = matrix.shape[0] - 1
    tasks = min(last, matrix.shape[1])
    if tasks == 0:
        raise ValueError("forgetting needs at least two points in time")
    drops = [matrix[k:last, k].max() - matrix[last, k] for k in range(tasks)]
    return float(np.mean(drops))


def backward_transfer(accuracy: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Lopez-Paz & Ranzato 2017 (GEM): ``BWT = 1/(T−1) Σ_{k<T−1} A[T−1, k] − A[k, k]`` on a square matrix of
    T tasks. Negative values are forgetting."""
    matrix = _matrix(accuracy)
    if matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"backward transfer needs a square matrix of at least 2 tasks; got {matrix.shape}")
    last = matrix.shape[0] - 1
    return float(np.mean([matrix[last, k] - matrix[k, k] for k in range(last)]))
