"""``mlp``: a multilayer perceptron that the lab pretrains itself; one block per hidden layer."""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from research.config import ModelConfig
from research.models.adapters.base import Adapter, Example, digits_example, register_adapter


@register_adapter
class MLPAdapter(Adapter):
    name = "mlp"
    keys = ("hidden", "batchnorm", "dropout")
    summary = "a multilayer perceptron pretrained here (model.hidden: block widths)"

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, int]:
        width = math.prod(input_shape or ())
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

    def describe(self, cfg: ModelConfig, backbone: nn.Module) -> dict:
        return {"arch": self.name, "hidden": list(cfg.hidden)}

    def example(self, workdir: Path) -> Example:
        return digits_example({"arch": "mlp", "hidden": [16, 16]})
