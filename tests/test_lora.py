"""LoRA through peft: only the adapters (and the new head) train, step 0 is the loaded model, merged evaluation
is the unmerged one (and peft's own merge), targets per family, counts, layer-wise rates, sequences, DDP."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import EXPERIMENTS, TINY
from test_model_families import FAMILIES, example_config
from torch import nn

from research.cli import main
from research.config import validate_config
from research.data import build_tasks
from research.methods import build_method
from research.methods.lora import LoRA, LoRAConfig, inject, lora_layers
from research.models.adapters.base import check_block_cover
from research.training import run
from research.training.finetune import finetune_model, start_task
from research.training.module import parameter_groups

ADAPTER_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.")


def is_adapter(name: str) -> bool:
    return any(part in name for part in ADAPTER_PARTS)


def lora_cfg(example, out: Path, **method: Any):
    cfg = example_config(example, out, "lora")
    return validate_config({**cfg.model_dump(mode="json"), "method": {"name": "lora", **method}})


def plain_and_injected(cfg):
    """The fine-tuning model without LoRA (as ``finetune`` trains it) and a copy with LoRA injected."""
    tasks = build_tasks(cfg)
    plain, ctx = finetune_model(cfg, tasks, build_method({"name": "finetune"}), state=None)
    injected = copy.deepcopy(plain)
    method = build_method(cfg.method)
    start_task(injected, ctx, method, 0)
    return plain, injected, method, ctx


def randomise_adapters(model: nn.Module, scale: float = 0.3) -> None:
    """Give every B (zero at injection) seeded values, so that ΔW = (α/r)·B·A is not zero."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name or ".lora_embedding_A." in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def batch_of(ctx, n: int = 8):
    from research.data.inputs import compact, take

    x, _ = ctx.task.splits["train"]
    return compact(take(x, slice(0, n)))


