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
grey images replicated to 3 channels and normalised with its mean and std when tasks are built, each batch
resized to its input size with its interpolation (antialiased) in the backbone's forward
(``research.models.adapters.images``). The centre crop of timm's eval transform is not applied: the sources
here are whole small images, and a crop would cut their borders.

What timm and torchvision share (weights files, block views, the image encoder and backbone) is in
``research.models.adapters.images``; this file holds what is timm's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from research.config import ModelConfig
from research.errors import ConfigError
from research.models.adapters.base import (
    Adapter,
    Example,
    InputEncoder,
    digits_example,
    fixed_rng,
    register_adapter,
)
from research.models.adapters.images import (
    ImageBackbone,
    ImageInput,
    image_encoder,
    load_weights,
    named_groups,
    read_weights,
    unknown_name,
    unreachable_weights,
    weights_file,
    weights_origin,
)


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
        if pretrained and _hub_source(name) is None:
            raise ConfigError(
                f"model.pretrained: timm has no pretrained weights for '{name}'; give a local weights file with "
                "model.weights, or set model.pretrained=false for randomly initialised weights"
            )
        with fixed_rng():
            try:
                model = timm.create_model(name, pretrained=pretrained, num_classes=0)
            except (OSError, *_hub_errors()) as err:  # no network, not in the cache, HTTP errors
                if not pretrained:
                    raise
                raise unreachable_weights("timm", name, str(_hub_source(name)), err) from None
        if file is not None:
            load_weights(model, read_weights(file), str(file), _classifier_prefixes(model))
        model.train()
        dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        return ImageBackbone(model, named_groups(model, timm_groups(model)), dim, timm_input(name)), dim

    def input_encoder(self, cfg: ModelConfig) -> InputEncoder:
        return image_encoder(timm_input(timm_name(cfg)))

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

    def example(self, workdir: Path) -> Example:
        """timm's ``test_resnet`` (a resnet made for timm's own tests, 0.37M parameters, 160 pixels), randomly
        initialised so nothing downloads, on the 8×8 digits resized to its input."""
        return digits_example({"arch": self.name, "name": "test_resnet", "pretrained": False})


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


def timm_input(name: str) -> ImageInput:
    """The model's inputs by its data config: what the encoder normalises with and the backbone resizes to."""
    return ImageInput.of("timm", timm_data_config(name))


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


def _hub_source(name: str) -> str | None:
    """Where timm's pretrained weights of the name come from (a hub id, a URL), None when it has none."""
    pretrained_cfg = _pretrained_cfg(name)
    if pretrained_cfg is None:
        return None
    return pretrained_cfg.hf_hub_id or pretrained_cfg.url or pretrained_cfg.file or None


def _hub_errors() -> tuple[type[Exception], ...]:
    try:
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        return ()
    return (HfHubHTTPError,)
