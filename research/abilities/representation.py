"""``representation``: how far have the model's features moved from where they started, with no labels at all?
On a fixed reference set of inputs (the Lee news corpus, a built-in source's inputs, or your file), the features
at each evaluation are compared with the features of the same inputs at step 0 (the loaded model):

- ``cka``: linear centred kernel alignment (Kornblith et al. 2019, "Similarity of Neural Network
  Representations Revisited"), 1 when the representation is the same up to rotation and isotropic scaling, lower
  as it changes (its score);
- ``cosine``: the mean cosine between each example's current and step-0 feature vectors, which also sees a
  rotation of the whole space, which CKA ignores.

The step-0 features are the reference for the whole run (every task of a sequence), kept in checkpoints so a
resumed run compares with the same reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import Tensor

from research.abilities.base import (
    Ability,
    AbilityConfig,
    ModelView,
    items_kind,
    register_ability,
    require_kind,
    seeded_sample,
)
from research.abilities.data import read_reference
from research.abilities.measures import linear_cka, mean_cosine_to_reference
from research.models.adapters import InputEncoder


class RepresentationConfig(AbilityConfig):
    kind: Literal["representation"] = "representation"
    data: str = Field(min_length=1)
    """the reference inputs: lee, digits, mnist1d, relations, or a .txt/.cor/.csv/.jsonl/.parquet/.npz file"""
    text_column: str = "text"
    """a table's column of the texts"""


@register_ability
class Representation(Ability):
    kind = "representation"
    Config = RepresentationConfig
    metrics = ("cka", "cosine")
    summary = "drift of the features of reference inputs from step 0: linear CKA and mean cosine (label-free)"

    def __init__(self, config: RepresentationConfig, encoder: InputEncoder, where: str) -> None:
        super().__init__(config, encoder, where)
        x = read_reference(config.data, config.text_column, f"{where}.data")
        require_kind(encoder, items_kind(x), f"{where}.data", f"'{config.data}' holds {items_kind(x)} inputs")
        self.inputs_in_data = len(x)
        keep = seeded_sample(len(x), config.max_samples, config.seed)
        self.inputs = encoder.encode(x if keep is None else x[keep.numpy()])
        self.reference: Tensor | None = None  # the step-0 features, taken at the first evaluation

    def score(self, model: ModelView) -> dict[str, float]:
        current = model.features(self.inputs)
        if self.reference is None:
            self.reference = current
        return {"cka": linear_cka(current, self.reference), "cosine": mean_cosine_to_reference(current, self.reference)}

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.reference is None else {"reference": self.reference}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.reference = state.get("reference")

    def info(self) -> dict[str, Any]:
        from research.data.inputs import count

        return {**super().info(), "inputs_in_data": self.inputs_in_data, "inputs_scored": count(self.inputs)}

    @classmethod
    def example(cls, workdir: Path, inputs: str) -> dict[str, Any]:
        return {"name": "drift", "kind": cls.kind, "data": "lee" if inputs == "text" else "digits", "max_samples": 64}
