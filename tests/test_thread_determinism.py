"""A run's numbers do not depend on how many workers share the machine (issue 16).

The intra-op thread count decides how each reduction is split, and so the last bits of every number. It is a
setting of the run (``threads``, part of the run id when it is not the default), never a consequence of
``--workers``: the same grid with 1 and with 2 workers, and the same run on its own, give bit-identical
metrics under the same run ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml
from conftest import EXPERIMENTS
from test_grid_run import GRID_OVERRIDES

from research.grid.spec import load_grid
from research.store import read_summary
from research.training import run

ROOT = Path(__file__).resolve().parents[1]
# Wide enough that torch splits its matrix products over threads when it has several.
WIDE = {"model.hidden": [256, 256], "train.epochs": 2}


def _grid(tmp_path: Path, workers: int, grid_file: Path) -> dict[str, pd.DataFrame]:
    out = tmp_path / f"workers{workers}"
    command = [sys.executable, "-m", "research", "grid", str(grid_file), f"out={out}", "--workers", str(workers)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {}
    for run_dir in out.iterdir():
        summary = read_summary(run_dir) if run_dir.is_dir() else None
        if summary and summary.get("status") == "completed":
            runs[run_dir.name] = pd.read_parquet(run_dir / "metrics.parquet")
    return runs


def test_one_and_two_workers_give_bit_identical_metrics(tmp_path: Path) -> None:
    spec = {
        "name": "threads",
        "base": str(EXPERIMENTS / "split_digits.yaml"),
        "overrides": GRID_OVERRIDES | WIDE,
        "seeds": [0],
        "grid": [{"method.name": ["finetune", "ewc"]}],
    }
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    one, two = _grid(tmp_path, 1, grid_file), _grid(tmp_path, 2, grid_file)
    assert one.keys() == two.keys() and len(one) == 2
    for run_id in one:
        pd.testing.assert_frame_equal(one[run_id], two[run_id], check_exact=True)
    # The same run on its own, in this process (whose torch uses every core unless told otherwise).
    torch.set_num_threads(os.cpu_count() or 1)
    (single,) = [r for r in load_grid(grid_file, [f"out={tmp_path / 'single'}"]).runs if r.setting == "finetune"]
    result = run(single.config)
    assert result.run_id in one
    pd.testing.assert_frame_equal(result.metrics, one[result.run_id], check_exact=True)
    assert torch.get_num_threads() == (os.cpu_count() or 1)  # set back after the run
