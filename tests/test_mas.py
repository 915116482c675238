"""MAS: both importance estimators against naive loops and Avalanche's MASPlugin, the penalty's closed form,
no side effects on the model, and real runs (λ = 0 is plain fine-tuning; a large λ forgets less)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from helpers import prepare_method, small_batches, small_model
from torch.utils.data import TensorDataset

from research.config import ModelConfig, load_config
from research.methods import HeadBatch, TrainStep, build_method
from research.methods.mas import MAS_ESTIMATORS, mas_importance
from research.models import build_model

SPLIT = Path(__file__).resolve().parents[1] / "experiments" / "split_digits.yaml"
NO_STEP = TrainStep(batches=[], logits=[], step=0)
HEAD_SIZES = {"a": 3, "b": 2}


def equal_batches() -> list[HeadBatch]:
    """Head a: 8 examples, head b: 4, in batches of 4, so that an unshuffled DataLoader over the concatenated
    data cuts exactly the same single-head batches (what Avalanche sees)."""
    g = torch.Generator().manual_seed(2)
    xa, xb = torch.randn(8, 4, generator=g), torch.randn(4, 4, generator=g)
    ya, yb = torch.randint(0, 3, (8,), generator=g), torch.randint(0, 2, (4,), generator=g)
    return [HeadBatch("a", xa[:4], ya[:4]), HeadBatch("a", xa[4:], ya[4:]), HeadBatch("b", xb, yb)]


def names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def _grads(model: torch.nn.Module, output: torch.Tensor, param_names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(output, [params[n] for n in param_names], allow_unused=True)
    return {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(param_names, grads, strict=True)}


def naive_per_sample(model, batches, param_names):
    """The paper's definition written out: one example at a time, plain autograd, eval mode."""
    model.eval()
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in param_names}
    count = 0
    for batch in batches:
        for i in range(len(batch.x)):
            squared_norm = model(batch.x[i : i + 1], batch.head).pow(2).sum()
            for n, g in _grads(model, squared_norm, param_names).items():
                total[n] += g.abs()
            count += 1
    return {n: t / count for n, t in total.items()}


def naive_batched(model, batches, param_names):
    """Avalanche's MASPlugin._get_importance written out (in eval mode): |∇ batch-mean ‖f‖²| averaged over batches."""
    model.eval()
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in param_names}
    for batch in batches:
        out = model(batch.x, batch.head)
        loss = torch.norm(out, p="fro", dim=1).pow(2).mean()
        for n, g in _grads(model, loss, param_names).items():
            total[n] += g.abs()
    return {n: t / len(batches) for n, t in total.items()}


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 1e-7) -> None:
    assert sorted(actual) == sorted(expected)
    for n in expected:
        assert actual[n].shape == expected[n].shape, n
        torch.testing.assert_close(actual[n], expected[n], rtol=1e-5, atol=atol, msg=n)


# --------------------------------------------------------------------------------------------- against loops


@pytest.mark.parametrize("batchnorm", [False, True])
def test_per_sample_matches_the_per_example_loop(batchnorm: bool) -> None:
    model = small_model(batchnorm)
    importance = mas_importance(model, small_batches(), names(model), "per_sample")
    assert_same(importance, naive_per_sample(small_model(batchnorm), small_batches(), names(model)), atol=1e-5)
    # Each example is scored by its own head: both heads get importance, and it is never negative.
    assert importance["heads.a.weight"].sum() > 0 and importance["heads.b.weight"].sum() > 0
    assert all((t >= 0).all() for t in importance.values())


def test_per_sample_on_a_subset_of_parameters_and_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from research.methods import fisher as chunking  # the one chunk bound MAS shares with the Fisher

    model = small_model()
    subset = ["backbone.1.0.weight", "heads.b.bias"]
    expected = naive_per_sample(small_model(), small_batches(), subset)
    assert_same(mas_importance(model, small_batches(), subset, "per_sample"), expected, atol=1e-5)
    monkeypatch.setattr(chunking, "_CHUNK_FLOATS", 1)  # one example per vmap chunk
    assert_same(mas_importance(model, small_batches(), subset, "per_sample"), expected, atol=1e-5)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_batched_matches_the_avalanche_definition_loop(batchnorm: bool) -> None:
    model = small_model(batchnorm)
    importance = mas_importance(model, small_batches(), names(model), "batched")
    assert_same(importance, naive_batched(small_model(batchnorm), small_batches(), names(model)), atol=1e-5)


