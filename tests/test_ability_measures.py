"""The pure metric functions behind the ability evaluators (research.abilities.measures), against hand-worked values."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from research.abilities.measures import (
    linear_cka,
    mean_cosine_to_reference,
    pair_cosines,
    probe_accuracy,
    spearman,
)

try:
    import scipy.stats as scipy_stats
except ImportError:  # pragma: no cover - scipy ships with scikit-learn here
    scipy_stats = None


def t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------------ spearman


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spearman_without_ties(dtype):
    # ranks are the values; d = (0, 1, 1, 0), sum d^2 = 2; rho = 1 - 6*2 / (4*(16-1)) = 1 - 12/60 = 0.8
    assert spearman(t([1, 2, 3, 4], dtype), t([1, 3, 2, 4], dtype)) == pytest.approx(0.8, abs=1e-15)


def test_spearman_with_ties_uses_average_ranks():
    # predicted ranks (1, 2.5, 2.5, 4), gold ranks (1, 2, 3, 4); centred: (-1.5, 0, 0, 1.5) and (-1.5, -.5, .5, 1.5)
    # cov sum = 2.25 + 0 + 0 + 2.25 = 4.5; sum p^2 = 4.5; sum g^2 = 5; rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman(t([1, 2, 2, 3]), t([1, 2, 3, 4])) == pytest.approx(0.9486832980505138, abs=1e-15)
    # the same with values that only tie in rank order (10 < 20 = 20 < 30), and ties on both sides:
    # p ranks (1, 2.5, 2.5, 4), g ranks (1.5, 1.5, 3.5, 3.5); centred g (-1, -1, 1, 1)
    # cov sum = 1.5 + 0 + 0 + 1.5 = 3; sum p^2 = 4.5; sum g^2 = 4; rho = 3 / sqrt(18) = 1/sqrt(2)
    assert spearman(t([10, 20, 20, 30]), t([5, 5, 7, 7])) == pytest.approx(1 / math.sqrt(2), abs=1e-15)


def test_spearman_is_a_rank_measure():
    x = t([0.3, -1.0, 2.5, 0.0, 7.0])
    assert spearman(x, torch.exp(x)) == pytest.approx(1.0, abs=1e-15)  # any increasing map: ranks identical
    assert spearman(x, -(x**3)) == pytest.approx(-1.0, abs=1e-15)  # decreasing: ranks reversed


def test_spearman_constant_side_gives_zero():
    # a collapsed model giving every pair the same similarity: no ranking, documented value 0.0 (scipy: nan)
    assert spearman(t([0.5, 0.5, 0.5, 0.5]), t([1, 2, 3, 4])) == 0.0
    assert spearman(t([1, 2, 3, 4]), t([2, 2, 2, 2])) == 0.0
    assert spearman(t([2, 2]), t([2, 2])) == 0.0


@pytest.mark.skipif(scipy_stats is None, reason="scipy not installed")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_on_random_data(seed):
    g = gen(seed)
    predicted = torch.randn(200, generator=g)
    gold = predicted + torch.randn(200, generator=g)
    assert spearman(predicted, gold) == pytest.approx(scipy_stats.spearmanr(predicted, gold)[0], abs=1e-12)
    # many ties: integer scores on a 0..5 scale, as human similarity ratings are
    p_ties = torch.randint(0, 6, (300,), generator=g).double()
    g_ties = (p_ties + torch.randint(-2, 3, (300,), generator=g)).clamp(0, 5)
    assert spearman(p_ties, g_ties) == pytest.approx(scipy_stats.spearmanr(p_ties, g_ties)[0], abs=1e-12)


def test_spearman_agrees_with_torchmetrics_up_to_its_eps_and_float32():
    from torchmetrics.functional import spearman_corrcoef

    g = gen(3)
    predicted = torch.randint(0, 10, (100,), generator=g).double()
    gold = predicted + torch.randn(100, generator=g, dtype=torch.float64)
    assert spearman(predicted, gold) == pytest.approx(float(spearman_corrcoef(predicted, gold)), abs=1e-5)


def test_spearman_rejects_bad_input():
    with pytest.raises(ValueError, match="4 values but gold has 3"):
        spearman(t([1, 2, 3, 4]), t([1, 2, 3]))
    with pytest.raises(ValueError, match="at least 2"):
        spearman(t([1]), t([1]))
    with pytest.raises(ValueError, match="1-D"):
        spearman(t([[1, 2]]), t([[1, 2]]))
    with pytest.raises(ValueError, match="non-finite"):
        spearman(t([1, float("nan"), 3]), t([1, 2, 3]))


# ------------------------------------------------------------------------------------------------------ cosines


def test_pair_cosines_of_known_vectors():
    a = t([[1, 0], [1, 1], [3, 4], [1, 0], [1, 2]])
    b = t([[0, 1], [1, 0], [6, 8], [-2, 0], [2, 4]])
    # orthogonal: 0; 45 degrees: 1/sqrt(2); (3,4) vs (6,8) parallel: 1; opposite: -1; (1,2) vs (2,4): 1
    expected = [0.0, 1 / math.sqrt(2), 1.0, -1.0, 1.0]
    got = pair_cosines(a, b)
    assert got.dtype == torch.float64 and got.shape == (5,)
    assert got.tolist() == pytest.approx(expected, abs=1e-15)
    # (1,2,2) . (2,-1,2) = 2 - 2 + 4 = 4; both norms 3; cos = 4/9
    assert pair_cosines(t([[1, 2, 2]]), t([[2, -1, 2]])).item() == pytest.approx(4 / 9, abs=1e-15)


def test_pair_cosines_zero_vector_gives_zero():
    # norms are clamped at eps, so a zero vector has cosine 0 with anything, itself included, never nan
    got = pair_cosines(t([[0, 0], [0, 0]]), t([[3, 4], [0, 0]]))
    assert got.tolist() == [0.0, 0.0]


def test_pair_cosines_float32_input_and_bad_shapes():
    got = pair_cosines(t([[3, 4]], torch.float32), t([[4, 3]], torch.float32))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(24 / 25, abs=1e-15)  # (3*4 + 4*3) / (5*5)
    with pytest.raises(ValueError, match="same shape"):
        pair_cosines(t([[1, 0]]), t([[1, 0, 0]]))
    with pytest.raises(ValueError, match="2-D"):
        pair_cosines(t([1, 0]), t([1, 0]))
    with pytest.raises(ValueError, match="no examples"):
        pair_cosines(torch.zeros(0, 3), torch.zeros(0, 3))


def test_mean_cosine_to_reference_hand_case():
    current = t([[1, 0], [1, 1], [0, 2]])
    reference = t([[1, 0], [1, 0], [0, -1]])
    # cosines 1, 1/sqrt(2), -1; mean = (1/sqrt(2)) / 3 = 0.23570226039551584
    assert mean_cosine_to_reference(current, reference) == pytest.approx(0.23570226039551584, abs=1e-15)
    assert mean_cosine_to_reference(current, 5 * current) == pytest.approx(1.0, abs=1e-15)  # scale: unchanged


# ---------------------------------------------------------------------------------------------------------- CKA


def random_features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed), dtype=torch.float64)


@pytest.mark.parametrize("form", ["auto", "features", "gram"])
def test_cka_of_identical_features_is_one(form):
    x = random_features(40, 6, 0)
    assert linear_cka(x, x, form=form) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("form", ["features", "gram"])
def test_cka_invariances(form):
    x = random_features(50, 5, 1)
    q, _ = torch.linalg.qr(random_features(5, 5, 2))  # an orthogonal 5x5 matrix
    assert linear_cka(x, x @ q, form=form) == pytest.approx(1.0, abs=1e-12)  # orthogonal rotation
    assert linear_cka(x, 3.7 * x, form=form) == pytest.approx(1.0, abs=1e-12)  # isotropic scaling
    assert linear_cka(x, x + 10.0, form=form) == pytest.approx(1.0, abs=1e-12)  # translation (columns centred)
    # a rotation into more dimensions (orthonormal columns, 5 -> 8) is also invariant
    q8, _ = torch.linalg.qr(random_features(8, 8, 3))
    assert linear_cka(x, x @ q8[:5], form=form) == pytest.approx(1.0, abs=1e-12)


def test_cka_of_orthogonal_features_is_zero():
    # rows of the 4x4 Hadamard matrix: mean-zero (except the first) and mutually orthogonal, so after centring
    # Y^T X = 0 exactly and CKA = 0
    h2, h3, h4 = [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]
    x = t([h2, h3]).T  # (4, 2)
    y = t([h4]).T  # (4, 1)
    for form in ("features", "gram"):
        assert linear_cka(x, y, form=form) == pytest.approx(0.0, abs=1e-15)


def test_cka_hand_cases():
    # 1-D features: CKA is the squared Pearson correlation. x centred (-1, 0, 1), y centred (-1, 1, 0):
    # Y^T X = 1, X^T X = 2, Y^T Y = 2; CKA = 1^2 / (2 * 2) = 0.25
    assert linear_cka(t([[1], [2], [3]]), t([[1], [3], [2]])) == pytest.approx(0.25, abs=1e-15)
    # X = the 4 points (+-1, 0), (0, +-1) (already centred), Y its first column:
    # X^T X = 2I -> ||.||_F = 2 sqrt(2); Y^T Y = 2; Y^T X = (2, 0) -> ||.||^2 = 4; CKA = 4 / (2 sqrt(2) * 2) = 1/sqrt(2)
    x = t([[1, 0], [0, 1], [-1, 0], [0, -1]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-15)
    # anisotropic scaling is NOT an invariance: Y = X diag(2, 1); Y^T X = diag(4, 2) -> ||.||^2 = 20;
    # Y^T Y = diag(8, 2) -> ||.||_F = sqrt(68); CKA = 20 / (2 sqrt(2) sqrt(68)) = 10 / sqrt(136) = 0.8574929257125441
    y = x * t([2, 1])
    for form in ("features", "gram"):
        assert linear_cka(x, y, form=form) == pytest.approx(0.8574929257125441, abs=1e-15)


@pytest.mark.parametrize(("n", "d1", "d2"), [(30, 7, 40), (200, 3, 5), (5, 50, 60)])
def test_cka_feature_and_gram_forms_agree(n, d1, d2):
    x = random_features(n, d1, 4)
    y = x[:, :1] @ random_features(1, d2, 5) + random_features(n, d2, 6)  # partly shared structure
    by_features = linear_cka(x, y, form="features")
    by_gram = linear_cka(x, y, form="gram")
    assert 0.0 < by_features < 1.0
    assert by_features == pytest.approx(by_gram, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(by_gram, abs=1e-12)  # auto picks one of them
    assert linear_cka(x.float(), y.float()) == pytest.approx(by_gram, abs=1e-5)  # float32 input


def test_cka_constant_features_and_bad_input():
    x = random_features(10, 3, 7)
    assert linear_cka(x, torch.full((10, 4), 0.1, dtype=torch.float64)) == 0.0  # collapsed: documented 0
    assert linear_cka(torch.zeros(10, 2), x) == 0.0
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, x[:5])
    with pytest.raises(ValueError, match="at least 2 examples"):
        linear_cka(x[:1], x[:1])
    with pytest.raises(ValueError, match="unknown form"):
        linear_cka(x, x, form="svd")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------- probes


def three_clusters(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three tight clusters at radius 5, 120 degrees apart: separable by a linear model and by angle."""
    g = gen(seed)
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    centres = 5 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    x = centres[labels] + 0.3 * torch.randn(3 * n_per_class, 2, generator=g, dtype=torch.float64)
    return x, labels


