"""Grid files: expansion of conditional sub-grids, run identity, and bad grid files (exit 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import EXPERIMENTS, TINY

from research.config import load_config, run_id
from research.errors import ConfigError
from research.grid.spec import load_grid


def write_grid(path: Path, **spec) -> Path:
    spec.setdefault("base", str(EXPERIMENTS / "split_digits.yaml"))
    spec.setdefault("seeds", [0, 1])
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_conditional_subgrids_expand_per_method(tmp_path: Path) -> None:
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml",
            grid=[
                {"method.name": "finetune"},
                {"method.name": "ewc", "method.lam": [1.0, 10.0], "method.fisher": ["exact", "batched"]},
                {"method.name": "l2sp", "method.alpha": 0.5},
            ],
        ),
        [f"out={tmp_path / 'runs'}"],
    )
    assert grid.name == "g"
    names = [run.name for run in grid.runs]
    assert names == [
        "finetune seed=0",
        "finetune seed=1",
        "ewc lam=1 fisher=exact seed=0",
        "ewc lam=1 fisher=exact seed=1",
        "ewc lam=1 fisher=batched seed=0",
        "ewc lam=1 fisher=batched seed=1",
        "ewc lam=10 fisher=exact seed=0",
        "ewc lam=10 fisher=exact seed=1",
        "ewc lam=10 fisher=batched seed=0",
        "ewc lam=10 fisher=batched seed=1",
        "l2sp alpha=0.5 seed=0",
        "l2sp alpha=0.5 seed=1",
    ]
    by_name = {run.name: run for run in grid.runs}
    # Hyperparameters apply only to the method of their sub-grid.
    assert by_name["finetune seed=1"].config.method == {"name": "finetune"}
    ewc = by_name["ewc lam=10 fisher=batched seed=0"].config
    assert ewc.method["lam"] == 10.0 and ewc.method["fisher"] == "batched" and ewc.seed == 0
    assert by_name["l2sp alpha=0.5 seed=1"].config.method["alpha"] == 0.5
    assert "lam" not in by_name["l2sp alpha=0.5 seed=1"].config.method
    assert len({run.run_id for run in grid.runs}) == len(grid.runs)
    # W&B: one group per setting (its seeds), job type = method (set by the run), tags and names from the sub-grid.
    for run in grid.runs:
        assert run.config.logging.grid == "g"
        assert run.config.logging.group.startswith(f"g/{run.config.logging.setting} #")
        assert run.config.logging.run_name == run.name
        assert run.config.logging.tags[0] == f"subgrid-{run.subgrid}"
        assert run.config.logging.progress is False
        assert run.config.out == str(tmp_path / "runs")
    assert by_name["ewc lam=1 fisher=exact seed=0"].config.logging.tags == [
        "subgrid-1",
        "setting:method.lam",
        "setting:method.fisher",
    ]
    assert by_name["ewc lam=1 fisher=exact seed=0"].setting == "ewc lam=1 fisher=exact"


def test_list_valued_settings_are_written_as_lists_of_lists(tmp_path: Path) -> None:
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml",
            seeds=[3],
            grid=[{"model.hidden": [[16], [32, 32]]}, {"model.hidden": [[8, 8]], "train.lr": 0.01}],
        )
    )
    assert [run.config.model.hidden for run in grid.runs] == [[16], [32, 32], [8, 8]]
    assert [run.name for run in grid.runs] == [
        "finetune model.hidden=[16] seed=3",
        "finetune model.hidden=[32,32] seed=3",
        "finetune model.hidden=[8,8] train.lr=0.01 seed=3",
    ]
    assert grid.runs[2].config.train.lr == 0.01


def test_base_method_hyperparameters_stay_with_the_base_method(tmp_path: Path) -> None:
    base = yaml.safe_load((EXPERIMENTS / "split_digits.yaml").read_text())
    base["method"] = {"name": "ewc", "lam": 5.0}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml",
            base="base.yaml",  # relative to the grid file
            seeds=[0],
            grid=[{"method.name": "ewc"}, {"method.name": "l2sp"}, {}],
        )
    )
    methods = [run.config.method for run in grid.runs]
    assert methods[0]["name"] == "ewc" and methods[0]["lam"] == 5.0
    assert methods[1]["name"] == "l2sp" and "lam" not in methods[1]
    # An empty sub-grid is the base itself, here the same run as the first sub-grid's.
    assert len(methods) == 2 and grid.duplicates == [("ewc seed=0 (grid[2])", "ewc seed=0 (grid[0])")]


def test_method_overrides_that_cannot_apply_to_a_subgrid_are_refused(tmp_path: Path) -> None:
    """``overrides`` apply to every run; a method hyperparameter there cannot, once a sub-grid changes method."""
    spec = {"overrides": {"method.name": "ewc", "method.fisher_samples": 200}, "seeds": [0]}
    grid = load_grid(write_grid(tmp_path / "ok.yaml", grid=[{"method.lam": [1.0, 2.0]}], **spec))
    assert [run.config.method["fisher_samples"] for run in grid.runs] == [200, 200]
    with pytest.raises(ConfigError, match=r"grid\[1\]: overrides.method.fisher_samples belongs to method ewc"):
        load_grid(
            write_grid(tmp_path / "bad.yaml", grid=[{"method.name": "ewc"}, {"method.name": "online_ewc"}], **spec)
        )


def test_names_tell_settings_apart(tmp_path: Path) -> None:
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml",
            seeds=[0],
            grid=[
                {"method": [{"name": "ewc", "lam": 5.0}, {"name": "ewc", "lam": 50.0}]},
                {"train.lr": 0.01},
                {"pretrain.train.lr": 0.01},
                {"method.name": "ewc", "method.lam": [0.1234567, 0.1234568]},
            ],
        )
    )
    names = [run.name for run in grid.runs]
    assert names == [
        "ewc lam=5 seed=0",
        "ewc lam=50 seed=0",
        "finetune train.lr=0.01 seed=0",
        "finetune pretrain.train.lr=0.01 seed=0",
        "ewc lam=0.1234567 seed=0",
        "ewc lam=0.1234568 seed=0",
    ]
    assert len({run.setting_id for run in grid.runs}) == len(grid.runs)


def test_points_resolving_to_the_same_config_are_one_run(tmp_path: Path) -> None:
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml", grid=[{"method.name": "ewc"}, {"method.name": "ewc", "method.lam": [100.0, 7.0]}]
        )
    )
    assert [run.name for run in grid.runs] == ["ewc seed=0", "ewc seed=1", "ewc lam=7 seed=0", "ewc lam=7 seed=1"]
    assert grid.duplicates == [
        ("ewc lam=100 seed=0 (grid[1])", "ewc seed=0 (grid[0])"),
        ("ewc lam=100 seed=1 (grid[1])", "ewc seed=1 (grid[0])"),
    ]


def test_grid_runs_have_the_ids_of_the_same_single_runs(tmp_path: Path) -> None:
    """W&B names, groups and tags are not part of a run's identity: `research run` with the same settings finds
    the grid's run (and the other way round)."""
    grid = load_grid(
        write_grid(tmp_path / "g.yaml", seeds=[4], grid=[{"method.name": "ewc", "method.lam": 10.0}]),
        [*TINY, f"out={tmp_path}"],
    )
    single = load_config(
        EXPERIMENTS / "split_digits.yaml", [*TINY, f"out={tmp_path}", "method.name=ewc", "method.lam=10", "seed=4"]
    )
    assert grid.runs[0].run_id == run_id(single)


