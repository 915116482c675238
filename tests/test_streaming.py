"""Tasks too large for memory stay on disk (research.data.stream): read when examples are taken, training
batches read ahead by DataLoader workers, and every number the same as with everything in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_model_families import example_config
from test_resume import SETTINGS, assert_same_run, reference_root, run_interrupted  # noqa: F401

from research.config import validate_config
from research.data import build_tasks
from research.data.sources import load_source
from research.data.stream import DiskExamples
from research.training import run


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 of scikit-learn's digits as 8-bit PNG files, one folder per class."""
    root = tmp_path_factory.mktemp("digit_folder")
    digits = load_source("digits")
    for i in range(300):
        label = digits.class_names[digits.y[i]]
        (root / label).mkdir(exist_ok=True)
        Image.fromarray((digits.x[i, 0] * 255).round().astype(np.uint8)).save(root / label / f"{i}.png")
    return root


def folder_cfg(folder: Path, out: Path, stream: str, method: str = "finetune", **extra):
    return validate_config(
        {
            "out": str(out),
            "model": {"hidden": [16]},
            "data": {"stream": stream, "workers": 2},
            "pretrain": {
                "tasks": [{"name": "low", "source": "folder", "path": str(folder), "classes": [0, 1, 2, 3, 4]}],
                "train": {"epochs": 3},
            },
            "finetune": {
                "tasks": [{"name": "high", "source": "folder", "path": str(folder), "classes": [5, 6, 7, 8, 9]}]
            },
            "method": {"name": method},
            "train": {"epochs": 2, "batch_size": 16},
            "eval": {"every_n_steps": 4},
            "logging": {"wandb": "disabled", "progress": False, "log_every_n_steps": 1},
            **extra,
        }
    )


def test_a_folder_over_the_budget_stays_on_disk(digit_folder: Path, out: Path) -> None:
    on_disk = build_tasks(folder_cfg(digit_folder, out, "auto", data={"memory_budget_mb": 0.01, "workers": 0}))
    in_memory = build_tasks(folder_cfg(digit_folder, out, "auto"))
    x_disk, y_disk = on_disk.finetune[0].splits["train"]
    x_memory = in_memory.finetune[0].splits["train"][0]
    assert isinstance(x_disk, DiskExamples) and not isinstance(x_memory, DiskExamples)
    assert on_disk.input_shape == in_memory.input_shape == (1, 8, 8)
    import torch

    np.testing.assert_array_equal(x_disk.take(torch.arange(len(y_disk))).numpy(), x_memory.numpy())


@pytest.mark.parametrize("method", ["finetune", "replay", "joint", "ewc"])
def test_streamed_and_in_memory_runs_measure_the_same(
    digit_folder: Path, out: Path, tmp_path: Path, method: str
) -> None:
    memory = run(folder_cfg(digit_folder, out, "never", method)).metrics
    other = tmp_path / "other"
    other.mkdir()
    (other / "pretrained").symlink_to((out / "pretrained").resolve(), target_is_directory=True)
    disk = run(folder_cfg(digit_folder, other, "always", method)).metrics
    pd.testing.assert_frame_equal(disk, memory, check_exact=True)


def test_streamed_text_measures_what_tokenised_text_does(family_example, out: Path, tmp_path: Path) -> None:
    memory = run(example_config(family_example("hf"), out)).metrics
    cfg = example_config(family_example("hf"), tmp_path)
    cfg = validate_config({**cfg.model_dump(mode="json"), "data": {"stream": "always", "workers": 2}})
    assert isinstance(build_tasks(cfg).finetune[0].splits["train"][0], DiskExamples)
    disk = run(cfg).metrics
    pd.testing.assert_frame_equal(disk, memory, check_exact=True)


def test_a_streamed_run_resumes_exactly(digit_folder: Path, out: Path, reference_root: Path, monkeypatch) -> None:  # noqa: F811
    checkpoints = {"checkpoint": {"every_n_steps": 4, "every_n_seconds": 0}}
    reference = run(folder_cfg(digit_folder, reference_root, "always", **checkpoints))
    cfg = folder_cfg(digit_folder, out, "always", **checkpoints)
    run_interrupted(cfg, monkeypatch, update=10)
    resumed = run(cfg)
    assert resumed.summary["resumed_from_step"] == 8
    assert_same_run(resumed.run_dir, reference.run_dir)


def test_how_data_is_held_is_not_part_of_the_run_id(digit_folder: Path, out: Path) -> None:
    from research.config import run_id

    assert run_id(folder_cfg(digit_folder, out, "never")) == run_id(folder_cfg(digit_folder, out, "always"))
