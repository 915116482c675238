"""The backbone families: what each loads, the features it gives, its blocks, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from research.config import ModelConfig, validate_config
from research.data.inputs import compact
from research.errors import ConfigError
from research.models import build_model
from research.models.adapters import adapter, adapter_names
from research.models.adapters.base import blocks_of, check_block_cover
from research.models.adapters.hf import HFBackbone, default_pooling


def test_every_contract_family_is_registered() -> None:
    assert {"mlp", "cnn", "hf", "custom"} <= set(adapter_names())


def test_an_unknown_arch_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet'; valid choices: mlp, cnn"):
        ModelConfig(arch="resnet")


@pytest.mark.parametrize(
    ("arch", "key", "value"), [("mlp", "pooling", "mean"), ("hf", "hidden", [8]), ("cnn", "factory", "a:b")]
)
def test_a_key_of_another_family_is_refused(arch: str, key: str, value) -> None:
    with pytest.raises(ValueError, match=f"model.{key} does not apply to model.arch={arch}"):
        ModelConfig(arch=arch, **{key: value})


def _tokens(model_dir: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(model_dir)(texts, padding=True, return_tensors="pt"))


TEXTS = ["w1 w2 w3", "w40 w41", "w7 w8 w9 w10 w11 w12"]


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_hf_features_equal_plain_transformers(tiny_bert: Path, pooling: str) -> None:
    """Our adapter's features are the loaded model's own outputs, pooled as the pooling says (1e-6)."""
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(tiny_bert).eval()
    backbone, dim = adapter("hf").build(ModelConfig(arch="hf", name=str(tiny_bert), pooling=pooling), None)
    backbone.eval()
    x = _tokens(tiny_bert, TEXTS)
    with torch.no_grad():
        out = reference(**x)
        mask = x["attention_mask"].unsqueeze(-1).float()
        expected = {
            "mean": (out.last_hidden_state * mask).sum(1) / mask.sum(1),
            "cls": out.last_hidden_state[:, 0],
            "pooler": out.pooler_output,
        }[pooling]
        ours = backbone(x)
    assert dim == 32 and ours.shape == (3, 32)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_hf_padding_changes_nothing_and_compaction_drops_it(tiny_bert: Path) -> None:
    backbone, _ = adapter("hf").build(ModelConfig(arch="hf", name=str(tiny_bert), pooling="mean"), None)
    backbone.eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    padded = dict(tokenizer(TEXTS, padding="max_length", max_length=20, return_tensors="pt"))
    tight = compact(padded)
    assert tight["input_ids"].shape[1] == 8  # [CLS] + 6 words + [SEP]
    with torch.no_grad():
        torch.testing.assert_close(backbone(padded), backbone(tight), atol=1e-6, rtol=0)


def test_hf_blocks_are_embeddings_layers_and_the_pooler_when_used(tiny_bert: Path) -> None:
    mean = build_model(ModelConfig(arch="hf", name=str(tiny_bert), pooling="mean"), None, {"t": 2})
    assert mean.block_names() == ["embeddings", "layer_0", "layer_1"]
    assert not any("pooler" in n for n, _ in mean.named_parameters())  # unused by the features: removed
    pooler = build_model(ModelConfig(arch="hf", name=str(tiny_bert), pooling="pooler"), None, {"t": 2})
    assert pooler.block_names() == ["embeddings", "layer_0", "layer_1", "pooler"]
    for model in (mean, pooler):
        check_block_cover(model.backbone, blocks_of(model.backbone), "test")


def test_hf_default_pooling_follows_the_model_card(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_bert)
    assert default_pooling(str(tiny_bert), config) == "pooler"  # a BERT without a sentence-transformers card
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert default_pooling(str(tmp_path), config) == "mean"


def test_hf_loads_a_local_directory_and_refuses_a_missing_one(tiny_bert: Path, tmp_path: Path) -> None:
    adapter("hf").check(ModelConfig(arch="hf", name=str(tiny_bert)))
    with pytest.raises(ConfigError, match=r"model.name: local directory not found"):
        adapter("hf").check(ModelConfig(arch="hf", name=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"model.name: cannot load"):  # offline: not in the local hub cache
        adapter("hf").check(ModelConfig(arch="hf", name="someone/not-a-cached-model"))


def test_hf_gradient_checkpointing_gives_the_same_gradients(tiny_bert: Path) -> None:
    x = _tokens(tiny_bert, TEXTS)
    grads = []
    for checkpointing in (False, True):
        cfg = ModelConfig(arch="hf", name=str(tiny_bert), pooling="mean", gradient_checkpointing=checkpointing)
        backbone, _ = adapter("hf").build(cfg, None)
        backbone.eval()  # no dropout, so both passes compute the same thing
        backbone(x).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in backbone.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_hf_fingerprint_follows_the_weights(tiny_bert: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert, copy)
    first = adapter("hf").fingerprint(ModelConfig(arch="hf", name=str(copy)))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(copy / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert adapter("hf").fingerprint(ModelConfig(arch="hf", name=str(copy))) != first


# --------------------------------------------------------------------------------------------- custom


def test_custom_model_with_named_blocks(custom_model: str) -> None:
    model = build_model(
        ModelConfig(arch="custom", factory=custom_model, blocks=["stem", "body", "top"]), (1, 8, 8), {"t": 3}
    )
    assert model.block_names() == ["stem", "body", "top"] and model.feature_dim == 16
    assert model(torch.zeros(4, 1, 8, 8), "t").shape == (4, 3)


def test_custom_kwargs_reach_the_factory(custom_model: str) -> None:
    model = build_model(ModelConfig(arch="custom", factory=custom_model, kwargs={"width": 8}), (1, 8, 8), {"t": 2})
    assert model.feature_dim == 8
    assert model.block_names() == ["stem", "body", "top"]  # an nn.Module's children, when no names are given


@pytest.mark.parametrize(
    ("factory", "blocks", "message"),
    [
        ("no_such_module_xyz:build", None, "model.factory: cannot import 'no_such_module_xyz'"),
        ("user_models:missing", None, "model.factory: 'user_models' has no function 'missing'"),
        ("user_models:not_a_module", None, "must return a torch.nn.Module; it returned str"),
        ("user_models", None, "must be 'module.path:function'"),
        ("user_models:build", ["stem", "nope"], r"model.blocks: no submodules \['nope'\]"),
        ("user_models:build", ["stem", "body"], "parameters in no block"),
    ],
)
def test_custom_model_problems_are_config_errors(custom_model: str, factory: str, blocks, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(arch="custom", factory=factory, blocks=blocks), (1, 8, 8), {"t": 2})


def test_custom_needs_a_factory() -> None:
    with pytest.raises(ValueError, match=r"model.arch=custom needs model.factory"):
        ModelConfig(arch="custom")


def test_a_pretrain_checkpoint_is_refused_for_a_model_loaded_from_outside(tiny_bert: Path) -> None:
    with pytest.raises(ConfigError, match=r"pretrain.checkpoint: model.arch=hf loads its own weights"):
        validate_config(
            {
                "model": {"arch": "hf", "name": str(tiny_bert)},
                "pretrain": {"checkpoint": "x.safetensors"},
                "finetune": {"tasks": [{"name": "r", "source": "relations"}]},
            }
        )


def test_the_builtin_models_still_need_pretraining_tasks() -> None:
    with pytest.raises(
        ConfigError, match=r"pretrain.tasks: at least one pretraining task is needed for model.arch=mlp"
    ):
        validate_config({"finetune": {"tasks": [{"name": "d", "source": "digits"}]}})


def test_hf_model_is_isinstance_backbone(tiny_bert: Path) -> None:
    model = build_model(ModelConfig(arch="hf", name=str(tiny_bert)), None, {})
    assert isinstance(model.backbone, HFBackbone)


def test_a_family_without_an_example_says_the_generated_tests_need_one() -> None:
    from research.models.adapters import Adapter

    class Bare(Adapter):
        name = "bare"

    with pytest.raises(NotImplementedError, match="gives no example"):
        Bare().example(Path("unused"))
