"""What every image-backbone family (``timm``, ``torchvision``) shares; no adapter is registered here, and importing
this module does nothing but define.

- Names, hubs and weights files: the error for an unknown model name (with close names), whether downloads are
  off, the error for pretrained weights that cannot be reached, ``model.weights`` read weights-only and loaded
  strictly (the removed classifier's keys ignored).
- Blocks: groups of parameter names as block views (``ParamBlock``), named after what they hold.
- Inputs: ``ImageInput``, what a family's data config says the model takes (input size, interpolation, mean,
  std). The input encoder does at storage time only what keeps an image's size: grey replicated to 3 channels,
  each channel normalised with the mean and std. The backbone (``ImageBackbone``) resizes each batch to the input
  size in its forward, on the batch's device, so a task's splits are stored at their own resolution (an 8×8
  digit: 3×8×8 floats, 768 bytes, where 3×224×224 would be 602,112). Normalising before resizing is resizing
  before normalising: every interpolation mode here weighs its input pixels with weights that sum to 1, and
  works channel by channel.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from research.config import ModelConfig
from research.errors import ConfigError
from research.models.adapters.base import Blocks, InputEncoder

# --------------------------------------------------------------------------------------------- names, hubs


def unknown_name(family: str, name: str, valid: list[str], listing: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else f"see {listing}"
    return ConfigError(f"model.name: unknown {family} model '{name}'; {hint}")


def hub_offline() -> bool:
    """Whether downloads are off (``HF_HUB_OFFLINE``), read now rather than when huggingface_hub was imported."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.is_offline_mode())


def unreachable_weights(family: str, name: str, source: str, err: BaseException | None) -> ConfigError:
    why = "offline (HF_HUB_OFFLINE is set)" if hub_offline() else "the download failed"
    detail = f" ({' '.join(str(err).split())[:200]})" if err is not None else ""
    return ConfigError(
        f"model.pretrained: cannot load {family}'s pretrained weights of '{name}' from {source}: {why} and they are "
        f"not in the local cache{detail}; give a local weights file with model.weights, or set "
        "model.pretrained=false for randomly initialised weights"
    )


# --------------------------------------------------------------------------------------------- weights files


def weights_file(cfg: ModelConfig) -> Path | None:
    if not cfg.weights:
        return None
    file = Path(cfg.weights).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.weights: file not found: {cfg.weights}")
    return file


def weights_origin(cfg: ModelConfig, pretrained: str) -> str:
    if cfg.weights:
        return str(Path(cfg.weights).expanduser())
    return pretrained if cfg.pretrained else "random initialisation (seed 0)"


def read_weights(file: Path) -> dict[str, Tensor]:
    """A state dict from a safetensors or weights-only torch file (research.training.checkpoints: nothing is
    unpickled, so a pickle disguised as weights is refused without running it)."""
    from research.training.checkpoints import read_state_dict

    state = read_state_dict(file, key="model.weights")
    # A model trained under DataParallel / DDP saves every key under "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(
    model: nn.Module, state: dict[str, Tensor], source: str, classifier: list[str], key: str = "model.weights"
) -> None:
    """Strict load; only keys of the removed classifier (under a ``classifier`` prefix, absent from the model)
    are ignored, anything else that differs is a ConfigError that says what."""
    expected = model.state_dict()

    def is_classifier(key: str) -> bool:
        return key not in expected and any(key == c or key.startswith(f"{c}.") for c in classifier)

    state = {k: v for k, v in state.items() if not is_classifier(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]  # fmt: skip
    parts = [f"missing {missing[:4]}{' …' if len(missing) > 4 else ''}"] if missing else []
    parts += [f"unexpected {unexpected[:4]}{' …' if len(unexpected) > 4 else ''}"] if unexpected else []
    parts += [f"shape mismatch {shapes[:2]}"] if shapes else []
    if parts:
        raise ConfigError(f"{key}: {source} does not fit {type(model).__name__} (model.name): {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------- blocks


class ParamBlock(Blocks):
    """One block: whole submodules (whose train/eval mode it sets) plus parameters held directly by a module
    outside the block, such as a ViT's class token. A view like ``Blocks``: parameter names do not change."""

    def __init__(self, modules: list[nn.Module], loose: list[nn.Parameter]) -> None:
        super().__init__(modules)
        object.__setattr__(self, "loose", loose)

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        seen: set[int] = set()
        for p in [*super().parameters(recurse), *self.loose]:
            if id(p) not in seen:
                seen.add(id(p))
                yield p

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):  # type: ignore[override]
        yield from super().named_parameters(prefix, recurse, remove_duplicate)
        for i, p in enumerate(self.loose):
            yield f"{prefix}loose.{i}", p

    def requires_grad_(self, requires_grad: bool = True) -> ParamBlock:
        super().requires_grad_(requires_grad)
        for p in self.loose:
            p.requires_grad_(requires_grad)
        return self


def param_blocks(model: nn.Module, groups: list[list[str]]) -> list[tuple[list[str], ParamBlock]]:
    """A block per group of parameter names: the largest submodules whose parameters all lie in the group, and
    the group's other parameters as loose ones. Returned with the block's owners (module or parameter names)."""
    group_of = {name: i for i, names in enumerate(groups) for name in names}
    members: list[list[tuple[str, nn.Module]]] = [[] for _ in groups]
    taken: set[str] = set()  # names of modules inside a member, which a member already covers
    for mod_name, module in model.named_modules():
        if not mod_name:
            continue
        if mod_name.rpartition(".")[0] in taken:
            taken.add(mod_name)
            continue
        ids = {group_of.get(f"{mod_name}.{n}") for n, _ in module.named_parameters()}
        if len(ids) == 1 and None not in ids:
            members[ids.pop()].append((mod_name, module))
            taken.add(mod_name)
    loose: list[list[tuple[str, nn.Parameter]]] = [[] for _ in groups]
    for name, p in model.named_parameters():
        if name.rpartition(".")[0] not in taken and name in group_of:
            loose[group_of[name]].append((name, p))
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}

    def first_param(owner: str) -> int:
        return min((i for n, i in order.items() if n == owner or n.startswith(f"{owner}.")), default=len(order))

    out = []
    for mods, params in zip(members, loose, strict=True):
        owners = sorted([n for n, _ in mods] + [n for n, _ in params], key=first_param)
        out.append((owners, ParamBlock([m for _, m in mods], [p for _, p in params])))
    return out


