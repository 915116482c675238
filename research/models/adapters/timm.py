"""``timm``: an image model from timm (``model.name``, e.g. ``resnet18``, ``vit_small_patch16_224``), created with
``timm.create_model(name, num_classes=0)``, so that its forward ends in timm's own pooled features (the
classifier removed; a pre-logits layer, where the model has one, stays).

Weights: ``model.weights`` (a local safetensors file, or a torch file loadable with ``weights_only=True``) is
loaded strictly into the model, classifier keys in the file ignored; else, with ``model.pretrained`` (the
default), timm's pretrained weights from the hub or its local cache (``HF_HUB_OFFLINE=1`` is respected); else a
random initialisation drawn from a fixed seed, so every build of one config is the same model.

Blocks, bottom to top, are timm's own coarse grouping (``model.group_matcher(coarse=True)``, the grouping timm's
layer-wise learning-rate decay uses): the stem, each stage, and the head-pre/final norm as timm places it.

Inputs follow timm's data config for the model (``timm.data.resolve_data_config`` of its pretrained config):
each image resized to its input size with its interpolation (antialiased), grey images replicated to 3
channels, then normalised with its mean and std. The centre crop of timm's eval transform is not applied:
the sources here are whole small images, and a crop would cut their borders.

The helpers below the adapter (weights files, block views, the image encoder) are shared with ``torchvision``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from research.config import ModelConfig
from research.errors import ConfigError
from research.models.adapters.base import Adapter, Blocks, InputEncoder, register_adapter


@register_adapter
class TimmAdapter(Adapter):
    name = "timm"
    keys = ("name", "weights", "pretrained")
    external = True
    summary = "a timm image model (model.name), pooled features; timm's pretrained weights or model.weights"

    def check(self, cfg: ModelConfig) -> None:
        timm_name(cfg)
        weights_file(cfg)

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, int]:
        import timm

        name = timm_name(cfg)
        file = weights_file(cfg)
        pretrained = cfg.pretrained and file is None
        # Random weights from a fixed stream: the pretraining stage caches heads trained on this backbone's
        # features and fine-tuning rebuilds it, so two builds of one config must be the same model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                model = timm.create_model(name, pretrained=pretrained, num_classes=0)
            except (OSError, RuntimeError, *_hub_errors()) as err:
                if not pretrained:
                    raise
                raise unreachable_weights("timm", name, _hub_source(name), err) from None
        if file is not None:
            load_weights(model, read_weights(file), str(file), _classifier_prefixes(model))
        model.train()
        dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        return ImageBackbone(model, named_groups(model, timm_groups(model)), dim), dim

    def input_encoder(self, cfg: ModelConfig) -> InputEncoder:
        data = timm_data_config(timm_name(cfg))
        return image_encoder(self.name, data["input_size"], data["mean"], data["std"], data["interpolation"])

    def fingerprint(self, cfg: ModelConfig) -> dict[str, str]:
        import timm

        file = weights_file(cfg)
        if file is not None:
            from research.data.fingerprint import path_fingerprint

            return {"weights": path_fingerprint(file)}
        name = timm_name(cfg)
        if cfg.pretrained:
            return {"model": f"timm:{_hub_source(name)}"}
        # Random weights are what this timm version's initialisation code draws from seed 0.
        return {"model": f"timm {timm.__version__}:{name} (random init)"}

    def describe(self, cfg: ModelConfig, backbone: nn.Module) -> dict[str, Any]:
        assert isinstance(backbone, ImageBackbone)
        model = backbone.model
        pool = getattr(model, "global_pool", None)
        return {
            "arch": self.name,
            "name": cfg.name,
            "weights": weights_origin(cfg, f"timm pretrained ({_hub_source(timm_name(cfg))})"),
            "class": type(model).__name__,
            "pooling": str(getattr(pool, "pool_type", pool)) if pool is not None else None,
            "features": backbone.feature_dim,
            "parameters": sum(p.numel() for p in backbone.parameters()),
            "blocks": backbone.block_names(),
            "input": self.input_encoder(cfg).identity,
        }


# --------------------------------------------------------------------------------------------- timm specifics


def timm_name(cfg: ModelConfig) -> str:
    """``model.name`` if timm knows it (an architecture, optionally with a pretrained tag), else ConfigError."""
    import timm

    name = cfg.name or ""
    if not timm.is_model(name):
        raise unknown_name("timm", name, timm.list_models(), "timm.list_models()")
    if "." in name and _pretrained_cfg(name) is None:
        arch = name.partition(".")[0]
        tags = timm.list_pretrained(f"{arch}.*")[:6]
        raise ConfigError(f"model.name: timm has no pretrained tag '{name}'; its tags: {', '.join(tags) or '(none)'}")
    return name


def timm_data_config(name: str) -> dict[str, Any]:
    """timm's data config for the model, from its pretrained config by name (the model itself is built later);
    a model without one is created on the meta device, which allocates nothing, to read it."""
    import timm
    from timm.data import resolve_data_config, resolve_model_data_config

    pretrained_cfg = _pretrained_cfg(name)
    if pretrained_cfg is not None:
        return resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict())
    with torch.device("meta"):
        return resolve_model_data_config(timm.create_model(name, pretrained=False, num_classes=0))


def timm_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per block, bottom to top, from timm's coarse group matcher. Parameters it matches nowhere
    (a head-pre norm) form the top group, as in timm. A model without a matcher gets one group per child."""
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher", None)
    try:
        groups = group_parameters(model, matcher(coarse=True)) if callable(matcher) else None
    except NotImplementedError:
        groups = None
    if groups:
        return [list(names) for _, names in sorted(groups.items()) if names]
    by_child: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        by_child.setdefault(name.partition(".")[0] if "." in name else "", []).append(name)
    root = by_child.pop("", [])  # parameters held by the model itself (a class token) go with the first child
    listed = list(by_child.values()) or [[]]
    listed[0] = root + listed[0]
    return [names for names in listed if names]


