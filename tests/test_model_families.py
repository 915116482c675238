"""Tests generated from the method and adapter registries: every method on a tiny Hugging Face encoder (text
tasks) and on a tiny user model (``custom``), through the real pipeline, and every adapter through partial
unfreezing and layer-wise learning rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from research.cli import main
from research.config import validate_config
from research.data import build_tasks
from research.errors import ConfigError
from research.methods import build_method, method_class, method_names
from research.training import run
from research.training.finetune import finetune_model
from research.training.module import parameter_groups

SAMPLE_KEYS = ("fisher_samples", "importance_samples")  # keep the estimators of EWC, MAS... to a few examples


def _method(name: str) -> dict[str, Any]:
    fields = method_class(name).Config.model_fields
    return {"name": name, **{key: 32 for key in SAMPLE_KEYS if key in fields}}


def hf_config(model_dir: Path, table: Path, out: Path, method: str = "finetune", pretrain: bool = True, **model):
    """Text tasks on the tiny BERT: pretraining task a/b (its head trained on the frozen encoder), new task c/d
    as text pairs."""
    task = {"source": "text", "path": str(table)}
    return validate_config(
        {
            "out": str(out),
            "model": {"arch": "hf", "name": str(model_dir), "max_length": 16, **model},
            "pretrain": {
                "tasks": [{"name": "ab", "classes": ["a", "b"], **task}] if pretrain else [],
                "train": {"max_steps": 6, "batch_size": 16, "lr": 0.01},
            },
            "finetune": {"tasks": [{"name": "cd", "classes": ["c", "d"], "text_pair_column": "second", **task}]},
            "method": _method(method),
            "train": {"max_steps": 4, "batch_size": 16},
            "eval": {"every_n_steps": 2, "max_samples": 32},
            "logging": {"wandb": "disabled", "progress": False, "log_every_n_steps": 1},
        }
    )


def custom_config(factory: str, out: Path, method: str = "finetune", pretrain: bool = True, **model):
    return validate_config(
        {
            "out": str(out),
            "model": {"arch": "custom", "factory": factory, "blocks": ["stem", "body", "top"], **model},
            "pretrain": {
                "tasks": [{"name": "d04", "source": "digits", "classes": [0, 1, 2, 3, 4]}] if pretrain else [],
                "train": {"max_steps": 6, "batch_size": 32},
            },
            "finetune": {"tasks": [{"name": "d59", "source": "digits", "classes": [5, 6, 7, 8, 9]}]},
            "method": _method(method),
            "train": {"max_steps": 4, "batch_size": 32},
            "eval": {"every_n_steps": 2, "max_samples": 40},
            "logging": {"wandb": "disabled", "progress": False, "log_every_n_steps": 1},
        }
    )


def timm_config(out: Path, method: str = "finetune", pretrain: bool = True, **model):
    """timm's small test_resnet (random weights: nothing downloads) on digits, resized to its input size."""
    cfg = custom_config("unused:unused", out, method, pretrain).model_dump(mode="json")
    cfg["model"] = {"arch": "timm", "name": "test_resnet", "pretrained": False, **model}
    cfg["eval"]["max_samples"] = 16
    cfg["train"].update(max_steps=3, batch_size=16)
    return validate_config(cfg)


@pytest.fixture(params=["hf", "custom", "timm"])
def family(request, tiny_bert: Path, word_table: Path, out: Path, tmp_path: Path, monkeypatch):
    """A function (method, pretrain, **model keys) -> config, for each external family."""
    if request.param == "hf":
        return lambda method="finetune", pretrain=True, **kw: hf_config(
            tiny_bert, word_table, out, method, pretrain, **kw
        )
    if request.param == "timm":
        return lambda method="finetune", pretrain=True, **kw: timm_config(out, method, pretrain, **kw)
    factory = request.getfixturevalue("custom_model")
    return lambda method="finetune", pretrain=True, **kw: custom_config(factory, out, method, pretrain, **kw)


@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_on_each_model_family(name: str, family) -> None:
    """With pretraining tasks (heads trained on the loaded model's frozen features), every method runs, except
    those that need the trajectory of pretraining the backbone itself, which refuse up front."""
    if method_class(name).records_in_pretraining is not None:
        with pytest.raises(ConfigError, match="trajectory"):
            run(family(name))
        return
    result = run(family(name))
    assert result.summary["status"] == "completed", result.summary["error"]
    metrics = result.metrics
    assert np.isfinite(metrics.value).all()
    assert set(metrics[metrics.step == 0].task) == set(result.summary["tasks"])  # old and new, from step 0
    assert result.summary["model"]["arch"] in ("hf", "custom", "timm")


