"""Forgetting metrics: hand-computed cases and avalanche-lib's functional forgetting on random matrices."""

from __future__ import annotations

import numpy as np
import pytest
from avalanche.evaluation.functional import forgetting as avalanche_forgetting

from analysis.metrics import average_forgetting, backward_transfer, forgetting_matrix

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
    # Max-drop uses the best earlier value, not the value right after learning:
    assert average_forgetting([[0.5, 0.0], [0.9, 0.9], [0.4, 0.9]]) == pytest.approx(((0.9 - 0.4) + 0.0) / 2)


def test_backward_transfer_by_hand() -> None:
    # ((0.60 − 0.90) + (0.85 − 0.80)) / 2 = −0.125
    assert backward_transfer(A) == pytest.approx(-0.125)


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
    np.testing.assert_allclose(forgetting_matrix(tall, boundaries), avalanche_forgetting(tall, boundaries), atol=1e-12)