def _classifier_prefixes(model: nn.Module) -> list[str]:
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return [classifier] if isinstance(classifier, str) else list(classifier)


def _pretrained_cfg(name: str) -> Any:
    """timm's pretrained config of a name (its default tag when none is given); None when there is none."""
    import timm

    try:
        return timm.get_pretrained_cfg(name)
    except RuntimeError:  # an architecture with a tag it does not have
        return None


def _hub_source(name: str) -> str:
    pretrained_cfg = _pretrained_cfg(name)
    if pretrained_cfg is None:
        return name
    return pretrained_cfg.hf_hub_id or pretrained_cfg.url or name


def _hub_errors() -> tuple[type[Exception], ...]:
    try:
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        return ()
    return (HfHubHTTPError,)


# --------------------------------------------------------------------------------------------- shared helpers


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

    try:
        state = read_state_dict(file)
    except ConfigError as err:
        raise ConfigError(str(err).replace("pretrain.checkpoint:", "model.weights:", 1)) from None
    # A model trained under DataParallel / DDP saves every key under "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: dict[str, Tensor], source: str, classifier: list[str]) -> None:
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
        raise ConfigError(
            f"model.weights: {source} does not fit {type(model).__name__} (model.name): {'; '.join(parts)}"
        )
    model.load_state_dict(state, strict=True)


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


class ImageBackbone(nn.Module):
    """An image model whose forward gives pooled features, with its blocks as groups of parameter names. The
    blocks are views built on each call, so they follow the model through ``to()``, copies and reloads."""

    def __init__(self, model: nn.Module, groups: list[tuple[str, list[str]]], feature_dim: int) -> None:
        super().__init__()
        self.model = model
        self.groups = groups
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def blocks(self) -> list[nn.Module]:
        return [block for _, block in param_blocks(self.model, [names for _, names in self.groups])]

    def block_names(self) -> list[str]:
        return [label for label, _ in self.groups]


# torch.nn.functional.interpolate modes for PIL's / timm's interpolation names (lanczos and hamming have no
# tensor counterpart; the nearest filters by shape are used).
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "nearest-exact": "nearest-exact",
          "box": "area", "area": "area", "lanczos": "bicubic", "hamming": "bilinear", "random": "bilinear"}  # fmt: skip
_CHUNK = 256  # images resized at a time: the peak memory is the output plus one chunk


def image_encoder(family: str, input_size: tuple[int, ...], mean: Any, std: Any, interpolation: str) -> InputEncoder:
    """Image arrays (N, C, H, W), C 1 or 3, as the model's inputs: resized to ``input_size`` (C, H, W),
    grey replicated to 3 channels, normalised per channel."""
    size = (int(input_size[-2]), int(input_size[-1]))
    mode = _MODES.get(str(interpolation), "bilinear")
    smooth = mode in ("bilinear", "bicubic")  # antialias and align_corners exist for these modes only
    mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor([float(s) for s in std], dtype=torch.float32).view(1, -1, 1, 1)

    def encode(x: np.ndarray) -> Tensor:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(
                f"model.arch={family}: takes images shaped (N, channels, height, width) with 1 or 3 channels; "
                f"this data has examples shaped {tuple(x.shape[1:])}"
            )
        out = torch.empty((len(x), 3, *size), dtype=torch.float32)
        for start in range(0, len(x), _CHUNK):
            part = torch.from_numpy(np.ascontiguousarray(x[start : start + _CHUNK], dtype=np.float32))
            if tuple(part.shape[-2:]) != size:
                extra = {"antialias": True, "align_corners": False} if smooth else {}
                part = F.interpolate(part, size=size, mode=mode, **extra)
            out[start : start + len(part)] = (part.expand(-1, 3, -1, -1) - mean_t) / std_t
        return out

    identity = {
        "family": family,
        "input_size": [3, *size],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "interpolation": str(interpolation),
        "resize": f"{mode}{' antialiased' if smooth else ''}",
    }
    return InputEncoder(("array",), encode, identity)
