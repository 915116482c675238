"""Scale settings through Lightning: mixed precision, gradient accumulation, and what is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_model_families import example_config
from test_resume import SETTINGS, assert_same_run, reference_root, run_interrupted  # noqa: F401

from research.errors import ConfigError
from research.store import read_summary
from research.training import run

EVALS = ["acc", "loss", "train_loss", "train_loss_task"]


def _values(frame: pd.DataFrame) -> pd.Series:
    frame = frame[frame.metric.isin(EVALS)]
    return frame.set_index(["step", "task", "metric"]).value.sort_index()


@pytest.mark.parametrize("heads", ["per_task", "shared"])
@pytest.mark.parametrize("method", ["finetune", "ewc", "lwf"])
def test_accumulating_two_batches_is_one_batch_twice_the_size(method: str, heads: str, make_cfg) -> None:
    """Batches of 16 accumulated in pairs make the updates of batches of 32 (the same examples, in the same
    order): every measurement agrees to float rounding, on the same step axis. (Replay is left out: it draws
    buffer examples per batch, so two draws of 16 are other examples than one of 32.)"""
    common = [f"method.name={method}", f"model.heads={heads}", "logging.log_every_n_steps=1", "train.epochs=1"]
    one = run(make_cfg(*common, "train.batch_size=32")).metrics
    two = run(make_cfg(*common, "train.batch_size=16", "train.accumulate_grad_batches=2")).metrics
    a, b = _values(one), _values(two)
    assert a.index.equals(b.index) and len(a) > 0
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-5, atol=1e-6)


def test_an_epoch_that_does_not_divide_ends_with_a_shorter_update(make_cfg) -> None:
    """19 batches per epoch in groups of 4: 5 updates an epoch, the last of 3 batches."""
    result = run(make_cfg("train.batch_size=20", "train.accumulate_grad_batches=4", "train.epochs=2"))
    tasks = result.summary["tasks"]
    batches = -(-tasks["digits_5_9"]["sizes"]["train"] // 20)
    assert result.summary["steps"] == 2 * -(-batches // 4)


def test_accumulation_resumes_exactly(make_cfg, reference_root: Path, monkeypatch) -> None:  # noqa: F811
    settings = [*SETTINGS, "train.batch_size=16", "train.accumulate_grad_batches=3"]
    reference = run(make_cfg(*settings, root=reference_root))
    cfg = make_cfg(*settings)
    run_interrupted(cfg, monkeypatch, update=31)  # 31 batches: 10 updates and one batch of the 11th
    assert read_summary(Path(cfg.out) / reference.run_id)["status"] == "failed"
    resumed = run(cfg)
    assert resumed.summary["resumed_from_step"] == 8  # the checkpoint of update 8, never one inside an update
    assert_same_run(resumed.run_dir, reference.run_dir)


def test_bf16_mixed_precision_trains_both_families(make_cfg, family_example, out) -> None:
    for cfg in (make_cfg("train.precision=bf16-mixed"), example_config(family_example("hf"), out)):
        if cfg.model.arch == "hf":
            cfg.train.precision = "bf16-mixed"
        result = run(cfg)
        assert result.summary["status"] == "completed", result.summary["error"]
        assert np.isfinite(result.metrics.value).all()


def test_16_bit_precision_needs_a_gpu(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"train.precision: 16-mixed needs a GPU"):
        run(make_cfg("train.precision=16-mixed", "device=cpu"))
