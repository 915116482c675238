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
