"""Pure metric functions behind the ability evaluators: what a pretrained model can still do while it is fine-tuned.

Every function takes torch tensors (any real dtype; float32 and float64 are the expected ones), computes on the CPU
in float64, and returns a Python float (``pair_cosines``: a float64 tensor). None of them draws random numbers:
the torch, numpy and Python global random streams are left exactly as they were, and the same inputs always give
the same value.

- ``spearman``: rank correlation of predicted and human similarity scores (word-similarity abilities).
- ``pair_cosines``: the predicted similarity of word pairs, row by row.
- ``linear_cka``: linear CKA between two representations of the same examples (Kornblith et al. 2019).
- ``mean_cosine_to_reference``: how far features drifted from a reference copy, example by example.
- ``probe_accuracy``: accuracy of a linear or k-NN probe fitted on frozen features (Davari et al. 2022).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

# Norms below this count as zero in the cosine functions (see ``pair_cosines``).
COSINE_EPS = 1e-8
# Centred features whose Frobenius norm is at most this fraction of the uncentred norm count as constant in
# ``linear_cka``: below float32 resolution, what is left after centring is rounding noise, not structure.
CKA_CONSTANT_RTOL = 1e-12
# Settings of the linear probe (see ``probe_accuracy``).
PROBE_C = 1.0
PROBE_MAX_ITER = 1000
PROBE_TOL = 1e-4  # scikit-learn's default; 1e-6 took twice the iterations for the same predictions
# Rows of test features scored at once by the k-NN probe (bounds the similarity matrix held in memory).
_KNN_CHUNK = 1024


# --------------------------------------------------------------------------------------------------- validation


def _as_float64(t: Tensor, name: str, fn: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{fn}: {name} must hold real numbers, got dtype {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float64)


def _check_finite(t: Tensor, name: str, fn: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{fn}: {name} has non-finite values (nan or inf)")


def _matrix(t: Tensor, name: str, fn: str) -> Tensor:
    x = _as_float64(t, name, fn)
    if x.ndim != 2:
        raise ValueError(f"{fn}: {name} must be a 2-D (examples, features) matrix, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{fn}: {name} has no examples")
    if x.shape[1] == 0:
        raise ValueError(f"{fn}: {name} has no features")
    return x


def _labels(t: Tensor, name: str, fn: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{fn}: {name} must hold integer class labels, got dtype {t.dtype}")
    y = t.detach().to(device="cpu", dtype=torch.int64)
    if y.ndim != 1:
        raise ValueError(f"{fn}: {name} must be 1-D (one label per example), got shape {tuple(y.shape)}")
    return y


# ----------------------------------------------------------------------------------------------------- spearman


def _average_ranks(v: Tensor) -> Tensor:
    """1-based ranks of a 1-D float64 tensor, tied values sharing the mean of the ranks they span (scipy's
    ``rankdata(method="average")``): a group of ``c`` equal values ending at rank ``e`` gets ``e - (c - 1) / 2``."""
    _, inverse, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    last = torch.cumsum(counts, 0)
    return (last - (counts - 1.0) / 2.0)[inverse]


def spearman(predicted: Tensor, gold: Tensor) -> float:
    """Spearman's rank correlation of ``predicted`` and ``gold`` (1-D, same length, at least 2 values).

    Source: C. Spearman (1904), "The proof and measurement of association between two things", Am. J. Psychol.
    15(1); computed as scipy.stats.spearmanr does: the Pearson correlation of the two rank vectors, tied values
    getting the average of the ranks they span. It is the standard score of word-similarity benchmarks
    (Finkelstein et al. 2002, WordSim-353; Hill et al. 2015, SimLex-999).

    A constant side (e.g. a collapsed model that gives every pair the same similarity) has no ranking, and the
    correlation is undefined (scipy returns nan); this returns **0.0** then, the value of a ranking that carries
    no information, so a report shows the collapse as a drop to 0 rather than a gap. Non-finite values raise
    ``ValueError``. The result is clamped to [-1, 1] against rounding.

    Ranks are computed here rather than with ``torchmetrics.functional.spearman_corrcoef``: torchmetrics 1.9 does
    average ties, but (a) it returns float32 even for float64 input (0.79999942 for [1,2,3,4] vs [1,3,2,4]),
    (b) it adds eps=1e-6 to the denominator, shrinking every value, and (c) it sums tied ranks in int32, which
    overflows for large tie groups (a 70,000-long vector with one distinct value gave the wrong sign).
    """
    fn = "spearman"
    p = _as_float64(predicted, "predicted", fn)
    g = _as_float64(gold, "gold", fn)
    if p.ndim != 1 or g.ndim != 1:
        raise ValueError(f"{fn}: predicted and gold must be 1-D, got shapes {tuple(p.shape)} and {tuple(g.shape)}")
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"{fn}: predicted has {p.shape[0]} values but gold has {g.shape[0]}")
    if p.shape[0] < 2:
        raise ValueError(f"{fn}: needs at least 2 values, got {p.shape[0]}")
    _check_finite(p, "predicted", fn)
    _check_finite(g, "gold", fn)
    if bool((p == p[0]).all()) or bool((g == g[0]).all()):
        return 0.0
    rp = _average_ranks(p)
    rg = _average_ranks(g)
    rp = rp - rp.mean()
    rg = rg - rg.mean()
    r = float((rp * rg).sum() / torch.sqrt((rp * rp).sum() * (rg * rg).sum()))
    return min(1.0, max(-1.0, r))


# ------------------------------------------------------------------------------------------------------ cosines


def _pair_cosines64(a: Tensor, b: Tensor) -> Tensor:
    na = torch.linalg.vector_norm(a, dim=1).clamp_min(COSINE_EPS)
    nb = torch.linalg.vector_norm(b, dim=1).clamp_min(COSINE_EPS)
    return (a * b).sum(dim=1) / (na * nb)


def _paired_matrices(a: Tensor, b: Tensor, names: tuple[str, str], fn: str) -> tuple[Tensor, Tensor]:
    x = _matrix(a, names[0], fn)
    y = _matrix(b, names[1], fn)
    if x.shape != y.shape:
        raise ValueError(
            f"{fn}: {names[0]} and {names[1]} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    _check_finite(x, names[0], fn)
    _check_finite(y, names[1], fn)
    return x, y


def pair_cosines(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of two (N, D) matrices: ``out[i] = cos(a[i], b[i])``, a float64 CPU tensor (N,).

    Source: the standard way word-similarity benchmarks read a similarity off embeddings (e.g. Mikolov et al.
    2013, "Efficient Estimation of Word Representations in Vector Space"; Finkelstein et al. 2002).

    Each norm is clamped from below at ``COSINE_EPS`` (1e-8), as ``torch.nn.functional.cosine_similarity``
    does: ``cos = <a, b> / (max(|a|, eps) * max(|b|, eps))``. A zero vector therefore has cosine **0** with
    anything (itself included) instead of nan; vectors with norms above eps are unaffected. Non-finite values and
    mismatched shapes raise ``ValueError``.
    """
    x, y = _paired_matrices(a, b, ("a", "b"), "pair_cosines")
    return _pair_cosines64(x, y)


