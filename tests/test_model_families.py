"""Tests generated from the method and adapter registries: every method on every model family's example
(``Adapter.example``: a tiny Hugging Face encoder on text, a user's module, timm and torchvision backbones, the
built-in MLP and CNN), through the real pipeline, and every family through partial unfreezing and layer-wise
learning rates. A new family file is tested here the moment it is registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from research.cli import main
from research.config import ExperimentConfig, validate_config
from research.data import build_tasks
from research.errors import ConfigError
from research.methods import build_method, method_class, method_names
from research.models.adapters import adapter, adapter_names
from research.models.adapters.base import Example
from research.training import run
from research.training.finetune import finetune_model
from research.training.module import parameter_groups

SAMPLE_KEYS = ("fisher_samples", "importance_samples")  # keep the estimators of EWC, MAS... to a few examples
FAMILIES = adapter_names()
EXTERNAL = [name for name in FAMILIES if adapter(name).external]


def _families(names: list[str]) -> list[Any]:
    """Family names as test parameters, marked slow where even the example is a full-size model."""
    return [pytest.param(n, marks=pytest.mark.slow) if adapter(n).slow_example else n for n in names]


def _method(name: str) -> dict[str, Any]:
    fields = method_class(name).Config.model_fields
    return {"name": name, **{key: 32 for key in SAMPLE_KEYS if key in fields}}


def example_config(
    example: Example, out: Path, method: str = "finetune", pretrain: bool = True, **model: Any
) -> ExperimentConfig:
    """A family's example as a short experiment: 6 pretraining steps (heads only, for an external model), 4
    fine-tuning steps scored every 2 on 16 examples per task."""
    return validate_config(
        {
            "out": str(out),
            "model": {**example.model, **model},
            "pretrain": {
                "tasks": example.pretrain_tasks if pretrain else [],
                "train": {"max_steps": 6, "batch_size": 16, "lr": 0.01},
            },
            "finetune": {"tasks": example.finetune_tasks},
            "method": _method(method),
            "train": {"max_steps": 4, "batch_size": 16},
            "eval": {"every_n_steps": 2, "max_samples": 16},
            "logging": {"wandb": "disabled", "progress": False, "log_every_n_steps": 1},
        }
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gives_an_example_that_validates(family: str, family_example) -> None:
    example = family_example(family)
    assert example.model["arch"] == family and example.finetune_tasks
    assert example.pretrain_tasks or adapter(family).external  # a family we pretrain needs tasks to pretrain on
    adapter(family).check(example_config(example, Path("unused")).model)


@pytest.mark.parametrize("family", _families(FAMILIES))
@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_on_each_model_family(name: str, family: str, family_example, out: Path) -> None:
    """With pretraining tasks (for an external model, heads trained on its frozen features), every method runs
    and scores old and new tasks from step 0, except on an external model those that need the trajectory of
    pretraining the backbone itself, which refuse up front."""
    cfg = example_config(family_example(family), out, name)
    if method_class(name).records_in_pretraining is not None and adapter(family).external:
        with pytest.raises(ConfigError, match="trajectory"):
            run(cfg)
        return
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    metrics = result.metrics
    assert np.isfinite(metrics.value).all()
    assert set(metrics[metrics.step == 0].task) == set(result.summary["tasks"])  # old and new, from step 0
    assert result.summary["model"]["arch"] == family


@pytest.mark.parametrize("family", _families(EXTERNAL))
@pytest.mark.parametrize("name", method_names())
def test_without_pretraining_tasks_a_method_runs_or_says_what_it_needs(
    name: str, family: str, family_example, out: Path
) -> None:
    example = family_example(family)
    cfg = example_config(example, out, name, pretrain=False)
    cls = method_class(name)
    if cls.needs_pretraining_data or cls.records_in_pretraining is not None:
        with pytest.raises(ConfigError, match=f"method.name: {name} needs"):
            run(cfg)
        return
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    assert set(result.metrics.task) == {t["name"] for t in example.finetune_tasks}


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


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_through_partial_unfreezing_and_layer_wise_rates(family: str, family_example, out) -> None:
    """Partial fine-tuning trains exactly the top block (and the new head); layer-wise rates give block i of n
    lr · scale · decay^(n−1−i). Both run through the real training loop on each family's blocks."""
    example = family_example(family)
    cfg = example_config(example, out, "partial")
    cfg = validate_config({**cfg.model_dump(mode="json"), "method": {"name": "partial", "unfreeze_top_k": 1}})
    tasks = build_tasks(cfg)
    model, _ = finetune_model(cfg, tasks, build_method(cfg.method), state=None)
    blocks = model.blocks()
    assert len(blocks) >= 2
    trainable = [any(p.requires_grad for p in b.parameters()) for b in blocks]
    assert trainable == [False] * (len(blocks) - 1) + [True]

    # Through training: only the top block and the new head move.
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    drift = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    last = drift[(drift.step == drift.step.max()) & (drift.metric == "drift_l2")].set_index("block").value
    names = [f"backbone.{n}" for n in model.block_names()]
    assert (last[names[:-1]] == 0).all(), last
    assert last[names[-1]] > 0 and last[f"heads.{tasks.finetune[0].head}"] > 0

    lr_cfg = example_config(example, out)
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
