"""Backbones: an MLP, and a small CNN that is 2-D for images and 1-D for signals such as MNIST-1D."""

from __future__ import annotations

import math

from torch import nn

from research.config import ModelConfig
from research.errors import ConfigError
from research.models.multihead import MultiHeadNet


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], head_sizes: dict[str, int]) -> MultiHeadNet:
    """Build backbone and heads. ``input_shape`` excludes the batch dimension, e.g. (1, 8, 8) or (1, 40)."""
    if cfg.arch == "mlp":
        backbone, feature_dim = _mlp(cfg, input_shape)
    else:
        backbone, feature_dim = _cnn(cfg, input_shape)
    model = MultiHeadNet(backbone, feature_dim)
    for name, size in head_sizes.items():
        model.add_head(name, size)
    return model


def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    width = math.prod(input_shape)
    blocks: list[nn.Module] = []
    for i, hidden in enumerate(cfg.hidden):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers.append(nn.Linear(width, hidden))
        if cfg.batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU())
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        blocks.append(nn.Sequential(*layers))
        width = hidden
    return nn.Sequential(*blocks), width


def _cnn(cfg: ModelConfig, input_shape: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    if len(input_shape) not in (2, 3):
        raise ConfigError(
            f"model.arch: cnn needs inputs shaped (channels, length) or (channels, height, width); "
            f"this data has shape {input_shape}; use model.arch=mlp"
        )
    two_d = len(input_shape) == 3
    conv, norm, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d)
    adaptive = nn.AdaptiveAvgPool2d(1) if two_d else nn.AdaptiveAvgPool1d(1)
    spatial = list(input_shape[1:])
    blocks: list[nn.Module] = []
    in_channels = input_shape[0]
    for out_channels in cfg.channels:
        layers: list[nn.Module] = [conv(in_channels, out_channels, kernel_size=3, padding=1)]
        if cfg.batchnorm:
            layers.append(norm(out_channels))
        layers.append(nn.ReLU())
        # Halve the resolution while it stays at least 2 wide; 8x8 digits allow three halvings.
        if min(spatial) >= 4:
            layers.append(pool(2))
            spatial = [s // 2 for s in spatial]
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        blocks.append(nn.Sequential(*layers))
        in_channels = out_channels
    # The pooling + flatten is the last block's job so that "top k blocks" always ends in features.
    blocks[-1].append(adaptive)
    blocks[-1].append(nn.Flatten())
    return nn.Sequential(*blocks), in_channels
