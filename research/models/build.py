"""A model: the backbone of the configured family (research.models.adapters) plus named heads."""

from __future__ import annotations

from research.config import ModelConfig
from research.models.adapters import adapter
from research.models.adapters.base import blocks_of, check_block_cover
from research.models.multihead import MultiHeadNet


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...] | None, head_sizes: dict[str, int]) -> MultiHeadNet:
    """Build backbone and heads. ``input_shape`` is one example's shape for tensor inputs, e.g. (1, 8, 8) or
    (1, 40); None for token inputs. Raises ConfigError when the family cannot build it."""
    backbone, feature_dim = adapter(cfg.arch).build(cfg, input_shape)
    check_block_cover(backbone, blocks_of(backbone), f"model.arch={cfg.arch}")
    model = MultiHeadNet(backbone, feature_dim)
    for name, size in head_sizes.items():
        model.add_head(name, size)
    return model
