"""The README's "Your own model" examples, executed as written: every file block there (a fenced block whose first
line is ``# <file name>``) is written to a working directory, the files it names are put there (a tiny model
written by ``save_pretrained``, a small table of texts, a weights file), and each experiment runs a few steps."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from research.cli import main
from research.store import read_summary

README = Path(__file__).resolve().parents[1] / "README.md"
SHORT = ["train.max_steps=2", "train.epochs=1", "pretrain.train.max_steps=3", "eval.every_n_steps=1"]
QUIET = ["logging.wandb=disabled", "logging.progress=false", "out=runs"]


def readme_files() -> dict[str, str]:
    """File name → contents of the file blocks of the README's "Your own model" section."""
    text = README.read_text()
    section = text.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    files = {}
    for body in re.findall(r"```(?:yaml|python)\n(.*?)```", section, flags=re.S):
        first = body.splitlines()[0]
        if re.fullmatch(r"# [\w.-]+\.(yaml|py)", first):
            files[first[2:]] = body
    return files


def test_the_section_has_an_example_per_family() -> None:
    files = readme_files()
    assert {"my_bert.yaml", "my_timm.yaml", "my_models.py", "my_custom.yaml"} <= set(files)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_bert: Path, word_table: Path) -> Path:
    for name, body in readme_files().items():
        (tmp_path / name).write_text(body)
    (tmp_path / "models").mkdir()
    shutil.copytree(tiny_bert, tmp_path / "models" / "my-bert")
    (tmp_path / "data").mkdir()
    shutil.copy(word_table, tmp_path / "data" / "reviews.csv")
    # The timm example's weights file, from the small model the test runs it on (resnet18 is slow on a CPU).
    import timm
    from safetensors.torch import save_file

    (tmp_path / "weights").mkdir()
    small = timm.create_model("test_resnet", pretrained=False)
    save_file(
        {k: v.contiguous() for k, v in small.state_dict().items()}, str(tmp_path / "weights" / "resnet18.safetensors")
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import sys

    sys.modules.pop("my_models", None)
    return tmp_path


# What each example is run with beyond SHORT: the timm example on a small model, scoring few examples.
SMALLER = {"my_timm.yaml": ["model.name=test_resnet", "eval.max_samples=16"]}


@pytest.mark.parametrize("experiment", ["my_bert.yaml", "my_timm.yaml", "my_custom.yaml"])
def test_a_readme_example_runs_as_written(workdir: Path, experiment: str, capsys) -> None:
    assert main(["run", experiment, *SHORT, *SMALLER.get(experiment, []), *QUIET]) == 0, capsys.readouterr().err
    (run_dir,) = [p for p in (workdir / "runs").iterdir() if p.name not in ("pretrained", ".locks")]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed"
    assert summary["model"]["arch"] == {"my_bert.yaml": "hf", "my_timm.yaml": "timm"}.get(experiment, "custom")