class Recorder:
    """Captures the model where LoRA prepares (its start) and where it finishes (its end) in a real run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []
        self.end: dict[str, torch.Tensor] = {}
        self.model: nn.Module | None = None
        prepare, finish = LoRA.prepare, LoRA.finish

        def recording_prepare(method, model, ctx):
            self.starts.append({n: p.detach().clone() for n, p in model.named_parameters()})
            prepare(method, model, ctx)

        def recording_finish(method, model, ctx, score):
            self.end = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.model = copy.deepcopy(model)
            return finish(method, model, ctx, score)

        monkeypatch.setattr(LoRA, "prepare", recording_prepare)
        monkeypatch.setattr(LoRA, "finish", recording_finish)


# --------------------------------------------------------------------------------------------- what trains


@pytest.mark.parametrize("family", ["mlp", "hf"])
def test_only_the_adapters_and_the_new_head_change(family: str, family_example, out, monkeypatch) -> None:
    recorder = Recorder(monkeypatch)
    cfg = lora_cfg(family_example(family), out)
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    (start,) = recorder.starts
    end = recorder.end
    assert set(start) == set(end)
    new_head = f"heads.{build_tasks(cfg).finetune[0].head}."
    adapters = [n for n in start if is_adapter(n)]
    assert adapters and all(".base_layer." not in n for n in adapters)
    for name in start:
        if is_adapter(name) or name.startswith(new_head):
            continue
        assert torch.equal(start[name], end[name]), f"{name} moved"  # base weights and old heads: bit-identical
    assert all(not torch.equal(start[n], end[n]) for n in adapters if ".lora_B." in n)  # B left zero: it trained
    assert any(not torch.equal(start[n], end[n]) for n in start if n.startswith(new_head))
    assert all(not start[n].any() for n in adapters if ".lora_B." in n)  # B starts at zero


@pytest.mark.parametrize("family", ["mlp", "hf"])
def test_step_0_is_the_model_without_adapters(family: str, family_example, out) -> None:
    """B = 0: the features (eval and train mode, same dropout draws) are those of the un-injected model."""
    plain, injected, _, ctx = plain_and_injected(lora_cfg(family_example(family), out))
    x = batch_of(ctx)
    assert lora_layers(injected.backbone) and not any(is_adapter(n) for n, _ in plain.named_parameters())
    for training in (False, True):
        plain.train(training)
        injected.train(training)
        with torch.no_grad():
            torch.manual_seed(0)
            reference = plain.features(x)
            torch.manual_seed(0)
            ours = injected.features(x)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_step_0_scores_are_finetunes(make_cfg) -> None:
    """Through the real pipeline: every task's step-0 evaluation equals plain fine-tuning's."""

    def step_0(name: str) -> pd.Series:
        metrics = run(make_cfg(f"method.name={name}")).metrics
        evals = metrics[(metrics.step == 0) & metrics.metric.isin(["acc", "loss"])]
        return evals.set_index(["task", "metric"]).value.sort_index()

    np.testing.assert_allclose(step_0("lora"), step_0("finetune"), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------- merge


@pytest.mark.parametrize("family", ["mlp", "hf", "timm"])
def test_merged_evaluation_is_the_separate_path_and_peft_merge(family: str, family_example, out) -> None:
    _, model, _, ctx = plain_and_injected(lora_cfg(family_example(family), out))
    randomise_adapters(model)
    layers = lora_layers(model.backbone)
    x = batch_of(ctx, 4)
    bases = {name: layer.get_base_layer().weight.detach().clone() for name, layer in layers.items()}
    model.eval()

    def features(merge: bool) -> torch.Tensor:
        for layer in layers.values():
            layer.merge_for_evaluation = merge
        with torch.inference_mode():
            return model.features(x)

    merged, separate = features(True), features(False)
    assert not torch.equal(merged, separate)  # two different computations of one function
    torch.testing.assert_close(merged, separate, rtol=0, atol=1e-5)
    # peft's own merge (written into a copy's base weights) gives the very same numbers as the merged path.
    peft_merged = copy.deepcopy(model)
    for layer in lora_layers(peft_merged.backbone).values():
        layer.merge()
    with torch.inference_mode():
        torch.testing.assert_close(peft_merged.features(x), merged, rtol=0, atol=1e-6)
    # Evaluating merged writes nothing: the base weights are those of before, bit for bit.
    assert all(torch.equal(layer.get_base_layer().weight, bases[name]) for name, layer in layers.items())


def test_merged_and_unmerged_runs_agree(make_cfg) -> None:
    """Training is the same computation either way; the evaluations agree to float rounding."""
    merged = run(make_cfg("method.name=lora", "method.merge=true", "train.lr=0.02")).metrics
    separate = run(make_cfg("method.name=lora", "method.merge=false", "train.lr=0.02")).metrics
    assert merged[["step", "task", "metric"]].equals(separate[["step", "task", "metric"]])
    training = merged.metric.str.startswith("train_")
    assert merged[training].value.equals(separate[training].value)
    np.testing.assert_allclose(merged[~training].value, separate[~training].value, rtol=0, atol=1e-5)
    assert (merged[merged.metric == "acc"].value.diff().abs() > 0).any()  # the adapters did change the scores


def test_every_layer_kind_merges_like_peft() -> None:
    """nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d and transformers' Conv1D: the merged forward equals the
    separate one and peft's merge()."""
    from transformers.pytorch_utils import Conv1D

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.conv1d = nn.Conv1d(6, 6, 3, padding=1)
            self.conv2d = nn.Conv2d(1, 4, 3, padding=1, stride=2)
            self.gpt = Conv1D(5, 6)
            self.linear = nn.Linear(5, 3)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            e = self.embed(tokens)
            sequence = self.linear(self.gpt(self.conv1d(e.transpose(1, 2)).mean(-1)))
            image = self.conv2d(e.unsqueeze(1)).mean((-1, -2))
            return torch.cat([sequence, image], dim=1)

    torch.manual_seed(0)
    module = Mixed()
    names = ["embed", "conv1d", "conv2d", "gpt", "linear"]
    inject(module, LoRAConfig(r=2, target_modules=names), names, seed=0)
    layers = lora_layers(module)
    assert sorted(layers) == sorted(names)
    randomise_adapters(module)
    tokens = torch.randint(0, 10, (4, 7))
    module.eval()
    with torch.no_grad():
        separate = module(tokens)
        for layer in layers.values():
            layer.merge_for_evaluation = True
        merged = module(tokens)
        copied = copy.deepcopy(module)
        for layer in lora_layers(copied).values():
            layer.merge()
        peft = copied(tokens)
    torch.testing.assert_close(merged, separate, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged, peft, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------- targets


def test_bert_defaults_to_query_and_value_as_peft(family_example, out) -> None:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    assert PEFT_DEFAULTS["bert"] == ["query", "value"]
    _, model, method, ctx = plain_and_injected(lora_cfg(family_example("hf"), out))
    method.prepare(model, ctx)
    expected = [f"encoder.encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "value")]
    assert method.info()["matched_modules"] == expected
    assert sorted(lora_layers(model.backbone)) == expected


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("mlp", ["0.1", "1.0"]),  # every nn.Linear
        ("custom", ["module.stem.1", "module.body.0", "module.top.0"]),
        ("cnn", ["0.0", "1.0"]),  # every (ungrouped) convolution
    ],
)
def test_other_families_default_to_their_linear_and_conv_layers(family, expected, family_example, out) -> None:
    _, model, _, _ = plain_and_injected(lora_cfg(family_example(family), out))
    assert list(lora_layers(model.backbone)) == expected


