"""A run whose output cannot be written ends as promised (issue 16): one line, the run marked failed with the
OS error wherever that can still be written, and no ``.tmp`` file left behind; an ``out`` that cannot be
written at all is refused before anything is written (exit 2).

A full disk is made with ``RLIMIT_FSIZE`` in a real ``research run`` subprocess: no file it writes may grow past
the limit (SIGXFSZ ignored, so the write fails with EFBIG, as on a full disk it fails with ENOSPC). The limit is
above the size of summary.json at the run's start and below that of its metrics table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXPERIMENTS

from research.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = EXPERIMENTS / "split_digits.yaml"
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from research.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(autouse=True)
def compiled_beforehand() -> None:
    """Every module the limited processes import has its .pyc already. The lab turns bytecode writing on
    (research/__init__.py), and CPython writes a .pyc with one unchecked write, so under the limit a module
    compiled for the first time would be left as a .pyc cut short that breaks every later import of it."""
    import compileall

    import lightning  # noqa: F401
    import wandb  # noqa: F401

    import research.grid.execute
    import research.grid.local
    import research.training.run  # noqa: F401

    for package in ("research", "analysis"):
        compileall.compile_dir(ROOT / package, quiet=1)


def test_a_run_that_cannot_write_its_results_is_marked_failed_with_the_os_error(tiny_overrides: list[str]) -> None:
    overrides = [*tiny_overrides, "train.epochs=4", "checkpoint.every_n_seconds=0"]
    assert main(["pretrain", str(EXPERIMENT), *overrides]) == 0  # the cache entry is bigger than the limit
    command = [sys.executable, "-c", LIMITED, "4096", "run", str(EXPERIMENT), *overrides]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("research:")]
    assert len(ours) == 1 and "could not write the run's results" in ours[0] and "File too large" in ours[0]
    out = Path(next(o for o in overrides if o.startswith("out=")).removeprefix("out="))
    (run_dir,) = [p for p in out.iterdir() if (p / "config.yaml").exists()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "File too large" in summary["error"]  # never left "running"
    assert not list(run_dir.glob(".*.tmp")) and not list(run_dir.glob("*.tmp"))
    assert not (run_dir / "metrics.parquet").exists()
    assert not (ROOT / ".git" / "index.lock").exists()  # the run's `git status` wrote nothing into the repository
    # With room again, the same command runs it from the start and completes.
    assert main(["run", str(EXPERIMENT), *overrides]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_an_out_that_cannot_be_written_is_refused_before_anything_is_written(
    tmp_path: Path, tiny_overrides: list[str], capsys
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    overrides = [o for o in tiny_overrides if not o.startswith("out=")]
    before = sorted(tmp_path.rglob("*"))
    assert main(["run", str(EXPERIMENT), *overrides, f"out={blocker / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out: cannot write to" in err and "Not a directory" in err
    assert sorted(tmp_path.rglob("*")) == before and blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("limit", "grid_records_fit"),
    [(4096, True), (650, False)],
    ids=["runs_cannot_write_their_results", "nor_the_grid_its_records"],
)
def test_a_grid_on_a_full_disk_finishes_and_marks_each_run_failed(
    limit: int, grid_records_fit: bool, tmp_path: Path, tiny_overrides: list[str]
) -> None:
    """The same limit on a whole ``research grid``: every run fails with the OS error in its own summary, the
    grid goes on to the end instead of crashing while it writes its own records (at 650 bytes its event log and
    summary.json no longer fit, nor does a run's first summary.json), and no ``.tmp`` is left."""
    import yaml

    overrides = [*tiny_overrides, "train.epochs=4", "checkpoint.every_n_seconds=0"]
    assert main(["pretrain", str(EXPERIMENT), *overrides]) == 0
    out = Path(next(o for o in overrides if o.startswith("out=")).removeprefix("out="))
    grid = tmp_path / "g.yaml"
    spec = {"name": "full", "base": str(EXPERIMENT), "seeds": [0, 1], "grid": [{"method.name": "finetune"}]}
    grid.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-c", LIMITED, str(limit), "grid", str(grid), *overrides, "--workers", "1"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "2 failed" in proc.stdout or "failed 2" in proc.stdout, proc.stdout
    runs = [p for p in out.iterdir() if (p / "summary.json").exists()]  # at 650 bytes, no room for config.yaml
    assert len(runs) == 2
    for run_dir in runs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed" and "File too large" in summary["error"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    warned = "could not write" in proc.stderr and "summary.json" in proc.stderr
    assert warned is not grid_records_fit, proc.stderr
