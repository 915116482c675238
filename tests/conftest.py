"""Shared fixtures: isolated W&B directories, tiny experiment configs, and one pretrained-weights cache for the
whole session (the pretraining stage caches by hash under ``<out>/pretrained/``; every test's ``out`` links its
``pretrained`` folder to the session's, so identical pretraining setups train once)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# --- W&B isolation, before anything imports wandb -----------------------------------------------------------
_WANDB_ROOT = Path(tempfile.mkdtemp(prefix="forgetting-lab-tests-wandb-"))
for _var, _sub in (
    ("WANDB_DIR", "dir"),
    ("WANDB_CACHE_DIR", "cache"),
    ("WANDB_CONFIG_DIR", "config"),
    ("WANDB_DATA_DIR", "data"),
):
    (_WANDB_ROOT / _sub).mkdir()
    os.environ[_var] = str(_WANDB_ROOT / _sub)
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("WANDB_MODE", None)
os.environ["WANDB_SILENT"] = "true"
# Nothing downloads in tests: transformers, timm and datasets load only local files (and fail otherwise).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# One intra-op thread: the models here are tiny, and with two threads torch's spinning workers slow a step
# down by two orders of magnitude whenever another process holds one of the two cores.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

# Small enough to be fast on 2 CPU cores, large enough that the pretrained model is clearly better than chance.
TINY = [
    "logging.progress=false",
    "logging.wandb=disabled",
    "model.hidden=[32]",
    "pretrain.train.epochs=10",
    "train.epochs=2",
    "eval.every_n_steps=5",
]


def tiny_for(experiment: Path) -> list[str]:
    """``TINY`` without the settings a model loaded from outside does not take (its width is its own)."""
    import yaml

    arch = (yaml.safe_load(experiment.read_text()).get("model") or {}).get("arch", "mlp")
    return TINY if arch in ("mlp", "cnn") else [o for o in TINY if not o.startswith("model.hidden")]


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_WANDB_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def pretrained_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``pretrained/`` folder shared by every test's ``out``."""
    return tmp_path_factory.mktemp("pretrained_cache")


@pytest.fixture
def out(tmp_path: Path, pretrained_cache: Path) -> Path:
    """A fresh run root whose pretrained-weights cache is the session's."""
    root = tmp_path / "out"
    root.mkdir()
    (root / "pretrained").symlink_to(pretrained_cache, target_is_directory=True)
    return root


@pytest.fixture
def make_cfg(out: Path):
    """``make_cfg(*overrides, experiment="split_digits.yaml", root=None)``: a tiny, validated ExperimentConfig."""
    from research.config import load_config

    def _make(*overrides: str, experiment: str = "split_digits.yaml", root: Path | None = None):
        return load_config(EXPERIMENTS / experiment, [*tiny_for(EXPERIMENTS / experiment), f"out={root or out}", *overrides])

    return _make


@pytest.fixture
def tiny_overrides(out: Path) -> list[str]:
    """The ``key=value`` overrides behind ``make_cfg``, for driving the CLI the same way."""
    return [*TINY, f"out={out}"]
