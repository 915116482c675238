"""``similarity``: does the model still rank pairs as people do? Spearman's rank correlation between the cosine
of the two items' features and the human score, over pairs of words (WordSim-353, SimLex-999), sentences
(STS-style files) or numeric inputs.

The standard intrinsic evaluation of word representations (Finkelstein et al. 2002; Hill et al. 2015; for
sentence encoders, Reimers & Gurevych 2019 report Spearman on STS the same way): each item is encoded on its own
(a word as a one-word text), the pair's predicted similarity is the cosine of the two feature vectors, and only
the ranking matters. Metric: ``spearman`` (its score).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from research.abilities.base import (
    Ability,
    AbilityConfig,
    ModelView,
    items_kind,
    register_ability,
    require_kind,
    seeded_sample,
)
from research.abilities.data import read_pairs
from research.abilities.measures import pair_cosines, spearman
from research.data.inputs import Inputs, count
from research.models.adapters import InputEncoder


class SimilarityConfig(AbilityConfig):
    kind: Literal["similarity"] = "similarity"
    data: str = Field(min_length=1)
    """wordsim353, simlex999, or a .tsv/.txt/.csv/.jsonl/.parquet/.npz file of pairs and human scores"""
    a_column: str | None = None
    """a table's column of the first items (null: its first column)"""
    b_column: str | None = None
    """a table's column of the second items (null: its second column)"""
    score_column: str | None = None
    """a table's column of the human scores (null: its third column)"""


@register_ability
class Similarity(Ability):
    kind = "similarity"
    Config = SimilarityConfig
    metrics = ("spearman",)
    summary = "Spearman between feature cosines and human scores of pairs (wordsim353, simlex999, your file)"

    def __init__(self, config: SimilarityConfig, encoder: InputEncoder, where: str) -> None:
        super().__init__(config, encoder, where)
        columns = (config.a_column, config.b_column, config.score_column)
        a, b, gold = read_pairs(config.data, columns, f"{where}.data")
        require_kind(encoder, items_kind(a), f"{where}.data", f"'{config.data}' holds {items_kind(a)} pairs")
        self.pairs_in_data = len(gold)
        keep = seeded_sample(len(gold), config.max_samples, config.seed)
        if keep is not None:
            a, b, gold = a[keep.numpy()], b[keep.numpy()], gold[keep.numpy()]
        # Each distinct item is encoded and scored once (a word is in many pairs: WordSim-353's 706 items are
        # 437 words); the pairs index into them.
        _, where_in = np.unique(np.concatenate([_keys(a), _keys(b)]), return_inverse=True)
        first = np.unique(where_in, return_index=True)[1]
        self.inputs: Inputs = encoder.encode(np.concatenate([a, b])[first])
        self.first, self.second = torch.from_numpy(where_in[: len(a)]), torch.from_numpy(where_in[len(a) :])
        self.gold = torch.from_numpy(np.asarray(gold, dtype=np.float64))

    def score(self, model: ModelView) -> dict[str, float]:
        features = model.features(self.inputs)
        cosines = pair_cosines(features[self.first], features[self.second])
        return {"spearman": spearman(cosines, self.gold)}

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "pairs_in_data": self.pairs_in_data,
            "pairs_scored": len(self.gold),
            "items_encoded": count(self.inputs),
        }

    @classmethod
    def example(cls, workdir: Path, inputs: str) -> dict[str, Any]:
        if inputs == "text":
            return {"name": "wordsim", "kind": cls.kind, "data": "wordsim353", "max_samples": 100}
        return {"name": "digit_pairs", "kind": cls.kind, "data": str(digit_pairs(workdir / "digit_pairs.npz"))}


def digit_pairs(path: Path, pairs: int = 60) -> Path:
    """Pairs of 8×8 digits scored 1 when they show the same digit and 0 otherwise, as an ``.npz`` (a, b, score):
    a similarity set for a model of numeric inputs."""
    from research.data.sources import load_source

    digits = load_source("digits")
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, len(digits.y), size=(2, pairs))
    score = (digits.y[first] == digits.y[second]).astype(np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, a=digits.x[first], b=digits.x[second], score=score)
    return path


def _keys(items: np.ndarray) -> np.ndarray:
    """One comparable key per item: the text itself, or a numeric item's bytes."""
    if items.dtype == object:
        return items.astype(str)
    flat = np.ascontiguousarray(items.reshape(len(items), -1))
    return np.array([row.tobytes() for row in flat], dtype=object)
