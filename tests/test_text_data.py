"""Text tasks: the user's tables (CSV, JSONL, parquet, a saved ``datasets`` folder), text pairs, the built-in
``relations`` source, tokenisation by the model's own tokenizer, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from research.config import validate_config
from research.data import build_tasks
from research.data.sources import load_source
from research.errors import ConfigError

ROWS = pd.DataFrame(
    {"sentence": ["w1 w2", "w3", "w40 w41 w42", "w50", "w5 w6", "w45"], "second": ["w9"] * 6, "y": [0, 0, 1, 1, 0, 1]}
)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", "dataset"])
def test_every_table_format_reads_the_same(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        ROWS.to_csv(path, index=False)
    elif suffix == ".jsonl":
        ROWS.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        ROWS.to_parquet(path)
    else:
        import datasets

        datasets.Dataset.from_pandas(ROWS).save_to_disk(str(path))
    data = load_source("text", str(path), columns=("sentence", "second", "y"))
    assert data.kind == "text" and data.x.shape == (6, 2)
    assert data.x[2].tolist() == ["w40 w41 w42", "w9"]
    assert data.class_names == ("0", "1") and data.y.tolist() == [0, 0, 1, 1, 0, 1]
    single = load_source("text", str(path), columns=("sentence", None, "y"))
    assert single.x.shape == (6,)


def test_a_class_label_column_is_read_by_its_names(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.Dataset.from_dict({"text": ["w1", "w2", "w3"], "label": [1, 0, 1]}, features=features).save_to_disk(
        str(tmp_path / "d")
    )
    data = load_source("text", str(tmp_path / "d"))
    assert data.class_names == ("neg", "pos") and data.y.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("write", "columns", "message"),
    [
        (lambda p: ROWS.to_csv(p, index=False), ("text", None, "y"), r"no column 'text' \(text_column\)"),
        (lambda p: ROWS.to_csv(p, index=False), ("sentence", None, "label"), r"no column 'label' \(label_column\)"),
        (lambda p: p.write_text("sentence,y\nw1,0\n,1\n"), ("sentence", None, "y"), "row 1 has an empty text or label"),
        (lambda p: p.write_text(""), ("sentence", None, "y"), "cannot read it as CSV"),
    ],
)
def test_table_problems_are_config_errors(tmp_path: Path, write, columns, message: str) -> None:
    path = tmp_path / "t.csv"
    write(path)
    with pytest.raises(ConfigError, match=message):
        load_source("text", str(path), columns=columns)


def test_unknown_file_types_and_split_dictionaries_are_refused(tmp_path: Path) -> None:
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ConfigError, match=r"unknown file type '.xlsx'"):
        load_source("text", str(tmp_path / "t.xlsx"))
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ConfigError, match=r"holds several splits \['train'\]; give the path of one of them"):
        load_source("text", str(tmp_path / "dd"))


def test_the_relations_source() -> None:
    """Mikolov et al.'s analogy set as word pairs by relation: 13 relations (capital-common-countries merged
    into capital-world, of which it is a subset), 550 distinct pairs, every pair once."""
    data = load_source("relations")
    assert len(data.class_names) == 13 and len(data.y) == 550
    assert "capital-common-countries" not in data.class_names
    pairs = {tuple(p) for p in data.x.tolist()}
    assert len(pairs) == 550
    where = {tuple(p): data.class_names[c] for p, c in zip(data.x.tolist(), data.y, strict=True)}
    assert where[("Athens", "Greece")] == "capital-world"
    assert where[("boy", "girl")] == "family"
    counts = dict(zip(*np.unique(data.y, return_counts=True), strict=True))
    assert counts[data.class_names.index("capital-world")] == 116 and counts[data.class_names.index("family")] == 23


def _text_cfg(tiny_bert: Path, word_table: Path, **extra):
    return validate_config(
        {
            "model": {"arch": "hf", "name": str(tiny_bert), "max_length": 12},
            "finetune": {
                "tasks": [
                    {"name": "ab", "source": "text", "path": str(word_table), "classes": ["a", "b"]},
                    {"name": "cd", "source": "text", "path": str(word_table), "classes": ["c", "d"], **extra},
                ]
            },
        }
    )


def test_text_tasks_are_tokenised_by_the_models_tokenizer(tiny_bert: Path, word_table: Path) -> None:
    from transformers import AutoTokenizer

    tasks = build_tasks(_text_cfg(tiny_bert, word_table, text_pair_column="second"))
    x, y = tasks.finetune[1].splits["train"]
    assert set(x) == {"input_ids", "token_type_ids", "attention_mask"} and x["input_ids"].shape[1] == 12
    table = pd.read_csv(word_table)
    table = table[table.label.isin(["c", "d"])]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    # The first training example is some row of the table: its tokens are the tokenizer's for that pair.
    expected = {
        tuple(tokenizer(r.text, r.second, padding="max_length", max_length=12, truncation=True)["input_ids"])
        for r in table.itertuples()
    }
    assert tuple(x["input_ids"][0].tolist()) in expected
    assert int(x["token_type_ids"][0].max()) == 1  # the second text of the pair
    assert tasks.finetune[0].splits["train"][0]["token_type_ids"].max() == 0  # a single text
    assert set(y.tolist()) == {0, 1}


def test_a_text_pool_is_tokenised_once(tiny_bert: Path, word_table: Path, monkeypatch) -> None:
    from research.data import tasks as task_module

    monkeypatch.setattr(task_module, "_ENCODED", {})
    build_tasks(_text_cfg(tiny_bert, word_table))
    build_tasks(_text_cfg(tiny_bert, word_table))
    assert len(task_module._ENCODED) == 1  # two tasks, two builds, one source: one tokenisation


def test_text_for_a_model_without_a_tokenizer_is_refused(word_table: Path) -> None:
    cfg = validate_config(
        {
            "pretrain": {"tasks": [{"name": "d", "source": "digits", "classes": [0, 1]}]},
            "finetune": {"tasks": [{"name": "t", "source": "text", "path": str(word_table)}]},
        }
    )
    with pytest.raises(
        ConfigError, match=r"finetune.tasks\[0\].source: 'text' gives text examples, which model.arch=mlp"
    ):
        build_tasks(cfg)


def test_text_keys_apply_to_text_sources_only() -> None:
    with pytest.raises(ConfigError, match="text_column applies to source 'text' only"):
        validate_config(
            {
                "pretrain": {"tasks": [{"name": "d", "source": "digits", "text_column": "sentence"}]},
                "finetune": {"tasks": [{"name": "e", "source": "digits"}]},
            }
        )


def test_a_transform_of_text_is_refused(tiny_bert: Path, word_table: Path) -> None:
    with pytest.raises(ConfigError, match="permute transforms numeric inputs; source 'text' is text"):
        _text_cfg(tiny_bert, word_table, transform={"kind": "permute", "seed": 1})