@pytest.mark.parametrize("name", method_names())
def test_without_pretraining_tasks_a_method_runs_or_says_what_it_needs(name: str, family) -> None:
    cls = method_class(name)
    if cls.needs_pretraining_data or cls.records_in_pretraining is not None:
        with pytest.raises(ConfigError, match=f"method.name: {name} needs"):
            run(family(name, pretrain=False))
        return
    result = run(family(name, pretrain=False))
    assert result.summary["status"] == "completed", result.summary["error"]
    assert set(result.metrics.task) == {"cd", "d59"} & set(result.summary["tasks"])


def test_a_method_that_needs_pretraining_data_exits_2_naming_why(tiny_bert, word_table, out, tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"""
model: {{arch: hf, name: {tiny_bert}}}
finetune: {{tasks: [{{name: cd, source: text, path: {word_table}, classes: [c, d]}}]}}
method: {{name: ewc}}
out: {out}
logging: {{wandb: disabled}}
"""
    )
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pretraining data" in err[0] and "l2sp" in err[0]
    assert not [p for p in out.iterdir() if p.name != "pretrained"]


def _frozen_and_moved(result_model: torch.nn.Module, start: dict[str, torch.Tensor]) -> dict[str, bool]:
    return {n: not torch.equal(p.detach(), start[n]) for n, p in result_model.named_parameters()}


@pytest.mark.parametrize("family_name", ["mlp", "cnn", "hf", "custom", "timm", "torchvision"])
def test_every_adapter_through_partial_unfreezing_and_layer_wise_rates(
    family_name: str, tiny_bert, word_table, out, tmp_path, monkeypatch, request
) -> None:
    """Partial fine-tuning trains exactly the top block (and the new head); layer-wise rates give block i of n
    lr · scale · decay^(n−1−i). Both run through the real training loop on each family's blocks."""
    if family_name == "hf":
        make = lambda **kw: hf_config(tiny_bert, word_table, out, **kw)  # noqa: E731
    elif family_name == "custom":
        factory = request.getfixturevalue("custom_model")
        make = lambda **kw: custom_config(factory, out, **kw)  # noqa: E731
    elif family_name == "timm":
        make = lambda **kw: timm_config(out, **kw)  # noqa: E731
    elif family_name == "torchvision":

        def make(method: str = "finetune", **kw):
            cfg = timm_config(out, method, **kw).model_dump(mode="json")
            cfg["model"] = {"arch": "torchvision", "name": "mobilenet_v3_small", "pretrained": False}
            return validate_config(cfg)
    else:

        def make(method: str = "finetune", **kw):
            cfg = custom_config("unused:unused", out, method, **kw).model_dump(mode="json")
            cfg["model"] = {"arch": family_name, "hidden": [16, 16], "channels": [4, 6]}
            return validate_config(cfg)

    cfg = make(method="partial")
    cfg.method["unfreeze_top_k"] = 1
    cfg = validate_config(cfg.model_dump(mode="json"))
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, _ = finetune_model(cfg, tasks, method, state=None)
    blocks = model.blocks()
    assert len(blocks) >= 2
    trainable = [any(p.requires_grad for p in b.parameters()) for b in blocks]
    assert trainable == [False] * (len(blocks) - 1) + [True]

    # Through training: only the top block and the new head move.
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    import pandas as pd

    drift = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    last = drift[(drift.step == drift.step.max()) & (drift.metric == "drift_l2")].set_index("block").value
    names = [f"backbone.{n}" for n in model.block_names()]
    assert (last[names[:-1]] == 0).all(), last
    assert last[names[-1]] > 0 and last[f"heads.{tasks.finetune[0].head}"] > 0

    lr_cfg = make(method="finetune")
    lr_cfg = validate_config(
        {**lr_cfg.model_dump(mode="json"), "train": {"lr": 0.1, "backbone_lr_scale": 0.5, "lr_decay": 0.1}}
    )
    model, _ = finetune_model(lr_cfg, build_tasks(lr_cfg), build_method(lr_cfg.method), state=None)
    groups = parameter_groups(model, lr_cfg.train)
    n = len(model.blocks())
    rates = [g["lr"] for g in groups if g["name"].startswith("backbone")]
    np.testing.assert_allclose(rates, [0.1 * 0.5 * 0.1 ** (n - 1 - i) for i in range(n)])
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}  # nothing left out of the optimizer
