"""The interface between the lab and a family of backbones (``model.arch``), and its registry.

A backbone adapter answers what the methods, the evaluator and the optimizer need to know about a model, and
nothing else (the heads stay ours, ``research.models.multihead``):

- ``build``: the backbone, an ``nn.Module`` whose forward maps a batch of inputs to features (N, feature_dim),
  with the pretrained weights of its family loaded (``from_pretrained``, ``timm.create_model``, the user's
  factory) or freshly initialised for the built-in ``mlp`` and ``cnn``;
- ``blocks``: the backbone's blocks from bottom to top, which partial unfreezing and layer-wise learning rates
  count from the top; together they hold every backbone parameter exactly once;
- ``input_encoder``: how raw examples of a source become model inputs (a tokenizer for text, the model's own
  preprocessing for images, the arrays as they are for the built-in models);
- ``external``: whether the weights come from outside the lab (a foundation model), so that no pretraining
  stage of ours trains the backbone;
- ``fingerprint``: the content behind the weights (a local directory, a weights file, the factory's source)
  for run ids and the pretraining cache;
- ``example``: a tiny experiment of the family that runs here without downloading anything.

One file per family registers one ``Adapter`` subclass with ``@register_adapter``; tests are generated from the
registry: every method, partial unfreezing and layer-wise learning rates run on each family's ``example``, so a
new family file is tested the moment it exists (and fails those tests until it gives an example).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from research.errors import ConfigError

if TYPE_CHECKING:
    from research.config import ModelConfig
    from research.data.inputs import Inputs


@dataclass(frozen=True)
class InputEncoder:
    """Raw source examples → model inputs. ``kinds`` are the source kinds it takes (``array``: numeric arrays
    such as pixels or features; ``text``: strings or string pairs); ``identity`` names everything its output
    depends on (the tokenizer and its settings), for caches."""

    kinds: tuple[str, ...]
    encode: Callable[[np.ndarray], Inputs]
    identity: dict[str, Any]


def tensor_encoder() -> InputEncoder:
    """Numeric arrays as float32 tensors, as stored."""
    return InputEncoder(("array",), lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), {})


@dataclass(frozen=True)
class Example:
    """A tiny experiment of one family that needs no download: the ``model`` section and the tasks it fits, as
    config mappings. ``pretrain_tasks`` are scored by heads (for an external model, heads trained on its frozen
    features); an external family's example must also run without them."""

    model: dict[str, Any]
    finetune_tasks: list[dict[str, Any]]
    pretrain_tasks: list[dict[str, Any]] = field(default_factory=list)


def digits_example(model: dict[str, Any]) -> Example:
    """A model on the packaged 8×8 digits (scikit-learn's): pretraining digits 0–4, fine-tuning 5–9."""
    return Example(
        model=model,
        pretrain_tasks=[{"name": "d04", "source": "digits", "classes": [0, 1, 2, 3, 4]}],
        finetune_tasks=[{"name": "d59", "source": "digits", "classes": [5, 6, 7, 8, 9]}],
    )


class Adapter:
    """Base class of a backbone family. Subclasses set ``name`` and the class attributes, and implement
    ``build``; ``keys`` lists the ``model.*`` settings the family reads (any other set to a non-default value is
    refused, never silently ignored)."""

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]] = ()
    external: ClassVar[bool] = False  # weights from outside the lab (a foundation model)
    summary: ClassVar[str] = ""  # one line for `research models` and error messages
    # Even its smallest example is a full-size model (torchvision's smallest at 224 pixels): the tests generated
    # for every method on it are marked slow; partial unfreezing and layer-wise rates still run by default.
    slow_example: ClassVar[bool] = False

    def check(self, cfg: ModelConfig) -> None:
        """Raise ConfigError for settings that cannot work (a missing directory, an unknown model name)."""

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, int]:
        """The backbone (pretrained weights loaded) and its feature dimension. ``input_shape`` is one example's
        shape for tensor inputs, None for token inputs."""
        raise NotImplementedError

    def input_encoder(self, cfg: ModelConfig) -> InputEncoder:
        return tensor_encoder()

    def fingerprint(self, cfg: ModelConfig) -> dict[str, str]:
        return {}

    def describe(self, cfg: ModelConfig, backbone: nn.Module) -> dict[str, Any]:
        """Facts for summary.json: what was loaded, from where, how features are pooled."""
        return {"arch": self.name}

    def example(self, workdir: Path) -> Example:
        """A tiny experiment of this family that runs without a download, writing any files it needs (a model
        directory, a data table) under ``workdir``. The registry-generated tests run every method on it."""
        raise NotImplementedError(
            f"adapter '{self.name}' ({type(self).__module__}) gives no example(): the tests generated from the "
            "adapter registry run every method on each family's example"
        )


_ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__qualname__} must set a class attribute 'name'")
    if name in _ADAPTERS and _ADAPTERS[name] is not cls:
        raise ValueError(
            f"adapter name '{name}' is registered twice ({_ADAPTERS[name].__module__} and {cls.__module__})"
        )
    _ADAPTERS[name] = cls
    return cls


def adapter_names() -> list[str]:
    return list(_ADAPTERS)


def adapter(name: str) -> Adapter:
    try:
        return _ADAPTERS[name]()
    except KeyError:
        raise ConfigError(f"model.arch: unknown architecture '{name}'; valid choices: {', '.join(_ADAPTERS)}") from None


# ------------------------------------------------------------------------------------------------ blocks


def blocks_of(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks, bottom to top: its own ``blocks()`` when it has one, else its children."""
    own = getattr(backbone, "blocks", None)
    if callable(own):
        return list(own())
    return list(backbone.children())


def block_names_of(backbone: nn.Module) -> list[str]:
    """A name per block (``embeddings``, ``layer_0``, …); the child's name for a plain module."""
    own = getattr(backbone, "block_names", None)
    if callable(own):
        return list(own())
    return [name for name, _ in backbone.named_children()]


def check_block_cover(backbone: nn.Module, blocks: list[nn.Module], where: str) -> None:
    """Every trainable backbone parameter in exactly one block: a parameter outside every block would never be
    unfrozen by partial fine-tuning nor get a learning rate; one in two blocks would get two."""
    seen: dict[int, int] = {}
    for block in blocks:
        for p in block.parameters():
            seen[id(p)] = seen.get(id(p), 0) + 1
    names = {id(p): n for n, p in backbone.named_parameters()}
    outside = [names[i] for i in names if i not in seen]
    twice = [names[i] for i, k in seen.items() if k > 1 and i in names]
    if outside or twice:
        problem = f"parameters in no block: {outside[:4]}" if outside else f"parameters in two blocks: {twice[:4]}"
        raise ConfigError(f"{where}: the backbone's blocks must hold every parameter exactly once; {problem}")


class Blocks(nn.Module):
    """Several modules seen as one block (not registered anywhere: a view, so parameter names do not change)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        object.__setattr__(self, "members", modules)

    def children(self):  # type: ignore[override]
        return iter(self.members)

    def named_children(self):  # type: ignore[override]
        return ((str(i), m) for i, m in enumerate(self.members))

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        seen: set[int] = set()
        for module in self.members:
            for p in module.parameters(recurse):
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):  # type: ignore[override]
        for i, module in enumerate(self.members):
            yield from module.named_parameters(prefix=f"{prefix}{i}", recurse=recurse)

    def train(self, mode: bool = True) -> Blocks:
        for module in self.members:
            module.train(mode)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> Blocks:
        for module in self.members:
            module.requires_grad_(requires_grad)
        return self


@contextmanager
def fixed_rng() -> Iterator[None]:
    """Random initialisation from a fixed stream (seed 0), leaving the global RNG as it was. A loaded model's
    weights that its file lacks (or all of them, without pretrained weights) must be the same in every build of
    one config: the pretraining stage caches heads trained on the backbone's features, and fine-tuning and every
    grid worker build the backbone again."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def feature_dim_by_probe(module: nn.Module, example: Inputs, where: str) -> int:
    """The width of a module's features, found by one forward pass of one example in eval mode (no grad, every
    module's own mode restored afterwards)."""
    from research.data.inputs import take
    from research.models.modes import eval_mode

    try:
        with eval_mode(module), torch.no_grad():
            out = module(take(example, slice(0, 1)))
    except Exception as err:  # noqa: BLE001 - the user's module: report what it did, as a config error
        raise ConfigError(f"{where}: the model fails on an example of the data ({type(err).__name__}: {err})") from None
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"{where}: the model must return features shaped (batch, features); it returned {shape}")
    return int(out.shape[1])
