"""``torchvision``: an image classifier from torchvision (``model.name``, e.g. ``resnet18``), created with
``torchvision.models.get_model(name, weights=None)``, its final linear classifier replaced by the identity so that
its forward gives pooled features (layers before it, such as MobileNetV3's pre-logits or ConvNeXt's head norm,
stay). Families: resnet*, resnext*, wide_resnet*, mobilenet_v2, mobilenet_v3_*, efficientnet_*, convnext_*,
vit_*; the others (their classifiers and stages differ) are refused with a pointer to timm.

Weights: ``model.weights`` (a local safetensors file, or a torch file loadable with ``weights_only=True``, the
classifier's keys ignored), else with ``model.pretrained`` the model's DEFAULT weights enum, downloaded by
torch.hub (or read from its cache) and loaded weights-only, else a random initialisation from a fixed seed.

Blocks, bottom to top: resnet: the stem (conv1, bn1), layer1..layer4; mobilenet / efficientnet / convnext: each
child of ``features``, then the rest of the classifier when it has parameters; vit: the embeddings (conv_proj,
class token, position embedding), each encoder layer, the final LayerNorm.

Inputs follow the DEFAULT weights' ``transforms()`` metadata (crop size, mean, std, interpolation) whether or
not those weights are loaded, so one architecture always sees one preprocessing; ImageNet's mean and std at 224
pixels for a model without weights. Grey images are replicated to 3 channels and normalised when tasks are
built; each batch is resized straight to the crop size in the backbone's forward (no resize-then-crop, which
would cut the borders of small whole images).

What torchvision and timm share (weights files, block views, the image encoder and backbone) is in
``research.models.adapters.images``; this file holds what is torchvision's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import Tensor, nn

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
    hub_offline,
    image_encoder,
    load_weights,
    read_weights,
    unknown_name,
    unreachable_weights,
    weights_file,
    weights_origin,
)

FAMILIES = ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "convnext", "vit_")
IMAGENET = {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@register_adapter
class TorchvisionAdapter(Adapter):
    name = "torchvision"
    keys = ("name", "weights", "pretrained")
    external = True
    slow_example = True  # 224-pixel inputs: every method on it takes minutes on two cores
    summary = "a torchvision image classifier (model.name), pooled features; its DEFAULT weights or model.weights"

    def check(self, cfg: ModelConfig) -> None:
        tv_name(cfg)
        weights_file(cfg)

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, int]:
        from torchvision import models

        name = tv_name(cfg)
        file = weights_file(cfg)
        default = default_weights(name)
        image = tv_input(name)
        # A ViT's position embedding is sized for its DEFAULT weights' resolution (vit_h_14: 518), which is also
        # the resolution the backbone resizes to.
        kwargs = {"image_size": image.size[-1]} if name.startswith("vit_") else {}
        with fixed_rng():
            model = models.get_model(name, weights=None, **kwargs)
        classifier, dim = strip_classifier(model)
        if file is not None:
            load_weights(model, read_weights(file), str(file), [classifier])
        elif cfg.pretrained:
            if default is None:
                raise ConfigError(
                    f"model.pretrained: torchvision has no pretrained weights for '{name}'; give model.weights or "
                    "set model.pretrained=false"
                )
            load_weights(model, download(name, default), str(default), [classifier], key="model.pretrained")
        model.train()
        return ImageBackbone(model, tv_groups(model), dim, image), dim

    def input_encoder(self, cfg: ModelConfig) -> InputEncoder:
        return image_encoder(tv_input(tv_name(cfg)))

    def fingerprint(self, cfg: ModelConfig) -> dict[str, str]:
        import torchvision

        file = weights_file(cfg)
        if file is not None:
            from research.data.fingerprint import path_fingerprint

            return {"weights": path_fingerprint(file)}
        name = tv_name(cfg)
        default = default_weights(name)
        if cfg.pretrained and default is not None:
            return {"model": f"torchvision:{default} ({default.url})"}  # the file name carries its hash
        # Random weights are what this torchvision version's initialisation code draws from seed 0.
        return {"model": f"torchvision {torchvision.__version__}:{name} (random init)"}

    def describe(self, cfg: ModelConfig, backbone: nn.Module) -> dict[str, Any]:
        assert isinstance(backbone, ImageBackbone)
        name = tv_name(cfg)
        return {
            "arch": self.name,
            "name": name,
            "weights": weights_origin(cfg, f"torchvision pretrained ({default_weights(name)})"),
            "class": type(backbone.model).__name__,
            "features": backbone.feature_dim,
            "parameters": sum(p.numel() for p in backbone.parameters()),
            "blocks": backbone.block_names(),
            "input": self.input_encoder(cfg).identity,
        }

    def example(self, workdir: Path) -> Example:
        """torchvision's smallest supported classifier, MobileNetV3-small (2.5M parameters at 224 pixels),
        randomly initialised so nothing downloads, on the 8×8 digits resized to its input."""
        return digits_example({"arch": self.name, "name": "mobilenet_v3_small", "pretrained": False})


def tv_name(cfg: ModelConfig) -> str:
    """``model.name`` if it is a torchvision classifier of a supported family, else ConfigError."""
    import torchvision
    from torchvision import models

    name = cfg.name or ""
    classifiers = models.list_models(module=torchvision.models)
    if name not in classifiers:
        raise unknown_name("torchvision", name, classifiers, "torchvision.models.list_models()")
    if not name.startswith(FAMILIES):
        import timm

        alternative = f"model.arch=timm (timm has {name})" if timm.is_model(name) else "model.arch=timm"
        raise ConfigError(
            f"model.name: torchvision's '{name}' is not supported by model.arch=torchvision (it knows the classifier "
            f"and blocks of {', '.join(f + '*' for f in FAMILIES)}); use {alternative} or model.arch=custom"
        )
    return name


def default_weights(name: str) -> Any:
    """The DEFAULT member of the model's weights enum (metadata only: nothing is downloaded), or None."""
    from torchvision import models

    try:
        return models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None


