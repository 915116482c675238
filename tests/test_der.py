"""DER and DER++: the terms against hand computations, the stored logits, and real runs."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from research.data import build_tasks
from research.methods import HeadBatch, TrainStep, build_method
from research.training import run
from research.training.finetune import finetune_model

TWO_OLD_TASKS = (
    "pretrain.tasks=[{name: a, source: digits, classes: [0, 1]}, {name: b, source: digits, classes: [2, 3, 4]}]"
)


def prepared(make_cfg, *overrides: str):
    cfg = make_cfg("model.hidden=[8]", *overrides)
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None)
    teacher = copy.deepcopy(model)
    method.prepare(model, ctx)
    return method, model, ctx, teacher


def terms_of(method, model, ctx) -> dict[str, torch.Tensor]:
    x, y = ctx.task.splits["train"]
    batch = HeadBatch(ctx.task.head, x[:8], y[:8])
    terms = method.loss_terms(model, TrainStep([batch], [model(batch.x, batch.head)], 0))
    return {name: value.detach() for name, value in terms.items()}


def nudge(model) -> None:
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))


def eval_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    rows = metrics[metrics.metric.isin(["acc", "loss"])]
    return rows.sort_values(["step", "task", "metric"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------- the terms


@pytest.mark.parametrize("name", ["der", "derpp"])
def test_terms_equal_a_hand_computation(name: str, make_cfg) -> None:
    """Two old tasks with heads of 2 and 3 outputs: every buffered example is scored by its own head, and the
    MSE is the mean over all (example, unit) pairs; DER++'s CE uses a second, independent draw."""
    method, model, ctx, teacher = prepared(
        make_cfg, f"method.name={name}", TWO_OLD_TASKS, "method.alpha=0.7", "method.replay_batch_size=12"
    )
    assert method.memory.heads == ["a", "b"] and method.units == [2, 3]
    nudge(model)  # the student moves away from the pretrained teacher
    drawn = method.generator.get_state()
    terms = terms_of(method, model, ctx)
    assert set(terms) == ({"der"} if name == "der" else {"der", "der_ce"})

    method.generator.set_state(drawn)
    idx_mse = torch.randperm(len(method.memory), generator=method.generator)[:12]
    idx_ce = torch.randperm(len(method.memory), generator=method.generator)[:12]
    assert not torch.equal(idx_mse, idx_ce)
    heads = [method.memory.heads[int(h)] for h in method.memory.head]
    teacher.eval()
    squared, units = 0.0, 0
    with torch.no_grad():
        for i in idx_mse.tolist():
            x = method.memory.x[i : i + 1]
            student, target = model(x, heads[i])[0], teacher(x, heads[i])[0]
            squared += float(((student - target) ** 2).sum())
            units += len(target)
    assert 2 * 12 <= units <= 3 * 12 and len({heads[i] for i in idx_mse.tolist()}) == 2  # both heads drawn
    assert float(terms["der"]) == pytest.approx(0.7 * squared / units, rel=1e-5)
    if name == "derpp":
        with torch.no_grad():
            ce = sum(
                float(F.cross_entropy(model(method.memory.x[i : i + 1], heads[i]), method.memory.y[i : i + 1]))
                for i in idx_ce.tolist()
            )
        assert float(terms["der_ce"]) == pytest.approx(method.config.beta * ce / 12, rel=1e-5)


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_term_is_zero_right_after_prepare(heads: str, make_cfg) -> None:
    method, model, ctx, _ = prepared(make_cfg, "method.name=der", f"model.heads={heads}")
    assert method.logits.shape == (200, 5)  # the pretrained head's outputs: 5, even where the shared head has 10
    if heads == "shared":
        assert model.heads["shared"].out_features == 10
    assert float(terms_of(method, model, ctx)["der"]) == pytest.approx(0.0, abs=1e-12)
    nudge(model)
    assert float(terms_of(method, model, ctx)["der"]) > 1e-4


def test_shared_head_compares_only_the_pretrained_outputs(make_cfg) -> None:
    """The new outputs of a grown shared head are not part of the logits DER anchors."""
    method, model, ctx, _ = prepared(make_cfg, "method.name=der", "model.heads=shared")
    with torch.no_grad():
        model.heads["shared"].bias[5:] += 3.0  # the new classes' outputs move; the old five do not
    assert float(terms_of(method, model, ctx)["der"]) == pytest.approx(0.0, abs=1e-12)


def test_zero_strength_returns_no_term(make_cfg) -> None:
    method, model, ctx, _ = prepared(make_cfg, "method.name=derpp", "method.alpha=0", "method.beta=0")
    drawn = method.generator.get_state()
    assert terms_of(method, model, ctx) == {}
    assert torch.equal(method.generator.get_state(), drawn)  # nothing drawn


def test_defaults() -> None:
    der, derpp = build_method({"name": "der"}).config, build_method({"name": "derpp"}).config
    assert (der.alpha, der.buffer_size, der.replay_batch_size, der.selection) == (0.3, 200, 32, "reservoir")
    assert (derpp.alpha, derpp.beta, derpp.buffer_size) == (0.1, 0.5, 200)


# --------------------------------------------------------------------------------------------- real runs


@pytest.mark.parametrize("name", ["der", "derpp"])
def test_runs_log_their_terms(name: str, make_cfg) -> None:
    result = run(make_cfg(f"method.name={name}", "logging.log_every_n_steps=1", "method.selection=class_balanced"))
    assert result.summary["status"] == "completed"
    metrics = result.metrics
    expected = {"train_loss_der"} | ({"train_loss_der_ce"} if name == "derpp" else set())
    for metric in expected:
        values = metrics[metrics.metric == metric].value
        assert len(values) == result.summary["steps"] and (values >= 0).all(), metric
        assert values.iloc[-1] > 0, metric
    assert set(metrics.metric[metrics.metric.str.startswith("train_loss_der")]) == expected
    # Step 0's update comes after the loss is computed: the student is still the teacher then.
    assert metrics[metrics.metric == "train_loss_der"].value.iloc[0] == pytest.approx(0.0, abs=1e-9)
    assert result.summary["method_info"]["buffer_size"] == 200


def test_zero_strength_is_finetuning_exactly(make_cfg) -> None:
    """No extra forward pass (dropout draws, BatchNorm statistics) and no term at zero weights."""
    common = ("model.dropout=0.2", "model.batchnorm=true", "logging.log_every_n_steps=1")
    baseline = eval_rows(run(make_cfg("method.name=finetune", *common)).metrics)
    for method in (("method.name=der", "method.alpha=0"), ("method.name=derpp", "method.alpha=0", "method.beta=0")):
        metrics = run(make_cfg(*method, *common)).metrics
        pd.testing.assert_frame_equal(eval_rows(metrics), baseline, check_exact=True)
        assert not metrics.metric.str.startswith("train_loss_der").any()


def test_large_alpha_protects_the_old_task(make_cfg) -> None:
    robust = ("train.lr=0.02", "train.epochs=4")
    finetune = run(make_cfg("method.name=finetune", *robust)).summary["final"]["digits_0_4"]["acc"]
    der = run(make_cfg("method.name=der", "method.alpha=10", *robust)).summary["final"]["digits_0_4"]["acc"]
    derpp = run(make_cfg("method.name=derpp", "method.alpha=10", "method.beta=1", *robust)).summary["final"]
    assert der > finetune + 0.1, (der, finetune)
    assert derpp["digits_0_4"]["acc"] > finetune + 0.1, (derpp, finetune)
