"""Config loading, overrides, validation errors (library and CLI), and run identity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from research.cli import main
from research.config import ExperimentConfig, load_config, resolved, run_id, validate_config
from research.errors import ConfigError
from research.methods import method_names
from research.training import check

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SHIPPED = sorted(p.name for p in EXPERIMENTS.glob("*.yaml"))
SPLIT = EXPERIMENTS / "split_digits.yaml"


# --------------------------------------------------------------------------------------------- loading


def test_there_are_shipped_experiments() -> None:
    assert {"split_digits.yaml", "rotated_digits.yaml", "mnist1d.yaml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_experiment_loads_and_checks(name: str) -> None:
    cfg = load_config(EXPERIMENTS / name)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.method["name"] in method_names()
    tasks = check(cfg)  # data, classes, model and method all fit, without writing anything
    assert len(tasks.pretrain) >= 1 and len(tasks.finetune) >= 1
    # The resolved config is a fixed point: validating it again gives the same config.
    assert resolved(validate_config(resolved(cfg))) == resolved(cfg)


def test_overrides_set_nested_values_and_parse_types() -> None:
    cfg = load_config(
        SPLIT,
        [
            "train.epochs=3",
            "train.lr=0.5",
            "model.hidden=[7,9]",
            "method.name=ewc",
            "method.lam=12.5",
            "eval.max_samples=null",
            "logging.wandb=disabled",
        ],
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == 0.5
    assert cfg.model.hidden == [7, 9]
    assert cfg.method["name"] == "ewc" and cfg.method["lam"] == 12.5
    assert cfg.method["fisher"] == "exact"  # the method's defaults are filled in
    assert cfg.eval.max_samples is None
    assert cfg.logging.wandb == "disabled"


def test_override_through_a_list_index() -> None:
    cfg = load_config(SPLIT, ["finetune.tasks.0.classes=[5,6]", "pretrain.tasks.0.name=first"])
    assert cfg.finetune.tasks[0].classes == [5, 6]
    assert cfg.finetune.tasks[0].name == "digits_5_9"  # the rest of the list entry is kept
    assert cfg.pretrain.tasks[0].name == "first"
    assert cfg.pretrain.tasks[0].classes == [0, 1, 2, 3, 4]


def test_later_override_wins() -> None:
    assert load_config(SPLIT, ["seed=1", "seed=7"]).seed == 7


def test_wandb_defaults_to_offline_without_an_api_key(monkeypatch, tmp_path: Path) -> None:
    from research.tracking import resolve_destination

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    cfg = load_config(SPLIT)
    assert cfg.logging.wandb is None  # W&B's conventions decide, when the run starts
    assert resolve_destination(cfg.logging).mode == "offline"


# --------------------------------------------------------------------------------------------- bad input


def _error(overrides: list[str], path: Path | str = SPLIT) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, "a config error is one line"
    return message


def test_unknown_method_lists_the_valid_names() -> None:
    message = _error(["method.name=ewcc"])
    assert "method.name" in message and "ewcc" in message
    for name in method_names():
        assert name in message


def test_misspelled_top_level_key_suggests_the_right_one() -> None:
    message = _error(["trian.epochs=3"])
    assert message.startswith("trian")
    assert "did you mean 'train'" in message


def test_misspelled_key_in_the_yaml_file(tmp_path: Path) -> None:
    text = SPLIT.read_text().replace("eval:", "evals:")
    assert "evals:" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    message = _error([], bad)
    assert message.startswith("evals") and "did you mean 'eval'" in message


def test_unknown_nested_key_names_the_full_path_and_valid_keys() -> None:
    message = _error(["train.epochz=3"])
    assert message.startswith("train.epochz")
    assert "did you mean 'epochs'" in message
    assert "batch_size" in message and "lr" in message  # the valid keys at that level


def test_unknown_method_hyperparameter() -> None:
    message = _error(["method.name=ewc", "method.lamda=3"])
    assert "method.lamda" in message
    assert "did you mean 'lam'" in message
    assert "fisher" in message  # valid choices are listed


def test_hyperparameter_of_another_method_is_rejected() -> None:
    message = _error(["method.name=finetune", "method.alpha=0.1"])
    assert "method.alpha" in message


def test_bad_method_hyperparameter_value_names_the_choices() -> None:
    message = _error(["method.name=ewc", "method.fisher=exactt"])
    assert "method.fisher" in message
    for estimator in ("exact", "sample", "empirical", "batched"):
        assert estimator in message


def test_wrong_type() -> None:
    message = _error(["train.epochs=abc"])
    assert message.startswith("train.epochs")
    assert "abc" in message and "integer" in message


def test_negative_learning_rate() -> None:
    message = _error(["train.lr=-0.1"])
    assert message.startswith("train.lr")
    assert "greater than 0" in message


def test_unknown_task_source_lists_the_sources() -> None:
    message = _error(["pretrain.tasks.0.source=imagenet"])
    assert "pretrain.tasks.0.source" in message and "imagenet" in message
    for source in ("digits", "mnist1d", "npz", "folder"):
        assert source in message


def test_bad_literal_lists_the_choices() -> None:
    message = _error(["logging.wandb=sometimes"])
    assert "logging.wandb" in message
    for mode in ("offline", "online", "disabled"):
        assert mode in message


def test_class_not_in_source_is_found_at_check_time() -> None:
    cfg = load_config(SPLIT, ["finetune.tasks.0.classes=[5,12]"])  # valid YAML, invalid for the data
    with pytest.raises(ConfigError) as info:
        check(cfg)
    message = str(info.value)
    assert "finetune.tasks[0].classes" in message and "12" in message and "0..9" in message


def test_npz_source_needs_a_path() -> None:
    message = _error(["finetune.tasks.0.source=npz"])
    assert "finetune.tasks.0" in message and "path" in message


def test_duplicate_task_names_are_rejected() -> None:
    message = _error(["finetune.tasks.0.name=digits_0_4"])
    assert "digits_0_4" in message and "unique" in message


def test_malformed_override_is_rejected() -> None:
    assert "key=value" in _error(["train.lr"])


def test_malformed_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\ntrain: {epochs: 3\nmodel: [\n")
    message = _error([], bad)
    assert str(bad) in message


def test_yaml_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    assert "mapping" in _error([], bad)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    message = _error([], missing)
    assert "not found" in message and "nope.yaml" in message


# --------------------------------------------------------------------------------------------- the CLI

CLI_BAD_INPUT = {
    "unknown_method": ["method.name=ewcc"],
    "misspelled_key": ["trian.epochs=3"],
    "unknown_hyperparameter": ["method.name=ewc", "method.lamda=3"],
    "wrong_type": ["train.epochs=abc"],
    "negative_lr": ["train.lr=-0.1"],
    "unknown_source": ["pretrain.tasks.0.source=imagenet"],
    "class_not_in_source": ["finetune.tasks.0.classes=[5,12]"],
    "partial_deeper_than_model": ["method.name=partial", "method.unfreeze_top_k=5"],
    "missing_checkpoint": ["pretrain.checkpoint=/nonexistent/model.safetensors"],
}


@pytest.mark.parametrize("command", ["run", "pretrain"])
@pytest.mark.parametrize("case", sorted(CLI_BAD_INPUT))
def test_cli_config_error_exits_2_with_one_line_and_writes_nothing(
    case: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    code = main([command, str(SPLIT), f"out={out}", "logging.progress=false", *CLI_BAD_INPUT[case]])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("research: error:")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("path", ["missing.yaml", "broken.yaml"])
def test_cli_bad_config_file_exits_2(path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    out = tmp_path / "runs"
    code = main(["run", str(tmp_path / path), f"out={out}"])
    captured = capsys.readouterr()
    assert code == 2
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("research: error:")
    assert not out.exists()


def test_cli_process_config_error(tmp_path: Path) -> None:
    """The real console entry point: exit status 2, one stderr line, nothing written."""
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "research", "run", str(SPLIT), f"out={out}", "train.lr=-1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("research: error: train.lr")
    assert proc.stdout == ""
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # nothing in the working directory either


@pytest.mark.parametrize("command", ["run", "pretrain", "methods", "demo"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- run identity


def test_same_config_same_run_id() -> None:
    assert run_id(load_config(SPLIT)) == run_id(load_config(SPLIT))
    # Spelling a default explicitly does not change the identity either.
    assert run_id(load_config(SPLIT, ["train.optimizer=adam"])) == run_id(load_config(SPLIT))


def test_run_id_changes_with_seed_and_settings() -> None:
    base = run_id(load_config(SPLIT))
    assert run_id(load_config(SPLIT, ["seed=1"])) != base
    assert run_id(load_config(SPLIT, ["train.lr=0.01"])) != base
    assert run_id(load_config(SPLIT, ["method.name=ewc"])) != base
    assert run_id(load_config(SPLIT, ["method.name=ewc", "method.lam=5"])) != run_id(
        load_config(SPLIT, ["method.name=ewc"])
    )


def test_out_and_logging_do_not_change_run_id(tmp_path: Path) -> None:
    base = run_id(load_config(SPLIT))
    assert run_id(load_config(SPLIT, [f"out={tmp_path}/elsewhere"])) == base
    assert (
        run_id(
            load_config(
                SPLIT,
                [
                    "logging.wandb=disabled",
                    "logging.progress=false",
                    "logging.project=other",
                ],
            )
        )
        == base
    )
    # How often training scalars are recorded decides which rows metrics.parquet holds: part of the identity.
    assert run_id(load_config(SPLIT, ["logging.log_every_n_steps=3"])) != base


def test_references_to_other_keys_still_interpolate() -> None:
    """Only resolvers are refused (tests/test_bad_input.py); ``${train.lr}`` is resolved, after overrides."""
    from conftest import EXPERIMENTS

    cfg = load_config(EXPERIMENTS / "split_digits.yaml", ["train.lr=0.02", "pretrain.train.lr=${train.lr}"])
    assert cfg.pretrain.train.lr == 0.02
