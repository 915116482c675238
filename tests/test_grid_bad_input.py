"""Bad grid input through the real command line (design guide §4): exit code 2, one line on stderr naming the
problem, nothing written, and no worker process started.

The cases: a grid name that is not a plain folder name (``..`` would put the grid's records into ``out``
itself), a lock file that is a symbolic link (following it would create or truncate a file elsewhere), a grid
whose expansion is far larger than anyone means to run (a 10^6-run grid used to spend hours in ``--dry-run``),
and a grid refused by the full check after its workers had already been started.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import EXPERIMENTS, TINY
from test_bad_input import one_line, refused_in_one_line

from research.cli import main
from research.config import load_config, run_id
from research.data.fingerprint import content_fingerprints
from research.errors import ConfigError
from research.grid import local
from research.grid.spec import load_grid

SPLIT = EXPERIMENTS / "split_digits.yaml"


def write_grid(path: Path, **spec) -> Path:
    spec.setdefault("base", str(SPLIT))
    spec.setdefault("seeds", [0])
    spec.setdefault("grid", [{"method.name": "finetune"}])
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def listing(root: Path) -> list[str]:
    """Every path under ``root``, symbolic links listed but not followed (``out/pretrained`` is shared)."""
    found = []
    for folder, dirs, files in os.walk(root):
        found += [str(Path(folder, name).relative_to(root)) for name in [*dirs, *files]]
    return sorted(found)


@contextmanager
def at_most(seconds: int) -> Iterator[None]:
    """Fail, instead of hanging for hours, when the block takes longer than ``seconds``."""

    def too_slow(signum: int, frame: object) -> None:
        raise TimeoutError(f"still going after {seconds} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refused(argv: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str], *says: str) -> str:
    """Run the CLI; it must exit 2 with one line saying ``says`` and change nothing under ``tmp_path``."""
    return refused_in_one_line(argv, tmp_path, capfd, says, listed=listing).err.removesuffix("\n")


# --------------------------------------------------------------------------------------------- grid names


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_a_grid_name_that_is_not_plain_is_refused(name: str, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Before: ``name: '..'`` ran the grid and wrote grid.json, events.jsonl and summary.json into ``out``."""
    path = write_grid(tmp_path / "g.yaml", name=name)
    out = tmp_path / "out"
    refused(["grid", str(path), *TINY, f"out={out}"], tmp_path, capfd, "g.yaml", f"grid name '{name}'", "'.'")
    assert not out.exists()


def test_a_grid_file_whose_name_is_not_plain_needs_a_name(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """``..yaml`` has the stem ``.``: the grid would be named after the folder ``out/grids/.``."""
    path = write_grid(tmp_path / "..yaml")
    refused(
        ["grid", str(path), *TINY, f"out={tmp_path / 'out'}", "--dry-run"],
        tmp_path,
        capfd,
        "'.'",
        "set 'name:' in the file",
    )


def test_plain_names_with_dots_inside_still_work(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path / "g.yaml", name="ewc_v1.2-b"), [f"out={tmp_path / 'out'}"])
    assert grid.folder == tmp_path / "out" / "grids" / "ewc_v1.2-b"


# --------------------------------------------------------------------------------------------- lock files


def lock_of(out: Path, *overrides: str) -> Path:
    """The lock file of the run ``research run split_digits.yaml`` makes with these overrides."""
    cfg = load_config(SPLIT, [*TINY, f"out={out}", *overrides])
    return out / ".locks" / f"{run_id(cfg, content_fingerprints(cfg))}.lock"