def test_image_defaults_leave_grouped_convolutions_alone(family_example, out) -> None:
    _, model, _, _ = plain_and_injected(lora_cfg(family_example("torchvision"), out))  # MobileNetV3: depthwise
    adapted = lora_layers(model.backbone)
    kinds = {type(m.get_base_layer()) for m in adapted.values()}
    assert kinds == {nn.Conv2d, nn.Linear}
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert any(c.groups > 1 for c in convs)
    assert all(m.get_base_layer().groups == 1 for m in adapted.values() if isinstance(m.get_base_layer(), nn.Conv2d))


def test_explicit_targets_as_peft_matches_them(family_example, out) -> None:
    cfg = lora_cfg(family_example("hf"), out, target_modules=["key", "attention.output.dense"])
    _, model, _, _ = plain_and_injected(cfg)
    assert sorted(lora_layers(model.backbone)) == [
        f"encoder.encoder.layer.{i}.attention.{p}" for i in range(2) for p in ("output.dense", "self.key")
    ]
    _, model, _, _ = plain_and_injected(lora_cfg(family_example("hf"), out, target_modules=r".*layer\.1\..*query"))
    assert list(lora_layers(model.backbone)) == ["encoder.encoder.layer.1.attention.self.query"]
    _, model, _, _ = plain_and_injected(lora_cfg(family_example("hf"), out, target_modules="all-linear"))
    assert len(lora_layers(model.backbone)) == 2 * 6 + 1  # six per layer and the pooler's dense


