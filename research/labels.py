"""Readable labels for settings, shared by the grid (which records each run's label in its config and W&B run)
and the analysis (which labels the runs it loads the same way).

A label tells apart the settings present among some runs without their seed: the method, then each method
hyperparameter that varies among that method's runs, then every other config key that varies among all of
them (e.g. ``ewc lam=1000``, ``finetune train.lr=0.01``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd

# Config keys that do not make two runs different settings.
NOT_A_SETTING = ("config.seed", "config.out", "config.logging.")


def flatten_config(config: dict[str, Any], prefix: str = "config.") -> dict[str, Any]:
    """Nested config → ``config.a.b`` columns; lists become JSON text so every column has one simple type."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{dotted}."))
        elif isinstance(value, list):
            flat[dotted] = json.dumps(value, sort_keys=True)
        else:
            flat[dotted] = value
    return flat


def setting_labels(runs: pd.DataFrame) -> list[str]:
    """A readable label per run that tells apart the settings present in ``runs`` (see the module docstring)."""
    if runs.empty:
        return []
    columns = [c for c in runs.columns if c.startswith("config.") and not c.startswith(NOT_A_SETTING)]
    varying = [c for c in columns if runs[c].astype(str).nunique() > 1]
    labels = []
    for row in runs.to_dict("records"):
        parts = [str(row["method"])]
        if "config.name" in varying:
            parts.insert(0, str(row["config.name"]))
        same_method = runs[runs["method"] == row["method"]]
        for column in varying:
            if column in ("config.name", "config.method.name") or is_missing(row[column]):
                continue
            if column.startswith("config.method."):
                if same_method[column].astype(str).nunique() > 1:
                    parts.append(f"{column.removeprefix('config.method.')}={_short(row[column])}")
            else:
                parts.append(f"{column.removeprefix('config.')}={_short(row[column])}")
        if row["method"] == "wise_ft":  # its final weights are the fine-tuned ones; the α sweep is separate
            parts[parts.index("wise_ft")] = "wise_ft (α=1)"
        labels.append(" ".join(parts))
    return labels


def _short(value: Any) -> str:
    return f"{value:.12g}" if isinstance(value, float) else str(value)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def setting_id(row: dict[str, Any]) -> str:
    """Hash of the run's own flattened config (not of a DataFrame row, where padding turns ints into floats),
    without seed, out and logging, but with the logging interval, which changes the recorded rows."""
    config = {
        k: v
        for k, v in row.items()
        if k.startswith("config.") and (not k.startswith(NOT_A_SETTING) or k == "config.logging.log_every_n_steps")
    }
    text = json.dumps({k: v for k, v in config.items() if not is_missing(v)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
