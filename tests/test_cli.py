"""The command line a researcher meets first: --version, help with defaults, overrides in the forms other tools
write them (a W&B sweep agent's ``--key=value``, Hydra's ``method=ewc``), ``run --dry-run`` / ``--print-config``,
paths relative to the experiment file, and the configuration reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import EXPERIMENTS, TINY

from research.cli import main
from research.reference import config_reference, section_names

SPLIT = EXPERIMENTS / "split_digits.yaml"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def printed_run_id(out: str) -> str:
    first = out.splitlines()[0]
    assert first.startswith("# run id: "), out[:200]
    return first.removeprefix("# run id: ")


def test_version_names_the_package_and_commit() -> None:
    proc = subprocess.run([sys.executable, "-m", "research", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("research (forgetting-lab) 0."), proc.stdout
    assert "commit" in proc.stdout  # the tests run in a git checkout


def test_help_shows_the_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["grid", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "runs at once (local processes or SLURM jobs) (default: 1)" in text
    assert "time limit per run (default: 60)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_a_sweep_agents_dashed_overrides_are_plain_overrides(capsys, tmp_path: Path) -> None:
    base = [str(SPLIT), f"out={tmp_path}", "--print-config"]
    code, dashed, err = run_cli(capsys, "run", *base, "--method.name=ewc", "--method.lam=50")
    assert code == 0, err
    code, plain, _ = run_cli(capsys, "run", *base, "method.name=ewc", "method.lam=50")
    assert dashed == plain
    assert yaml.safe_load(plain)["method"]["lam"] == 50.0
    # A config key that is also another command's option (report --out) is still a config key for run.
    code, printed, err = run_cli(capsys, "run", str(SPLIT), f"--out={tmp_path / 'elsewhere'}", "--print-config")
    assert code == 0, err
    assert yaml.safe_load(printed)["out"] == str(tmp_path / "elsewhere")
    # Our own options keep their meaning in the --name=value form.
    code, _, err = run_cli(capsys, "grid", str(EXPERIMENTS / "grids" / "demo.yaml"), "--workers=3", "--dry-run")
    assert code == 0, err


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("method=ewc", "method is a section, not a value; set one of its keys, e.g. method.name=ewc"),
        ("train=fast", "train is a section, not a value; set one of its keys, e.g. train.lr=0.01"),
        ("seed=1,2,3", "looks like a Hydra sweep: one command runs one setting"),
    ],
)
def test_hydra_style_overrides_get_a_hint_with_the_right_form(capsys, tmp_path: Path, override, hint) -> None:
    code, _, err = run_cli(capsys, "run", str(SPLIT), f"out={tmp_path / 'out'}", override)
    assert code == 2
    assert err.count("\n") == 1 and hint in err, err
    assert not (tmp_path / "out").exists()


def test_print_config_is_a_config_that_runs_as_the_same_run(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, printed, err = run_cli(capsys, "run", str(SPLIT), f"out={out}", "method.name=l2sp", "--print-config")
    assert code == 0, err
    written = tmp_path / "resolved.yaml"
    written.write_text(printed)
    code, again, err = run_cli(capsys, "run", str(written), "--print-config")
    assert code == 0, err
    assert printed_run_id(again) == printed_run_id(printed)
    assert not out.exists()


def test_dry_run_checks_everything_writes_nothing_and_predicts_the_run(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", str(SPLIT), *TINY, f"out={out}", "logging.wandb=disabled"]
    home = {p.name for p in Path.home().iterdir()}
    code, planned, err = run_cli(capsys, *args, "--dry-run")
    assert code == 0, err
    assert not out.exists()  # no run directory, no pretraining cache, no lock
    assert {p.name for p in Path.home().iterdir()} == home
    rid = printed_run_id(planned)
    assert planned.rstrip().splitlines()[-1] == f"# would start a new run in {out / rid}"

    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert (out / rid / "summary.json").is_file()  # the id the dry run printed is the run's
    code, planned, _ = run_cli(capsys, *args, "--dry-run")
    assert planned.rstrip().endswith("is completed: would skip it (--force reruns it)")

    # Found again under other code, a completed run is still skipped, and says so.
    summary_file = out / rid / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["git"] = {"commit": "0" * 40, "dirty": False, "changed": 0}
    summary_file.write_text(json.dumps(summary))
    code, said, _ = run_cli(capsys, *args)
    assert code == 0 and said.startswith(f"already completed: {out / rid}")
    assert "note: this run was made by commit 0000000000, and the code is now at" in said

    # What a run would refuse, a dry run refuses the same way: exit 2, one line.
    code, _, err = run_cli(capsys, *args, "method.name=lp_ft", "train.strategy=ddp", "train.devices=2", "--dry-run")
    assert code == 2 and "train.strategy: method lp_ft is not correct under ddp" in err


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=rng.normal(size=(80, 8)).astype(np.float32), y=np.repeat(np.arange(4), 20))
    return path


def test_relative_paths_in_an_experiment_file_are_relative_to_that_file(capsys, tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    data = _npz(project / "data" / "points.npz")
    experiment = project / "experiments" / "mine.yaml"
    experiment.parent.mkdir()
    experiment.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "pretrain": {
                    "tasks": [{"name": "old", "source": "npz", "path": "../data/points.npz", "classes": [0, 1]}]
                },
                "finetune": {
                    "tasks": [{"name": "new", "source": "npz", "path": "../data/points.npz", "classes": [2, 3]}]
                },
            }
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, printed, err = run_cli(capsys, "run", str(experiment), f"out={tmp_path / 'out'}", "--dry-run")
    assert code == 0, err
    config = yaml.safe_load(printed)
    assert [t["path"] for t in config["pretrain"]["tasks"] + config["finetune"]["tasks"]] == [str(data)] * 2

    # On the command line a relative path is relative to the working directory, and a missing one is named by
    # its key and the absolute path tried.
    code, _, err = run_cli(capsys, "run", str(experiment), "finetune.tasks.0.path=points.npz", "--dry-run")
    assert code == 2
    assert err == f"research: error: finetune.tasks.0.path: no such file or folder: {elsewhere / 'points.npz'}\n"
    assert not (tmp_path / "out").exists()


def test_names_that_are_not_paths_stay_names(tmp_path: Path) -> None:
    from research.config import paths_relative_to

    raw = {
        "model": {"arch": "hf", "name": "sentence-transformers/all-MiniLM-L6-v2"},
        "abilities": [{"name": "w", "kind": "similarity", "data": "wordsim353"}, {"name": "m", "data": "./mine.tsv"}],
        "pretrain": {"checkpoint": "/abs/weights.safetensors"},
        "finetune": {"tasks": [{"name": "t", "source": "npz", "path": "${oc.env:DATA}/x.npz"}]},
    }
    paths_relative_to(raw, tmp_path)
    assert raw["model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert raw["abilities"][0]["data"] == "wordsim353"
    assert raw["abilities"][1]["data"] == str(tmp_path / "mine.tsv")
    assert raw["pretrain"]["checkpoint"] == "/abs/weights.safetensors"
    assert raw["finetune"]["tasks"][0]["path"] == "${oc.env:DATA}/x.npz"
    (tmp_path / "my-bert").mkdir()
    raw = {"model": {"arch": "hf", "name": "my-bert"}}
    paths_relative_to(raw, tmp_path)
    assert raw["model"]["name"] == str(tmp_path / "my-bert")


def test_the_configuration_reference_is_generated_and_documented() -> None:
    text = config_reference()
    assert DOCS.read_text() == text, "docs/configuration.md is stale: uv run research config > docs/configuration.md"
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    undocumented = [row.split("|")[1].strip() for row in rows if row.rstrip().endswith("|  |")]
    assert not undocumented, f"keys without a meaning: {undocumented}"
    for key in ("`train.lr`", "`pretrain.train.epochs`", "`method.lam`", "`abilities[i].data`", "`tasks[i].path`"):
        assert f"| {key} |" in text
    assert "| `pretrain.train.epochs` | int > 0 | `20` |" in text  # the section's own default, not OptimConfig's
    assert "| `train.epochs` | int > 0 | `5` |" in text


def test_config_command_prints_a_section_and_refuses_an_unknown_one(capsys) -> None:
    code, out, _ = run_cli(capsys, "config", "eval")
    assert code == 0 and out.startswith("## eval") and "`eval.every_n_steps`" in out and "train.lr" not in out
    code, _, err = run_cli(capsys, "config", "nope")
    assert code == 2 and f"valid sections: {', '.join(section_names())}" in err


def test_research_help_is_quick_to_start() -> None:
    # Not a timing assertion: `--help` must not import torch (lazy imports keep every command's start short).
    code = "import sys, research.cli; research.cli._parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert proc.stdout.strip() == "False", proc.stderr


def test_the_same_experiment_and_data_in_another_folder_is_the_same_run(capsys, tmp_path: Path) -> None:
    """A run's id is what its files hold, not where they are: a moved checkout or another machine's copy of the
    experiment and its data gives the same run id (and the pretraining cache entry), other data another."""

    def project(folder: Path, seed: int) -> Path:
        rng = np.random.default_rng(seed)
        (folder / "data").mkdir(parents=True)
        x = rng.normal(size=(80, 8)).astype(np.float32)
        np.savez(folder / "data" / "points.npz", x=x, y=np.repeat(np.arange(4), 20))
        tasks = {
            "pretrain": {"tasks": [{"name": "old", "source": "npz", "path": "data/points.npz", "classes": [0, 1]}]},
            "finetune": {"tasks": [{"name": "new", "source": "npz", "path": "data/points.npz", "classes": [2, 3]}]},
        }
        (folder / "mine.yaml").write_text(yaml.safe_dump({"name": "mine", **tasks}))
        return folder / "mine.yaml"

    def ids(experiment: Path) -> tuple[str, str]:
        from research.config import load_config
        from research.data import build_tasks
        from research.training.pretrain import pretrain_key

        code, printed, err = run_cli(capsys, "run", str(experiment), "--print-config")
        assert code == 0, err
        cfg = load_config(experiment)
        return printed_run_id(printed), pretrain_key(cfg, build_tasks(cfg))

    here, there, other = project(tmp_path / "a", 0), project(tmp_path / "b" / "moved", 0), project(tmp_path / "c", 1)
    assert ids(here) == ids(there)
    assert ids(here)[0] != ids(other)[0] and ids(here)[1] != ids(other)[1]


def test_a_grid_says_when_runs_it_skips_were_made_by_other_code(capsys, tmp_path: Path) -> None:
    from research.grid.spec import load_grid
    from research.training import run

    out = tmp_path / "out"
    grid_file = tmp_path / "g.yaml"
    overrides = {item.split("=", 1)[0]: yaml.safe_load(item.split("=", 1)[1]) for item in TINY}
    grid_file.write_text(
        yaml.safe_dump(
            {
                "base": str(SPLIT),
                "overrides": {**overrides, "out": str(out)},
                "seeds": [0],
                "grid": [{"method.name": "finetune"}],
            }
        )
    )
    (grid_run,) = load_grid(grid_file).runs
    result = run(grid_run.config)
    assert result.run_id == grid_run.run_id
    summary = json.loads((result.run_dir / "summary.json").read_text())
    summary["git"] = {"commit": "1" * 40, "dirty": False, "changed": 0}
    (result.run_dir / "summary.json").write_text(json.dumps(summary))
    code, said, err = run_cli(capsys, "grid", str(grid_file))
    assert code == 0, err
    note = "note: completed runs to skip that other code made: 1 (e.g. finetune seed=0: this run was made by commit"
    assert note in said
    assert "1111111111" in said and "--force reruns them" in said
