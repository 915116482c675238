"""The exact Fisher's closed forms for linear, embedding and layer-norm layers (research.methods.layer_fisher)
against the definition, Σ_n Σ_y p(y|x_n) g_y(x_n)², computed one example and one class at a time with autograd,
on every kind of model a user can bring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from research.config import ModelConfig
from research.data.inputs import take
from research.methods.base import HeadBatch
from research.methods.fisher import fisher_diagonal
from research.methods.layer_fisher import add_layer
from research.models import build_model
from research.models.modes import eval_mode


def definition(model, batch: HeadBatch, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in names}
    with eval_mode(model):
        for i in range(len(batch.y)):
            x = take(batch.x, slice(i, i + 1))
            log_probs = F.log_softmax(model(x, batch.head), dim=-1)[0]
            for y in range(len(log_probs)):
                grads = torch.autograd.grad(
                    log_probs[y], [params[n] for n in names], retain_graph=True, allow_unused=True
                )
                for n, g in zip(names, grads, strict=True):
                    if g is not None:
                        total[n] += log_probs[y].exp().detach() * g.pow(2)
    return {n: t / len(batch.y) for n, t in total.items()}


def assert_matches(model, batch: HeadBatch) -> None:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ours = fisher_diagonal(model, [batch], names, "exact")
    expected = definition(model, batch, names)
    for n in names:
        torch.testing.assert_close(ours[n], expected[n], rtol=1e-4, atol=1e-9, msg=n)


def test_on_a_transformer_with_padding(tiny_bert: Path) -> None:
    """Embeddings (word, position, token type), every layer's linears on tokens, layer norms, the head."""
    from transformers import AutoTokenizer

    model = build_model(ModelConfig(arch="hf", name=str(tiny_bert), pooling="mean"), None, {"t": 3})
    tokens = AutoTokenizer.from_pretrained(tiny_bert)(
        ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9"], ["w10", "w11 w12", "w13"], padding=True, return_tensors="pt"
    )
    assert_matches(model, HeadBatch("t", dict(tokens), torch.tensor([0, 2, 1])))


def test_on_an_mlp_and_a_cnn_and_a_timm_model() -> None:
    torch.manual_seed(0)
    for cfg, shape in (
        (ModelConfig(arch="mlp", hidden=[6, 5], batchnorm=True), (1, 4, 4)),
        (ModelConfig(arch="cnn", channels=[3, 4], batchnorm=True), (1, 8, 8)),
        (ModelConfig(arch="timm", name="test_resnet", pretrained=False), (3, 8, 8)),
    ):
        model = build_model(cfg, shape, {"t": 3})
        assert_matches(model, HeadBatch("t", torch.randn(5, *shape), torch.tensor([0, 1, 2, 0, 1])))


class InPlace(nn.Module):
    """A linear layer whose output an in-place activation overwrites, and a linear layer used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 6)
        self.shared = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        h = F.relu(self.first(x), inplace=True)
        return self.norm(self.shared(self.shared(h)))


def test_layers_the_closed_forms_cannot_describe_take_the_general_route() -> None:
    torch.manual_seed(0)
    from research.models.multihead import MultiHeadNet

    model = MultiHeadNet(InPlace(), 6)
    model.add_head("t", 3)
    assert_matches(model, HeadBatch("t", torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])))


def test_an_embedding_whose_ids_are_shared_by_the_batch_is_not_described() -> None:
    embedding = nn.Embedding(5, 3)
    total = {"weight": torch.zeros(5, 3)}
    shared_ids = torch.arange(4).unsqueeze(0)  # (1, T): one row of ids for every example
    assert not add_layer(total, "", embedding, shared_ids, torch.randn(2, 4, 3), torch.ones(2), {"weight"})
    assert not total["weight"].any()


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_rows_of_repeated_ids_add_up_before_squaring(padding_idx) -> None:
    embedding = nn.Embedding(4, 2, padding_idx=padding_idx)
    ids = torch.tensor([[1, 1, 0], [2, 0, 3]])
    delta = torch.arange(12.0).reshape(2, 3, 2)
    weight = torch.tensor([0.5, 2.0])
    total = {"weight": torch.zeros(4, 2)}
    assert add_layer(total, "", embedding, ids, delta, weight, {"weight"})
    expected = torch.zeros(4, 2)
    expected[1] += 0.5 * (delta[0, 0] + delta[0, 1]) ** 2  # example 0 uses row 1 twice: one gradient, summed
    expected[0] += 0.5 * delta[0, 2] ** 2 + 2.0 * delta[1, 1] ** 2
    expected[2] += 2.0 * delta[1, 0] ** 2
    expected[3] += 2.0 * delta[1, 2] ** 2
    if padding_idx == 0:
        expected[0] = 0
    torch.testing.assert_close(total["weight"], expected)


@pytest.mark.parametrize(("tokens", "width_in", "width_out"), [(3, 40, 50), (6, 4, 5)])
def test_both_expansions_of_a_linear_layer_on_positions_agree(tokens: int, width_in: int, width_out: int) -> None:
    """The position-pair expansion (chosen for short sequences of wide layers) and the per-example gradients
    give the same Σ_n w_n (Σ_t d_nt a_ntᵀ)², and both the definition."""
    from research.methods import layer_fisher

    torch.manual_seed(0)
    a, d, w = torch.randn(7, tokens, width_in), torch.randn(7, tokens, width_out), torch.rand(7)
    expected = sum(w[n] * (d[n].T @ a[n]).pow(2) for n in range(7))
    torch.testing.assert_close(layer_fisher._linear_weight(a, d, w), expected, rtol=1e-5, atol=1e-5)
