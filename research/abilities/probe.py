"""``probe``: what can still be read out of the features? A linear probe (or k-NN) is fitted on the current,
frozen features of one part of a labelled reference set and scored on the other part, afresh at each evaluation
(Davari et al. 2022, "Probing Representation Forgetting in Supervised and Unsupervised Continual Learning"):
forgetting measured in the representation rather than through a head that fine-tuning may have left behind.

The reference set is any task source (``data``: ``{source, path, classes, ...}`` as a task takes them), split
once into a fitting part and a scoring part (stratified, with the ability's seed). Metric: ``probe_acc`` (its
score), the probe's accuracy on the scoring part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError
from sklearn.model_selection import train_test_split

from research.abilities.base import Ability, AbilityConfig, ModelView, register_ability, require_kind, seeded_sample
from research.abilities.measures import probe_accuracy
from research.config import TaskConfig
from research.data.inputs import count
from research.errors import ConfigError
from research.models.adapters import InputEncoder


class ProbeConfig(AbilityConfig):
    kind: Literal["probe"] = "probe"
    data: dict[str, Any]
    """the labelled set, with a task's data keys: source, path, classes, text_column, label_column, ..."""
    probe: Literal["linear", "knn"] = "linear"
    """linear: a logistic-regression probe; knn: k nearest neighbours (cosine)"""
    k: int = Field(default=5, gt=0)
    """knn: neighbours"""
    fit_fraction: float = Field(default=0.5, gt=0, lt=1)
    """the share of the (sampled) examples the probe is fitted on; it is scored on the rest"""


@register_ability
class Probe(Ability):
    kind = "probe"
    Config = ProbeConfig
    metrics = ("probe_acc",)
    summary = "accuracy of a linear (or k-NN) probe refitted on the current frozen features of a labelled set"

    def __init__(self, config: ProbeConfig, encoder: InputEncoder, where: str) -> None:
        from research.data.sources import load_source
        from research.data.tasks import resolve_classes

        super().__init__(config, encoder, where)
        try:
            task = TaskConfig.model_validate({"name": config.name, **config.data})
        except ValidationError as err:
            from research.config import describe_validation_error

            raise ConfigError(describe_validation_error(err, TaskConfig, config.data, prefix=f"{where}.data")) from None
        if task.transform is not None:
            raise ConfigError(f"{where}.data.transform: a probe's reference set is scored as stored; no transform")
        columns = (task.text_column, task.text_pair_column, task.label_column)
        source = load_source(task.source, task.path, scale=task.scale, columns=columns)
        require_kind(encoder, source.kind, f"{where}.data.source", f"'{task.source}' gives {source.kind} examples")
        ids = resolve_classes(source, task, f"{where}.data")
        rows = np.flatnonzero(np.isin(source.y, ids))
        keep = seeded_sample(len(rows), config.max_samples, config.seed)
        rows = rows if keep is None else rows[keep.numpy()]
        labels = np.searchsorted(np.sort(ids), source.y[rows])  # 0..C-1 in the order of the class indices
        try:
            fit, held = train_test_split(
                np.arange(len(rows)), train_size=config.fit_fraction, stratify=labels, random_state=config.seed
            )
        except ValueError as err:
            raise ConfigError(
                f"{where}: cannot split {len(rows)} examples into a fitting and a scoring part "
                f"stratified by class ({err}); raise max_samples or use fewer classes"
            ) from None
        order = np.concatenate([np.sort(fit), np.sort(held)])
        self.fitting = len(fit)
        x = source.x[rows[order]] if not source.on_disk else source.load(source.x[rows[order]])
        self.inputs = encoder.encode(x)
        self.labels = torch.from_numpy(labels[order].astype(np.int64))
        self.classes = [source.class_names[i] for i in ids]

    def score(self, model: ModelView) -> dict[str, float]:
        f = model.features(self.inputs)
        n = self.fitting
        accuracy = probe_accuracy(
            f[:n], self.labels[:n], f[n:], self.labels[n:], kind=self.config.probe, k=self.config.k
        )
        return {"probe_acc": accuracy}

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "classes": self.classes,
            "fitted_on": self.fitting,
            "scored_on": count(self.inputs) - self.fitting,
        }

    @classmethod
    def example(cls, workdir: Path, inputs: str) -> dict[str, Any]:
        source = {"source": "relations"} if inputs == "text" else {"source": "digits"}
        return {"name": "probe", "kind": cls.kind, "data": source, "max_samples": 200}
