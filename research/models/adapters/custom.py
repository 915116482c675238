"""``custom``: the user's own ``nn.Module``, built by ``model.factory`` (``module.path:function``).

The function is called with ``model.kwargs`` as keyword arguments and returns a module whose forward maps a
batch of inputs (the task's arrays as float32 tensors) to features shaped (batch, features); the lab adds the
heads. Its weights are whatever the function gives it: load your pretrained weights there. Blocks, bottom to
top, for partial unfreezing and layer-wise learning rates: ``model.blocks`` (names of submodules, e.g.
``[stem, layer1, layer2]``), else the module's own ``blocks()`` method, else its children (an
``nn.Sequential``'s layers). Every parameter must be in exactly one block.

The module file's content is part of the run id, so editing the model gives new runs. A module whose factory
is in the working directory is found there (the working directory is put on ``sys.path``).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from torch import nn

from research.config import ModelConfig
from research.errors import ConfigError
from research.models.adapters.base import (
    Adapter,
    Example,
    block_names_of,
    blocks_of,
    check_block_cover,
    digits_example,
    feature_dim_by_probe,
    register_adapter,
)


def load_factory(cfg: ModelConfig) -> Any:
    spec = cfg.factory or ""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ConfigError(f"model.factory: '{spec}' must be 'module.path:function' (e.g. mypackage.models:build)")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - the user's code: any failure is a config error naming it
        raise ConfigError(f"model.factory: cannot import '{module_name}' ({type(err).__name__}: {err})") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
        raise ConfigError(
            f"model.factory: '{module_name}' has no function '{function_name}'; callables there: {', '.join(found)}"
        )
    return factory


class NamedBlocks(nn.Module):
    """The user's module with the blocks ``model.blocks`` names (a thin wrapper: parameter names gain a
    ``module.`` prefix, nothing else changes)."""

    def __init__(self, module: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.module = module
        self.names = names
        available = dict(module.named_modules())
        missing = [n for n in names if n not in available]
        if missing:
            shown = [n for n in available if n and "." not in n][:12]
            raise ConfigError(f"model.blocks: no submodules {missing} in the model; its top-level ones: {shown}")
        self._blocks = [available[n] for n in names]

    def forward(self, x: Any) -> Any:
        return self.module(x)

    def blocks(self) -> list[nn.Module]:
        return list(self._blocks)

    def block_names(self) -> list[str]:
        return list(self.names)


@register_adapter
class CustomAdapter(Adapter):
    name = "custom"
    keys = ("factory", "kwargs", "blocks")
    external = True
    summary = "your own nn.Module (features out) from model.factory: module.path:function"

    def check(self, cfg: ModelConfig) -> None:
        load_factory(cfg)

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, int]:
        factory = load_factory(cfg)
        try:
            module = factory(**cfg.kwargs)
        except Exception as err:  # noqa: BLE001 - the user's code
            raise ConfigError(f"model.factory: {cfg.factory} failed ({type(err).__name__}: {err})") from None
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"model.factory: {cfg.factory} must return a torch.nn.Module; it returned {type(module).__name__}"
            )
        backbone = NamedBlocks(module, cfg.blocks) if cfg.blocks else module
        blocks = blocks_of(backbone)
        if not blocks:
            raise ConfigError(
                "model.blocks: the model has no children to use as blocks; name them with model.blocks "
                "(submodule names, bottom to top) or give it a blocks() method"
            )
        check_block_cover(backbone, blocks, "model.blocks")
        if input_shape is None:
            raise ConfigError("model.arch: custom models take numeric arrays; this data is text (use model.arch=hf)")
        import torch

        example = torch.zeros(2, *input_shape)
        return backbone, feature_dim_by_probe(backbone, example, "model.factory")

    def fingerprint(self, cfg: ModelConfig) -> dict[str, str]:
        from research.data.fingerprint import path_fingerprint

        factory = load_factory(cfg)
        try:
            source = inspect.getsourcefile(factory)
        except TypeError:
            source = None
        return {"factory": path_fingerprint(source)} if source else {}

    def describe(self, cfg: ModelConfig, backbone: nn.Module) -> dict[str, Any]:
        return {
            "arch": self.name,
            "factory": cfg.factory,
            "class": type(backbone.module if isinstance(backbone, NamedBlocks) else backbone).__name__,
            "parameters": sum(p.numel() for p in backbone.parameters()),
            "blocks": block_names_of(backbone),
        }

    def example(self, workdir: Path) -> Example:
        return digits_example(
            {"arch": self.name, "factory": f"{__name__}:example_net", "blocks": ["stem", "body", "top"]}
        )


class ExampleNet(nn.Module):
    """The family's example, a model as a user would write one: 8×8 images in, 16 features out, three
    submodules that ``model.blocks`` names."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.top = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))

    def forward(self, x: Any) -> Any:
        return self.top(self.body(self.stem(x)))


def example_net(width: int = 16) -> nn.Module:
    """``model.factory`` of the example: its weights drawn from a fixed seed, as a user's loaded weights are
    the same in every build."""
    from research.models.adapters.base import fixed_rng

    with fixed_rng():
        return ExampleNet(width)