def mean_cosine_to_reference(current: Tensor, reference: Tensor) -> float:
    """Mean over the N examples of ``cos(current[i], reference[i])`` for two (N, D) feature matrices.

    Source: the "less-forget" feature term of Hou et al. 2019, "Learning a Unified Classifier Incrementally via
    Rebalancing" (LUCIR, CVPR), which penalises 1 - cos(old features, new features) per example; here it is read
    as a measure of how far fine-tuning moved the features (the feature distortion of Kumar et al. 2022,
    "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR). 1 means unchanged
    directions; the zero-vector rule is that of ``pair_cosines`` (a zero row contributes 0).
    """
    x, y = _paired_matrices(current, reference, ("current", "reference"), "mean_cosine_to_reference")
    return float(_pair_cosines64(x, y).mean())


# ---------------------------------------------------------------------------------------------------------- CKA


def linear_cka(x: Tensor, y: Tensor, form: Literal["auto", "features", "gram"] = "auto") -> float:
    """Linear CKA of two representations of the same N examples, ``x`` (N, D1) and ``y`` (N, D2).

    Source: S. Kornblith, M. Norouzi, H. Lee, G. Hinton (2019), "Similarity of Neural Network Representations
    Revisited", ICML, eq. (5): with columns centred,

        CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F).

    In [0, 1]; invariant to orthogonal transformations and isotropic scaling of either side, not to arbitrary
    invertible linear maps. Two forms give the same value: the feature-space form above costs
    O(N (D1 D2 + D1^2 + D2^2)); the Gram form ``<K, L>_F / (||K||_F ||L||_F)`` with ``K = X X^T``, ``L = Y Y^T``
    (of the centred X, Y, i.e. HKH and HLH) costs O(N^2 (D1 + D2)), and ``||Y^T X||_F^2 = tr(K L)``,
    ``||X^T X||_F = ||K||_F``. ``form="auto"`` picks the cheaper (features when D << N, Gram when N << D);
    ``"features"`` and ``"gram"`` force one.

    If either side is constant across the examples (its centred norm at most ``CKA_CONSTANT_RTOL`` times its
    uncentred norm, e.g. a collapsed model), CKA is undefined (0/0); this returns **0.0**, "no shared
    structure". Needs N >= 2; non-finite values raise ``ValueError``. The result is clamped to [0, 1].
    """
    fn = "linear_cka"
    a = _matrix(x, "x", fn)
    b = _matrix(y, "y", fn)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{fn}: x has {a.shape[0]} examples but y has {b.shape[0]}; they must be the same examples")
    if a.shape[0] < 2:
        raise ValueError(f"{fn}: needs at least 2 examples, got {a.shape[0]}")
    if form not in ("auto", "features", "gram"):
        raise ValueError(f"{fn}: unknown form {form!r}; expected 'auto', 'features' or 'gram'")
    _check_finite(a, "x", fn)
    _check_finite(b, "y", fn)

    ac = a - a.mean(dim=0, keepdim=True)
    bc = b - b.mean(dim=0, keepdim=True)
    for raw, centred in ((a, ac), (b, bc)):
        norm = float(torch.linalg.matrix_norm(centred))
        if norm == 0.0 or norm <= CKA_CONSTANT_RTOL * float(torch.linalg.matrix_norm(raw)):
            return 0.0

    n, d1 = ac.shape
    d2 = bc.shape[1]
    if form == "auto":
        form = "features" if n * (d1 * d2 + d1 * d1 + d2 * d2) <= n * n * (d1 + d2) else "gram"
    if form == "features":
        cross = torch.linalg.matrix_norm(bc.T @ ac) ** 2
        self_a = torch.linalg.matrix_norm(ac.T @ ac)
        self_b = torch.linalg.matrix_norm(bc.T @ bc)
    else:
        k = ac @ ac.T
        gram_l = bc @ bc.T
        cross = (k * gram_l).sum()
        self_a = torch.linalg.matrix_norm(k)
        self_b = torch.linalg.matrix_norm(gram_l)
    value = float(cross / (self_a * self_b))
    return min(1.0, max(0.0, value))