def test_a_symlinked_run_lock_is_not_followed(out: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Before: the link was followed (creating ``victim``) and the run went on."""
    victim = tmp_path / "victim"
    lock = lock_of(out)
    lock.parent.mkdir(parents=True)
    lock.symlink_to(victim)
    refused(["run", str(SPLIT), *TINY, f"out={out}"], tmp_path, capfd, str(lock), "symbolic link")
    assert not victim.exists()


def test_a_symlinked_lock_of_an_existing_file_leaves_it_untouched(
    out: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    lock = lock_of(out)
    lock.parent.mkdir(parents=True)
    lock.symlink_to(victim)
    refused(["run", str(SPLIT), *TINY, f"out={out}"], tmp_path, capfd, str(lock), "symbolic link")
    assert victim.read_text() == "keep me\n"


def test_a_grid_with_a_symlinked_run_lock_is_refused_before_it_writes(
    out: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """Before: the grid wrote its records, and its worker followed the link."""
    victim = tmp_path / "victim"
    path = write_grid(tmp_path / "g.yaml")
    grid = load_grid(path, [*TINY, f"out={out}"])
    lock = out / ".locks" / f"{grid.runs[0].run_id}.lock"
    lock.parent.mkdir(parents=True)
    lock.symlink_to(victim)
    refused(["grid", str(path), *TINY, f"out={out}"], tmp_path, capfd, str(lock), "symbolic link")
    assert not victim.exists()
    assert not (out / "grids").exists()


# --------------------------------------------------------------------------------------------- huge grids


def test_a_huge_grid_is_counted_and_refused_at_once(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """10^6 runs: before, ``--dry-run`` expanded and validated every one of them (hours)."""
    thousand = range(1, 1001)
    path = write_grid(
        tmp_path / "g.yaml",
        grid=[{"method.name": "ewc", "method.lam": list(thousand), "train.lr": [i / 1e4 for i in thousand]}],
    )
    with at_most(30):
        refused(
            ["grid", str(path), *TINY, f"out={tmp_path / 'out'}", "--dry-run"],
            tmp_path,
            capfd,
            "g.yaml",
            "1000000 runs",
            "limit of 10000",
            "--max-runs",
        )


def test_the_count_sums_subgrids_times_seeds(tmp_path: Path) -> None:
    path = write_grid(
        tmp_path / "g.yaml",
        seeds=[0, 1, 2],
        grid=[
            {"method.name": "finetune"},
            {"method.name": "ewc", "method.lam": [1.0, 10.0], "method.fisher": ["exact", "batched"]},
            {"model.hidden": [[16], [32, 32]]},
        ],
    )
    assert len(load_grid(path, [f"out={tmp_path / 'out'}"]).runs) == 3 * (1 + 4 + 2)
    with pytest.raises(ConfigError) as err:
        load_grid(path, [f"out={tmp_path / 'out'}"], max_runs=20)
    assert "21 runs" in str(err.value) and "limit of 20" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_max_runs_raises_the_limit(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = write_grid(tmp_path / "g.yaml", seeds=[0, 1, 2], grid=[{"method.name": "ewc", "method.lam": [1.0, 2.0]}])
    argv = ["grid", str(path), *TINY, f"out={tmp_path / 'out'}", "--dry-run"]
    refused([*argv, "--max-runs", "5"], tmp_path, capfd, "6 runs", "limit of 5", "--max-runs")
    assert main([*argv, "--max-runs", "6"]) == 0
    assert "6 to run" in capfd.readouterr().out
    assert not (tmp_path / "out").exists()


def test_max_runs_must_be_a_positive_number(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = write_grid(tmp_path / "g.yaml")
    with pytest.raises(SystemExit) as stop:
        main(["grid", str(path), f"out={tmp_path / 'out'}", "--dry-run", "--max-runs", "0"])
    assert stop.value.code == 2
    assert "--max-runs" in one_line(capfd.readouterr().err)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- workers


def test_a_refused_grid_starts_no_worker(
    tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A problem only the full check finds (more blocks to unfreeze than the model has): before, the CLI had
    already spawned its local worker processes (one interpreter importing torch each) when it found it."""
    spawned: list[int] = []
    real_init = local._Worker.__init__

    def counted(self: local._Worker, number: int, threads: int) -> None:
        real_init(self, number, threads)
        spawned.append(self.process.pid)

    monkeypatch.setattr(local._Worker, "__init__", counted)
    path = write_grid(
        tmp_path / "g.yaml", grid=[{"method.name": "finetune"}, {"method.name": "partial", "method.unfreeze_top_k": 7}]
    )
    refused(
        ["grid", str(path), *TINY, f"out={tmp_path / 'out'}", "--workers", "2"],
        tmp_path,
        capfd,
        "run 'partial unfreeze_top_k=7 seed=0'",
    )
    assert spawned == []


def test_the_command_line_default_is_the_grid_limit() -> None:
    from research import cli
    from research.grid import spec

    assert cli.GRID_MAX_RUNS == spec.MAX_RUNS == 10_000
