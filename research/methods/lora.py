"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), through peft: the pretrained
weights stay frozen and each adapted layer learns a low-rank update of its weight, ΔW = (α/r)·B·A."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from research.errors import ConfigError
from research.methods.base import FinetuneContext, Method, MethodConfig, TrainStep
from research.methods.registry import register
from research.models.adapters.base import blocks_of, check_block_cover
from research.models.multihead import MultiHeadNet

ADAPTER = "default"  # peft's adapter name: parameters are named ``<layer>.lora_A.default.weight``
KEY = "method.target_modules"


class LoRAConfig(MethodConfig):
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, description="rank r of the update ΔW = (α/r)·B·A (A: r × fan-in, B: fan-out × r)")
    alpha: float = Field(16.0, gt=0, description="α in the scaling α/r of ΔW = (α/r)·B·A (peft's lora_alpha)")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the adapter's input, (α/r)·B·A·dropout(x), in training only"
    )
    target_modules: list[str] | str | None = Field(
        None,
        description=(
            "layers that get an adapter, named inside the backbone as peft matches them (a list: names or dotted "
            "suffixes such as [query, value]; a string: a regular expression over the whole name, or all-linear); "
            "null: the family's default (hf: peft's for the model type, query/value for BERT; otherwise every "
            "nn.Linear and ungrouped convolution)"
        ),
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="biases that train too (peft's bias): none, every backbone bias, the adapted layers'"
    )
    merge: bool = Field(
        True,
        description="evaluate each adapted layer with its merged weight W + (α/r)·B·A (else W·x + (α/r)·B·A·x)",
    )
    l2sp_alpha: float = Field(
        0.0,
        ge=0,
        description="L2-SP on the adapted layers' effective weights: l2sp_alpha/2 Σ ‖ΔW‖² = ‖W − W₀‖²/2 (0: off)",
    )


