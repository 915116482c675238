"""WiSE-FT: the interpolation sweep after fine-tuning, stored in method.parquet."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from research.config import ModelConfig
from research.errors import ConfigError
from research.methods.wise_ft import interpolate
from research.models import build_model
from research.training import run


def _final(metrics: pd.DataFrame) -> dict[tuple[str, str], float]:
    evals = metrics[metrics.metric.isin(["acc", "loss"])]
    last = evals[evals.step == evals.step.max()]
    return {(r.task, r.metric): r.value for r in last.itertuples()}


def _initial(metrics: pd.DataFrame) -> dict[tuple[str, str], float]:
    evals = metrics[metrics.metric.isin(["acc", "loss"]) & (metrics.step == 0)]
    return {(r.task, r.metric): r.value for r in evals.itertuples()}


@pytest.mark.parametrize("batchnorm", [False, True])
def test_sweep_ends_at_the_fine_tuned_model_and_starts_at_the_pretrained_backbone(batchnorm: bool, make_cfg) -> None:
    result = run(make_cfg("method.name=wise_ft", f"model.batchnorm={str(batchnorm).lower()}", "train.lr=0.02"))
    sweep = pd.read_parquet(result.run_dir / "method.parquet")
    assert result.summary["method_table"] == "method.parquet"
    assert list(sweep.columns) == ["alpha", "task", "role", "metric", "value", "after_task", "final"]
    assert set(sweep.after_task) == {"digits_5_9"} and sweep.final.all()
    assert sorted(sweep.alpha.unique()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    at = {(r.alpha, r.task, r.metric): r.value for r in sweep.itertuples()}
    # α = 1 is exactly the fine-tuned model that the final evaluation scored.
    for (task, metric), value in _final(result.metrics).items():
        assert at[(1.0, task, metric)] == value
    # α = 0 puts the pretrained backbone back: the old task scores exactly as at step 0 (its head never trained).
    for (task, metric), value in _initial(result.metrics).items():
        if task == "digits_0_4":
            assert at[(0.0, task, metric)] == value
    # Somewhere in between, the old task is better than after fine-tuning: the trade-off the sweep exists for.
    old = sweep[(sweep.task == "digits_0_4") & (sweep.metric == "acc")].set_index("alpha").value
    assert old[0.0] > old[1.0]


def test_training_is_plain_finetuning(make_cfg) -> None:
    ours = run(make_cfg("method.name=wise_ft")).metrics
    reference = run(make_cfg("method.name=finetune")).metrics
    assert ours.equals(reference)


def test_interpolate_is_linear_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[6], batchnorm=True), (4,), {"a": 3})
    start = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    buffers = {n: torch.zeros_like(b) for n, b in model.named_buffers() if b.is_floating_point()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mixed = interpolate(model, start, buffers, 0.25)
    for name, p in mixed.named_parameters():
        torch.testing.assert_close(p, 0.25 * before[name])
        assert torch.equal(dict(model.named_parameters())[name], before[name])


def test_grown_shared_head_interpolates_only_its_pretrained_rows() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[6]), (4,), {"shared": 5})
    start = {"heads.shared.weight": torch.zeros(3, 6), "heads.shared.bias": torch.zeros(3)}
    weight = model.heads["shared"].weight.detach().clone()
    mixed = interpolate(model, start, {}, 0.5)
    torch.testing.assert_close(mixed.heads["shared"].weight[:3], 0.5 * weight[:3])
    assert torch.equal(mixed.heads["shared"].weight[3:], weight[3:])


def test_alphas_must_lie_in_the_unit_interval(make_cfg) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        make_cfg("method.name=wise_ft", "method.alphas=[0.5,1.5]")