def test_cli_overrides_apply_after_the_subgrids(tmp_path: Path) -> None:
    grid = load_grid(
        write_grid(tmp_path / "g.yaml", grid=[{"method.name": "ewc", "method.lam": [1.0, 2.0]}]),
        ["method.lam=3", "train.epochs=1"],
    )
    # Both sweep points now resolve to lam=3, so per seed only one run remains.
    assert [run.config.method["lam"] for run in grid.runs] == [3.0, 3.0]
    assert {run.config.train.epochs for run in grid.runs} == {1}
    assert len(grid.duplicates) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"grid": [{"method.name": "finetune"}], "sedes": [0]}, "unknown key (did you mean 'seeds'?)"),
        ({"seeds": []}, "seeds: List should have at least 1 item"),
        ({"seeds": [1, 1]}, "seeds has duplicates"),
        ({"seeds": [-1]}, "seeds.0: Input should be greater than or equal to 0"),
        ({"grid": []}, "grid: List should have at least 1 item"),
        ({"grid": [{"seed": [1, 2]}]}, "grid[0]: 'seed' cannot vary within a grid; use the grid's 'seeds' list"),
        ({"grid": [{"out": "x"}]}, "grid[0]: 'out' cannot vary within a grid"),
        ({"grid": [{"method.name": "ewc", "method.lam": []}]}, "grid[0]: 'method.lam' is an empty list"),
        ({"grid": [{"method.name": "ewc"}, {"method.name": "nope"}]}, "grid[1] (nope seed=0): method.name: unknown"),
        ({"grid": [{"method.name": "ewc", "method.lamb": 1}]}, "method.lamb: unknown key"),
        ({"grid": [{"train.lr": [0.1, -1.0]}]}, "train.lr: Input should be greater than 0"),
        ({"grid": [{"traim.lr": 0.1}]}, "traim: unknown key (did you mean 'train'?)"),
        ({"grid": ["finetune"]}, "grid.0: Input should be a valid dictionary"),
        ({"base": "missing.yaml"}, "config file not found"),
        ({"name": "a b"}, "grid name 'a b' may only contain"),
        ({"overrides": {"train.epochs": 0}}, "train.epochs: Input should be greater than 0"),
        ({"overrides": {"seed": 3}}, "overrides.seed: a grid's seeds come from its 'seeds' list"),
        ({"grid": [{"method": "ewc"}]}, "grid[0] (? method=ewc seed=0): method: needs a 'name'"),
        ({"overrides": {"method": "ewc"}}, "method: "),
    ],
)
def test_bad_grid_files_name_the_problem(tmp_path: Path, spec: dict, message: str) -> None:
    path = write_grid(tmp_path / "g.yaml", **spec)
    with pytest.raises(ConfigError) as err:
        load_grid(path, [f"out={tmp_path / 'runs'}"])
    assert message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_seed_cannot_be_overridden_on_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="override seed: a grid's seeds come from the 'seeds' list"):
        load_grid(write_grid(tmp_path / "g.yaml"), ["seed=5"])


