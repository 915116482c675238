"""Backbones and heads: forward shapes for every head, seeded heads, block structure."""

from __future__ import annotations

import pytest
import torch

from research.config import ModelConfig
from research.errors import ConfigError
from research.models import MultiHeadNet, build_model

HEADS = {"old": 5, "new": 3, "shared": 10}


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize(
    ("arch", "input_shape"),
    [("mlp", (1, 8, 8)), ("mlp", (1, 40)), ("mlp", (12,)), ("cnn", (1, 8, 8)), ("cnn", (1, 40)), ("cnn", (3, 6, 6))],
)
def test_forward_shape_for_each_head(arch: str, input_shape: tuple[int, ...], batchnorm: bool) -> None:
    cfg = ModelConfig(arch=arch, hidden=[16, 8], channels=[4, 6], batchnorm=batchnorm, dropout=0.1)
    model = build_model(cfg, input_shape, HEADS)
    assert model.head_sizes() == HEADS
    x = torch.randn(7, *input_shape)
    model.eval()
    for head, size in HEADS.items():
        out = model(x, head)
        assert out.shape == (7, size)
        assert torch.isfinite(out).all()
    features = model.features(x)
    assert features.shape == (7, model.feature_dim)
    assert model.feature_dim == (8 if arch == "mlp" else 6)


def test_cnn_is_2d_for_images_and_1d_for_signals() -> None:
    cfg = ModelConfig(arch="cnn", channels=[4, 6])
    image = build_model(cfg, (1, 8, 8), {"a": 2})
    signal = build_model(cfg, (1, 40), {"a": 2})
    assert any(isinstance(m, torch.nn.Conv2d) for m in image.modules())
    assert not any(isinstance(m, torch.nn.Conv1d) for m in image.modules())
    assert any(isinstance(m, torch.nn.Conv1d) for m in signal.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in signal.modules())


def test_cnn_on_flat_features_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.arch"):
        build_model(ModelConfig(arch="cnn"), (64,), {"a": 2})


def test_blocks_are_the_backbone_children() -> None:
    model = build_model(ModelConfig(arch="mlp", hidden=[16, 8, 4]), (1, 8, 8), {"a": 2})
    assert len(model.blocks()) == 3
    cnn = build_model(ModelConfig(arch="cnn", channels=[4, 6]), (1, 8, 8), {"a": 2})
    assert len(cnn.blocks()) == 2


def _bare(feature_dim: int = 8) -> MultiHeadNet:
    return MultiHeadNet(torch.nn.Sequential(torch.nn.Identity()), feature_dim)


def test_add_head_with_a_seeded_generator_is_reproducible() -> None:
    a, b, c = _bare(), _bare(), _bare()
    torch.manual_seed(0)
    head_a = a.add_head("new", 4, generator=torch.Generator().manual_seed(11))
    torch.manual_seed(123)  # global RNG state must not matter
    torch.rand(5)
    head_b = b.add_head("new", 4, generator=torch.Generator().manual_seed(11))
    head_c = c.add_head("new", 4, generator=torch.Generator().manual_seed(12))
    assert torch.equal(head_a.weight, head_b.weight) and torch.equal(head_a.bias, head_b.bias)
    assert not torch.equal(head_a.weight, head_c.weight)
    bound = 1 / 8**0.5  # nn.Linear's default init range
    assert head_a.weight.abs().max() <= bound and head_a.bias.abs().max() <= bound
    assert head_a.weight.shape == (4, 8) and head_a.bias.shape == (4,)


def test_duplicate_head_is_an_error() -> None:
    model = _bare()
    model.add_head("x", 2)
    with pytest.raises(ValueError, match="already exists"):
        model.add_head("x", 3)


def test_resize_head_keeps_its_parameters_and_old_rows() -> None:
    """A shared head grows in place: the same Parameter objects (an optimizer built on them keeps working), the
    known classes' rows unchanged, the new rows drawn exactly as a new seeded head's would be."""
    model = build_model(ModelConfig(arch="mlp", hidden=[6]), (4,), {"shared": 3})
    head = model.heads["shared"]
    weight, bias = head.weight, head.bias
    old_weight, old_bias = weight.detach().clone(), bias.detach().clone()
    model.resize_head("shared", 5, torch.Generator().manual_seed(3))
    assert model.heads["shared"].weight is weight and model.heads["shared"].bias is bias
    assert head.out_features == 5 and weight.shape == (5, 6) and bias.shape == (5,)
    assert torch.equal(weight[:3], old_weight) and torch.equal(bias[:3], old_bias)
    reference = MultiHeadNet(model.backbone, 6)
    fresh = reference.add_head("fresh", 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(weight[3:], fresh.weight[3:]) and torch.equal(bias[3:], fresh.bias[3:])
    assert model(torch.randn(2, 4), "shared").shape == (2, 5)
    model.resize_head("shared", 3, torch.Generator())  # a resume replaying an earlier task
    assert weight.shape == (3, 6) and torch.equal(weight, old_weight) and head.out_features == 3
