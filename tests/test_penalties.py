"""EWC and L2-SP: zero at the anchor, gradients equal to their closed forms; the shared quadratic penalty."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import prepare_method

from research.config import load_config
from research.methods import TrainStep
from research.methods.penalty import quadratic_penalty, snapshot

SPLIT = Path(__file__).resolve().parents[1] / "experiments" / "split_digits.yaml"
NO_STEP = TrainStep(batches=[], logits=[], step=0)


def prepared(*overrides: str):
    cfg = load_config(SPLIT, ["model.hidden=[16, 8]", "logging.wandb=disabled", *overrides])
    method, model, ctx, _ = prepare_method(cfg)
    return method, model, ctx


def perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------- EWC


def test_ewc_is_zero_at_the_anchor_and_anchors_trainable_pretrained_weights() -> None:
    method, model, ctx = prepared("method.name=ewc", "method.lam=7", "method.fisher_samples=150")
    assert method.loss_terms(model, NO_STEP)["ewc"].item() == 0.0
    expected = [n for n in ctx.pretrained_names if n in trainable(model)]
    assert expected and sorted(method.anchor) == sorted(expected) == sorted(method.fisher)
    assert all(n.startswith("backbone.") for n in expected)  # old heads are frozen, the new head is new
    for n, f in method.fisher.items():
        assert f.shape == model.get_parameter(n).shape
        assert (f >= 0).all()
    assert sum(float(f.sum()) for f in method.fisher.values()) > 0
    info = method.info()
    assert info["fisher_estimator"] == "exact" and info["fisher_examples"] == 150


@pytest.mark.parametrize(
    "estimator",
    [
        "exact",
        "sample",
        "empirical",
        "batched",
    ],
)
def test_ewc_gradient_is_lambda_fisher_times_displacement(estimator: str) -> None:
    lam = 7.0
    method, model, _ = prepared(
        "method.name=ewc", f"method.lam={lam}", f"method.fisher={estimator}", "method.fisher_samples=150"
    )
    anchor = {n: t.clone() for n, t in method.anchor.items()}
    perturb(model)
    model.zero_grad()
    penalty = method.loss_terms(model, NO_STEP)["ewc"]
    penalty.backward()
    params = dict(model.named_parameters())
    expected_value = sum(0.5 * lam * (method.fisher[n] * (params[n] - anchor[n]) ** 2).sum() for n in anchor)
    torch.testing.assert_close(penalty, expected_value.detach(), rtol=1e-5, atol=1e-7)
    assert penalty.item() > 0
    for name, p in params.items():
        if name in anchor:
            closed_form = lam * method.fisher[name] * (p.detach() - anchor[name])
            torch.testing.assert_close(p.grad, closed_form, rtol=1e-5, atol=1e-8)
        else:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name


# --------------------------------------------------------------------------------------------- L2-SP


def test_l2sp_is_zero_at_the_anchor() -> None:
    method, model, ctx = prepared("method.name=l2sp", "method.alpha=0.3", "method.beta=0.05")
    terms = method.loss_terms(model, NO_STEP)
    assert terms["l2sp"].item() == 0.0
    # The β part pulls the new head toward zero, not toward an anchor.
    new = [model.get_parameter(n) for n in ctx.new_names]
    torch.testing.assert_close(terms["l2_new_head"], 0.5 * 0.05 * sum((p.detach() ** 2).sum() for p in new))


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_l2sp_gradient_closed_form(heads: str) -> None:
    """α·(w − w⁰) on what the pretrained model had, β·w on what fine-tuning created (Li et al. 2018, eq. 3): a
    new per-task head, or the rows a shared head grew for the new classes."""
    alpha, beta = 0.3, 0.05
    method, model, ctx = prepared(
        "method.name=l2sp", f"method.alpha={alpha}", f"method.beta={beta}", f"model.heads={heads}"
    )
    anchor = {n: t.clone() for n, t in method.anchor.items()}
    pretrained = [n for n in ctx.pretrained_names if n in trainable(model)]
    assert sorted(anchor) == sorted(pretrained)
    if heads == "shared":
        old_rows = ctx.tasks.pretrain_head_sizes()["shared"]  # digits 0-4
        assert old_rows == 5 and model.heads["shared"].out_features == 10
        assert anchor["heads.shared.weight"].shape[0] == old_rows  # only the pretrained rows have a w⁰
        new_rows = {"heads.shared.weight": old_rows, "heads.shared.bias": old_rows}
    else:
        new_rows = {"heads.digits_5_9.bias": 0, "heads.digits_5_9.weight": 0}
    perturb(model)
    model.zero_grad()
    terms = method.loss_terms(model, NO_STEP)
    assert terms["l2sp"].item() > 0 and terms["l2_new_head"].item() > 0
    sum(terms.values()).backward()
    for name, p in model.named_parameters():
        if name not in anchor and name not in new_rows:
            assert p.grad is None, name  # frozen old heads
            continue
        expected = torch.zeros_like(p)
        if name in anchor:
            rows = len(anchor[name])
            expected[:rows] = alpha * (p.detach()[:rows] - anchor[name])
        if name in new_rows:
            rows = new_rows[name]
            expected[rows:] = beta * p.detach()[rows:]
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-8)


def test_l2sp_without_beta_has_no_head_term() -> None:
    method, model, _ = prepared("method.name=l2sp", "method.beta=0")
    assert set(method.loss_terms(model, NO_STEP)) == {"l2sp"}


# --------------------------------------------------------------------------------------------- the shared form


def test_quadratic_penalty_hand_computed() -> None:
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]]), "c": torch.tensor([100.0])}
    anchors = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.0]])}
    importance = {"a": torch.tensor([1.0, 0.5]), "b": torch.tensor([[2.0]])}
    # Σ Ω (θ − θ*)²: 1·1² + 0.5·2² + 2·2² = 11; "c" has no anchor and is ignored.
    assert quadratic_penalty(params, anchors, importance).item() == 11.0
    assert quadratic_penalty(params, anchors).item() == 9.0  # Ω = 1: 1 + 4 + 4
    assert quadratic_penalty(params, {}).item() == 0.0
    # Anchors may broadcast (a scalar zero anchor is plain L2).
    assert quadratic_penalty(params, {"c": torch.tensor(0.0)}).item() == 10_000.0


def test_quadratic_penalty_gradient() -> None:
    theta = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    anchor = torch.tensor([0.5, 0.0, 0.5])
    omega = torch.tensor([2.0, 3.0, 4.0])
    quadratic_penalty({"w": theta}, {"w": anchor}, {"w": omega}).backward()
    torch.testing.assert_close(theta.grad, 2 * omega * (theta.detach() - anchor))


def test_snapshot_is_a_detached_copy() -> None:
    layer = torch.nn.Linear(3, 2)
    snap = snapshot(layer, ["weight"])
    assert list(snap) == ["weight"]
    assert not snap["weight"].requires_grad
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert not torch.equal(snap["weight"], layer.weight)
