"""Regression tests for problems found in review: data leakage between tasks that share a source, run ids that
ignored the contents of user files, positional class indices, inconsistent epochs, and bad input that slipped
through validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from research.cli import main
from research.config import load_config, run_id
from research.data import TensorBatches, build_tasks
from research.data.fingerprint import content_fingerprints
from research.errors import ConfigError
from research.training import check, run
from research.training.pretrain import pretrain_key

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SPLIT = EXPERIMENTS / "split_digits.yaml"


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


def test_tasks_sharing_a_source_never_share_examples_across_splits() -> None:
    # Pretraining on all ten digits, fine-tuning on 5-9: the classes overlap, the splits must not.
    cfg = load_config(SPLIT, ["pretrain.tasks.0.classes=null"])
    tasks = build_tasks(cfg)
    old, new = tasks.pretrain[0], tasks.finetune[0]
    assert not _rows(old.splits["test"][0]) & _rows(new.splits["train"][0])
    assert not _rows(new.splits["test"][0]) & _rows(old.splits["train"][0])
    # And the fine-tuning task's examples are exactly the pretraining task's examples of classes 5-9.
    for split in ("train", "val", "test"):
        assert _rows(new.splits[split][0]) <= _rows(old.splits[split][0])


def _npz(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.random((60, 1, 4, 4)).astype(np.float32), y=np.repeat([1, 2, 3], 20))
    return path


def test_run_id_and_pretraining_cache_follow_the_contents_of_user_data(tmp_path: Path) -> None:
    data = _npz(tmp_path / "data.npz", seed=0)
    overrides = [
        f"out={tmp_path / 'out'}",
        "pretrain.tasks.0.source=npz",
        f"pretrain.tasks.0.path={data}",
        "pretrain.tasks.0.classes=[1,2]",
        "finetune.tasks.0.source=npz",
        f"finetune.tasks.0.path={data}",
        "finetune.tasks.0.classes=[2,3]",
    ]
    cfg = load_config(SPLIT, overrides)
    before = (run_id(cfg, content_fingerprints(cfg)), pretrain_key(cfg, build_tasks(cfg)))
    _npz(data, seed=1)  # same path, other contents
    cfg = load_config(SPLIT, overrides)
    after = (run_id(cfg, content_fingerprints(cfg)), pretrain_key(cfg, build_tasks(cfg)))
    assert before[0] != after[0] and before[1] != after[1]


def test_integer_classes_are_labels_not_positions(tmp_path: Path) -> None:
    data = _npz(tmp_path / "data.npz", seed=0)  # labels 1, 2, 3
    cfg = load_config(
        SPLIT,
        [
            "pretrain.tasks.0.source=npz",
            f"pretrain.tasks.0.path={data}",
            "pretrain.tasks.0.classes=[1,3]",
            "finetune.tasks.0.source=npz",
            f"finetune.tasks.0.path={data}",
            "finetune.tasks.0.classes=['2','3']",
        ],
    )
    tasks = build_tasks(cfg)
    assert tasks.pretrain[0].classes == ("1", "3")
    assert tasks.finetune[0].classes == ("2", "3")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain.tasks.0.path=/somewhere"], "takes no 'path'"),
        (["pretrain.tasks.0.classes=[0,'0',1]"], "duplicates"),
        (["pretrain.tasks.0.classes=[7]"], "at least 2 classes"),
        (["model.hidden=[]"], "model.hidden"),
        (["model.arch=cnn", "model.channels=[]"], "model.channels"),
        (["seed=-1"], "seed"),
        (["seed=5000000000"], "seed"),
        (["data.split_seed=-1"], "data.split_seed"),
        (["eval.split=val", "data.val_fraction=0"], "no validation split"),
        (["train.lr=.inf"], "train.lr"),
        (["method.name=ewc", "method.lam=.inf"], "method.lam"),
        (["train.backbone_lr_scale=0"], "backbone_lr_scale"),
    ],
)
def test_bad_input_is_a_config_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(load_config(SPLIT, overrides))


def test_cli_rejects_out_that_is_a_file_and_gpu_without_one(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    assert main(["run", str(SPLIT), f"out={a_file}"]) == 2
    assert "out:" in capsys.readouterr().err
    if not torch.cuda.is_available():
        out = tmp_path / "out"
        assert main(["run", str(SPLIT), f"out={out}", "device=gpu"]) == 2
        assert "no GPU" in capsys.readouterr().err
        assert not out.exists()


def test_rows_at_the_same_step_share_their_epoch(make_cfg) -> None:
    # 581 training examples in batches of 581 // 4 + 1: every epoch boundary is a logging and an eval step.
    cfg = make_cfg("train.batch_size=146", "eval.every_n_steps=1", "logging.log_every_n_steps=1", "train.epochs=3")
    metrics = run(cfg).metrics
    assert metrics.groupby("step").epoch.nunique().eq(1).all()
    steps_per_epoch = 4
    for step, epoch in metrics.groupby("step").epoch.first().items():
        assert epoch == max(step - 1, 0) // steps_per_epoch


def test_batchnorm_never_trains_on_a_single_example_batch() -> None:
    batches = TensorBatches(torch.arange(41.0), torch.arange(41), batch_size=20, shuffle=False)
    sizes = [len(b[0]) for b in batches]
    assert sizes == [20, 21] and len(batches) == 2  # the lone 41st example joins the last batch


def test_batchnorm_run_with_a_remainder_of_one_completes(make_cfg) -> None:
    # 581 fine-tuning examples with batch 20 leave one example over.
    result = run(make_cfg("model.batchnorm=true", "train.batch_size=20", "train.epochs=1"))
    assert result.summary["status"] == "completed"


def test_shared_head_pretraining_does_not_depend_on_the_finetuning_classes() -> None:
    keys = set()
    for classes in ("[5,6,7,8,9]", "[5,6]"):
        cfg = load_config(SPLIT, ["model.heads=shared", f"finetune.tasks.0.classes={classes}"])
        tasks = build_tasks(cfg)
        assert tasks.pretrain_head_sizes() == {"shared": 5}
        keys.add(pretrain_key(cfg, tasks))
    assert len(keys) == 1
