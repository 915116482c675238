"""``pretrain.checkpoint``: the user's own weights, loaded safely, checked against the configured model."""

from __future__ import annotations

import pathlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from research.cli import main
from research.config import load_config
from research.errors import ConfigError
from research.training import check, run
from research.training.checkpoints import read_state_dict

SPLIT = Path(__file__).resolve().parents[1] / "experiments" / "split_digits.yaml"


def step0(result) -> dict[tuple[str, str], float]:
    m = result.metrics
    rows = m[(m.step == 0) & m.metric.isin(["acc", "loss"])]
    return {(r.task, r.metric): r.value for r in rows.itertuples()}


@pytest.fixture
def reference(make_cfg):
    """A normal run, whose cached pretrained weights serve as the user's checkpoint."""
    result = run(make_cfg())
    return result, Path(result.summary["pretrained"]["path"]) / "model.safetensors"


@pytest.mark.parametrize("form", ["file", "directory", "torch_file", "lightning_checkpoint"])
def test_checkpoint_gives_the_same_step_zero_scores(form: str, reference, make_cfg, tmp_path: Path) -> None:
    result, weights = reference
    state = load_file(str(weights))
    folder = tmp_path / "mine"
    folder.mkdir()
    if form == "file":
        checkpoint = folder / "weights.safetensors"
        shutil.copy(weights, checkpoint)
    elif form == "directory":
        shutil.copy(weights, folder / "model.safetensors")
        checkpoint = folder
    elif form == "torch_file":
        checkpoint = folder / "weights.pt"
        torch.save(state, checkpoint)
    else:
        checkpoint = folder / "last.ckpt"
        torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}, checkpoint)

    own_out = tmp_path / "elsewhere"  # no pretrained cache here: the weights must come from the checkpoint
    mine = run(make_cfg(f"pretrain.checkpoint={checkpoint}", root=own_out))
    assert mine.summary["status"] == "completed"
    assert mine.summary["pretrained"]["cached"] is True
    assert mine.summary["pretrained"]["path"] == str(checkpoint)
    assert not (own_out / "pretrained").exists()  # nothing was pretrained
    assert step0(mine) == step0(result)


def test_checkpoint_is_part_of_the_run_id(reference, make_cfg) -> None:
    from research.config import run_id

    _, weights = reference
    assert run_id(make_cfg(f"pretrain.checkpoint={weights}")) != run_id(make_cfg())


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.hidden=[64]"], "shape mismatch"),
        (["model.hidden=[32, 32]"], "missing ['backbone.1.0.bias'"),
        (["model.arch=cnn", "model.channels=[8]"], "missing"),
        (["pretrain.tasks.0.classes=[0, 1, 2]"], "heads.digits_0_4"),
    ],
)
def test_checkpoint_of_another_architecture_is_a_config_error(
    overrides: list[str], expected: str, reference, make_cfg, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, weights = reference
    out = tmp_path / "never"
    cfg = make_cfg(f"pretrain.checkpoint={weights}", *overrides, root=out)
    with pytest.raises(ConfigError) as info:
        run(cfg)
    message = str(info.value)
    assert message.startswith("pretrain.checkpoint") and expected in message
    assert "\n" not in message
    assert not out.exists()
    # The same through the CLI: exit 2, one line, nothing written.
    argv = [
        "run",
        str(SPLIT),
        "logging.progress=false",
        "logging.wandb=disabled",
        "model.hidden=[32]",
        f"out={out}",
        f"pretrain.checkpoint={weights}",
        *overrides,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("research: error: pretrain.checkpoint") and len(err.splitlines()) == 1
    assert not out.exists()


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "code ran during unpickling"))


def test_pickle_that_would_run_code_is_refused(make_cfg, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The payload is live: plain unpickling does run it.
    proof = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps({"weight": Payload(proof)}, protocol=2))
    assert proof.is_file()

    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "weights.pt"
    evil.write_bytes(pickle.dumps({"backbone.0.1.weight": Payload(marker)}, protocol=2))

    with pytest.raises(ConfigError, match="cannot be loaded safely"):
        read_state_dict(evil)
    assert not marker.exists()

    out = tmp_path / "never"
    cfg = make_cfg(f"pretrain.checkpoint={evil}", root=out)
    with pytest.raises(ConfigError, match=r"^pretrain\.checkpoint"):
        check(cfg)
    with pytest.raises(ConfigError):
        run(cfg)
    argv = [
        "run",
        str(SPLIT),
        "logging.progress=false",
        "logging.wandb=disabled",
        f"out={out}",
        f"pretrain.checkpoint={evil}",
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("research: error: pretrain.checkpoint")
    assert not marker.exists()
    assert not out.exists()


def test_torch_zip_checkpoint_with_a_code_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "model.pth"
    torch.save({"weight": Payload(marker)}, evil)  # torch's own zip format, same trick inside
    with pytest.raises(ConfigError, match="cannot be loaded safely"):
        read_state_dict(evil)
    assert not marker.exists()


def test_unreadable_checkpoints_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"definitely not safetensors")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        read_state_dict(broken)
    not_tensors = tmp_path / "numbers.pt"
    torch.save({"a": 1, "b": [2, 3]}, not_tensors)
    with pytest.raises(ConfigError, match="state dict of tensors"):
        read_state_dict(not_tensors)
    with pytest.raises(ConfigError, match="not found"):
        read_state_dict(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="not found"):
        read_state_dict(tmp_path)  # a folder without model.safetensors


def test_missing_checkpoint_is_found_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "never"
    cfg = load_config(
        SPLIT, [f"out={out}", "logging.wandb=disabled", f"pretrain.checkpoint={tmp_path / 'nope.safetensors'}"]
    )
    with pytest.raises(ConfigError, match="no such file or folder"):
        run(cfg)
    assert not out.exists()