def data_config(name: str) -> dict[str, Any]:
    weights = default_weights(name)
    transform = weights.transforms() if weights is not None else None
    crop = getattr(transform, "crop_size", None)
    if transform is None or not crop:
        return {**IMAGENET, "interpolation": "bilinear"}
    mode = getattr(transform, "interpolation", None)
    return {
        "input_size": (3, crop[0], crop[-1]),
        "mean": tuple(transform.mean),
        "std": tuple(transform.std),
        "interpolation": getattr(mode, "value", "bilinear"),
    }


def tv_input(name: str) -> ImageInput:
    """The model's inputs by ``data_config``: what the encoder normalises with and the backbone resizes to."""
    return ImageInput.of("torchvision", data_config(name))


def download(name: str, weights: Any) -> dict[str, Tensor]:
    """The DEFAULT weights' state dict: from torch.hub's cache, else downloaded (hash checked); loaded
    weights-only either way, where torchvision's own loading would unpickle the file."""
    from torch.hub import get_dir, load_state_dict_from_url

    cached = Path(get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not cached.is_file() and hub_offline():
        raise unreachable_weights("torchvision", name, weights.url, None)
    try:
        return load_state_dict_from_url(
            weights.url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except OSError as err:  # no network, DNS, HTTP errors (URLError is an OSError)
        raise unreachable_weights("torchvision", name, weights.url, err) from None
    except Exception as err:  # noqa: BLE001 - a corrupt or pickle-bearing download: refuse, never execute
        from research.training.checkpoints import weights_only_failure

        why = weights_only_failure(err)
        raise ConfigError(f"model.pretrained: {cached} cannot be loaded safely (weights only): {why}") from None


def _classifier_path(model: nn.Module) -> str:
    """Where the final linear classifier sits: ``fc``, ``classifier.<i>`` (its last Linear) or ``heads.head``."""
    from torchvision.models import ResNet, VisionTransformer

    if isinstance(model, ResNet):
        return "fc"
    if isinstance(model, VisionTransformer):
        return "heads.head"
    head = model.get_submodule("classifier")
    last = [name for name, module in head.named_children() if isinstance(module, nn.Linear)][-1]
    return f"classifier.{last}"


def strip_classifier(model: nn.Module) -> tuple[str, int]:
    """Replace the final linear classifier by the identity; its path and input width (the feature width)."""
    path = _classifier_path(model)
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    linear = getattr(parent, attr)
    assert isinstance(linear, nn.Linear), f"{path} of {type(model).__name__} is {type(linear).__name__}"
    setattr(parent, attr, nn.Identity())
    return path, int(linear.in_features)


def tv_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The blocks (see the module docstring) as groups of parameter names."""
    from torchvision.models import ResNet, VisionTransformer

    if isinstance(model, ResNet):
        prefixes = [("stem", ["conv1", "bn1"])] + [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)]
    elif isinstance(model, VisionTransformer):
        prefixes = [("embeddings", ["conv_proj", "class_token", "encoder.pos_embedding"])]
        layers = [n for n, _ in model.encoder.layers.named_children()]
        prefixes += [(f"layer_{i}", [f"encoder.layers.{n}"]) for i, n in enumerate(layers)]
        prefixes.append(("norm", ["encoder.ln", "heads"]))  # heads: a pre-logits layer, when the model has one
    else:
        prefixes = [(f"features.{n}", [f"features.{n}"]) for n, _ in model.features.named_children()]
        prefixes.append(("head", ["classifier"]))
    groups: list[tuple[str, list[str]]] = [(label, []) for label, _ in prefixes]
    for name, _ in model.named_parameters():
        owner = [
            i for i, (_, under) in enumerate(prefixes) if any(name == u or name.startswith(f"{u}.") for u in under)
        ]
        if not owner:
            raise ConfigError(f"model.name: {type(model).__name__} has a parameter '{name}' in no known block")
        groups[owner[0]][1].append(name)
    return [(label, names) for label, names in groups if names]
