"""Weight drift per block, recorded with every evaluation in diagnostics.parquet."""

from __future__ import annotations

import math

import pandas as pd
import torch

from research.config import ModelConfig
from research.evaluation.drift import block_of, parameter_snapshot, weight_drift
from research.models import build_model
from research.training import run


def test_block_names() -> None:
    assert block_of("backbone.1.0.weight") == "backbone.1"
    assert block_of("heads.digits_0_4.bias") == "heads.digits_0_4"


def test_hand_computed_drift() -> None:
    model = build_model(ModelConfig(arch="mlp", hidden=[2]), (2,), {"a": 1})
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    start = parameter_snapshot(model)
    with torch.no_grad():
        model.backbone[0][1].weight.add_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # Linear(2, 2) after Flatten
    drift = weight_drift(model, start)
    # backbone.0 holds 4 weights + 2 biases, all 1: ‖θ₀‖ = √6; moved by (3, 4): ‖θ − θ₀‖ = 5.
    assert drift["backbone.0"]["drift_l2"] == 5.0
    assert math.isclose(drift["backbone.0"]["drift_relative"], 5.0 / math.sqrt(6.0), rel_tol=1e-6)
    assert drift["heads.a"] == {"drift_l2": 0.0, "drift_relative": 0.0}


def test_run_records_drift_with_every_evaluation(make_cfg) -> None:
    result = run(make_cfg("method.name=feature_extraction", "model.batchnorm=true"))
    drift = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    metrics = result.metrics
    eval_steps = sorted(metrics[metrics.metric == "acc"].step.unique())
    assert sorted(drift.step.unique()) == eval_steps
    assert set(drift.block) == {"backbone.0", "heads.digits_0_4", "heads.digits_5_9"}
    # Feature extraction: the backbone and the old head never move, the new head does.
    frozen = drift[drift.block.isin(["backbone.0", "heads.digits_0_4"])]
    assert (frozen.value == 0.0).all()
    new = drift[(drift.block == "heads.digits_5_9") & (drift.metric == "drift_l2")].set_index("step").value
    assert new.iloc[0] == 0.0 and new.iloc[-1] > 0
