"""Text sources: the user's tables of texts (or text pairs) with labels, and a built-in set of word relations.

A ``text`` task reads a local CSV, JSONL or parquet file, or a folder written by ``datasets``'
``Dataset.save_to_disk``, with one example per row: ``text_column`` (default ``text``), optionally
``text_pair_column`` for the second text of a pair, and ``label_column`` (default ``label``). Classes are the
distinct labels, named by their text, sorted (a ``datasets`` ClassLabel column is read by its names). Nothing is
tokenised here: the model's own tokenizer does that when tasks are built (research.data.tasks).

``relations`` is built in and works offline: the word pairs of Mikolov et al. 2013's analogy set
(``questions-words.txt``, shipped in gensim's wheel), labelled by the relation they stand in, e.g. ``(Athens,
Greece)`` → ``capital-world``, ``(boy, girl)`` → ``family``, ``(walk, walked)`` → ``gram7-past-tense``. Each line
of the set, ``a b c d``, gives two pairs of its section's relation. The section ``capital-common-countries``
is a subset of ``capital-world`` (all its 23 pairs are there too), so its pairs are classed as ``capital-world``
only: 13 relations (5 semantic, 8 grammatical) over 550 distinct pairs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from research.errors import ConfigError

SEMANTIC_RELATIONS = ("capital-world", "currency", "city-in-state", "family")
MERGED_SECTIONS = {"capital-common-countries": "capital-world"}
TABLE_SUFFIXES = {".csv": "CSV", ".jsonl": "JSONL", ".json": "JSONL", ".parquet": "parquet"}


@functools.cache
def relation_pairs() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(pairs (N, 2) of str, class indices (N,), relation names in the file's order) of ``relations``."""
    from gensim.test.utils import datapath

    pairs: dict[tuple[str, str], str] = {}  # first relation a pair is found in, after merging sections
    order: list[str] = []
    section = ""
    for line in Path(datapath("questions-words.txt")).read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            section = MERGED_SECTIONS.get(line[1:].strip(), line[1:].strip())
            if section not in order:
                order.append(section)
            continue
        words = line.split()
        if len(words) != 4:
            continue
        for pair in ((words[0], words[1]), (words[2], words[3])):
            pairs.setdefault(pair, section)
    x = np.array(list(pairs), dtype=object)
    y = np.array([order.index(r) for r in pairs.values()], dtype=np.int64)
    return x, y, tuple(order)


def read_text_table(path: str, text_column: str, text_pair_column: str | None, label_column: str):
    """(texts (N,) or text pairs (N, 2) as str, labels as given, class names or None) of a user's table."""
    table, class_names = read_table(path)
    columns = [text_column, *([text_pair_column] if text_pair_column else []), label_column]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        keys = {text_column: "text_column", label_column: "label_column", text_pair_column: "text_pair_column"}
        raise ConfigError(
            f"text source {path}: no column {missing[0]!r} ({keys[missing[0]]}); columns: {list(table.columns)[:12]}"
        )
    if len(table) == 0:
        raise ConfigError(f"text source {path}: the table has no rows")
    texts = table[[text_column, *([text_pair_column] if text_pair_column else [])]]
    empty = texts.isna().any(axis=1) | table[label_column].isna()
    if bool(empty.any()):
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise ConfigError(f"text source {path}: row {row} has an empty text or label; drop or fill such rows")
    x = texts.astype(str).to_numpy(dtype=object)
    return (x[:, 0] if x.shape[1] == 1 else x), table[label_column].to_numpy(), class_names.get(label_column)


def read_table(path: str) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """A table and, for a ``datasets`` folder, the names of its ClassLabel columns."""
    file = Path(path)
    if file.is_dir():
        return _read_saved_dataset(file)
    if not file.is_file():
        raise ConfigError(f"text source: file not found: {path}")
    kind = TABLE_SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"text source {path}: unknown file type '{file.suffix}'; valid: .csv, .jsonl, .parquet, or a folder "
            "written by datasets' save_to_disk"
        )
    try:
        if kind == "CSV":
            return pd.read_csv(file, keep_default_na=False, na_values=[""]), {}
        if kind == "JSONL":
            return pd.read_json(file, lines=True), {}
        return pd.read_parquet(file), {}
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise ConfigError(
            f"text source {path}: cannot read it as {kind} ({' '.join(str(err).split())[:200]})"
        ) from None


def _read_saved_dataset(folder: Path) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise ConfigError(f"text source {folder}: not a folder written by datasets' save_to_disk ({err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise ConfigError(
            f"text source {folder}: holds several splits {sorted(loaded)}; give the path of one of them "
            f"(e.g. {folder / sorted(loaded)[0]}); the lab makes its own train/val/test split"
        )
    names = {
        column: list(feature.names)
        for column, feature in loaded.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    return loaded.to_pandas(), names


def text_labels(labels: np.ndarray, class_names: list[str] | None, path: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices and class names: a ClassLabel column's names, else the distinct labels as text, sorted."""
    if class_names is not None:
        return labels.astype(np.int64), tuple(class_names)
    texts = np.array([str(v) for v in labels], dtype=object)
    names, inverse = np.unique(texts, return_inverse=True)
    if len(names) < 2:
        raise ConfigError(f"text source {path}: the label column has {len(names)} distinct value(s); a task needs 2")
    return inverse.astype(np.int64), tuple(str(n) for n in names)
