"""LP-FT: a linear probe, then full fine-tuning, on one step axis. Real tiny runs, checked bit for bit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from research.data import build_tasks
from research.errors import ConfigError
from research.methods import build_method, method_config
from research.methods.lp_ft import LPFT
from research.training import run
from research.training.checkpoints import read_state_dict
from research.training.finetune import finetune_model

# BatchNorm (running statistics that move in train mode), dropout (RNG that must be drawn identically), and a
# decoupled weight decay (which would move frozen weights if the optimizer ever touched them).
HARD = ("model.batchnorm=true", "model.dropout=0.1", "train.optimizer=adamw", "train.weight_decay=0.1")


def eval_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics.metric.isin(["acc", "loss"])].reset_index(drop=True)


def pretrained_backbone(result) -> dict[str, torch.Tensor]:
    state = read_state_dict(Path(result.summary["pretrained"]["path"]) / "model.safetensors")
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def test_probe_steps_is_validated_and_zero_is_neutral() -> None:
    assert method_config({"name": "lp_ft"}).probe_steps == 50
    assert LPFT.neutral == {"probe_steps": 0}
    with pytest.raises(ConfigError, match=r"method\.probe_steps"):
        method_config({"name": "lp_ft", "probe_steps": -1})


def test_probe_freezes_the_backbone_then_the_switch_restores_what_was_trainable(make_cfg) -> None:
    """Unit check of the hooks: frozen and in eval mode during the probe; at the switch only what was trainable
    (and in train mode) before the probe comes back — a block kept frozen by someone else stays frozen."""
    cfg = make_cfg("model.hidden=[32, 16]", "model.batchnorm=true", "method.name=lp_ft", "method.probe_steps=3")
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None)
    bottom, top = model.blocks()
    bottom.requires_grad_(False)  # as a frozen block would be, put in eval mode by the module
    model.train()
    bottom.eval()
    new_head = model.heads[ctx.task.head]

    method.prepare(model, ctx)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(m.training for m in model.backbone.modules())
    assert all(p.requires_grad for p in new_head.parameters()) and new_head.training
    for step in range(2):  # updates 1 and 2: still probing
        method.after_step(model, step)
        assert not any(p.requires_grad for p in model.backbone.parameters())
        assert method.info()["switched_at_step"] is None
    method.after_step(model, 2)  # update 3 done: the probe is over
    assert all(p.requires_grad for p in top.parameters()) and all(m.training for m in top.modules())
    assert not any(p.requires_grad for p in bottom.parameters()) and not any(m.training for m in bottom.modules())
    assert method.info() == {
        "probe_steps": 3,
        "switched_at_step": 3,
        "tasks": [{"task": ctx.task.name, "switched_at_step": 3}],
    }
    method.after_step(model, 3)
    assert method.info()["switched_at_step"] == 3


def test_backbone_is_bit_identical_to_pretrained_until_the_switch(make_cfg, monkeypatch) -> None:
    probe = 12
    snapshots: dict[int, dict[str, torch.Tensor]] = {}  # updates done -> backbone parameters and buffers
    modes: dict[int, bool] = {}
    original = LPFT.after_step

    def recording_after_step(self: LPFT, model, step: int) -> None:
        original(self, model, step)
        snapshots[step + 1] = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
        modes[step + 1] = any(m.training for m in model.backbone.modules())

    monkeypatch.setattr(LPFT, "after_step", recording_after_step)
    result = run(
        make_cfg("method.name=lp_ft", f"method.probe_steps={probe}", *HARD, "train.lr=0.02", "eval.every_n_steps=3")
    )
    assert result.summary["method_info"] == {
        "probe_steps": probe,
        "switched_at_step": probe,
        "tasks": [{"task": "digits_5_9", "switched_at_step": probe}],
    }
    steps = result.summary["steps"]
    assert sorted(snapshots) == list(range(1, steps + 1)) and steps > probe + 5

    pretrained = pretrained_backbone(result)
    assert any("running_mean" in k for k in pretrained) and any("num_batches_tracked" in k for k in pretrained)
    for updates in range(1, probe + 1):  # weights AND BatchNorm buffers, to the bit
        assert snapshots[updates].keys() == pretrained.keys()
        for key, value in pretrained.items():
            assert torch.equal(snapshots[updates][key], value), (updates, key)
        assert modes[updates] is (updates == probe)  # eval mode during the probe, train mode from the switch
    for updates in range(probe + 1, steps + 1):  # the first full fine-tuning update moves every backbone tensor
        assert modes[updates]
        for key, value in pretrained.items():
            assert not torch.equal(snapshots[updates][key], value), (updates, key)

    metrics = eval_rows(result.metrics)
    old = metrics[metrics.role == "pretrain"].pivot(index="step", columns="metric", values="value")
    during, after = old[old.index <= probe], old[old.index > probe]
    assert list(during.index) == [0, 3, 6, 9, 12]
    for metric in ("acc", "loss"):  # the old task's scores are exactly the pretrained ones until the switch ...
        assert during[metric].nunique() == 1, during[metric].tolist()
    assert (after["loss"] != during["loss"].iloc[0]).all(), after["loss"].tolist()  # ... and move after it
    new = metrics[(metrics.role == "finetune") & (metrics.metric == "acc")].set_index("step").value
    assert new[probe] > new[0] + 0.3  # the probe alone trained the new head


def test_probe_steps_zero_is_exactly_plain_finetuning(make_cfg) -> None:
    ours = run(make_cfg("method.name=lp_ft", "method.probe_steps=0", *HARD))
    reference = run(make_cfg("method.name=finetune", *HARD))
    assert ours.summary["method_info"] == {
        "probe_steps": 0,
        "switched_at_step": 0,
        "tasks": [{"task": "digits_5_9", "switched_at_step": 0}],
    }
    assert len(eval_rows(ours.metrics)) > 0
    pd.testing.assert_frame_equal(eval_rows(ours.metrics), eval_rows(reference.metrics), check_exact=True)


def test_a_probe_longer_than_training_is_exactly_feature_extraction(make_cfg) -> None:
    ours = run(make_cfg("method.name=lp_ft", "method.probe_steps=100000", *HARD))
    reference = run(make_cfg("method.name=feature_extraction", *HARD))
    assert ours.summary["method_info"] == {
        "probe_steps": 100000,
        "switched_at_step": None,
        "tasks": [{"task": "digits_5_9", "switched_at_step": None}],
    }
    assert ours.summary["steps"] == reference.summary["steps"] > 0
    pd.testing.assert_frame_equal(eval_rows(ours.metrics), eval_rows(reference.metrics), check_exact=True)
