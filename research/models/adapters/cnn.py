"""``cnn``: a small convolutional network that the lab pretrains itself, 2-D for images and 1-D for signals
such as MNIST-1D; one block per convolution."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from research.config import ModelConfig
from research.errors import ConfigError
from research.models.adapters.base import Adapter, Example, digits_example, register_adapter


@register_adapter
class CNNAdapter(Adapter):
    name = "cnn"
    keys = ("channels", "batchnorm", "dropout")
    summary = "a small CNN pretrained here, 2-D for images, 1-D for signals (model.channels: block channels)"

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, int]:
        if input_shape is None or len(input_shape) not in (2, 3):
            raise ConfigError(
                f"model.arch: cnn needs inputs shaped (channels, length) or (channels, height, width); "
                f"this data has shape {input_shape}; use model.arch=mlp"
            )
        two_d = len(input_shape) == 3
        conv, norm, pool = (
            (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d)
        )
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

    def describe(self, cfg: ModelConfig, backbone: nn.Module) -> dict:
        return {"arch": self.name, "channels": list(cfg.channels)}

    def example(self, workdir: Path) -> Example:
        return digits_example({"arch": "cnn", "channels": [4, 6]})