# ------------------------------------------------------------------------------------------------------- probes


def probe_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    kind: Literal["linear", "knn"] = "linear",
    k: int = 5,
) -> float:
    """Accuracy on (test_x, test_y) of a classifier fitted on frozen features (train_x, train_y).

    Source: MohammadReza Davari, N. Asadi, S. Mudur, R. Aljundi, E. Belilovsky (2022), "Probing Representation
    Forgetting in Supervised and Unsupervised Continual Learning", CVPR: forgetting measured by how much a probe
    trained on the frozen features can still read from them. Features are (N, D) matrices, labels 1-D integer
    tensors; test labels absent from the training labels simply count as errors.

    ``kind="linear"``: multinomial logistic regression (scikit-learn ``LogisticRegression``, lbfgs, L2 penalty
    with ``C=PROBE_C`` = 1.0, ``max_iter=PROBE_MAX_ITER`` = 1000, ``tol=PROBE_TOL`` = 1e-4, intercept), on
    features standardised with the training part's mean and standard deviation (``StandardScaler``; constant
    columns are left unscaled). lbfgs is a deterministic full-batch quasi-Newton method: no random state is used
    or drawn, so the same features give the same probe; standardising makes one C and one iteration budget fit
    features of any scale. With two classes the model is the ordinary (binary) logistic regression. A training
    part with a single class fits no model: every test example is predicted as that class.

    ``kind="knn"``: each test example takes the labels of its ``k`` most cosine-similar training examples
    (zero vectors: cosine 0 with everything, see ``pair_cosines``) and predicts the most frequent. Ties are
    broken deterministically: equally similar neighbours are taken in training order (lower index first); among
    labels with equally many votes, the one with the larger sum of its voters' similarities wins, then the
    smaller label. ``k`` must be between 1 and the number of training examples.

    Raises ``ValueError`` for empty sets, mismatched lengths or feature sizes, non-finite features, a bad ``k`` or an
    unknown ``kind``.
    """
    fn = "probe_accuracy"
    if kind not in ("linear", "knn"):
        raise ValueError(f"{fn}: unknown kind {kind!r}; expected 'linear' or 'knn'")
    xtr = _matrix(train_x, "train_x", fn)
    xte = _matrix(test_x, "test_x", fn)
    ytr = _labels(train_y, "train_y", fn)
    yte = _labels(test_y, "test_y", fn)
    if xtr.shape[0] != ytr.shape[0]:
        raise ValueError(f"{fn}: train_x has {xtr.shape[0]} examples but train_y has {ytr.shape[0]} labels")
    if xte.shape[0] != yte.shape[0]:
        raise ValueError(f"{fn}: test_x has {xte.shape[0]} examples but test_y has {yte.shape[0]} labels")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"{fn}: train_x has {xtr.shape[1]} features but test_x has {xte.shape[1]}")
    _check_finite(xtr, "train_x", fn)
    _check_finite(xte, "test_x", fn)
    if kind == "knn":
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"{fn}: k must be an int, got {k!r}")
        if not 1 <= k <= xtr.shape[0]:
            raise ValueError(f"{fn}: k must be between 1 and the {xtr.shape[0]} training examples, got {k}")
        predicted = _knn_predict(xtr, ytr, xte, k)
    else:
        predicted = _linear_predict(xtr, ytr, xte)
    return float((predicted == yte).to(torch.float64).mean())