@register
class LoRA(Method):
    """LoRA: each adapted layer computes W₀·x + (α/r)·B·A·x with its pretrained weight W₀ frozen (Hu et al. 2021).

    Nothing is anchored: the base weights cannot move at all, and what trains is the low-rank factors A (r ×
    fan-in, Kaiming-uniform as in peft) and B (fan-out × r, zero; for an embedding peft zeroes A instead), with
    the new task's head as in every method (the other heads frozen). ΔW = 0 makes step 0 exactly the pretrained
    model. The adapters are peft's own (``LoraConfig``: r, lora_alpha, lora_dropout, target_modules, bias;
    injected with ``peft.inject_adapter_in_model`` into the backbone, A drawn from the run's seed), so parameters
    are named ``<layer>.base_layer.weight`` and ``<layer>.lora_A.default.weight`` as in peft. They live inside the
    backbone's blocks, so ``train.lr``, ``train.backbone_lr_scale`` and ``train.lr_decay`` give them their
    block's rate, like the weights they adapt. Only what peft (and ``bias``) leaves trainable trains; BatchNorm
    and dropout of a block that holds an adapter run in training mode, as in any peft training (a block with
    none stays in eval mode, like every frozen block here).

    Targets (``target_modules``, null): for ``hf``, peft's own default for the model type
    (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``: query and value for BERT, as in Hu et al.), every
    nn.Linear for a type peft has none for; for every other family (mlp, cnn, custom, timm, torchvision) every
    nn.Linear and every nn.Conv1d/2d/3d with groups = 1, dilation 1 and zero padding (peft's conv LoRA: A a
    convolution with the layer's kernel, B a 1×1 one), leaving depthwise and dilated convolutions, embeddings and
    the linear layers inside an nn.MultiheadAttention (whose weights the attention reads directly, so an adapter
    there would never run) as they are. Biderman et al. 2024 ("LoRA Learns Less and Forgets Less") adapt every
    linear layer: ``target_modules=all-linear``. A name that matches nothing, or a layer LoRA cannot adapt, is a
    config error listing the backbone's adaptable layers.

    ``merge``: at every evaluation (the model in eval mode: step 0, every ``eval.every_n_steps``, the end, and
    ``finish`` measurements), each adapted layer runs as its merged weight W₀ + (α/r)·B·A, the single layer
    peft's ``merge_and_unload`` gives for deployment, computed on the fly and never written into the base
    weight, which stays bit-identical throughout; false keeps the separate path of training, W₀·x + (α/r)·B·A·x.
    Both are the same function up to float rounding; training always takes the separate path.

    In a sequence one adapter serves every task: injected at the first, it goes on training (not merged away,
    not re-initialised) while each task brings its head. Correct under DDP: every process injects the same
    seeded adapter and trains the same parameters throughout. With ``l2sp_alpha`` > 0 it is combined with L2-SP
    (Li et al. 2018) on the effective weights: since W = W₀ + ΔW with W₀ frozen, L2-SP's pull ‖W − W₀‖² toward the
    pretrained weights is ‖ΔW‖² = ‖(α/r)·B·A‖² summed over the adapted layers, logged as ``train_loss_l2sp``
    (the new head is not penalised). Other regularizers (EWC on A and B) are not offered: their importance would
    be of the factors, not of the weights a forgetting study anchors. ``summary.json``'s ``method_info`` gives
    r, α, the layers adapted, trainable and total parameter counts (at the start of the last task trained), and
    ‖ΔW‖ per block at the end (``delta_weight``: the change of the block's effective weights; diagnostics.parquet's
    weight drift of such a block is that of its parameters, the frozen base and A and B).
    """

    name = "lora"
    Config = LoRAConfig
    config: LoRAConfig
    supports_sequences = True
    supports_ddp = True
    why_no_neutral = "no r or α makes a low-rank update of frozen weights full fine-tuning: W₀ never trains"

    def configure_trainable(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        backbone = model.backbone
        state = getattr(backbone, "lora_state", None)
        if state is None:  # the first task; later tasks (and a resume's replay of them) keep the adapter
            targets = resolve_targets(backbone, self.config.target_modules)
            state = inject(backbone, self.config, targets, ctx.seed)
        for name, p in backbone.named_parameters():  # the start of every task set the whole backbone trainable
            p.requires_grad_(name in state.trainable)
        for layer in lora_layers(backbone).values():
            layer.merge_for_evaluation = self.config.merge

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        state: LoRAState = model.backbone.lora_state
        self.targets = list(state.targets)
        self.counts = parameter_counts(model)
        self.delta_weight: dict[str, dict[str, float]] = {}

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, torch.Tensor]:
        if self.config.l2sp_alpha == 0:
            return {}
        return {"l2sp": 0.5 * self.config.l2sp_alpha * delta_squared_norm(model.backbone)}

    def finish(
        self, model: MultiHeadNet, ctx: FinetuneContext, score: Callable[[MultiHeadNet], dict[str, dict[str, float]]]
    ) -> list[dict[str, Any]]:
        self.delta_weight = delta_weight_by_block(model)
        return []

    def info(self) -> dict[str, Any]:
        return {
            "r": self.config.r,
            "alpha": self.config.alpha,
            "scaling": self.config.alpha / self.config.r,
            "dropout": self.config.dropout,
            "bias": self.config.bias,
            "merge": self.config.merge,
            "l2sp_alpha": self.config.l2sp_alpha,
            "target_modules": self.config.target_modules,  # as given; null: the family's default
            "matched_modules": self.targets,
            "parameters": self.counts,
            "delta_weight": self.delta_weight,
        }


# ------------------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class LoRAState:
    """What the injection left on the backbone (a plain attribute, so it follows copies of the model): the
    adapted layers' names and the names of the backbone parameters that train."""

    targets: tuple[str, ...]
    trainable: frozenset[str]


def _transformers_conv1d() -> tuple[type, ...]:
    """transformers' Conv1D (GPT-2's linear layer, weight stored transposed), when transformers is imported."""
    import sys

    utils = sys.modules.get("transformers.pytorch_utils")
    return (utils.Conv1D,) if utils is not None else ()


def _linear_types() -> tuple[type, ...]:
    return (nn.Linear, *_transformers_conv1d())


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def unsupported(name: str, module: nn.Module, parents: dict[str, nn.Module]) -> str | None:
    """Why LoRA cannot adapt this module, or None when it can."""
    kind = type(module).__name__
    if not isinstance(module, (*_linear_types(), nn.Embedding, *CONVS)):
        return f"a {kind}, not a layer LoRA adapts (nn.Linear, nn.Conv1d/2d/3d, nn.Embedding)"
    if isinstance(parents.get(name.rpartition(".")[0]), nn.MultiheadAttention):
        return "a projection that its nn.MultiheadAttention reads directly, so an adapter there would never run"
    if isinstance(module, CONVS):
        if module.groups != 1:
            return f"a grouped convolution (groups={module.groups}), which peft's LoRA cannot merge"
        if any(d != 1 for d in module.dilation):
            return f"a dilated convolution (dilation={module.dilation}), which peft's conv LoRA does not follow"
        if module.padding_mode != "zeros":
            return f"a convolution with padding_mode={module.padding_mode!r}, which peft's conv LoRA does not follow"
    return None