@pytest.mark.parametrize(("kind", "k"), [("linear", 5), ("knn", 1), ("knn", 5)])
def test_probe_on_separable_data_is_perfect(kind, k):
    train_x, train_y = three_clusters(30, seed=0)
    test_x, test_y = three_clusters(20, seed=1)
    assert probe_accuracy(train_x, train_y, test_x, test_y, kind=kind, k=k) == 1.0
    assert probe_accuracy(train_x.float(), train_y, test_x.float(), test_y, kind=kind, k=k) == 1.0


def test_linear_probe_hand_case():
    # 1-D, symmetric training data: the fitted boundary is at 0 (intercept 0 by symmetry), so the test points
    # -3, -0.5, 0.5, 3 are predicted 0, 0, 1, 1; against labels 0, 1, 1, 1 that is 3 of 4 right = 0.75
    train_x, train_y = t([[-2], [-1], [1], [2]]), torch.tensor([0, 0, 1, 1])
    test_x, test_y = t([[-3], [-0.5], [0.5], [3]]), torch.tensor([0, 1, 1, 1])
    assert probe_accuracy(train_x, train_y, test_x, test_y, kind="linear") == 0.75


def test_linear_probe_single_training_class_predicts_it():
    train_x, train_y = t([[1, 0], [0, 1]]), torch.tensor([4, 4])
    # every test example is predicted 4: labels 4, 4, 2 -> 2 of 3 right
    assert probe_accuracy(train_x, train_y, t([[5, 5], [-1, 0], [0, 3]]), torch.tensor([4, 4, 2])) == pytest.approx(
        2 / 3, abs=1e-15
    )


