"""A damaged pretrained-cache entry is found and rebuilt (issue 16), never used, never permanent.

Every entry's manifest keeps the SHA-256 of each file it holds; each use verifies them. An entry whose weights
were truncated or changed, whose manifest is not JSON, or that predates the hashes is rebuilt with a warning, and
the run goes on with exactly the numbers an intact entry gives. No message blames ``pretrain.checkpoint``, which
the user never set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from research.training import run
from research.training.checkpoints import MANIFEST_FILE, WEIGHTS_FILE
from research.training.pretrain import entry_problem


def _truncate_weights(entry: Path) -> None:
    weights = entry / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])


def _change_a_weight(entry: Path) -> None:
    """Same size, still a valid safetensors file, one value different: only the hash can tell."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(entry / WEIGHTS_FILE))
    name = next(iter(state))
    state[name] = state[name].clone()
    state[name].view(-1)[0] += 1.0
    save_file(state, str(entry / WEIGHTS_FILE))


def _manifest_not_json(entry: Path) -> None:
    (entry / MANIFEST_FILE).write_text("{not json")


def _no_hashes(entry: Path) -> None:
    manifest = json.loads((entry / MANIFEST_FILE).read_text())
    del manifest["sha256"]
    (entry / MANIFEST_FILE).write_text(json.dumps(manifest))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated_weights": (_truncate_weights, "does not match its hash"),
    "one_weight_changed": (_change_a_weight, "does not match its hash"),
    "manifest_not_json": (_manifest_not_json, "unreadable"),
    "entry_without_hashes": (_no_hashes, "no content hashes"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_entry_is_rebuilt_and_the_run_gives_the_intact_numbers(
    damage: str, make_cfg, capsys: pytest.CaptureFixture[str]
) -> None:
    harm, reason = DAMAGE[damage]
    intact = run(make_cfg("train.epochs=1"), force=True)
    entry = Path(intact.summary["pretrained"]["path"])
    assert entry_problem(entry) is None
    harm(entry)
    assert entry_problem(entry) is not None
    capsys.readouterr()

    rebuilt = run(make_cfg("train.epochs=1"), force=True)
    err = capsys.readouterr().err
    assert rebuilt.summary["status"] == "completed", rebuilt.summary.get("error")
    assert "pretrained cache entry" in err and "does not verify" in err and reason in err and "rebuilding" in err
    assert "pretrain.checkpoint" not in err
    assert rebuilt.summary["pretrained"]["cached"] is False
    assert entry_problem(entry) is None
    pd.testing.assert_frame_equal(rebuilt.metrics, intact.metrics, check_exact=True)
    # Once rebuilt, the entry verifies and is used as it is.
    again = run(make_cfg("train.epochs=1"), force=True)
    assert again.summary["pretrained"]["cached"] is True and "does not verify" not in capsys.readouterr().err
