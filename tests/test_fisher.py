"""The diagonal Fisher estimators against naive per-sample autograd loops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import small_batches, small_model
from torch.nn import functional as F

from research.config import ModelConfig, load_config
from research.methods import fisher as fisher_module
from research.methods.base import HeadBatch
from research.methods.fisher import FISHER_ESTIMATORS, fisher_diagonal
from research.models import build_model

SPLIT = Path(__file__).resolve().parents[1] / "experiments" / "split_digits.yaml"


def names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def _grads(model: torch.nn.Module, output: torch.Tensor, param_names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(output, [params[n] for n in param_names], retain_graph=True, allow_unused=True)
    return {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(param_names, grads, strict=True)}


def naive_fisher(model, batches, param_names, labels: str, sampled: list[torch.Tensor] | None = None):
    """Per sample, per class, with plain autograd, in eval mode: the definitions written out."""
    model.eval()
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in param_names}
    count = 0
    for b_index, batch in enumerate(batches):
        for i in range(len(batch.y)):
            log_p = F.log_softmax(model(batch.x[i : i + 1], batch.head), dim=-1)[0]
            if labels == "exact":
                weighted = [(c, log_p[c].exp().detach()) for c in range(len(log_p))]
            elif labels == "empirical":
                weighted = [(int(batch.y[i]), 1.0)]
            else:  # the labels the estimator drew
                weighted = [(int(sampled[b_index][i]), 1.0)]
            for c, weight in weighted:
                for n, g in _grads(model, log_p[c], param_names).items():
                    total[n] += weight * g**2
            count += 1
    return {n: t / count for n, t in total.items()}


def naive_batched(model, batches, param_names):
    model.eval()
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in param_names}
    for batch in batches:
        loss = F.cross_entropy(model(batch.x, batch.head), batch.y)  # minibatch mean
        for n, g in _grads(model, loss, param_names).items():
            total[n] += g**2
    return {n: t / len(batches) for n, t in total.items()}


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for n in expected:
        assert actual[n].shape == expected[n].shape, n
        torch.testing.assert_close(actual[n], expected[n], rtol=1e-5, atol=1e-7, msg=n)


# --------------------------------------------------------------------------------------------- against loops


@pytest.mark.parametrize("batchnorm", [False, True])
def test_exact_matches_the_per_class_loop(batchnorm: bool) -> None:
    model = small_model(batchnorm)
    fisher = fisher_diagonal(model, small_batches(), names(model), "exact")
    expected = naive_fisher(small_model(batchnorm), small_batches(), names(model), "exact")
    assert_same(fisher, expected)
    # Both heads got a share: examples are scored by their own heads.
    assert fisher["heads.a.weight"].sum() > 0 and fisher["heads.b.weight"].sum() > 0


def test_exact_on_a_subset_of_parameters() -> None:
    model = small_model()
    subset = ["backbone.1.0.weight", "heads.b.bias"]
    fisher = fisher_diagonal(model, small_batches(), subset, "exact")
    assert_same(fisher, naive_fisher(small_model(), small_batches(), subset, "exact"))


def test_exact_is_the_same_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_model()
    whole = fisher_diagonal(model, small_batches(), names(model), "exact")
    monkeypatch.setattr(fisher_module, "_CHUNK_FLOATS", 1)  # force one example per vmap chunk
    assert_same(fisher_diagonal(model, small_batches(), names(model), "exact"), whole)


def test_empirical_matches_the_loop_with_true_labels() -> None:
    model = small_model()
    fisher = fisher_diagonal(model, small_batches(), names(model), "empirical")
    assert_same(fisher, naive_fisher(small_model(), small_batches(), names(model), "empirical"))


def test_batched_matches_squared_minibatch_mean_gradients() -> None:
    model = small_model()
    fisher = fisher_diagonal(model, small_batches(), names(model), "batched")
    assert_same(fisher, naive_batched(small_model(), small_batches(), names(model)))


def test_sample_matches_the_loop_with_the_drawn_labels() -> None:
    model = small_model()
    fisher = fisher_diagonal(model, small_batches(), names(model), "sample", torch.Generator().manual_seed(3))
    # Draw the same labels the estimator drew: one multinomial draw per batch from p(y|x), same generator.
    generator = torch.Generator().manual_seed(3)
    reference = small_model().eval()
    with torch.no_grad():
        drawn = [
            torch.multinomial(reference(b.x, b.head).softmax(-1), 1, generator=generator).squeeze(1)
            for b in small_batches()
        ]
    assert_same(fisher, naive_fisher(reference, small_batches(), names(model), "sample", drawn))


def test_sample_is_reproducible_with_a_fixed_generator() -> None:
    model = small_model()
    first = fisher_diagonal(model, small_batches(), names(model), "sample", torch.Generator().manual_seed(3))
    again = fisher_diagonal(model, small_batches(), names(model), "sample", torch.Generator().manual_seed(3))
    other = fisher_diagonal(model, small_batches(), names(model), "sample", torch.Generator().manual_seed(4))
    params = dict(model.named_parameters())
    for n in names(model):
        assert first[n].shape == params[n].shape
        assert torch.equal(first[n], again[n])
        assert (first[n] >= 0).all()
    assert any(not torch.equal(first[n], other[n]) for n in names(model))


# --------------------------------------------------------------------------------------------- side effects


ESTIMATORS = [e for e in FISHER_ESTIMATORS]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimation_leaves_batchnorm_statistics_and_modes_alone(estimator: str) -> None:
    model = small_model(batchnorm=True)
    model.train()
    model.backbone[1].eval()  # a mix of modes must come back exactly as it was
    modes = {name: m.training for name, m in model.named_modules()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert any("running_mean" in n for n in buffers)
    fisher_diagonal(model, small_batches(), names(model), estimator, torch.Generator().manual_seed(0))
    assert {name: m.training for name, m in model.named_modules()} == modes
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), weights[name]), name
        assert p.grad is None, name


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimation_uses_eval_mode(estimator: str) -> None:
    """Dropout is off while estimating: the result does not depend on the module's train flag or the RNG."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[6], dropout=0.5), (4,), {"a": 3, "b": 2})
    model.train()
    torch.manual_seed(1)
    first = fisher_diagonal(model, small_batches(), names(model), estimator, torch.Generator().manual_seed(0))
    torch.manual_seed(2)
    second = fisher_diagonal(model, small_batches(), names(model), estimator, torch.Generator().manual_seed(0))
    for n in first:
        assert torch.equal(first[n], second[n]), n