def test_batched_is_at_most_per_sample_with_equal_batches() -> None:
    """|mean g| ≤ mean |g|: minibatch averaging cancels gradients of opposite sign before the absolute value."""
    model = small_model()
    batched = mas_importance(model, equal_batches(), names(model), "batched")
    per_sample = mas_importance(model, equal_batches(), names(model), "per_sample")
    for n in per_sample:
        assert (batched[n] <= per_sample[n] + 1e-6).all(), n
    assert sum(float((per_sample[n] - batched[n]).sum()) for n in per_sample) > 1e-3  # and strictly less overall
    # With one example per batch the two definitions coincide.
    singles = [HeadBatch(b.head, b.x[i : i + 1], b.y[i : i + 1]) for b in equal_batches() for i in range(len(b.y))]
    assert_same(mas_importance(model, singles, names(model), "batched"), per_sample, atol=1e-5)


# --------------------------------------------------------------------------------------------- against Avalanche


def _avalanche_importance(model: torch.nn.Module, batches: list[HeadBatch]) -> tuple[dict[str, torch.Tensor], object]:
    """Run Avalanche's own MASPlugin._get_importance on our model and data through a strategy-like object."""
    from avalanche.models import MultiTaskModule
    from avalanche.training.plugins import MASPlugin

    heads = list(HEAD_SIZES)

    class TaskLabelled(MultiTaskModule):  # our heads, addressed by Avalanche's integer task labels
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net
            self.max_class_label = max(HEAD_SIZES.values())

        def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
            return self.net(x, heads[task_label])

    wrapped = TaskLabelled(model)
    dataset = TensorDataset(
        torch.cat([b.x for b in batches]),
        torch.cat([b.y for b in batches]),
        torch.cat([torch.full((len(b.y),), heads.index(b.head)) for b in batches]),
    )
    strategy = SimpleNamespace(
        model=wrapped,
        experience=SimpleNamespace(dataset=dataset),
        train_mb_size=len(batches[0].y),
        device=torch.device("cpu"),
        optimizer=torch.optim.SGD(wrapped.parameters(), lr=0.0),
    )
    raw = MASPlugin()._get_importance(strategy)
    return {k.removeprefix("net."): v.data.clone() for k, v in raw.items()}, wrapped


def test_batched_equals_avalanche_masplugin() -> None:
    model = small_model()
    ours = mas_importance(model, equal_batches(), names(model), "batched")
    theirs, _ = _avalanche_importance(small_model(), equal_batches())
    assert_same(ours, theirs, atol=1e-6)


def test_avalanche_masplugin_uses_train_mode_and_moves_batchnorm_statistics() -> None:
    """The pinned difference: Avalanche estimates in train mode (BatchNorm on batch statistics, running statistics
    updated, the model left in train mode); ours estimates in eval mode and touches nothing."""
    model = small_model(batchnorm=True).eval()
    before = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    ours = mas_importance(model, equal_batches(), names(model), "batched")
    theirs, wrapped = _avalanche_importance(model, equal_batches())
    assert wrapped.training and model.training  # Avalanche left it in train mode
    moved = [n for n, b in model.named_buffers() if n in before and not torch.equal(b, before[n])]
    assert moved, "Avalanche's estimation should have updated BatchNorm running statistics"
    assert any(not torch.allclose(ours[n], theirs[n], rtol=1e-3, atol=1e-6) for n in ours)


# --------------------------------------------------------------------------------------------- side effects


@pytest.mark.parametrize("estimator", MAS_ESTIMATORS)
def test_estimation_leaves_batchnorm_statistics_and_modes_alone(estimator: str) -> None:
    model = small_model(batchnorm=True)
    model.train()
    model.backbone[1].eval()  # a mix of modes must come back exactly as it was
    modes = {name: m.training for name, m in model.named_modules()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert any("running_mean" in n for n in buffers)
    mas_importance(model, small_batches(), names(model), estimator)
    assert {name: m.training for name, m in model.named_modules()} == modes
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), weights[name]), name
        assert p.grad is None, name