def _linear_predict(xtr: Tensor, ytr: Tensor, xte: Tensor) -> Tensor:
    classes = torch.unique(ytr)
    if classes.numel() == 1:
        return classes.expand(xte.shape[0]).clone()
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr.numpy())
    model = LogisticRegression(C=PROBE_C, solver="lbfgs", max_iter=PROBE_MAX_ITER, tol=PROBE_TOL)
    model.fit(scaler.transform(xtr.numpy()), ytr.numpy())
    return torch.from_numpy(model.predict(scaler.transform(xte.numpy()))).to(torch.int64)


def _knn_predict(xtr: Tensor, ytr: Tensor, xte: Tensor, k: int) -> Tensor:
    classes, label_index = torch.unique(ytr, sorted=True, return_inverse=True)
    n_classes = classes.numel()
    train_unit = xtr / torch.linalg.vector_norm(xtr, dim=1, keepdim=True).clamp_min(COSINE_EPS)
    out = []
    for start in range(0, xte.shape[0], _KNN_CHUNK):
        chunk = xte[start : start + _KNN_CHUNK]
        unit = chunk / torch.linalg.vector_norm(chunk, dim=1, keepdim=True).clamp_min(COSINE_EPS)
        sims = unit @ train_unit.T  # (chunk, n_train)
        # Stable sort: equally similar training examples keep their order, so the lower index is nearer.
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
        near_sims = torch.gather(sims, 1, order)
        near_labels = label_index[order]
        votes = torch.zeros(chunk.shape[0], n_classes, dtype=torch.float64)
        votes.scatter_add_(1, near_labels, torch.ones_like(near_sims))
        sim_sums = torch.zeros(chunk.shape[0], n_classes, dtype=torch.float64)
        sim_sums.scatter_add_(1, near_labels, near_sims)
        # Most votes, then larger similarity sum, then smaller label (classes are sorted ascending).
        best = []
        for row_votes, row_sums in zip(votes.tolist(), sim_sums.tolist(), strict=True):
            best.append(min(range(n_classes), key=lambda c: (-row_votes[c], -row_sums[c], c)))
        out.append(classes[torch.tensor(best, dtype=torch.int64)])
    return torch.cat(out)


__all__ = [
    "COSINE_EPS",
    "linear_cka",
    "mean_cosine_to_reference",
    "pair_cosines",
    "probe_accuracy",
    "spearman",
]