def named_groups(model: nn.Module, groups: list[list[str]]) -> list[tuple[str, list[str]]]:
    """Each group with a name saying what it holds (``layer1``, ``conv1+bn1``, ``blocks.11+norm``)."""
    labels = [
        "+".join(owners) if len(owners) <= 3 else f"{owners[0]}+…+{owners[-1]}"
        for owners, _ in param_blocks(model, groups)
    ]
    return list(zip(labels, groups, strict=True))


# --------------------------------------------------------------------------------------------- inputs

# torch.nn.functional.interpolate modes for PIL's / timm's interpolation names (lanczos and hamming have no
# tensor counterpart; the nearest filters by shape are used).
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "nearest-exact": "nearest-exact",
          "box": "area", "area": "area", "lanczos": "bicubic", "hamming": "bilinear", "random": "bilinear"}  # fmt: skip


@dataclass(frozen=True)
class ImageInput:
    """What the model takes, from its family's data config: images of ``size`` (height, width) resized with
    ``interpolation`` (antialiased where the mode allows it), normalised per channel with ``mean`` and ``std``.
    The encoder normalises (``image_encoder``), the backbone resizes (``ImageBackbone``)."""

    family: str
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    @classmethod
    def of(cls, family: str, data: dict[str, Any]) -> ImageInput:
        """From a data config: ``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``."""
        size = data["input_size"]
        return cls(
            family,
            (int(size[-2]), int(size[-1])),
            tuple(float(m) for m in data["mean"]),
            tuple(float(s) for s in data["std"]),
            str(data["interpolation"]),
        )

    @property
    def mode(self) -> str:
        return _MODES.get(self.interpolation, "bilinear")

    @property
    def smooth(self) -> bool:
        """Whether the mode is one that antialias and align_corners exist for (bilinear, bicubic)."""
        return self.mode in ("bilinear", "bicubic")

    def resize(self, x: Tensor) -> Tensor:
        """A batch (N, C, H, W) at the input size, on its own device; as it is when it has that size already.
        Values are not clamped (bicubic may overshoot the input's range, as it did when inputs were resized at
        storage)."""
        if tuple(x.shape[-2:]) == self.size:
            return x
        extra = {"antialias": True, "align_corners": False} if self.smooth else {}
        return F.interpolate(x, size=self.size, mode=self.mode, **extra)

    def identity(self) -> dict[str, Any]:
        """Everything the model's inputs depend on: the normalisation the encoder applies and the resize the
        backbone applies."""
        return {
            "family": self.family,
            "input_size": [3, *self.size],
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize": f"{self.mode}{' antialiased' if self.smooth else ''}",
        }


def image_encoder(image: ImageInput) -> InputEncoder:
    """Image arrays (N, C, H, W), C 1 or 3, at their own size: grey replicated to 3 channels, normalised per
    channel. The resize to the input size is the backbone's (``ImageBackbone.forward``)."""
    mean = torch.tensor(image.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(image.std, dtype=torch.float32).view(1, -1, 1, 1)

    def encode(x: np.ndarray) -> Tensor:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(
                f"model.arch={image.family}: takes images shaped (N, channels, height, width) with 1 or 3 channels; "
                f"this data has examples shaped {tuple(x.shape[1:])}"
            )
        pixels = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return (pixels.expand(-1, 3, -1, -1) - mean) / std

    return InputEncoder(("array",), encode, image.identity())


class ImageBackbone(nn.Module):
    """An image model whose forward gives pooled features of a batch of encoded images (``image_encoder``),
    each batch resized to the model's input size first; with its blocks as groups of parameter names. The blocks
    are views built on each call, so they follow the model through ``to()``, copies and reloads."""

    def __init__(
        self, model: nn.Module, groups: list[tuple[str, list[str]]], feature_dim: int, image: ImageInput
    ) -> None:
        super().__init__()
        self.model = model
        self.groups = groups
        self.feature_dim = feature_dim
        self.image = image  # a plain attribute: no parameters, no buffers, nothing in the state dict

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.image.resize(x))

    def blocks(self) -> list[nn.Module]:
        return [block for _, block in param_blocks(self.model, [names for _, names in self.groups])]

    def block_names(self) -> list[str]:
        return [label for label, _ in self.groups]