@pytest.mark.parametrize("estimator", MAS_ESTIMATORS)
def test_estimation_uses_eval_mode(estimator: str) -> None:
    """Dropout is off while estimating: the result does not depend on the train flag or the global RNG."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[6], dropout=0.5), (4,), HEAD_SIZES).train()
    torch.manual_seed(1)
    first = mas_importance(model, small_batches(), names(model), estimator)
    torch.manual_seed(2)
    second = mas_importance(model, small_batches(), names(model), estimator)
    for n in first:
        assert torch.equal(first[n], second[n]), n


def test_unknown_estimator_and_empty_data_are_errors() -> None:
    model = small_model()
    with pytest.raises(ValueError, match="per_sample, batched"):
        mas_importance(model, small_batches(), names(model), "exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no data"):
        mas_importance(model, [], names(model), "per_sample")


# --------------------------------------------------------------------------------------------- the penalty


def prepared(*overrides: str):
    cfg = load_config(SPLIT, ["model.hidden=[16, 8]", "logging.wandb=disabled", "method.name=mas", *overrides])
    method, model, ctx, _ = prepare_method(cfg)
    return method, model, ctx


@pytest.mark.parametrize("estimator", MAS_ESTIMATORS)
def test_penalty_is_zero_at_the_anchor_and_its_gradient_is_lambda_omega_displacement(estimator: str) -> None:
    lam = 7.0
    method, model, ctx = prepared(f"method.lam={lam}", f"method.estimator={estimator}", "method.importance_samples=150")
    assert method.loss_terms(model, NO_STEP)["mas"].item() == 0.0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = [n for n in ctx.pretrained_names if n in trainable]
    assert expected and sorted(method.anchor) == sorted(expected) == sorted(method.importance)
    assert all(n.startswith("backbone.") for n in expected)  # old heads are frozen, the new head is new
    info = method.info()
    assert info["importance_estimator"] == estimator and info["importance_examples"] == 150
    assert info["importance_trace"] > 0 and info["importance_seconds"] >= 0

    anchor = {n: t.clone() for n, t in method.anchor.items()}
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    model.zero_grad()
    penalty = method.loss_terms(model, NO_STEP)["mas"]
    penalty.backward()
    params = dict(model.named_parameters())
    expected_value = sum(0.5 * lam * (method.importance[n] * (params[n] - anchor[n]) ** 2).sum() for n in anchor)
    torch.testing.assert_close(penalty, expected_value.detach(), rtol=1e-5, atol=1e-7)
    assert penalty.item() > 0
    for name, p in params.items():
        if name in anchor:
            closed_form = lam * method.importance[name] * (p.detach() - anchor[name])
            torch.testing.assert_close(p.grad, closed_form, rtol=1e-5, atol=1e-8)
        else:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name


def test_state_dict_round_trip() -> None:
    method, model, _ = prepared("method.importance_samples=50")
    fresh = build_method({"name": "mas"})
    fresh.load_state_dict(method.state_dict())
    for n in method.anchor:
        assert torch.equal(fresh.anchor[n], method.anchor[n]) and torch.equal(fresh.importance[n], method.importance[n])
    assert set(fresh.anchor) == set(method.anchor) == set(fresh.importance)
    torch.testing.assert_close(fresh.loss_terms(model, NO_STEP)["mas"], method.loss_terms(model, NO_STEP)["mas"])


def test_config_defaults() -> None:
    method = load_config(SPLIT, ["method.name=mas"]).method
    assert method["estimator"] == "per_sample" and method["lam"] == 1.0
    assert method["importance_samples"] == 1000 and method["importance_batch_size"] == 64


# --------------------------------------------------------------------------------------------- in a run


def _eval_rows(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_parquet(run_dir / "metrics.parquet")
    rows = frame[frame.metric.isin(["acc", "loss"])]
    return rows.sort_values(["step", "task", "metric"]).reset_index(drop=True)


def test_lambda_zero_is_plain_finetuning(make_cfg) -> None:
    from research.training import run

    common = ("seed=3", "logging.log_every_n_steps=1")
    mas = run(make_cfg("method.name=mas", "method.lam=0", "method.importance_samples=200", *common))
    finetune = run(make_cfg("method.name=finetune", *common))
    assert mas.summary["status"] == finetune.summary["status"] == "completed"
    assert mas.summary["method_info"]["importance_trace"] > 0
    logged = mas.metrics[mas.metrics.metric == "train_loss_mas"].value
    assert len(logged) == mas.summary["steps"] > 0 and (logged == 0).all()
    ours, plain = _eval_rows(mas.run_dir), _eval_rows(finetune.run_dir)
    assert len(ours) > 4
    pd.testing.assert_frame_equal(ours, plain, check_exact=True)


def test_large_lambda_forgets_less_than_finetuning(make_cfg) -> None:
    from research.training import run

    common = ("train.lr=0.02", "train.epochs=4")
    mas = run(make_cfg("method.name=mas", "method.lam=1e4", "method.importance_samples=300", *common))
    finetune = run(make_cfg("method.name=finetune", *common))
    old, new = "digits_0_4", "digits_5_9"
    initial = mas.summary["initial"][old]["acc"]
    mas_old, plain_old = mas.summary["final"][old]["acc"], finetune.summary["final"][old]["acc"]
    assert mas_old > plain_old + 0.05, (mas_old, plain_old)
    assert mas_old > initial - 0.05, (mas_old, initial)
    assert mas.summary["final"][new]["acc"] > 0.5  # the new head still learns the new task
    assert (mas.metrics[mas.metrics.metric == "train_loss_mas"].value > 0).any()
