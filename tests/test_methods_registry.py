"""Tests generated from the method registry: a new method is tested the moment it is registered."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from research.cli import main
from research.config import load_config
from research.data import build_tasks
from research.errors import ConfigError
from research.methods import (
    HeadBatch,
    Method,
    MethodConfig,
    TrainStep,
    build_method,
    describe_methods,
    method_class,
    method_config,
    method_names,
    register,
)
from research.methods.registry import unregister
from research.training import run
from research.training.finetune import finetune_model

CORE_METHODS = {"finetune", "feature_extraction", "partial", "l2sp", "ewc", "replay"}


def test_the_core_methods_are_registered() -> None:
    assert set(method_names()) >= CORE_METHODS
    assert method_names() == sorted(method_names())


def _trajectory(cfg, tasks) -> dict:
    """A stand-in pretraining path integral (seeded, positive) for methods that need one (SI), so that the
    generic tests can prepare every method on an untrained model."""
    import torch

    from research.methods.path_integral import PathIntegral
    from research.training.pretrain import pretrained_skeleton

    torch.manual_seed(0)
    trajectory = PathIntegral(pretrained_skeleton(cfg, tasks))
    for omega in trajectory.omega.values():
        omega.uniform_(0.0, 1.0)
    return {"path_integral": trajectory.state_dict()}


def _loss_term_names(cfg) -> set[str]:
    """The names a method's ``loss_terms`` returns, asked of the method itself on one real batch."""
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None, records=_trajectory(cfg, tasks))
    method.prepare(model, ctx)
    x, y = ctx.task.splits["train"]
    batches = [HeadBatch(ctx.task.head, x[:8], y[:8]), *method.extra_batches(8)]
    logits = [model(b.x, b.head) for b in batches]
    return set(method.loss_terms(model, TrainStep(batches, logits, 0)))


@pytest.mark.parametrize("heads", ["per_task", "shared"])
@pytest.mark.parametrize("name", method_names())
def test_method_runs_end_to_end(name: str, heads: str, make_cfg) -> None:
    cfg = make_cfg(
        f"method.name={name}",
        f"model.heads={heads}",
        "logging.log_every_n_steps=1",
        "method.fisher_samples=200" if name == "ewc" else "seed=0",
    )
    result = run(cfg)
    summary = result.summary
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["method"] == name
    assert summary["steps"] > 0
    assert isinstance(summary["method_info"], dict)

    metrics = result.metrics
    assert np.isfinite(metrics.value.to_numpy()).all()
    assert set(metrics.task) == {"digits_0_4", "digits_5_9"}
    assert {"acc", "loss", "train_loss", "train_loss_task"} <= set(metrics.metric)
    for task, scores in summary["final"].items():
        assert math.isfinite(scores["acc"]) and math.isfinite(scores["loss"]), task

    # Every loss term the method returns is logged, finite, under train_loss_<term> ...
    terms = _loss_term_names(cfg)
    for term in terms:
        logged = metrics[metrics.metric == f"train_loss_{term}"].value
        assert len(logged) == summary["steps"], term
        assert np.isfinite(logged).all(), term
    # ... and they add up: total loss = task loss + the method's terms, at every logged step.
    train = metrics[metrics.metric.str.startswith("train_")].pivot(index="step", columns="metric", values="value")
    total = train["train_loss_task"] + sum(train[f"train_loss_{t}"] for t in terms)
    np.testing.assert_allclose(train["train_loss"], total, rtol=1e-5)


def test_known_loss_terms() -> None:
    expected = {
        "finetune": set(),
        "feature_extraction": set(),
        "partial": set(),
        "replay": set(),
        "ewc": {"ewc"},
        "l2sp": {"l2sp", "l2_new_head"},
        "mas": {"mas"},
        "lwf": {"lwf"},
        "agem": set(),
        "der": {"der"},
        "derpp": {"der", "der_ce"},
        "joint": set(),
        "wise_ft": set(),
        "lp_ft": set(),
        "si": {"si"},
    }
    for name, terms in expected.items():
        cfg = load_config(
            Path(__file__).resolve().parents[1] / "experiments" / "split_digits.yaml",
            ["model.hidden=[16]", f"method.name={name}", "logging.wandb=disabled"],
        )
        assert _loss_term_names(cfg) == terms, name


@pytest.mark.parametrize("name", method_names())
def test_method_config_has_defaults_and_a_cited_docstring(name: str) -> None:
    cls = method_class(name)
    config = method_config({"name": name})  # every hyperparameter has a default
    assert isinstance(config, MethodConfig) and config.name == name
    assert cls.name == name
    assert (cls.__doc__ or "").strip(), f"{name} needs a docstring"
    with pytest.raises(ConfigError, match=r"method\.no_such_setting"):
        method_config({"name": name, "no_such_setting": 1})