def _run_exits_2(tmp_path: Path, out: Path, capsys, method: str) -> str:
    config = tmp_path / "lora.yaml"
    text = (EXPERIMENTS / "split_digits.yaml").read_text()
    assert "method:\n  name: finetune\n" in text
    config.write_text(text.replace("method:\n  name: finetune\n", f"method: {method}\n"))
    before = sorted(p.name for p in out.iterdir())
    assert main(["run", str(config), *TINY, f"out={out}"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written
    return lines[0]


def test_a_target_that_matches_nothing_exits_2_naming_the_layers(tmp_path, out, capsys) -> None:
    line = _run_exits_2(tmp_path, out, capsys, "{name: lora, target_modules: [nope]}")
    assert "method.target_modules" in line and "['nope']" in line
    assert line.endswith("its adaptable layers: 0.1")  # the tiny MLP's one Linear layer


def test_a_target_lora_cannot_adapt_exits_2_saying_why(tmp_path, out, capsys) -> None:
    line = _run_exits_2(tmp_path, out, capsys, "{name: lora, target_modules: ['0']}")
    assert "method.target_modules" in line and "a Sequential, not a layer LoRA adapts" in line and "0.1" in line


def test_a_bad_target_on_bert_lists_its_layers(family_example, out) -> None:
    from research.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method\.target_modules: \['querry'\] match no layer") as err:
        plain_and_injected(lora_cfg(family_example("hf"), out, target_modules=["querry"]))
    assert "encoder.encoder.layer.0.attention.self.query" in str(err.value)


# --------------------------------------------------------------------------------------------- counts, rates


def test_summary_counts_trainable_and_total_parameters(make_cfg) -> None:
    """The tiny MLP by hand: one Linear 64 → 32 (2080), A 8 × 64 and B 32 × 8 (768); two heads 32 → 5 (165)."""
    info = run(make_cfg("method.name=lora")).summary["method_info"]
    assert info["parameters"] == {
        "backbone": {"trainable": 768, "total": 2080 + 768, "adapter": 768, "pretrained": 2080},
        "heads": {"trainable": 165, "total": 330},
        "trainable": 768 + 165,
        "total": 2080 + 768 + 330,
    }
    assert info["r"] == 8 and info["alpha"] == 16.0 and info["scaling"] == 2.0 and info["merge"] is True
    assert info["matched_modules"] == ["0.1"] and info["target_modules"] is None
    assert set(info["delta_weight"]) == {"0"} and info["delta_weight"]["0"]["l2"] > 0


def test_bias_all_trains_every_backbone_bias(make_cfg) -> None:
    cfg = make_cfg("method.name=lora", "method.bias=all")
    tasks = build_tasks(cfg)
    model, _ = finetune_model(cfg, tasks, build_method(cfg.method), state=None)
    trainable = sorted(n for n, p in model.backbone.named_parameters() if p.requires_grad)
    assert trainable == ["0.1.base_layer.bias", "0.1.lora_A.default.weight", "0.1.lora_B.default.weight"]


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_wise_rates_give_each_adapter_its_blocks_rate(family: str, family_example, out) -> None:
    cfg = lora_cfg(family_example(family), out)
    cfg = validate_config(
        {**cfg.model_dump(mode="json"), "train": {"lr": 0.1, "backbone_lr_scale": 0.5, "lr_decay": 0.1}}
    )
    _, model, _, _ = plain_and_injected(cfg)
    blocks = model.blocks()
    check_block_cover(model.backbone, blocks, "blocks")  # injection left every parameter in exactly one block
    groups = parameter_groups(model, cfg.train)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert set(rate) == {id(p) for p in model.parameters() if p.requires_grad}  # nothing left out
    n = len(blocks)
    adapters = 0
    for i, block in enumerate(blocks):
        for name, p in block.named_parameters():
            if p.requires_grad:
                assert is_adapter(name), name
                assert rate[id(p)] == pytest.approx(0.1 * 0.5 * 0.1 ** (n - 1 - i)), name
                adapters += 1
    assert adapters == sum(1 for name, p in model.backbone.named_parameters() if is_adapter(name))


def test_blocks_that_are_the_adapted_layers_themselves_follow_them(family_example, out) -> None:
    """A custom model whose ``model.blocks`` names the very layers peft replaces: each block is then the LoRA
    layer (its base layer and its adapter), so the adapters train, at their block's rate."""
    cfg = example_config(family_example("custom"), out, "lora", blocks=["stem.1", "body.0", "top"])
    _, model, _, _ = plain_and_injected(cfg)
    assert model.blocks()[0] is lora_layers(model.backbone)["module.stem.1"]
    check_block_cover(model.backbone, model.blocks(), "blocks")
    assert all(any(p.requires_grad for p in b.parameters()) for b in model.blocks())
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]


def test_gradient_checkpointing_trains_the_adapters(family_example, out, monkeypatch) -> None:
    recorder = Recorder(monkeypatch)
    cfg = lora_cfg(family_example("hf"), out)
    cfg = validate_config(
        {**cfg.model_dump(mode="json"), "model": {**cfg.model.model_dump(mode="json"), "gradient_checkpointing": True}}
    )
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    (start,) = recorder.starts
    assert all(not torch.equal(start[n], recorder.end[n]) for n in start if ".lora_B." in n)


# --------------------------------------------------------------------------------------------- drift, sequences


def test_drift_and_delta_weight_after_a_run(make_cfg, monkeypatch) -> None:
    recorder = Recorder(monkeypatch)
    result = run(make_cfg("method.name=lora", "train.lr=0.02"))
    drift = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    assert set(drift.block) == {"backbone.0", "heads.digits_0_4", "heads.digits_5_9"}
    assert np.isfinite(drift.value).all()
    last = drift[(drift.step == drift.step.max()) & (drift.metric == "drift_l2")].set_index("block").value
    assert last["backbone.0"] > 0 and last["heads.digits_0_4"] == 0
    # delta_weight is ‖(α/r)·B·A‖ of the fine-tuned adapter.
    layer = lora_layers(recorder.model.backbone)["0.1"]
    delta = 2.0 * layer.lora_B["default"].weight.detach().double() @ layer.lora_A["default"].weight.detach().double()
    base = layer.get_base_layer()
    pretrained = float(torch.cat([base.weight.double().flatten(), base.bias.double()]).norm())
    got = result.summary["method_info"]["delta_weight"]["0"]
    assert got["l2"] == pytest.approx(float(delta.norm()), rel=1e-6)
    assert got["relative"] == pytest.approx(float(delta.norm()) / pretrained, rel=1e-6)


def test_in_a_sequence_one_adapter_goes_on_training(make_cfg) -> None:
    cfg = make_cfg("method.name=lora", experiment="sequence_digits.yaml")
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None)
    randomise_adapters(model)
    before = {n: p for n, p in model.named_parameters() if is_adapter(n)}
    values = {n: p.detach().clone() for n, p in before.items()}
    start_task(model, ctx, method, 1)
    after = {n: p for n, p in model.named_parameters() if is_adapter(n)}
    assert after.keys() == before.keys()
    assert all(after[n] is before[n] and torch.equal(after[n], values[n]) and after[n].requires_grad for n in after)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(after) | {n for n, _ in model.named_parameters() if n.startswith(f"heads.{ctx.task.head}.")}