def test_unknown_estimator_and_empty_data_are_errors() -> None:
    model = small_model()
    with pytest.raises(ValueError, match="exact, sample, empirical, batched"):
        fisher_diagonal(model, small_batches(), names(model), "diagonal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no data"):
        fisher_diagonal(model, [], names(model), "exact")


# --------------------------------------------------------------------------------------------- in a run


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_ewc_run_records_its_estimator(estimator: str, make_cfg) -> None:
    from research.training import run

    cfg = make_cfg("method.name=ewc", f"method.fisher={estimator}", "method.fisher_samples=100", "train.max_steps=6")
    result = run(cfg)
    assert result.summary["status"] == "completed"
    info = result.summary["method_info"]
    assert info["fisher_estimator"] == estimator
    assert info["fisher_examples"] == 100
    assert info["fisher_trace"] > 0


def test_ewc_config_defaults_to_the_exact_fisher() -> None:
    assert load_config(SPLIT, ["method.name=ewc"]).method["fisher"] == "exact"


def test_exact_mixes_the_linear_closed_form_with_jacobians_for_convolutions() -> None:
    """Linear layers take the closed form Σ_n (Σ_y p_y δ_y²)(a²)ᵀ, convolutions and BatchNorm the per-example
    Jacobians; together they must still equal the per-class loop."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="cnn", channels=[3, 4], batchnorm=True), (1, 8, 8), {"a": 3})
    g = torch.Generator().manual_seed(2)
    batches = [HeadBatch("a", torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g))]
    fisher = fisher_diagonal(model, batches, names(model), "exact")
    assert_same(fisher, naive_fisher(model, batches, names(model), "exact"))
    assert any("conv" in n or n.startswith("backbone.0") for n in fisher)