def _methods_output(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            current = line.strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


@pytest.mark.parametrize("name", method_names())
def test_methods_command_lists_every_hyperparameter(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    sections = _methods_output(capsys)
    assert name in sections
    fields = {f: info for f, info in method_class(name).Config.model_fields.items() if f != "name"}
    for field, info in fields.items():
        line = next((ln for ln in sections[name].splitlines() if ln.split()[:1] == [field]), None)
        assert line is not None, f"{name}.{field} is missing from `research methods`"
        assert repr(info.get_default(call_default_factory=True)) in line  # with its default
    if not fields:
        assert "no hyperparameters" in sections[name]
    described = {m["name"]: m for m in describe_methods()}
    assert [p["name"] for p in described[name]["params"]] == list(fields)


def test_duplicate_registration_raises() -> None:
    before = method_names()

    class FakeConfig(MethodConfig):
        name: Literal["finetune"] = "finetune"

    class Impostor(Method):
        name = "finetune"
        Config = FakeConfig

    with pytest.raises(ValueError, match="registered twice"):
        register(Impostor)
    assert method_names() == before
    assert method_class("finetune") is not Impostor


def test_registering_a_new_name_twice_raises() -> None:
    class OneConfig(MethodConfig):
        name: Literal["throwaway_test_method"] = "throwaway_test_method"

    class One(Method):
        name = "throwaway_test_method"
        Config = OneConfig

    class Two(Method):
        name = "throwaway_test_method"
        Config = OneConfig

    try:
        assert register(One) is One
        assert register(One) is One  # re-registering the same class (a module re-import) is fine
        assert "throwaway_test_method" in method_names()
        with pytest.raises(ValueError, match="registered twice"):
            register(Two)
        assert method_class("throwaway_test_method") is One
    finally:
        unregister("throwaway_test_method")
    assert "throwaway_test_method" not in method_names()


def test_registering_without_name_or_config_raises() -> None:
    class Nameless(Method):
        Config = MethodConfig

    with pytest.raises(TypeError, match="name"):
        register(Nameless)

    class NoConfig(Method):
        name = "no_config_test_method"

    with pytest.raises(TypeError, match="Config"):
        register(NoConfig)
    assert "no_config_test_method" not in method_names()


def test_unknown_method_name_is_an_error() -> None:
    for call in (build_method, method_config):
        with pytest.raises(ConfigError) as info:
            call({"name": "no_such_method"})
        message = str(info.value)
        assert "no_such_method" in message
        assert all(name in message for name in method_names())
    with pytest.raises(ConfigError, match="unknown method"):
        method_class("no_such_method")
    with pytest.raises(ConfigError, match="needs a 'name'"):
        method_config({"lam": 3})


@pytest.mark.parametrize("name", method_names())
def test_every_method_declares_its_neutral_setting_or_why_not(name: str) -> None:
    neutral = method_class(name).neutral
    if neutral is None:
        assert method_class(name).why_no_neutral, f"{name}: set `neutral`, or `why_no_neutral` to say why none"
    else:
        method_config({"name": name, **neutral})  # the neutral values are valid hyperparameters


@pytest.mark.parametrize("heads", ["per_task", "shared"])
@pytest.mark.parametrize("name", [n for n in method_names() if method_class(n).neutral is not None and n != "finetune"])
def test_neutral_setting_behaves_exactly_like_finetune(name: str, heads: str, make_cfg) -> None:
    """A method whose strength is zero must leave every measurement of plain fine-tuning unchanged, in both
    head layouts."""
    neutral = [f"method.{key}={value}" for key, value in method_class(name).neutral.items()]
    # dropout: RNG use must match too
    settings = ["model.dropout=0.1", "train.epochs=1", "eval.every_n_steps=4", f"model.heads={heads}"]
    ours = run(make_cfg(f"method.name={name}", *neutral, *settings)).metrics
    reference = run(make_cfg("method.name=finetune", *settings)).metrics
    evals = ["acc", "loss"]
    ours = ours[ours.metric.isin(evals)].reset_index(drop=True)
    reference = reference[reference.metric.isin(evals)].reset_index(drop=True)
    assert len(ours) == len(reference) > 0
    assert ours.equals(reference), name


@pytest.mark.parametrize("heads", ["per_task", "shared"])
@pytest.mark.parametrize("name", method_names())
def test_method_state_survives_a_checkpoint_round_trip(name: str, heads: str, make_cfg, tmp_path: Path) -> None:
    """state_dict → safetensors file → a fresh instance prepared on other weights → load_state_dict: the same
    state and the same loss terms as the original."""
    import torch
    from safetensors.torch import load_file, save_file

    cfg = make_cfg(f"method.name={name}", f"model.heads={heads}")
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    trajectory = _trajectory(cfg, tasks)
    model, ctx = finetune_model(cfg, tasks, method, state=None, records=trajectory)
    method.prepare(model, ctx)
    state = method.state_dict()
    file = tmp_path / "method.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(file))

    other = build_method(cfg.method)
    other_model, other_ctx = finetune_model(cfg, tasks, other, state=None, records=trajectory)
    with torch.no_grad():  # prepare on different weights, so only the loaded state can make them agree
        for p in other_model.parameters():
            p.add_(0.05)
    other.prepare(other_model, other_ctx)
    other.load_state_dict(load_file(str(file)))
    restored = other.state_dict()
    assert set(restored) == set(state)
    for key, tensor in state.items():
        assert torch.equal(restored[key], tensor), (name, key)

    x, y = ctx.task.splits["train"]
    batches = [HeadBatch(ctx.task.head, x[:8], y[:8])]
    logits = [model(b.x, b.head) for b in batches]
    ours = method.loss_terms(model, TrainStep(batches, logits, 0))
    theirs = other.loss_terms(model, TrainStep(batches, logits, 0))
    assert set(ours) == set(theirs)
    for term, value in ours.items():
        assert torch.equal(value, theirs[term]), (name, term)