def test_knn_probe_hand_case():
    # train: t0 = (1, 0) label 0, t1 = (1, 1) label 1, t2 = (0, 1) label 1, t3 = (-1, 0) label 2
    train_x = t([[1, 0], [1, 1], [0, 1], [-1, 0]])
    train_y = torch.tensor([0, 1, 1, 2])
    # q = (1, 0.2), |q| = sqrt(1.04) = 1.0198: cosines t0 0.9806, t1 1.2 / (1.0198 * 1.4142) = 0.8321,
    # t2 0.2 / 1.0198 = 0.1961, t3 -0.9806
    q, label = t([[1, 0.2]]), torch.tensor([1])
    assert probe_accuracy(train_x, train_y, q, label, kind="knn", k=1) == 0.0  # nearest t0 -> 0: wrong
    assert probe_accuracy(train_x, train_y, q, label, kind="knn", k=3) == 1.0  # t0, t1, t2 -> votes 0:1, 1:2 -> 1
    # k = 2: t0 (label 0) and t1 (label 1), one vote each; similarity sums 0.9806 > 0.8321 -> label 0
    assert probe_accuracy(train_x, train_y, q, torch.tensor([0]), kind="knn", k=2) == 1.0
    # k = 4: votes 0:1, 1:2, 2:1 -> label 1
    assert probe_accuracy(train_x, train_y, q, label, kind="knn", k=4) == 1.0


