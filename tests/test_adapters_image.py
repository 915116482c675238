"""The timm and torchvision backbone families: features, blocks, preprocessing, weights files (and the refusal of
pickles), errors for unknown names and unreachable hubs, and real runs. Offline throughout: models are randomly
initialised, and every weights file is written here."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from helpers import prepare_method
from safetensors.torch import save_file
from torch import nn

from research.config import ModelConfig, validate_config
from research.errors import ConfigError
from research.models import build_model
from research.models.adapters import adapter
from research.models.adapters.base import block_names_of, blocks_of, check_block_cover
from research.training import run

# Small models: timm's test_* (a few hundred thousand parameters at 160 pixels) and torchvision's smallest.
MODELS = [
    ("timm", "test_resnet"),
    ("timm", "test_vit"),
    ("timm", "test_convnext"),
    ("torchvision", "resnet18"),
    ("torchvision", "mobilenet_v3_small"),
]


def model_cfg(arch: str, name: str, **extra) -> ModelConfig:
    return ModelConfig(arch=arch, name=name, pretrained=False, **extra)


def digits_batch(n: int = 2, seed: int = 0) -> np.ndarray:
    """A batch shaped like the digits source: (N, 1, 8, 8) float32 in [0, 1]."""
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def source_model(arch: str, name: str) -> nn.Module:
    """The family's model with its classifier, initialised from another seed than the adapter's."""
    torch.manual_seed(1)
    if arch == "timm":
        return timm.create_model(name, pretrained=False)
    return torchvision.models.get_model(name, weights=None)


def without_classifier(arch: str, model: nn.Module) -> nn.Module:
    if arch == "timm":
        model.reset_classifier(0)
    else:
        model.fc = nn.Identity()
    return model.eval()


def family_data_config(arch: str, name: str) -> dict:
    """The model's preprocessing as its family states it: timm's data config, torchvision's DEFAULT weights'
    transforms."""
    if arch == "timm":
        return timm.data.resolve_model_data_config(timm.create_model(name, pretrained=False, num_classes=0))
    transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    return {
        "input_size": (3, transforms.crop_size[0], transforms.crop_size[-1]),
        "mean": tuple(transforms.mean),
        "std": tuple(transforms.std),
        "interpolation": transforms.interpolation.value,
    }


def reference_inputs(arch: str, name: str, raw: np.ndarray) -> torch.Tensor:
    """The model's inputs as tasks once stored them: each image resized to the input size (antialiased), grey
    replicated to 3 channels, then normalised per channel."""
    data = family_data_config(arch, name)
    assert data["interpolation"] in ("bilinear", "bicubic")
    resized = F.interpolate(
        torch.from_numpy(raw), size=data["input_size"][1:], mode=data["interpolation"], antialias=True,
        align_corners=False,
    )  # fmt: skip
    mean = torch.tensor(data["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(data["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (resized.expand(-1, 3, -1, -1) - mean) / std


# --------------------------------------------------------------------------------------------- features, blocks


@pytest.mark.parametrize(("arch", "name"), MODELS)
def test_features_and_blocks(arch: str, name: str) -> None:
    cfg = model_cfg(arch, name)
    family = adapter(arch)
    x = family.input_encoder(cfg).encode(digits_batch(3))
    model = build_model(cfg, tuple(x.shape[1:]), {"d": 2})  # check_block_cover runs in here too
    model.eval()
    with torch.no_grad():
        features = model.features(x)
        logits = model(x, "d")
    assert features.shape == (3, model.feature_dim)
    assert logits.shape == (3, 2)

    blocks = blocks_of(model.backbone)
    check_block_cover(model.backbone, blocks, name)
    names = block_names_of(model.backbone)
    assert len(names) == len(blocks) >= 3 and len(set(names)) == len(names)
    assert all(any(True for _ in b.parameters()) for b in blocks)
    counted = sum(p.numel() for b in blocks for p in b.parameters())
    assert counted == sum(p.numel() for p in model.backbone.parameters())

    info = family.describe(cfg, model.backbone)
    assert info["arch"] == arch and info["blocks"] == names and info["features"] == model.feature_dim


def test_timm_blocks_follow_timms_grouping() -> None:
    backbone, _ = adapter("timm").build(model_cfg("timm", "test_resnet"), None)
    assert backbone.block_names() == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]
    vit, _ = adapter("timm").build(model_cfg("timm", "test_vit"), None)
    names = vit.block_names()
    # The token and position embeddings sit on the model itself, not in a submodule; the final norm joins the
    # last transformer block as in timm's matcher.
    assert names[0] == "cls_token+pos_embed+patch_embed" and names[-1].endswith("+norm")
    assert len(names) == 2 + len(vit.model.blocks) - 1


@pytest.mark.parametrize(
    ("arch", "name", "token"), [("timm", "test_vit", "cls_token"), ("torchvision", "vit_b_32", "class_token")]
)
def test_parameters_on_a_non_leaf_module_are_in_the_bottom_block(arch: str, name: str, token: str) -> None:
    backbone, _ = adapter(arch).build(model_cfg(arch, name), None)
    blocks = blocks_of(backbone)
    check_block_cover(backbone, blocks, name)
    cls_token = getattr(backbone.model, token)
    assert any(p is cls_token for p in blocks[0].parameters())
    # Freezing the bottom block (partial fine-tuning) freezes the token too; the other blocks stay trainable.
    blocks[0].requires_grad_(False)
    assert not cls_token.requires_grad
    assert all(p.requires_grad for b in blocks[1:] for p in b.parameters())


def test_frozen_blocks_go_to_eval_mode_alone() -> None:
    backbone, _ = adapter("torchvision").build(model_cfg("torchvision", "resnet18"), None)
    backbone.train()
    stem = blocks_of(backbone)[0]
    stem.eval()  # what the training module does with frozen blocks, for their BatchNorm statistics
    assert not backbone.model.bn1.training and not backbone.model.conv1.training
    assert backbone.model.layer1.training and backbone.model.layer4[1].bn2.training
    assert block_names_of(backbone) == ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_torchvision_keeps_the_layers_before_the_final_linear() -> None:
    backbone, dim = adapter("torchvision").build(model_cfg("torchvision", "mobilenet_v3_small"), None)
    # MobileNetV3's classifier is Linear(576, 1024), Hardswish, Dropout, Linear(1024, 1000): the features are the
    # pretrained 1024-wide pre-logits, and that first Linear is the top block.
    assert dim == 1024
    assert isinstance(backbone.model.classifier[3], nn.Identity)
    assert block_names_of(backbone)[-1] == "head"


@pytest.mark.parametrize(("arch", "name"), [("timm", "test_resnet"), ("torchvision", "mobilenet_v3_small")])
def test_random_initialisation_is_the_same_model_every_build(arch: str, name: str) -> None:
    """The pretraining stage caches heads trained on the backbone's features, and fine-tuning rebuilds the
    backbone: both builds must give the same weights, whatever the global RNG, which they leave alone."""
    torch.manual_seed(123)
    first = adapter(arch).build(model_cfg(arch, name), None)[0].state_dict()
    after = torch.random.get_rng_state()
    torch.manual_seed(456)
    second = adapter(arch).build(model_cfg(arch, name), None)[0].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(123)
    assert torch.equal(torch.random.get_rng_state(), after)

    random_print = adapter(arch).fingerprint(model_cfg(arch, name))["model"]
    assert name in random_print and "random init" in random_print
    pretrained_print = adapter(arch).fingerprint(ModelConfig(arch=arch, name=name))["model"]
    assert pretrained_print != random_print and ("timm/" in pretrained_print or ".pth" in pretrained_print)


# --------------------------------------------------------------------------------------------- preprocessing


def test_timm_preprocessing_follows_its_data_config() -> None:
    cfg = model_cfg("timm", "test_vit")
    encoder = adapter("timm").input_encoder(cfg)
    data = family_data_config("timm", "test_vit")
    assert encoder.kinds == ("array",)
    assert encoder.identity["input_size"] == list(data["input_size"])
    assert encoder.identity["mean"] == list(data["mean"]) and encoder.identity["std"] == list(data["std"])
    assert encoder.identity["interpolation"] == data["interpolation"] == "bicubic"
    assert encoder.identity["resize"] == "bicubic antialiased"

    # Stored at the image's own size: grey replicated to 3 channels, each channel (v - mean) / std.
    x = digits_batch(4)
    out = encoder.encode(x)
    assert out.shape == (4, 3, 8, 8) and out.dtype == torch.float32
    for c in range(3):
        torch.testing.assert_close(out[:, c], (torch.from_numpy(x[:, 0]) - data["mean"][c]) / data["std"][c])
    # The backbone resizes to the input size; a uniform grey image stays uniform through any resize.
    backbone, _ = adapter("timm").build(cfg, None)
    height, width = data["input_size"][1:]
    flat = np.full((1, 1, 8, 8), 0.25, dtype=np.float32)
    resized = backbone.image.resize(encoder.encode(flat))
    assert resized.shape == (1, 3, height, width)
    expected = [(0.25 - m) / s for m, s in zip(data["mean"], data["std"], strict=True)]
    torch.testing.assert_close(resized[0, :, 17, 101], torch.tensor(expected), rtol=0, atol=1e-6)
    # A real digit: as the grey channel resized bicubically (antialiased), replicated, normalised per channel.
    torch.testing.assert_close(backbone.image.resize(out), reference_inputs("timm", "test_vit", x), rtol=0, atol=1e-5)


def test_torchvision_preprocessing_follows_its_weights_transforms() -> None:
    cfg = model_cfg("torchvision", "resnet18")
    encoder = adapter("torchvision").input_encoder(cfg)
    transforms = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert encoder.identity["input_size"] == [3, transforms.crop_size[0], transforms.crop_size[-1]] == [3, 224, 224]
    assert encoder.identity["mean"] == pytest.approx(transforms.mean)
    assert encoder.identity["std"] == pytest.approx(transforms.std)
    assert encoder.identity["interpolation"] == transforms.interpolation.value == "bilinear"

    out = encoder.encode(digits_batch(2))
    assert out.shape == (2, 3, 8, 8)
    backbone, _ = adapter("torchvision").build(cfg, None)
    assert backbone.image.resize(out).shape == (2, 3, 224, 224)
    flat = np.ones((1, 1, 8, 8), dtype=np.float32)
    pixel = backbone.image.resize(encoder.encode(flat))[0, :, 0, 223]
    torch.testing.assert_close(pixel, torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def test_colour_images_are_resized_per_channel_and_signals_refused() -> None:
    cfg = model_cfg("timm", "test_resnet")
    encoder = adapter("timm").input_encoder(cfg)
    backbone, _ = adapter("timm").build(cfg, None)
    rgb = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    out = encoder.encode(rgb)
    torch.testing.assert_close(out, (torch.from_numpy(rgb) - 0.5) / 0.5)
    resized = F.interpolate(
        torch.from_numpy(rgb), size=(160, 160), mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(backbone.image.resize(out), (resized - 0.5) / 0.5, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match=r"model.arch=timm: takes images .* shaped \(40,\)"):
        encoder.encode(np.zeros((2, 40), dtype=np.float32))


@pytest.mark.parametrize(("arch", "name"), [("timm", "test_vit"), ("timm", "test_resnet"), ("torchvision", "resnet18")])
def test_normalising_then_resizing_is_resizing_then_normalising(arch: str, name: str) -> None:
    """What the encoder stores and the backbone resizes is what resizing at storage gave: interpolation weights
    sum to 1, so the per-channel normalisation commutes with the resize (to float rounding; nothing clamped, so
    bicubic overshoot stays as it was)."""
    cfg = model_cfg(arch, name)
    raw = np.random.default_rng(3).random((3, 1, 8, 8), dtype=np.float32)
    raw[0] = (raw[0] > 0.5).astype(np.float32)  # hard edges: bicubic overshoots [0, 1]
    backbone, _ = adapter(arch).build(cfg, None)
    now = backbone.image.resize(adapter(arch).input_encoder(cfg).encode(raw))
    before = reference_inputs(arch, name, raw)
    assert now.shape == before.shape == (3, *family_data_config(arch, name)["input_size"])
    torch.testing.assert_close(now, before, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("arch", "name"), MODELS)
def test_features_of_a_raw_image_are_those_of_resizing_at_storage(arch: str, name: str) -> None:
    """The backbone on the stored (normalised, unresized) images gives the features the model gave on images
    resized and normalised when tasks were built."""
    cfg = model_cfg(arch, name)
    raw = digits_batch(3, seed=5)
    backbone, _ = adapter(arch).build(cfg, None)
    backbone.eval()
    with torch.no_grad():
        now = backbone(adapter(arch).input_encoder(cfg).encode(raw))
        before = backbone.model(reference_inputs(arch, name, raw))
    torch.testing.assert_close(now, before, rtol=1e-4, atol=1e-5)


def test_stored_images_keep_their_own_size() -> None:
    """A stored 8×8 digit is 3×8×8 float32 (768 bytes), not 3×224×224 (602,112 bytes)."""
    encoder = adapter("torchvision").input_encoder(model_cfg("torchvision", "resnet18"))
    out = encoder.encode(digits_batch(5))
    assert out.is_contiguous() and out.untyped_storage().nbytes() == 5 * 3 * 8 * 8 * 4


def test_the_resize_runs_under_vmap_as_in_a_plain_loop() -> None:
    """EWC's Fisher runs the model one example at a time under torch.func.vmap (each call sees a batch of one):
    the backbone's resize must run there, and agree with a plain loop."""
    from torch.func import vmap

    from research.methods.base import HeadBatch
    from research.methods.fisher import fisher_diagonal

    cfg = model_cfg("timm", "test_resnet")
    x = adapter("timm").input_encoder(cfg).encode(digits_batch(2, seed=7))
    model = build_model(cfg, tuple(x.shape[1:]), {"d": 3}).eval()
    with torch.no_grad():
        mapped = vmap(lambda e: model.backbone(e.unsqueeze(0)).squeeze(0))(x)
        looped = torch.cat([model.backbone(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(mapped, looped, rtol=1e-4, atol=1e-5)

    # The exact Fisher of the stem's convolution (the per-example Jacobian route, under vmap) and of the head
    # (the closed form), against Σ_n Σ_y p(y|x_n) g_y(x_n)² by a plain loop of backward passes.
    names = ["backbone.model.conv1.0.weight", "heads.d.weight"]
    fisher = fisher_diagonal(model, [HeadBatch("d", x, torch.zeros(2, dtype=torch.long))], names, "exact")
    params = dict(model.named_parameters())
    expected = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(len(x)):
        log_probs = torch.log_softmax(model(x[i : i + 1], "d"), dim=-1)[0]
        for y in range(3):
            grads = torch.autograd.grad(log_probs[y], [params[n] for n in names], retain_graph=True)
            for n, g in zip(names, grads, strict=True):
                expected[n] += log_probs[y].exp().detach() * g.pow(2) / len(x)
    for n in names:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-8)


# --------------------------------------------------------------------------------------------- weights files


@pytest.mark.parametrize(("arch", "name"), [("timm", "test_resnet"), ("torchvision", "resnet18")])
@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_a_weights_file_gives_the_features_of_its_model(arch: str, name: str, kind: str, tmp_path: Path) -> None:
    source = source_model(arch, name)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}  # the classifier's keys included
    file = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pt")
    if kind == "safetensors":
        save_file(state, str(file))
    else:
        torch.save(state, file)

    family = adapter(arch)
    cfg = model_cfg(arch, name, weights=str(file))
    backbone, dim = family.build(cfg, None)
    x = family.input_encoder(cfg).encode(digits_batch(2))
    with torch.no_grad():
        loaded = backbone.eval()(x)
        expected = without_classifier(arch, source)(reference_inputs(arch, name, digits_batch(2)))
        fresh = family.build(model_cfg(arch, name), None)[0].eval()(x)
    assert loaded.shape == (2, dim)
    torch.testing.assert_close(loaded, expected)
    assert not torch.allclose(fresh, expected)  # the file, not the seed-0 initialisation, made the difference

    assert family.fingerprint(cfg) == family.fingerprint(model_cfg(arch, name, weights=str(file)))
    before = family.fingerprint(cfg)["weights"]
    torch.save({k: v + 1 for k, v in state.items()}, tmp_path / "other.pt")
    assert family.fingerprint(model_cfg(arch, name, weights=str(tmp_path / "other.pt")))["weights"] != before
    assert family.describe(cfg, backbone)["weights"] == str(file)


def test_a_weights_file_of_another_model_is_refused_with_what_differs(tmp_path: Path) -> None:
    state = dict(source_model("timm", "test_resnet").state_dict())
    del state["layer1.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(1)
    state["bn1.weight"] = torch.zeros(3)
    file = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    with pytest.raises(
        ConfigError,
        match=r"model.weights: .*missing \['layer1.0.conv1.weight'\].*unexpected \['layer9.weight'\]"
        r".*shape mismatch \['bn1.weight",
    ):
        adapter("timm").build(model_cfg("timm", "test_resnet", weights=str(file)), None)
    with pytest.raises(ConfigError, match=r"model.weights: file not found"):
        adapter("timm").check(model_cfg("timm", "test_resnet", weights=str(tmp_path / "nothing.pt")))


class Payload:
    """Unpickling this calls open(marker, 'w'): a file appears if, and only if, the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_the_payload_runs_when_unpickled(tmp_path: Path) -> None:
    """The control for the refusal below: the payload is live."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize(("arch", "name"), [("timm", "test_resnet"), ("torchvision", "resnet18")])
@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_a_pickle_bearing_weights_file_is_refused_unexecuted(arch: str, name: str, how: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    file = tmp_path / "weights.pt"
    state = {"conv1.weight": torch.zeros(1), "x": Payload(marker)}
    if how == "torch.save":
        torch.save(state, file)
    else:
        with open(file, "wb") as handle:
            pickle.dump(state, handle, protocol=2)  # torch.load's own protocol
    with pytest.raises(ConfigError, match=r"model.weights: .* cannot be loaded safely"):
        adapter(arch).build(model_cfg(arch, name, weights=str(file)), None)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("arch", "typo", "close"), [("timm", "test_resnt", "test_resnet"), ("torchvision", "resnet19", "resnet18")]
)
def test_an_unknown_model_name_is_a_config_error_with_close_names(arch: str, typo: str, close: str) -> None:
    cfg = model_cfg(arch, typo)
    for call in (
        lambda: adapter(arch).check(cfg),
        lambda: adapter(arch).input_encoder(cfg),
        lambda: adapter(arch).build(cfg, None),
    ):
        with pytest.raises(
            ConfigError, match=rf"^model.name: unknown {arch} model '{typo}'; close names: .*{close}"
        ) as err:
            call()
        assert "\n" not in str(err.value)


def test_timm_unknown_tag_and_unsupported_torchvision_family() -> None:
    with pytest.raises(
        ConfigError, match=r"model.name: timm has no pretrained tag 'resnet18.bogus'; its tags: .*resnet18\."
    ):
        adapter("timm").check(model_cfg("timm", "resnet18.bogus"))
    with pytest.raises(ConfigError, match=r"'densenet121' is not supported by model.arch=torchvision.*model.arch=timm"):
        adapter("torchvision").check(model_cfg("torchvision", "densenet121"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub: offline mode on (huggingface_hub read the variable at import, so its constant too) and empty
    caches, so a cached copy on this machine cannot make a download unnecessary."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.mark.parametrize(("arch", "name"), [("timm", "test_resnet"), ("torchvision", "resnet18")])
def test_pretrained_weights_offline_are_a_clear_config_error(arch: str, name: str, offline: None) -> None:
    cfg = ModelConfig(arch=arch, name=name)  # pretrained: true, the default
    with pytest.raises(ConfigError) as err:
        adapter(arch).build(cfg, None)
    message = str(err.value)
    assert message.startswith(f"model.pretrained: cannot load {arch}'s pretrained weights of '{name}'")
    assert "offline (HF_HUB_OFFLINE is set)" in message
    assert "model.weights" in message and "model.pretrained=false" in message


def test_a_timm_model_without_pretrained_weights_says_so() -> None:
    with_weights = {n.partition(".")[0] for n in timm.list_pretrained()}
    name = next(n for n in timm.list_models() if n not in with_weights)
    with pytest.raises(ConfigError, match=rf"model.pretrained: timm has no pretrained weights for '{name}'"):
        adapter("timm").build(ModelConfig(arch="timm", name=name), None)


def test_torchvision_pretrained_weights_come_from_the_hub_cache_weights_only(offline: None, tmp_path: Path) -> None:
    """Offline, DEFAULT weights already in torch.hub's cache load from there, weights-only: a cached file that
    carries a pickle is refused unexecuted (torchvision's own loader would unpickle it)."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    source = source_model("torchvision", "resnet18")
    torch.save(source.state_dict(), cached)
    backbone, _ = adapter("torchvision").build(ModelConfig(arch="torchvision", name="resnet18"), None)
    x = torch.randn(2, 3, 224, 224)  # at the input size: the backbone's resize leaves it as it is
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), without_classifier("torchvision", source)(x))

    marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, cached)
    with pytest.raises(ConfigError, match=r"model.pretrained: .* cannot be loaded safely"):
        adapter("torchvision").build(ModelConfig(arch="torchvision", name="resnet18"), None)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- real runs


def pipeline_cfg(arch: str, name: str, method: dict, out: Path):
    return validate_config(
        {
            "model": {"arch": arch, "name": name, "pretrained": False},
            "pretrain": {"tasks": []},
            "finetune": {"tasks": [{"name": "d", "source": "digits", "classes": [0, 1]}]},
            "method": method,
            "train": {"max_steps": 3, "batch_size": 16},
            "eval": {"every_n_steps": 2, "max_samples": 16},
            "logging": {"wandb": "disabled", "progress": False},
            "device": "cpu",
            "out": str(out),
        }
    )


def test_partial_fine_tuning_trains_the_top_timm_block_only(tmp_path: Path) -> None:
    cfg = pipeline_cfg("timm", "test_resnet", {"name": "partial", "unfreeze_top_k": 1}, tmp_path)
    _, model, _, _ = prepare_method(cfg)
    trainable = {n.split(".")[1] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    assert all(p.requires_grad for p in model.heads.parameters())


@pytest.mark.parametrize(
    ("arch", "name", "method"),
    [
        ("timm", "test_resnet", {"name": "finetune"}),
        ("timm", "test_resnet", {"name": "partial", "unfreeze_top_k": 1}),
        ("timm", "test_resnet", {"name": "l2sp"}),
        ("torchvision", "mobilenet_v3_small", {"name": "partial", "unfreeze_top_k": 2}),
    ],
    ids=["timm-finetune", "timm-partial", "timm-l2sp", "torchvision-partial"],
)
def test_an_image_model_runs_through_the_pipeline(arch: str, name: str, method: dict, tmp_path: Path) -> None:
    cfg = pipeline_cfg(arch, name, method, tmp_path)
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary.get("error")
    info = result.summary["model"]
    assert info["arch"] == arch and info["name"] == name and info["weights"] == "random initialisation (seed 0)"
    if arch == "timm":
        assert info["blocks"] == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]
        assert info["input"]["input_size"] == [3, 160, 160]
    else:
        assert info["blocks"][-1] == "head" and info["input"]["input_size"] == [3, 224, 224]
    assert set(result.metrics.step) >= {0, 2, 3}
