"""The walkthrough notebook runs from top to bottom on a small grid's runs (it is committed without outputs)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nbformat
import yaml
from conftest import EXPERIMENTS, ROOT, TINY
from nbclient import NotebookClient

from research.grid.local import LocalExecutor
from research.grid.runner import run_grid
from research.grid.spec import load_grid

NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


def _files(folder: Path) -> set[Path]:
    """Every file under ``folder``, ignored ones (caches, checkpoints) included."""
    return {p for p in folder.rglob("*") if p.is_file()}


def test_notebook_is_committed_without_outputs() -> None:
    notebook = json.loads(NOTEBOOK.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_walkthrough_notebook_executes(tmp_path: Path, out: Path, monkeypatch) -> None:
    spec = {
        "base": str(EXPERIMENTS / "split_digits.yaml"),
        "overrides": {o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in TINY},
        "seeds": [0, 1],
        "grid": [{"method.name": "finetune"}, {"method.name": "ewc", "method.lam": [10.0, 1000.0]}],
    }
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    grid = load_grid(tmp_path / "g.yaml", [f"out={out}"])
    result = run_grid(grid, LocalExecutor(2, grid.folder / "logs"), 2, stream=io.StringIO())
    assert result.count("completed") == 6

    monkeypatch.setenv("FORGETTING_RUNS_DIR", str(out))
    monkeypatch.delenv("FORGETTING_FIGURES_DIR", raising=False)
    before = _files(NOTEBOOK.parent)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Run where a reader runs it, beside the notebook: it must leave nothing behind in the repository.
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    assert _files(NOTEBOOK.parent) == before
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "6 runs, 6 completed" in text
    # Figures come back as matplotlib Figures and show inline (forgetting curves, plane, families).
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