def adaptable_layers(backbone: nn.Module) -> dict[str, nn.Module]:
    """Every layer of the backbone LoRA can adapt, by name inside the backbone (what target_modules matches)."""
    modules = dict(backbone.named_modules())
    return {n: m for n, m in modules.items() if n and unsupported(n, m, modules) is None}


def default_targets(backbone: nn.Module) -> list[str]:
    """The family's default (see the class docstring)."""
    from research.models.adapters.hf import HFBackbone

    adaptable = adaptable_layers(backbone)
    if isinstance(backbone, HFBackbone):
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        suffixes = PEFT_DEFAULTS.get(getattr(backbone.encoder.config, "model_type", None))
        if suffixes:
            return [n for n in adaptable if _matches_list(suffixes, n)]
        return [n for n, m in adaptable.items() if isinstance(m, _linear_types())]
    return [n for n, m in adaptable.items() if isinstance(m, (*_linear_types(), *CONVS))]


def _matches_list(entries: list[str], name: str) -> bool:
    """peft's rule for a list of target modules: the whole name, or a dotted suffix of it."""
    return any(name == e or name.endswith(f".{e}") for e in entries)


def resolve_targets(backbone: nn.Module, setting: list[str] | str | None) -> list[str]:
    """The names of the layers to adapt, matched as peft matches ``target_modules``. Raises ConfigError (naming
    ``method.target_modules`` and the adaptable layers) for a name that matches nothing or a layer LoRA cannot
    adapt."""
    if setting is None:
        targets = default_targets(backbone)
        if not targets:
            raise ConfigError(f"{KEY}: the backbone has no layer LoRA can adapt by default; {_listing(backbone)}")
        return targets
    modules = {n: m for n, m in backbone.named_modules() if n}
    if isinstance(setting, str) and setting.lower() == "all-linear":
        matched = [n for n, m in adaptable_layers(backbone).items() if isinstance(m, _linear_types())]
        if not matched:
            raise ConfigError(f"{KEY}: all-linear, but the backbone has no linear layer; {_listing(backbone)}")
        return matched
    if isinstance(setting, str):
        try:
            pattern = re.compile(setting)
        except re.error as err:
            raise ConfigError(f"{KEY}: {setting!r} is not a regular expression ({err})") from None
        matched = [n for n in modules if pattern.fullmatch(n)]
        if not matched:
            raise ConfigError(
                f"{KEY}: the regular expression {setting!r} matches no whole layer name of the backbone; "
                f"{_listing(backbone)}"
            )
    else:
        missing = [e for e in setting if not any(_matches_list([e], n) for n in modules)]
        if missing or not setting:
            what = f"{missing} match no layer" if missing else "[] names no layer"
            raise ConfigError(f"{KEY}: {what} of the backbone; {_listing(backbone)}")
        matched = [n for n in modules if _matches_list(setting, n)]
    refused = [(n, unsupported(n, modules[n], modules)) for n in matched]
    refused = [(n, why) for n, why in refused if why is not None]
    if refused:
        name, why = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise ConfigError(f"{KEY}: {setting!r} matches {name}{more}, {why}; {_listing(backbone)}")
    return matched


def _listing(backbone: nn.Module, limit: int = 16) -> str:
    """The backbone's adaptable layers, for error messages: every name when there are few, else the distinct
    last parts of the names (each a valid list entry) and one full name."""
    names = list(adaptable_layers(backbone))
    if not names:
        return "it has no layer LoRA can adapt (nn.Linear, nn.Conv1d/2d/3d, nn.Embedding)"
    if len(names) <= limit:
        return f"its adaptable layers: {', '.join(names)}"
    leaves = list(dict.fromkeys(n.rpartition(".")[2] for n in names))
    shown = ", ".join(leaves[:limit]) + (", …" if len(leaves) > limit else "")
    return f"its {len(names)} adaptable layers end in: {shown} (e.g. {names[0]})"


# ------------------------------------------------------------------------------------------------ injection


def inject(backbone: nn.Module, config: LoRAConfig, targets: list[str], seed: int) -> LoRAState:
    """peft's LoRA layers on exactly ``targets``, their A drawn from ``seed`` (the global random streams stay as
    they were); the backbone's blocks then still hold every parameter once. Returns the state it leaves on
    ``backbone.lora_state``."""
    from peft import LoraConfig, inject_adapter_in_model

    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        bias=config.bias,
        # Exactly these names (a string is matched against each whole name).
        target_modules="|".join(f"(?:{re.escape(t)})" for t in targets),
    )
    peft_config._register_custom_module(_layer_classes_by_base())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config, backbone, adapter_name=ADAPTER)
    _follow_blocks(backbone)
    check_block_cover(backbone, blocks_of(backbone), KEY)
    trainable = frozenset(n for n, p in backbone.named_parameters() if p.requires_grad)
    state = LoRAState(tuple(targets), trainable)
    backbone.lora_state = state
    return state