def test_knn_probe_tie_rules():
    # the test point (1, 1) is equally similar (1/sqrt(2)) to both training points
    train_x, train_y = t([[1, 0], [0, 1]]), torch.tensor([7, 3])
    q = t([[1, 1]])
    # k = 1: equally similar neighbours are taken in training order -> t0, label 7
    assert probe_accuracy(train_x, train_y, q, torch.tensor([7]), kind="knn", k=1) == 1.0
    # k = 2: one vote each, equal similarity sums -> the smaller label, 3
    assert probe_accuracy(train_x, train_y, q, torch.tensor([3]), kind="knn", k=2) == 1.0
    # a zero test vector has cosine 0 with every training example: all tie -> k = 1 takes t0, label 7
    assert probe_accuracy(train_x, train_y, t([[0, 0]]), torch.tensor([7]), kind="knn", k=1) == 1.0


def test_probe_rejects_bad_arguments():
    x, y = t([[1, 0], [0, 1], [1, 1]]), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="unknown kind"):
        probe_accuracy(x, y, x, y, kind="svm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="train_x has no examples"):
        probe_accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), x, y)
    with pytest.raises(ValueError, match="test_x has no examples"):
        probe_accuracy(x, y, torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="3 examples but train_y has 2"):
        probe_accuracy(x, y[:2], x, y)
    with pytest.raises(ValueError, match="3 examples but test_y has 1"):
        probe_accuracy(x, y, x, y[:1])
    with pytest.raises(ValueError, match="2 features but test_x has 3"):
        probe_accuracy(x, y, torch.zeros(3, 3), y)
    with pytest.raises(ValueError, match="k must be between 1 and the 3"):
        probe_accuracy(x, y, x, y, kind="knn", k=4)
    with pytest.raises(ValueError, match="k must be between"):
        probe_accuracy(x, y, x, y, kind="knn", k=0)
    with pytest.raises(ValueError, match="non-finite"):
        probe_accuracy(x, y, t([[float("inf"), 0], [0, 1], [1, 1]]), y)
    with pytest.raises(TypeError, match="integer class labels"):
        probe_accuracy(x, y.double(), x, y)


# -------------------------------------------------------------------------------------------------- determinism


def call_everything() -> list[float]:
    x = random_features(60, 4, 8)
    y = x @ random_features(4, 6, 9) + random_features(60, 6, 10)
    labels = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return [
        spearman(x[:, 0], y[:, 0]),
        *pair_cosines(x, y[:, :4]).tolist(),
        linear_cka(x, y),
        linear_cka(x, y, form="gram"),
        mean_cosine_to_reference(x, y[:, :4]),
        probe_accuracy(x[:40], labels[:40], x[40:], labels[40:], kind="linear"),
        probe_accuracy(x[:40], labels[:40], x[40:], labels[40:], kind="knn", k=3),
    ]


def test_deterministic_and_global_random_streams_untouched():
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    first = call_everything()
    second = call_everything()
    assert first == second  # bit-identical
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    assert random.getstate() == python_state
