"""The data abilities are scored on: built-in sets that ship in gensim's wheel (read offline with
``gensim.test.utils.datapath``), or the user's own files.

- Pairs with human similarity scores (``similarity``): ``wordsim353`` (WordSim-353, Finkelstein et al. 2002: 353
  word pairs, relatedness 0–10) and ``simlex999`` (SimLex-999, Hill et al. 2015: 999 pairs, similarity 0–10), or a
  file: tab-separated ``.tsv``/``.txt`` as those are (``#`` comment lines, a header line allowed), a table
  (``.csv``, ``.jsonl``, ``.parquet``) whose pair and score columns are named in the config, or an ``.npz`` with
  arrays ``a``, ``b`` and ``score`` for a model of numeric inputs. Sentence pairs (STS-style) are pairs too.
- Reference inputs (``representation``): ``lee`` (the Lee background corpus, 300 news texts, Lee et al. 2005),
  the inputs of a built-in task source (``digits``, ``mnist1d``, ``relations``), or a file: one text per line
  (``.txt``, ``.cor``), a table with a text column, or an ``.npz`` with an array ``x``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from research.errors import ConfigError

BUILTIN_PAIRS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
BUILTIN_TEXTS = {"lee": "lee_background.cor"}
TABLES = (".csv", ".jsonl", ".parquet")


def gensim_file(name: str) -> Path:
    from gensim.test.utils import datapath

    return Path(datapath(name))


# ------------------------------------------------------------------------------------------ pairs


def read_pairs(
    data: str, columns: tuple[str | None, str | None, str | None], where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first items, second items, gold scores as float64) of a pairs set. Items are strings (texts, words) or
    numeric arrays (an ``.npz``)."""
    if data in BUILTIN_PAIRS:
        return _tab_separated(gensim_file(BUILTIN_PAIRS[data]), where)
    path = Path(data).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{where}: '{data}' is neither a built-in pairs set ({', '.join(BUILTIN_PAIRS)}) nor an existing file"
        )
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt"):
        return _tab_separated(path, where)
    if suffix in TABLES:
        return _table_pairs(path, columns, where)
    if suffix == ".npz":
        return _npz_pairs(path, where)
    raise ConfigError(f"{where}: unknown file type '{path.suffix}'; valid: .tsv, .txt, {', '.join(TABLES)}, .npz")


def _tab_separated(path: Path, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WordSim-353 / SimLex-999 as gensim ships them: ``a<TAB>b<TAB>score`` lines, ``#`` comments; one header
    line (a non-numeric score on the first data line) is skipped."""
    a, b, score = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise ConfigError(f"{where}: {path} line {number}: expected 'a<TAB>b<TAB>score', got {line[:60]!r}")
        try:
            value = float(fields[2])
        except ValueError:
            if not a:  # a header line
                continue
            raise ConfigError(f"{where}: {path} line {number}: the score {fields[2]!r} is not a number") from None
        a.append(fields[0].strip())
        b.append(fields[1].strip())
        score.append(value)
    return _checked(np.array(a, dtype=object), np.array(b, dtype=object), np.array(score), path, where)


def _table_pairs(
    path: Path, columns: tuple[str | None, str | None, str | None], where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from research.data.text import read_table

    table, _ = read_table(str(path))
    names = [
        c if c is not None else (list(table.columns)[i] if i < len(table.columns) else None)
        for i, c in enumerate(columns)
    ]
    keys = ("a_column", "b_column", "score_column")
    for key, name in zip(keys, names, strict=True):
        if name is None or name not in table.columns:
            raise ConfigError(f"{where}: {path} has no column {name!r} ({key}); columns: {list(table.columns)[:12]}")
    frame = table[names].dropna()
    try:
        score = frame[names[2]].astype(float).to_numpy()
    except ValueError:
        raise ConfigError(f"{where}: {path}: column {names[2]!r} (score_column) is not numeric") from None
    a = frame[names[0]].astype(str).to_numpy(dtype=object)
    b = frame[names[1]].astype(str).to_numpy(dtype=object)
    return _checked(a, b, score, path, where)


def _npz_pairs(path: Path, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        missing = [k for k in ("a", "b", "score") if k not in arrays]
        if missing:
            raise ConfigError(f"{where}: {path} needs arrays a, b and score; missing {missing}")
        a, b, score = arrays["a"].astype(np.float32), arrays["b"].astype(np.float32), arrays["score"]
    if a.shape != b.shape or len(a) != len(score) or score.ndim != 1:
        raise ConfigError(
            f"{where}: {path}: a and b must have one shape and score one value per pair; got {a.shape}, "
            f"{b.shape}, {score.shape}"
        )
    return _checked(a, b, score.astype(np.float64), path, where)


def _checked(a: np.ndarray, b: np.ndarray, score: np.ndarray, path: Path, where: str):
    if len(score) < 3:
        raise ConfigError(f"{where}: {path} has {len(score)} pairs; a rank correlation needs at least 3")
    if not np.isfinite(score).all():
        raise ConfigError(f"{where}: {path}: the scores must be finite numbers")
    return a, b, score.astype(np.float64)


# ------------------------------------------------------------------------------------------ reference inputs


def read_reference(data: str, text_column: str, where: str) -> np.ndarray:
    """The reference inputs: strings (N,) or a numeric array (N, ...)."""
    if data in BUILTIN_TEXTS:
        return _lines(gensim_file(BUILTIN_TEXTS[data]), where)
    if data in ("digits", "mnist1d", "relations"):
        from research.data.sources import load_source

        return load_source(data).x
    path = Path(data).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{where}: '{data}' is neither a built-in reference set (lee, digits, mnist1d, relations) nor an "
            "existing file"
        )
    suffix = path.suffix.lower()
    if suffix in (".txt", ".cor"):
        return _lines(path, where)
    if suffix in TABLES:
        from research.data.text import read_table

        table, _ = read_table(str(path))
        if text_column not in table.columns:
            raise ConfigError(
                f"{where}: {path} has no column {text_column!r} (text_column); columns: {list(table.columns)[:12]}"
            )
        texts = table[text_column].dropna().astype(str).to_numpy(dtype=object)
        return _enough(texts, path, where)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays:
                raise ConfigError(f"{where}: {path} needs an array x; it has {list(arrays)}")
            x = arrays["x"].astype(np.float32)
        if not np.isfinite(x).all():
            raise ConfigError(f"{where}: {path}: x must be finite numbers")
        return _enough(x, path, where)
    raise ConfigError(f"{where}: unknown file type '{path.suffix}'; valid: .txt, .cor, {', '.join(TABLES)}, .npz")


def _lines(path: Path, where: str) -> np.ndarray:
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return _enough(np.array(texts, dtype=object), path, where)


def _enough(x: np.ndarray, path: Path, where: str) -> np.ndarray:
    if len(x) < 2:
        raise ConfigError(f"{where}: {path} has {len(x)} inputs; a representation needs at least 2")
    return x