def test_unreadable_grid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_grid(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("seeds: [0, 1\nbase: x\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_grid(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level of a grid file must be a mapping"):
        load_grid(tmp_path / "list.yaml")


def test_cli_bad_grid_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    path = write_grid(tmp_path / "g.yaml", grid=[{"method.name": "ewc", "method.lam": [1.0, "strong"]}])
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "research", "grid", str(path), f"out={out}"], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "grid[0] (ewc lam=strong seed=0): method.lam" in lines[0], proc.stderr
    assert not out.exists()


def test_cli_checks_every_run_before_anything_is_written(tmp_path: Path) -> None:
    """A problem only the full check finds (more blocks to unfreeze than the model has) also exits 2 before any run."""
    path = write_grid(
        tmp_path / "g.yaml",
        grid=[{"method.name": "finetune"}, {"method.name": "partial", "method.unfreeze_top_k": 7}],
    )
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "research", "grid", str(path), f"out={out}", *TINY, "--workers", "2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "run 'partial unfreeze_top_k=7 seed=0'" in proc.stderr, proc.stderr
    assert not out.exists()


def dry_run(path: Path, out: Path) -> subprocess.CompletedProcess:
    """``research grid PATH --dry-run`` in a process of its own, which must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "research", "grid", str(path), f"out={out}", *TINY, "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_dry_run_prints_runs_and_ids_and_writes_nothing(tmp_path: Path) -> None:
    path = write_grid(
        tmp_path / "g.yaml", grid=[{"method.name": "finetune"}, {"method.name": "ewc", "method.lam": [1.0, 100.0]}]
    )
    out = tmp_path / "runs"
    proc = dry_run(path, out)
    grid = load_grid(path, [f"out={out}", *TINY])
    for run in grid.runs:
        assert any(run.run_id in line and run.name in line and " new " in line for line in proc.stdout.splitlines())
    assert "6 to run, 0 already completed; 1 pretraining setup shared by all runs" in proc.stdout
    assert not out.exists()


# ------------------------------------------------------------------------------------- method.name: all


def test_all_is_every_registered_method_at_its_defaults(tmp_path: Path) -> None:
    from research.methods import method_names

    every = write_grid(tmp_path / "all.yaml", seeds=[0, 1], grid=[{"method.name": "all", "train.lr": [0.01]}])
    by_hand = write_grid(
        tmp_path / "by_hand.yaml", seeds=[0, 1], grid=[{"method.name": m, "train.lr": [0.01]} for m in method_names()]
    )
    grid, listed = load_grid(every), load_grid(by_hand)
    # The same runs as every method listed by hand, in the registry's order, with the same names and settings.
    assert [run.run_id for run in grid.runs] == [run.run_id for run in listed.runs]
    assert [run.name for run in grid.runs] == [f"{m} train.lr=0.01 seed={s}" for m in method_names() for s in (0, 1)]
    assert [run.settings for run in grid.runs] == [run.settings for run in listed.runs]
    assert {run.subgrid for run in grid.runs} == {0}
    assert not grid.left_out and not grid.duplicates
    # All in a list, next to a method it already holds: each method once.
    mixed = load_grid(write_grid(tmp_path / "mixed.yaml", seeds=[0], grid=[{"method.name": ["ewc", "all"]}]))
    assert [run.config.method["name"] for run in mixed.runs] == ["ewc", *(m for m in method_names() if m != "ewc")]


def test_all_leaves_out_what_cannot_run_on_the_base_and_says_why(tmp_path: Path) -> None:
    from research.methods import method_class, method_names

    sequence = write_grid(
        tmp_path / "sequence.yaml",
        base=str(EXPERIMENTS / "sequence_digits.yaml"),
        seeds=[0, 1],
        grid=[{"method.name": "all"}],
    )
    grid = load_grid(sequence)
    expected = [m for m in method_names() if method_class(m).supports_sequences]
    assert list(dict.fromkeys(run.config.method["name"] for run in grid.runs)) == expected
    left_out = [m for m in method_names() if m not in expected]
    assert [which for which, _ in grid.left_out] == [f"{m} (grid[0])" for m in left_out]  # once each, not per seed
    assert all("defined for one fine-tuning task" in why and "sequence of 2" in why for _, why in grid.left_out)

    # A model loaded from outside, without pretraining tasks: the methods that need pretraining data are left out.
    (tmp_path / "loaded.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "loaded",
                "model": {"arch": "custom", "factory": "torch.nn:Flatten"},
                "pretrain": {"tasks": []},
                "finetune": {"tasks": [{"name": "new", "source": "digits", "classes": [5, 6, 7, 8, 9]}]},
            }
        )
    )
    loaded = load_grid(
        write_grid(tmp_path / "loaded_grid.yaml", base="loaded.yaml", seeds=[0], grid=[{"method.name": "all"}])
    )
    needs = {m for m in method_names() if method_class(m).needs_pretraining_data}
    assert needs and {run.config.method["name"] for run in loaded.runs} == set(method_names()) - needs
    reasons = dict(loaded.left_out)
    assert set(reasons) == {f"{m} (grid[0])" for m in needs}
    for method in needs:  # SI's first reason is the one adding pretraining tasks would not cure
        trajectory = method_class(method).records_in_pretraining is not None
        why = reasons[f"{method} (grid[0])"]
        assert ("was pretrained elsewhere" in why) if trajectory else ("needs pretraining data" in why), why
        assert trajectory or "no pretrain.tasks" in why

    # From a checkpoint: no pretraining trajectory, so SI (which needs one) is left out.
    (tmp_path / "weights.safetensors").write_bytes(b"not read when a grid is loaded")
    spec = {"overrides": {"pretrain.checkpoint": str(tmp_path / "weights.safetensors")}, "seeds": [0]}
    checkpoint = load_grid(write_grid(tmp_path / "checkpoint.yaml", grid=[{"method.name": "all"}], **spec))
    assert "si (grid[0])" in dict(checkpoint.left_out) and "si" not in {
        r.config.method["name"] for r in checkpoint.runs
    }
    assert "pretrain.checkpoint does not carry" in dict(checkpoint.left_out)["si (grid[0])"]


def test_dry_run_notes_what_all_left_out(tmp_path: Path) -> None:
    # From a checkpoint, which carries no pretraining trajectory: SI, which needs one, is left out. (Every shipped
    # method runs on sequences, so a sequence no longer leaves one out.)
    from research.cli import main

    assert main(["pretrain", str(EXPERIMENTS / "split_digits.yaml"), *TINY, f"out={tmp_path / 'cache'}"]) == 0
    (weights,) = (tmp_path / "cache" / "pretrained").glob("*/model.safetensors")
    spec = {"overrides": {"pretrain.checkpoint": str(weights)}, "seeds": [0]}
    path = write_grid(tmp_path / "g.yaml", grid=[{"method.name": "all"}], **spec)
    out = tmp_path / "runs"
    proc = dry_run(path, out)
    grid = load_grid(path, [f"out={out}", *TINY])
    assert "si (grid[0])" in dict(grid.left_out)
    for which, reason in grid.left_out:
        assert f"  note: '{which}' is left out (method.name: all): {reason}" in proc.stdout.splitlines()
    assert not out.exists()


@pytest.mark.parametrize(
    ("subgrid", "message"),
    [
        ({"method.name": "all", "method.lam": 5}, "grid[0]: 'method.lam' cannot go with 'method.name: all'"),
        ({"method.name": ["all"], "method": {"lam": 5}}, "grid[0]: 'method' cannot go with 'method.name: all'"),
    ],
)
def test_all_takes_no_method_hyperparameters(tmp_path: Path, subgrid: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_grid(write_grid(tmp_path / "g.yaml", grid=[subgrid]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_grid_with_nothing_left_to_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain fine-tuning runs everywhere, so only a stand-in check can leave every method out."""
    import research.grid.spec as spec

    monkeypatch.setattr(spec, "cannot_run", lambda config: "no room here")
    with pytest.raises(ConfigError) as err:
        load_grid(write_grid(tmp_path / "g.yaml", grid=[{"method.name": "all"}]))
    message = str(err.value)
    assert "g.yaml: nothing to run on split_digits.yaml, every method is left out: agem (grid[0]): no room" in message
    assert "; finetune (grid[0]): no room here;" in message
    assert "\n" not in message