def _follow_blocks(backbone: nn.Module) -> None:
    """Blocks that name parameters or hold the modules peft replaced, updated to the adapted layers: an image
    backbone's groups of parameter names (research.models.adapters.images), and the modules ``model.blocks``
    names in a custom model (research.models.adapters.custom). Other families' blocks are the modules that
    contain the adapted layers, which stay the same objects."""
    from research.models.adapters.custom import NamedBlocks
    from research.models.adapters.images import ImageBackbone

    if isinstance(backbone, ImageBackbone):
        backbone.groups = regroup(backbone.model, backbone.groups)
    elif isinstance(backbone, NamedBlocks):
        modules = dict(backbone.module.named_modules())
        backbone._blocks = [modules[n] for n in backbone.names]


def regroup(model: nn.Module, groups: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """Groups of parameter names after injection: a base layer's parameters (``conv1.base_layer.weight``) stay in
    the group of the name they had (``conv1.weight``), and an adapter's go to the group of its layer's weight."""
    group_of = {name: i for i, (_, names) in enumerate(groups) for name in names}
    origin: dict[str, str] = {}
    for layer_name, layer in lora_layers(model).items():
        for name, _ in layer.named_parameters():
            inside = name.removeprefix("base_layer.") if name.startswith("base_layer.") else "weight"
            origin[f"{layer_name}.{name}"] = f"{layer_name}.{inside}"
    regrouped: list[list[str]] = [[] for _ in groups]
    for name, _ in model.named_parameters():
        regrouped[group_of[origin.get(name, name)]].append(name)
    return [(label, names) for (label, _), names in zip(groups, regrouped, strict=True)]


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """peft's LoRA layers in a module, by name."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)}


def delta_squared_norm(backbone: nn.Module) -> torch.Tensor:
    """Σ over adapted layers of ‖ΔW‖² = ‖(α/r)·B·A‖², differentiable in A and B (peft's ``get_delta_weight``)."""
    total = torch.zeros((), device=next(backbone.parameters()).device)
    for layer in lora_layers(backbone).values():
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A or adapter in layer.lora_embedding_A:
                total = total + layer.get_delta_weight(adapter).float().pow(2).sum()
    return total


# ------------------------------------------------------------------------------------------------ merged evaluation


def merged_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The layer as its merged weight W₀ + Σ ΔW over its active adapters: exactly what peft's ``merge()`` writes
    into the base layer (the same ``get_delta_weight``, added to the same weight), applied with the base layer's
    own forward without writing anything."""
    base = layer.get_base_layer()
    weight = base.weight
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A or adapter in layer.lora_embedding_A:
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    return torch.func.functional_call(base, {"weight": weight}, (x, *args), kwargs)


class _MergedEvaluation:
    """Mixed into peft's LoRA layers: in eval mode, with ``merge_for_evaluation`` set, the forward of the merged
    weight; otherwise peft's own forward (the separate path, dropout on the adapter's input in training)."""

    merge_for_evaluation = False

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if (
            self.training  # type: ignore[attr-defined]
            or not self.merge_for_evaluation
            or self.disable_adapters  # type: ignore[attr-defined]
            or self.merged  # type: ignore[attr-defined]
            or kwargs.get("adapter_names") is not None
        ):
            return super().forward(x, *args, **kwargs)  # type: ignore[misc]
        return merged_forward(self, x, *args, **kwargs)


@functools.cache
def _layer_classes() -> dict[str, type]:
    """peft's LoRA layer classes with merged evaluation, built when first needed (importing peft imports
    transformers, seconds that every `research` command would otherwise pay)."""
    from peft.tuners.lora import layer as peft_lora

    classes: dict[str, type] = {}
    for name, base in (
        ("LinearLoRA", peft_lora.Linear),
        ("EmbeddingLoRA", peft_lora.Embedding),
        ("Conv1dLoRA", peft_lora.Conv1d),
        ("Conv2dLoRA", peft_lora.Conv2d),
        ("Conv3dLoRA", peft_lora.Conv3d),
    ):
        classes[name] = type(name, (_MergedEvaluation, base), {"__module__": __name__, "__qualname__": name})

    def conv1d_transformers_init(self: Any, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        # As peft's own dispatch does for transformers' Conv1D: a linear layer with its weight stored transposed.
        classes["LinearLoRA"].__init__(self, base_layer, adapter_name, is_target_conv_1d_layer=True, **kwargs)
        self.fan_in_fan_out = True

    name = "TransformersConv1DLoRA"
    classes[name] = type(
        name,
        (classes["LinearLoRA"],),
        {"__module__": __name__, "__qualname__": name, "__init__": conv1d_transformers_init},
    )
    return classes


def _layer_classes_by_base() -> dict[type, type]:
    """peft's custom-module mapping: base layer type → LoRA layer class (transformers' Conv1D first: it is no
    nn.Linear, but the order keeps any subclass of it off the plain linear path)."""
    classes = _layer_classes()
    mapping: dict[type, type] = {t: classes["TransformersConv1DLoRA"] for t in _transformers_conv1d()}
    mapping.update(
        {
            nn.Linear: classes["LinearLoRA"],
            nn.Embedding: classes["EmbeddingLoRA"],
            nn.Conv1d: classes["Conv1dLoRA"],
            nn.Conv2d: classes["Conv2dLoRA"],
            nn.Conv3d: classes["Conv3dLoRA"],
        }
    )
    return mapping


def __getattr__(name: str) -> type:
    """The layer classes by name (so that pickle finds them in a process that has not built them yet)."""
    if name.endswith("LoRA") and name != "LoRA":
        classes = _layer_classes()
        if name in classes:
            return classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------ measurements


def parameter_counts(model: MultiHeadNet) -> dict[str, Any]:
    """Trainable and total parameters of the backbone (total = pretrained + adapter) and of the heads."""
    backbone = model.backbone
    adapter_ids = {id(p) for layer in lora_layers(backbone).values() for p in _adapter_parameters(layer)}

    def count(params: list[nn.Parameter]) -> int:
        return sum(p.numel() for p in params)

    backbone_params = list(backbone.parameters())
    head_params = list(model.heads.parameters())
    counts = {
        "backbone": {
            "trainable": count([p for p in backbone_params if p.requires_grad]),
            "total": count(backbone_params),
            "adapter": count([p for p in backbone_params if id(p) in adapter_ids]),
            "pretrained": count([p for p in backbone_params if id(p) not in adapter_ids]),
        },
        "heads": {
            "trainable": count([p for p in head_params if p.requires_grad]),
            "total": count(head_params),
        },
    }
    counts["trainable"] = counts["backbone"]["trainable"] + counts["heads"]["trainable"]
    counts["total"] = counts["backbone"]["total"] + counts["heads"]["total"]
    return counts


def _adapter_parameters(layer: Any) -> list[nn.Parameter]:
    return [p for name in layer.adapter_layer_names for p in getattr(layer, name).parameters()]


@torch.no_grad()
def delta_weight_by_block(model: MultiHeadNet) -> dict[str, dict[str, float]]:
    """Per backbone block holding adapters: ``l2`` = ‖ΔW‖ over its adapted layers (ΔW = (α/r)·B·A, what the
    block's weights have become minus what they were, the base being frozen; biases that ``bias`` trains are not
    included) and ``relative`` = that over ‖W₀‖ of the block's pretrained parameters (diagnostics' drift_relative
    for a method that trains the weights themselves)."""
    layers = lora_layers(model.backbone)
    block_of_layer: dict[int, str] = {}
    pretrained_norm: dict[str, float] = {}
    adapter_ids = {id(p) for layer in layers.values() for p in _adapter_parameters(layer)}
    for name, block in zip(model.block_names(), model.blocks(), strict=True):
        params = list(block.parameters())
        ids = {id(p) for p in params}
        for layer in layers.values():
            if id(layer.get_base_layer().weight) in ids:
                block_of_layer[id(layer)] = name
        squares = sum(float(p.detach().double().pow(2).sum()) for p in params if id(p) not in adapter_ids)
        pretrained_norm[name] = squares**0.5
    moved: dict[str, float] = {}
    for layer in layers.values():
        block = block_of_layer[id(layer)]
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A or adapter in layer.lora_embedding_A:
                delta = layer.get_delta_weight(adapter).double()
                moved[block] = moved.get(block, 0.0) + float(delta.pow(2).sum())
    return {
        block: {"l2": total**0.5, "relative": total**0.5 / pretrained_norm[block] if pretrained_norm[block] else 0.0}
        for block, total in moved.items()
    }
