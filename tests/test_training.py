"""Real runs of split digits on tiny settings: what the run directory holds and what training may not do."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import prepare_method

from research.cli import main
from research.config import OptimConfig, resolved, run_id
from research.data import TensorBatches, build_tasks
from research.errors import ConfigError, RunFailed
from research.evaluation import eval_sets, score
from research.methods import build_method
from research.models import build_model
from research.training import run
from research.training.checkpoints import load_into, read_state_dict
from research.training.finetune import finetune_model
from research.training.module import ClassifierModule, parameter_groups
from research.training.pretrain import pretrain_key, pretrained_skeleton
from research.training.trainer import make_trainer

SPLIT = Path(__file__).resolve().parents[1] / "experiments" / "split_digits.yaml"


def scores_at(metrics: pd.DataFrame, step: int) -> dict[str, dict[str, float]]:
    rows = metrics[(metrics.step == step) & metrics.metric.isin(["acc", "loss"])]
    table: dict[str, dict[str, float]] = {}
    for row in rows.itertuples():
        table.setdefault(row.task, {})[row.metric] = row.value
    return table


def eval_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics.metric.isin(["acc", "loss"])]


# --------------------------------------------------------------------------------------------- step 0


def test_step_zero_scores_are_the_pretrained_model(make_cfg, out: Path) -> None:
    cfg = make_cfg()
    result = run(cfg)
    tasks = build_tasks(cfg)
    key = pretrain_key(cfg, tasks)
    weights = out / "pretrained" / key / "model.safetensors"
    assert weights.is_file()
    assert Path(result.summary["pretrained"]["path"]) == out / "pretrained" / key

    model = pretrained_skeleton(cfg, tasks)
    load_into(model, read_state_dict(weights), str(weights))
    expected = score(model, eval_sets(tasks.pretrain, "test", None, 0), cfg.eval.batch_size)
    step0 = scores_at(result.metrics, 0)
    for task, values in expected.items():
        assert step0[task] == values  # exactly, to the last digit

    # The manifest recorded the same test scores when the weights were trained.
    manifest = json.loads((out / "pretrained" / key / "manifest.json").read_text())
    assert manifest["metrics"]["test"] == expected
    assert result.summary["pretrained"]["metrics"]["test"] == expected

    # The new task at step 0 is scored by the freshly initialised (seeded) head on the pretrained backbone.
    ft_model, _ = finetune_model(cfg, tasks, build_method(cfg.method), read_state_dict(weights))
    everything = score(ft_model, eval_sets(tasks.all, "test", None, 0), cfg.eval.batch_size)
    assert step0 == everything


def test_pretraining_is_cached(make_cfg, out: Path) -> None:
    first = run(make_cfg("seed=11"))
    second = run(make_cfg("seed=12"))  # another run, same pretraining setup
    assert second.summary["pretrained"]["cached"] is True
    assert first.summary["pretrained"]["path"] == second.summary["pretrained"]["path"]
    assert scores_at(first.metrics, 0)["digits_0_4"] == scores_at(second.metrics, 0)["digits_0_4"]


# --------------------------------------------------------------------------------------------- forgetting


def test_finetune_forgets_the_old_task_and_learns_the_new(make_cfg) -> None:
    result = run(make_cfg("method.name=finetune", "train.lr=0.02", "train.epochs=4"))
    metrics = result.metrics
    acc = metrics[metrics.metric == "acc"].pivot(index="step", columns="task", values="value")
    old, new = acc["digits_0_4"], acc["digits_5_9"]
    assert old.iloc[0] > 0.85  # the pretrained model knows the old task
    assert old.iloc[-1] < old.iloc[0] - 0.08, old.tolist()
    assert new.iloc[-1] > new.iloc[0] + 0.4, new.tolist()
    assert new.iloc[-1] > 0.85
    final = result.summary["final"]
    assert final["digits_0_4"]["acc"] == old.iloc[-1] and final["digits_5_9"]["acc"] == new.iloc[-1]
    assert result.summary["initial"]["digits_0_4"]["acc"] == old.iloc[0]


@pytest.mark.parametrize("batchnorm", [False, True])
def test_feature_extraction_leaves_the_old_task_exactly_unchanged(batchnorm: bool, make_cfg) -> None:
    result = run(
        make_cfg(
            "method.name=feature_extraction",
            f"model.batchnorm={str(batchnorm).lower()}",
            "train.lr=0.02",
            "eval.every_n_steps=3",
        )
    )
    metrics = eval_rows(result.metrics)
    old = metrics[metrics.role == "pretrain"]
    assert old.step.nunique() > 5
    for metric in ("acc", "loss"):
        values = old[old.metric == metric].value
        assert values.nunique() == 1, (metric, values.unique())
    new = metrics[(metrics.role == "finetune") & (metrics.metric == "acc")].sort_values("step").value
    assert new.iloc[-1] > new.iloc[0] + 0.3  # the new head did learn


def test_frozen_blocks_keep_their_batchnorm_statistics(make_cfg) -> None:
    """Partial fine-tuning: the bottom block is frozen and must stay in eval mode while the top one trains."""
    cfg = make_cfg(
        "model.hidden=[32, 16]",
        "model.batchnorm=true",
        "method.name=partial",
        "method.unfreeze_top_k=1",
        "train.max_steps=5",
    )
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None)
    bottom, top = model.blocks()
    assert not any(p.requires_grad for p in bottom.parameters())
    assert all(p.requires_grad for p in top.parameters())
    before_bottom = {n: b.clone() for n, b in bottom.named_buffers()}
    before_top = {n: b.clone() for n, b in top.named_buffers()}
    x, y = tasks.finetune[0].splits["train"]
    batches = TensorBatches(x, y, torch.zeros(len(y), dtype=torch.long), batch_size=32, seed=0)
    module = ClassifierModule(model, [tasks.finetune[0].head], cfg.train, method, ctx)
    make_trainer(cfg.train, "cpu", False, []).fit(module, train_dataloaders=batches)
    assert any(not torch.equal(b, before_top[n]) for n, b in top.named_buffers())  # the top block trained
    for name, buffer in bottom.named_buffers():
        assert torch.equal(buffer, before_bottom[name]), name


# --------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", ["finetune", "replay"])
def test_same_config_and_seed_give_identical_metrics(method: str, make_cfg) -> None:
    cfg = make_cfg(f"method.name={method}", "model.dropout=0.2", "model.batchnorm=true", "logging.log_every_n_steps=1")
    first = run(cfg)
    frame = pd.read_parquet(first.run_dir / "metrics.parquet")
    again = run(cfg, force=True)
    assert again.run_id == first.run_id and not again.skipped
    pd.testing.assert_frame_equal(frame, pd.read_parquet(again.run_dir / "metrics.parquet"), check_exact=True)
    other = run(cfg.model_copy(update={"seed": cfg.seed + 1}))
    assert other.run_id != first.run_id
    assert not eval_rows(other.metrics).reset_index(drop=True).equals(eval_rows(frame).reset_index(drop=True))


def test_evaluation_frequency_does_not_change_training(make_cfg) -> None:
    common = ("model.dropout=0.2", "model.batchnorm=true", "logging.log_every_n_steps=1", "method.name=replay")
    often = run(make_cfg(*common, "eval.every_n_steps=1")).metrics
    rarely = run(make_cfg(*common, "eval.every_n_steps=1000")).metrics
    last = often.step.max()
    assert rarely.step.max() == last
    assert often[often.metric == "acc"].step.nunique() == last + 1
    assert sorted(rarely[rarely.metric == "acc"].step.unique()) == [0, last]
    often, rarely = (f.sort_values(["step", "task", "metric"]) for f in (often, rarely))

    def final(frame: pd.DataFrame) -> pd.DataFrame:
        rows = eval_rows(frame)
        return rows[rows.step == last].reset_index(drop=True)

    pd.testing.assert_frame_equal(final(often), final(rarely), check_exact=True)
    train = [f[f.metric.str.startswith("train_")].reset_index(drop=True) for f in (often, rarely)]
    pd.testing.assert_frame_equal(train[0], train[1], check_exact=True)


# --------------------------------------------------------------------------------------------- the run directory


def test_run_directory_contents(make_cfg, out: Path) -> None:
    cfg = make_cfg("method.name=l2sp", "eval.every_n_steps=7")
    result = run(cfg)
    assert result.run_id == run_id(cfg)
    assert result.run_dir == out / result.run_id
    assert {p.name for p in result.run_dir.iterdir()} >= {"config.yaml", "metrics.parquet", "summary.json"}

    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config == resolved(cfg)

    metrics = pd.read_parquet(result.run_dir / "metrics.parquet")
    assert list(metrics.columns) == ["step", "epoch", "task", "role", "metric", "value"]
    assert set(metrics.role) == {"pretrain", "finetune"}
    assert metrics.groupby("task").role.nunique().eq(1).all()
    assert set(metrics[metrics.role == "pretrain"].task) == {"digits_0_4"}
    assert set(metrics[metrics.role == "finetune"].task) == {"digits_5_9"}
    step0 = metrics[metrics.step == 0]
    for task in ("digits_0_4", "digits_5_9"):
        assert {"acc", "loss"} <= set(step0[step0.task == task].metric)
    assert (metrics.step >= 0).all() and (metrics.epoch >= 0).all()
    assert np.isfinite(metrics.value).all()
    acc = metrics[metrics.metric == "acc"]
    assert acc.value.between(0, 1).all()
    steps = sorted(acc.step.unique())
    last = result.summary["steps"]
    assert steps == sorted({*range(0, last + 1, 7), last})  # step 0, every 7 steps, and the end
    assert acc.epoch.max() == cfg.train.epochs - 1

    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary, default=str))
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["run_id"] == result.run_id
    assert summary["method"] == "l2sp" and summary["seed"] == cfg.seed
    final = scores_at(metrics, last)
    assert {t: {k: v for k, v in s.items() if k != "role"} for t, s in summary["final"].items()} == final
    assert summary["final"]["digits_0_4"]["role"] == "pretrain"
    for stage in ("pretrain_seconds", "finetune_seconds", "eval_seconds", "total_seconds"):
        assert summary["timings"][stage] >= 0
    assert {"python", "torch", "lightning", "wandb"} <= set(summary["versions"])
    assert "commit" in summary["git"] and "dirty" in summary["git"]


def test_completed_run_is_skipped_when_rerun(
    make_cfg, tiny_overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_cfg("seed=3")
    first = run(cfg)
    assert not first.skipped
    stamp = (first.run_dir / "metrics.parquet").stat().st_mtime_ns
    again = run(cfg)
    assert again.skipped and again.run_id == first.run_id
    assert again.summary == json.loads((first.run_dir / "summary.json").read_text())
    assert (first.run_dir / "metrics.parquet").stat().st_mtime_ns == stamp
    # The CLI says so too, and succeeds.
    assert main(["run", str(SPLIT), *tiny_overrides, "seed=3"]) == 0
    assert "already completed" in capsys.readouterr().out
    assert (first.run_dir / "metrics.parquet").stat().st_mtime_ns == stamp
    # A failed or unfinished run is not skipped.
    summary = json.loads((first.run_dir / "summary.json").read_text())
    (first.run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    assert not run(cfg).skipped


# --------------------------------------------------------------------------------------------- replay


def replay_method(make_cfg, *overrides: str):
    method, _, _, tasks = prepare_method(make_cfg("method.name=replay", *overrides))
    return method, tasks


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.7])
def test_replay_mix_ratio(ratio: float, make_cfg) -> None:
    method, _ = replay_method(make_cfg, f"method.ratio={ratio}", "method.buffer_size=500")
    for batch_size in (1, 7, 32, 64, 100):
        extra = method.extra_batches(batch_size)
        replayed = sum(len(b.y) for b in extra)
        assert replayed == round(batch_size * ratio / (1 - ratio)), (batch_size, ratio)
        if batch_size >= 32:
            assert abs(replayed / (batch_size + replayed) - ratio) <= 1 / (batch_size + replayed)
        for b in extra:
            assert b.source == "replay" and b.head == "digits_0_4"
            assert len(b.x) == len(b.y) and b.y.max() < 5


def test_replay_draws_without_replacement_and_is_seeded(make_cfg) -> None:
    method, _ = replay_method(make_cfg, "method.ratio=0.5", "method.buffer_size=60")
    again, _ = replay_method(make_cfg, "method.ratio=0.5", "method.buffer_size=60")
    (batch,) = method.extra_batches(60)
    assert len(batch.y) == 60  # the whole buffer, each example once
    rows = {tuple(r) for r in torch.cat([batch.x.flatten(1), batch.y[:, None].float()], 1).tolist()}
    buffer = {tuple(r) for r in torch.cat([method.buffer_x.flatten(1), method.buffer_y[:, None].float()], 1).tolist()}
    assert rows == buffer
    # More than the buffer holds: drawn with replacement, so the ratio still holds.
    assert len(method.extra_batches(1000)[0].y) == 1000
    assert torch.equal(method.buffer_x, again.buffer_x)
    a = [b.y.tolist() for b in replay_method(make_cfg, "method.buffer_size=60")[0].extra_batches(16)]
    b = [b.y.tolist() for b in replay_method(make_cfg, "method.buffer_size=60")[0].extra_batches(16)]
    assert a == b


def test_replay_ratio_zero_replays_nothing(make_cfg) -> None:
    method, _ = replay_method(make_cfg, "method.ratio=0")
    assert method.extra_batches(32) == []


@pytest.mark.parametrize("capacity", [50, 203])
def test_class_balanced_buffer(capacity: int, make_cfg) -> None:
    method, _ = replay_method(make_cfg, "method.selection=class_balanced", f"method.buffer_size={capacity}")
    counts = torch.bincount(method.buffer_y)
    assert len(method.buffer_y) == capacity and len(counts) == 5
    assert counts.max() - counts.min() <= 1, counts.tolist()
    info = method.info()
    assert info["buffer_size"] == capacity and info["buffer_classes"] == 5
    assert info["buffer_max_per_class"] - info["buffer_min_per_class"] <= 1


def test_class_balanced_buffer_over_two_pretraining_tasks(make_cfg) -> None:
    method, tasks = replay_method(
        make_cfg,
        "method.selection=class_balanced",
        "method.buffer_size=101",
        "pretrain.tasks=[{name: low, source: digits, classes: [0, 1, 2]},"
        " {name: mid, source: digits, classes: [3, 4]}]",
    )
    keys = method.buffer_head * 10 + method.buffer_y  # (task, class) pairs
    counts = torch.unique(keys, return_counts=True)[1]
    assert len(counts) == 5 and counts.max() - counts.min() <= 1
    extra = method.extra_batches(64)
    assert {b.head for b in extra} == {"low", "mid"}
    assert sum(len(b.y) for b in extra) == 64
    for b in extra:
        assert b.y.max() < tasks.head_sizes[b.head]


def test_reservoir_buffer(make_cfg) -> None:
    method, tasks = replay_method(make_cfg, "method.selection=reservoir", "method.buffer_size=120")
    assert len(method.buffer_y) == 120
    assert len(torch.unique(method.buffer_y)) == 5
    pool = len(tasks.pretrain[0].splits["train"][1])
    assert method.info()["buffer_size"] == min(120, pool)


def test_replay_run_logs_the_replayed_loss(make_cfg) -> None:
    metrics = run(make_cfg("method.name=replay", "logging.log_every_n_steps=1")).metrics
    replayed = metrics[metrics.metric == "train_loss_task_replay"]
    assert len(replayed) > 0 and np.isfinite(replayed.value).all()


# --------------------------------------------------------------------------------------------- failures


def test_diverging_run_fails_and_says_why(
    make_cfg, out: Path, tiny_overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_cfg("train.optimizer=sgd", "train.lr=1e20", "logging.log_every_n_steps=1")
    with pytest.raises(RunFailed, match="diverged"):
        run(cfg)
    run_dir = out / run_id(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "diverged" in summary["error"] and "FloatingPointError" in summary["error"]
    assert summary["traceback"]
    metrics = pd.read_parquet(run_dir / "metrics.parquet")  # what was measured before the failure is kept
    assert set(metrics[metrics.step == 0].task) == {"digits_0_4", "digits_5_9"}
    # Not completed, so not skipped: a rerun tries again (and fails again), and the CLI exits 1.
    capsys.readouterr()
    overrides = ["train.optimizer=sgd", "train.lr=1e20", "logging.log_every_n_steps=1"]
    assert main(["run", str(SPLIT), *tiny_overrides, *overrides]) == 1
    err = capsys.readouterr().err
    assert "failed" in err and "summary.json" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_nan_between_logging_steps_still_fails(make_cfg, out: Path) -> None:
    cfg = make_cfg("train.optimizer=sgd", "train.lr=1e20", "logging.log_every_n_steps=25", "train.max_steps=10")
    try:
        result = run(cfg)
    except RunFailed:
        summary = json.loads((out / run_id(cfg) / "summary.json").read_text())
        assert summary["status"] == "failed"
        return
    assert result.summary["status"] != "completed", result.summary["final"]


# --------------------------------------------------------------------------------------------- layer-wise lr


def test_parameter_groups_layer_wise_learning_rates() -> None:
    from research.config import ModelConfig

    model = build_model(ModelConfig(hidden=[8, 8, 8]), (1, 8, 8), {"old": 5, "new": 5})
    optim = OptimConfig(lr=0.1, backbone_lr_scale=0.5, lr_decay=0.2)
    groups = {g["name"]: g for g in parameter_groups(model, optim)}
    assert set(groups) == {"backbone.0", "backbone.1", "backbone.2", "heads"}
    assert groups["heads"]["lr"] == pytest.approx(0.1)
    assert groups["backbone.2"]["lr"] == pytest.approx(0.1 * 0.5)
    assert groups["backbone.1"]["lr"] == pytest.approx(0.1 * 0.5 * 0.2)
    assert groups["backbone.0"]["lr"] == pytest.approx(0.1 * 0.5 * 0.04)
    for i, block in enumerate(model.blocks()):
        assert {id(p) for p in groups[f"backbone.{i}"]["params"]} == {id(p) for p in block.parameters()}
    assert {id(p) for p in groups["heads"]["params"]} == {id(p) for p in model.heads.parameters()}


def test_parameter_groups_skip_frozen_parameters(make_cfg) -> None:
    cfg = make_cfg(
        "model.hidden=[16, 16, 16]",
        "method.name=partial",
        "method.unfreeze_top_k=2",
        "train.lr=0.01",
        "train.backbone_lr_scale=0.1",
        "train.lr_decay=0.5",
    )
    tasks = build_tasks(cfg)
    model, _ = finetune_model(cfg, tasks, build_method(cfg.method), state=None)
    groups = {g["name"]: g for g in parameter_groups(model, cfg.train)}
    assert set(groups) == {"backbone.1", "backbone.2", "heads"}  # block 0 frozen
    assert groups["backbone.2"]["lr"] == pytest.approx(0.001)
    assert groups["backbone.1"]["lr"] == pytest.approx(0.0005)
    # Only the new task's head trains; the old head only scores its task.
    assert {id(p) for p in groups["heads"]["params"]} == {id(p) for p in model.heads["digits_5_9"].parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups.values() for p in g["params"]} == trainable


def test_backbone_lr_scale_zero_is_rejected(make_cfg) -> None:
    # A zero learning rate would leave BatchNorm statistics drifting: freezing is feature_extraction's job.
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        make_cfg("train.backbone_lr_scale=0")


# --------------------------------------------------------------------------------------------- more runs


def _shipped(name: str):
    """The real MiniLM experiments take tens of seconds: slow tests."""
    return pytest.param(name, marks=pytest.mark.slow) if name.startswith("minilm") else name


@pytest.mark.parametrize("experiment", [_shipped(p.name) for p in sorted(SPLIT.parent.glob("*.yaml"))])
def test_every_shipped_experiment_runs_a_few_steps(experiment: str, make_cfg) -> None:
    cfg = make_cfg("pretrain.train.max_steps=3", "train.max_steps=4", "eval.every_n_steps=2", experiment=experiment)
    result = run(cfg)
    assert result.summary["status"] == "completed"
    sequence = len(cfg.finetune.tasks)  # max_steps applies to each fine-tuning task of a sequence
    assert result.summary["steps"] == 4 * sequence
    metrics = result.metrics
    tasks = {t.name for t in [*cfg.pretrain.tasks, *cfg.finetune.tasks]}
    abilities = {a["name"] for a in cfg.abilities}  # scored from step 0 like the tasks (research.abilities)
    if cfg.scenario == "class":  # later tasks' classes have no outputs yet at step 0 (class-incremental)
        tasks = {t.name for t in [*cfg.pretrain.tasks, cfg.finetune.tasks[0]]}
    assert set(metrics[metrics.step == 0].task) == tasks | abilities
    assert sorted(metrics[metrics.metric == "acc"].step.unique()) == list(range(0, 4 * sequence + 1, 2))
    assert np.isfinite(metrics.value).all()


@pytest.mark.parametrize("method", ["finetune", "replay", "l2sp"])
def test_shared_head_runs(method: str, make_cfg) -> None:
    result = run(make_cfg("model.heads=shared", f"method.name={method}", "train.max_steps=8"))
    assert result.summary["status"] == "completed"
    assert {t["head"] for t in result.summary["tasks"].values()} == {"shared"}
    assert np.isfinite(result.metrics.value).all()


def test_eval_on_a_fixed_subsample_of_the_val_split(make_cfg) -> None:
    cfg = make_cfg("eval.split=val", "eval.max_samples=40", "train.max_steps=3")
    result = run(cfg)
    tasks = build_tasks(cfg)
    weights = Path(result.summary["pretrained"]["path"]) / "model.safetensors"
    model, _ = finetune_model(cfg, tasks, build_method(cfg.method), read_state_dict(weights))
    sets = eval_sets(tasks.all, "val", 40, cfg.data.split_seed)
    assert all(len(s.y) == 40 for s in sets)
    assert scores_at(result.metrics, 0) == score(model, sets, cfg.eval.batch_size)


def test_max_steps_and_epochs(make_cfg) -> None:
    result = run(make_cfg("train.max_steps=7", "train.epochs=5"))
    assert result.summary["steps"] == 7
    result = run(make_cfg("train.epochs=1", "train.batch_size=64"))
    train_size = result.summary["tasks"]["digits_5_9"]["sizes"]["train"]
    assert result.summary["steps"] == math.ceil(train_size / 64)


def test_pretrain_command_trains_then_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "own"
    argv = [
        "pretrain",
        str(SPLIT),
        f"out={out}",
        "logging.progress=false",
        "model.hidden=[8]",
        "pretrain.train.epochs=2",
    ]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("pretrained model trained:") and "digits_0_4" in first
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("pretrained model reused:")
    entries = [p for p in (out / "pretrained").iterdir() if p.is_dir()]
    assert len(entries) == 1
    assert {p.name for p in entries[0].iterdir()} == {
        "model.safetensors",
        "manifest.json",
        "path_integral.safetensors",
    }
    assert [p.name for p in out.iterdir()] == ["pretrained"]  # no run directory


def test_diverging_pretraining_is_not_cached(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "own"
    argv = [
        "pretrain",
        str(SPLIT),
        f"out={out}",
        "logging.progress=false",
        "model.hidden=[8]",
        "pretrain.train.epochs=1",
        "pretrain.train.optimizer=sgd",
        "pretrain.train.lr=1e20",
    ]
    code = main(argv)
    manifests = list(out.glob("pretrained/*/manifest.json"))
    assert not manifests, f"diverged weights cached: {json.loads(manifests[0].read_text())['metrics']}"
    assert code == 1