def test_injection_leaves_the_global_random_streams_alone(make_cfg) -> None:
    cfg = make_cfg("method.name=lora")
    tasks = build_tasks(cfg)
    draws = []
    for method in ("finetune", "lora"):
        torch.manual_seed(0)
        finetune_model(cfg, tasks, build_method({"name": method}), state=None)
        draws.append(torch.rand(3))
    assert torch.equal(*draws)


@pytest.mark.slow
def test_two_processes_measure_what_one_does(tmp_path: Path) -> None:
    """DDP (2 CPU processes, gloo): the same seeded adapter in each, gradients averaged: the measurements are
    the single process's to float rounding."""
    small = ["logging.wandb=disabled", "logging.progress=false", "model.hidden=[32]", "pretrain.train.epochs=5"]
    small += ["train.epochs=1", "eval.every_n_steps=4", "logging.log_every_n_steps=1", "method.name=lora"]
    research = str(Path(sys.executable).with_name("research"))
    frames = []
    for where, extra in (("single", []), ("double", ["train.devices=2", "train.strategy=ddp"])):
        out = tmp_path / where
        out.mkdir()
        done = subprocess.run(
            [research, "run", str(EXPERIMENTS / "split_digits.yaml"), *small, f"out={out}", *extra],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=out,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        (run_dir,) = [p for p in out.iterdir() if p.is_dir() and p.name not in ("pretrained", ".locks", "grids")]
        frames.append(pd.read_parquet(run_dir / "metrics.parquet"))
    a, b = frames
    assert a[["step", "task", "metric"]].equals(b[["step", "task", "metric"]])
    np.testing.assert_allclose(b.value, a.value, rtol=1e-5, atol=1e-6)


def test_l2sp_on_the_effective_weights_is_half_alpha_times_the_squared_delta(make_cfg) -> None:
    """LoRA with L2-SP: the term is l2sp_alpha/2 · Σ ‖(α/r)·B·A‖², i.e. L2-SP's ‖W − W₀‖²/2 on the adapted
    layers (hand-computed from A and B here), with gradients only for the adapters; 0 adds no term."""
    cfg = make_cfg("method.name=lora", "method.l2sp_alpha=3.0")
    _, model, method, ctx = plain_and_injected(cfg)
    randomise_adapters(model)
    method.prepare(model, ctx)
    term = method.loss_terms(model, None)["l2sp"]
    expected = 0.0
    for layer in lora_layers(model.backbone).values():
        a, b = layer.lora_A["default"].weight.detach().double(), layer.lora_B["default"].weight.detach().double()
        expected += float(((16.0 / 8) * b @ a).pow(2).sum())
    assert float(term) == pytest.approx(0.5 * 3.0 * expected, rel=1e-5)
    term.backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    assert graded and all(is_adapter(n) for n in graded)
    off = build_method({"name": "lora"})
    assert off.loss_terms(model, None) == {}


def test_l2sp_keeps_the_effective_weights_closer_to_the_pretrained_ones(make_cfg) -> None:
    free = run(make_cfg("method.name=lora", "train.lr=0.02"))
    pulled = run(make_cfg("method.name=lora", "train.lr=0.02", "method.l2sp_alpha=1.0"))
    moved = {r.summary["method_info"]["delta_weight"]["0"]["l2"] for r in (free, pulled)}
    assert len(moved) == 2
    assert (
        pulled.summary["method_info"]["delta_weight"]["0"]["l2"]
        < free.summary["method_info"]["delta_weight"]["0"]["l2"]
    )
    assert "train_loss_l2sp" in set(pulled.metrics.metric) and "train_loss_l2sp" not in set(free.metrics.metric)
