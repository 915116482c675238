"""Provenance: the code a run came from, and whether the working tree differed from that commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from research.store import git_commit


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_untracked_files_make_the_tree_dirty_and_ignored_ones_do_not(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("runs/\n")
    (tmp_path / "lab.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    clean = git_commit(tmp_path)
    assert clean["dirty"] is False and clean["changed"] == 0 and len(clean["commit"]) == 40

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "summary.json").write_text("{}")  # ignored: run directories are not code
    assert git_commit(tmp_path)["dirty"] is False

    (tmp_path / "my_method.py").write_text("y = 2\n")  # a new method file, not committed yet
    assert git_commit(tmp_path) == {"commit": clean["commit"], "dirty": True, "changed": 1}
    (tmp_path / "lab.py").write_text("x = 3\n")
    assert git_commit(tmp_path)["changed"] == 2


def test_outside_a_repository_nothing_is_claimed(tmp_path: Path) -> None:
    found = git_commit(tmp_path / "nowhere")
    assert found == {"commit": None, "dirty": None, "changed": None}
