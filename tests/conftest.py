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
for _var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE"):
    os.environ.pop(_var, None)
# A developer's own `wandb login` (a key in ~/.netrc) must not send the tests' runs online.
os.environ["NETRC"] = str(_WANDB_ROOT / "netrc")
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
        return load_config(
            EXPERIMENTS / experiment, [*tiny_for(EXPERIMENTS / experiment), f"out={root or out}", *overrides]
        )

    return _make


@pytest.fixture
def tiny_overrides(out: Path) -> list[str]:
    """The ``key=value`` overrides behind ``make_cfg``, for driving the CLI the same way."""
    return [*TINY, f"out={out}"]


# --- tiny models and data for the model families (research.models.adapters) ---------------------------------


@pytest.fixture(scope="session")
def family_example(tmp_path_factory: pytest.TempPathFactory):
    """``family_example(name)``: the model family's tiny experiment (``Adapter.example``), built once a session."""
    from research.models.adapters import adapter

    built = {}

    def get(name: str):
        if name not in built:
            built[name] = adapter(name).example(tmp_path_factory.mktemp(f"example_{name}"))
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_bert(family_example) -> Path:
    """The hf family's example model: a randomly initialised 2-layer BertModel (hidden 32) and its word-level
    tokenizer, written with ``save_pretrained`` to a local directory, as a user's own model would be."""
    return Path(family_example("hf").model["name"])


@pytest.fixture(scope="session")
def word_table(family_example) -> Path:
    """The hf family's example data: a CSV of short texts over the tiny vocabulary, four labels (a..d) that the
    words predict, and a second text per row for text-pair tasks."""
    return Path(family_example("hf").finetune_tasks[0]["path"])


CUSTOM_MODEL = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's model: features out, blocks named by the config."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.top = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))

    def forward(self, x):
        return self.top(self.body(self.stem(x)))


def build(width: int = 16) -> nn.Module:
    torch.manual_seed(1)
    return TinyNet(width)


def not_a_module():
    return "features"
'''


@pytest.fixture
def custom_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module ``user_models`` on sys.path with ``build`` (an nn.Module) and ``not_a_module``."""
    (tmp_path / "user_models.py").write_text(CUSTOM_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import sys

    sys.modules.pop("user_models", None)
    return "user_models:build"
