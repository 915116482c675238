"""One corrupt run directory never takes ``research report`` down (issue 16): a truncated summary.json or
metrics.parquet, a summary that is a list, a config.yaml that does not parse, or a completed run whose metrics
file is missing is named under the report's "Left out" list with the reason, and the other runs are reported
as before. Three real tiny runs (one setting, seeds 0-2) are made once through the CLI; each test corrupts one of
them in a copy."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import EXPERIMENTS, TINY

from research.cli import main

SEEDS = (0, 1, 2)
VICTIM_SEED = 2


@dataclass(frozen=True)
class RealRuns:
    root: Path
    ids: dict[int, str]  # seed → run id


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory, pretrained_cache: Path) -> RealRuns:
    """The three runs, made through ``research run`` once for the module."""
    root = tmp_path_factory.mktemp("report_faults") / "out"
    root.mkdir()
    (root / "pretrained").symlink_to(pretrained_cache, target_is_directory=True)
    ids: dict[int, str] = {}
    for seed in SEEDS:
        assert main(["run", str(EXPERIMENTS / "split_digits.yaml"), *TINY, f"out={root}", f"seed={seed}"]) == 0
        (ids[seed],) = {p.name for p in root.iterdir() if (p / "summary.json").is_file()} - set(ids.values())
    return RealRuns(root, ids)


@pytest.fixture
def runs_copy(real_runs: RealRuns, tmp_path: Path) -> Path:
    """A copy of the three runs (without the shared pretrained cache) that a test may corrupt."""
    target = tmp_path / "runs"
    shutil.copytree(real_runs.root, target, ignore=shutil.ignore_patterns("pretrained", ".analysis-cache", "report"))
    return target


@pytest.fixture(scope="module")
def without_victim(real_runs: RealRuns, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the two good runs alone: what every case below must still report for them."""
    runs = tmp_path_factory.mktemp("without_victim") / "runs"
    runs.mkdir()
    for seed, run_id in real_runs.ids.items():
        if seed != VICTIM_SEED:
            shutil.copytree(real_runs.root / run_id, runs / run_id)
    assert main(["report", str(runs), "--out", str(runs.parent / "report")]) == 0
    return runs.parent / "report"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (what is done to the victim's run directory, the reason the report must give)
    "truncated summary.json": (lambda d: truncate(d / "summary.json"), "summary.json is not valid JSON"),
    "truncated metrics.parquet": (lambda d: truncate(d / "metrics.parquet"), "metrics.parquet unreadable: "),
    "summary.json is a list": (
        lambda d: (d / "summary.json").write_text('[{"status": "completed"}]'),
        "summary.json is not a mapping of keys to values (a list)",
    ),
    "config.yaml does not parse": (
        lambda d: (d / "config.yaml").write_text("seed: 2\nmethod: {name: finetune\n"),
        "config.yaml is not valid YAML",
    ),
    "completed without metrics.parquet": (
        lambda d: (d / "metrics.parquet").unlink(),
        "summary.json says completed but metrics.parquet is missing",
    ),
}


def left_out(report_html: str) -> str:
    """The report's "Left out" paragraph and list, as plain text ('' when the report leaves nothing out)."""
    found = re.search(r"<p>Left out:.*?</ul>", report_html, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", found.group(0))) if found else ""


def finetune_n(results_md: Path) -> int:
    """n of the one setting in the report's results table."""
    (row,) = [line for line in results_md.read_text().splitlines() if line.startswith("| finetune |")]
    return int(row.split("|")[2])


def report(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Path, str, str]:
    """``research report``'s exit code, its folder, its stderr and its stdout."""
    out = runs_dir.parent / "report"
    code = main(["report", str(runs_dir), "--out", str(out)])
    captured = capsys.readouterr()
    return code, out, captured.err, captured.out


def test_intact_runs_are_all_reported(runs_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The baseline the cases below are measured against: n = 3 and nothing left out."""
    code, out, err, printed = report(runs_copy, capsys)
    assert code == 0, err
    assert "left out:" not in printed
    assert finetune_n(out / "results.md") == 3
    text = (out / "report.html").read_text()
    assert "3 completed runs" in text and left_out(text) == ""


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_run_is_named_and_the_others_reported(
    case: str, real_runs: RealRuns, runs_copy: Path, without_victim: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt, reason = CORRUPTIONS[case]
    victim = real_runs.ids[VICTIM_SEED]
    corrupt(runs_copy / victim)
    code, out, err, printed = report(runs_copy, capsys)
    assert code == 0, err
    assert (out / "report.html").is_file() and (out / "results.md").is_file() and (out / "results.tex").is_file()
    text = (out / "report.html").read_text()
    listed = left_out(text)
    assert "Left out: 1 run(s)" in listed, listed
    assert victim in listed and f"unreadable — {reason}" in listed, listed
    named = [line for line in printed.splitlines() if "left out:" in line]  # the command says so too
    assert len(named) == 1 and victim in named[0] and reason in named[0], printed
    assert not any(real_runs.ids[s] in listed for s in SEEDS if s != VICTIM_SEED), listed
    assert str(runs_copy) not in listed  # a short reason, not an OS or Arrow message around the full path
    # The two good runs are reported exactly as they would be without the third.
    assert "2 completed runs" in text
    assert finetune_n(out / "results.md") == 2
    for table in ("results.md", "results_wide.md"):
        assert (out / table).read_text() == (without_victim / table).read_text(), table
    seeds = pd.read_parquet(out / "data" / "runs.parquet")["seed"]
    assert seeds.dtype.kind == "i" and sorted(seeds) == [s for s in SEEDS if s != VICTIM_SEED]


def test_nothing_usable_is_still_the_one_line_refusal(
    real_runs: RealRuns, runs_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every run corrupt: as for a folder with no completed run, exit 2 with one line, and nothing written."""
    for run_id in real_runs.ids.values():
        truncate(runs_copy / run_id / "summary.json")
    before = sorted(p.relative_to(runs_copy.parent) for p in runs_copy.parent.rglob("*"))
    code, out, err, printed = report(runs_copy, capsys)
    assert code == 2 and printed == ""
    assert len(err.strip().splitlines()) == 1 and "no completed runs to report on" in err, err
    assert "3 unreadable" in err and "summary.json is not valid JSON" in err, err
    assert not out.exists()
    assert sorted(p.relative_to(runs_copy.parent) for p in runs_copy.parent.rglob("*")) == before
