"""Abilities: what the loaded model could do before fine-tuning, scored alongside the tasks.

A model pretrained elsewhere comes without its pretraining data, so "scoring the pretraining tasks" means scoring
its original *abilities*: how well its features still rank word similarities as people do, how far they drift
from where they started on a reference text, how much a linear probe can still read from them. Each kind of
ability is one file in this package with one ``Ability`` subclass registered with ``@register_ability``, and an
experiment lists the ones it scores:

    abilities:
      - {name: wordsim, kind: similarity, data: wordsim353}
      - {name: lee, kind: representation, data: {source: lee}}

The evaluator scores every ability at step 0 and at every evaluation after, as tidy rows with ``role: pretrain``,
``task: <ability name>`` and ``metric: <one of the kind's metrics>``; the first of a kind's ``metrics`` is its
*score* (higher is better), the value the report's forgetting metrics are computed from, as accuracy is for a
classification task. An ability never trains anything and never draws from the global random streams: its
examples are drawn once, when it is built, with its own seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from research.data.inputs import Inputs, compact, count, take, to_device
from research.errors import ConfigError
from research.models.adapters import InputEncoder
from research.models.modes import eval_mode


class AbilityConfig(BaseModel):
    """Base of every kind's settings: typed, with defaults, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, use_attribute_docstrings=True
    )
    name: str = Field(min_length=1)
    """the ability's name: its rows in metrics.parquet (role pretrain) and the report (unique, not a task's name)"""
    kind: str
    """what is scored (`research abilities`): similarity, representation, probe"""
    max_samples: int | None = Field(default=1000, gt=0)
    """examples scored at each evaluation: a seeded sample of the data when it has more (null: all of them)"""
    seed: int = Field(default=0, ge=0)
    """the seed of that sample"""


class Ability:
    """Base class of an ability kind. Subclasses set the class attributes and implement ``__init__`` (load and
    encode the data, raising ConfigError for bad input) and ``score``."""

    kind: ClassVar[str]
    Config: ClassVar[type[AbilityConfig]]
    metrics: ClassVar[tuple[str, ...]]  # the first is the score (higher is better)
    summary: ClassVar[str] = ""  # one line for `research abilities` and error messages

    inputs: Inputs  # every input it scores, encoded for the model (methods may use them: MAS's reference)

    def __init__(self, config: AbilityConfig, encoder: InputEncoder, where: str) -> None:
        self.config = config
        self.where = where

    @property
    def name(self) -> str:
        return self.config.name

    def score(self, model: ModelView) -> dict[str, float]:
        """The kind's metrics for the model as it is now."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        """What a resumed run needs to score exactly as the uninterrupted one (a step-0 reference)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore ``state_dict``'s tensors."""

    def info(self) -> dict[str, Any]:
        """Facts for summary.json: the data, how many examples are scored."""
        return {
            "kind": self.kind,
            "score": self.metrics[0],  # the metric forgetting is measured on (the report reads it from here)
            **self.config.model_dump(mode="json", exclude={"name", "kind"}),
        }

    @classmethod
    def example(cls, workdir: Path, inputs: str) -> dict[str, Any]:
        """An ``abilities`` entry of this kind for a model of ``inputs`` (``text`` or ``array``: 8×8 digits)
        that needs no download, writing any file it needs under ``workdir``. The registry-generated tests score
        every kind on a text and a numeric model with it."""
        raise NotImplementedError(f"ability kind '{cls.kind}' ({cls.__module__}) gives no example()")


_KINDS: dict[str, type[Ability]] = {}


# The metrics of a classification task's rows (research.evaluation); ability metrics must be named otherwise.
TASK_METRICS = ("acc", "loss")


def register_ability(cls: type[Ability]) -> type[Ability]:
    kind = getattr(cls, "kind", None)
    if not kind or not isinstance(kind, str):
        raise TypeError(f"{cls.__qualname__} must set a class attribute 'kind'")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, AbilityConfig)):
        raise TypeError(f"ability kind '{kind}' must set 'Config' to an AbilityConfig subclass")
    if not getattr(cls, "metrics", ()):
        raise TypeError(f"ability kind '{kind}' must name its metrics, its score first")
    taken = sorted(set(cls.metrics) & set(TASK_METRICS))
    if taken:
        # The analysis reads a task's rows by these names (old-task accuracy, forgetting): an ability's rows
        # named so would be counted as a task's.
        raise TypeError(f"ability kind '{kind}': metric names {taken} belong to tasks; name its metrics otherwise")
    if kind in _KINDS and _KINDS[kind] is not cls:
        raise ValueError(f"ability kind '{kind}' is registered twice ({_KINDS[kind].__module__} and {cls.__module__})")
    _KINDS[kind] = cls
    return cls


def ability_kinds() -> list[str]:
    return list(_KINDS)


def ability_class(kind: str) -> type[Ability]:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ConfigError(f"unknown ability kind '{kind}'; valid choices: {', '.join(_KINDS)}") from None


def score_metrics() -> list[str]:
    """The metric forgetting is measured on, per kind: ``acc`` for the classification tasks, then each
    registered kind's score."""
    return ["acc", *(cls.metrics[0] for cls in _KINDS.values())]


def ability_config(raw: Any, where: str) -> AbilityConfig:
    """Validate one entry of ``abilities`` against its kind's typed config."""
    if isinstance(raw, AbilityConfig):
        return raw
    if not isinstance(raw, dict) or "kind" not in raw or "name" not in raw:
        raise ConfigError(f"{where}: an ability needs a 'name' and a 'kind'; valid kinds: {', '.join(_KINDS)}")
    try:
        cls = ability_class(str(raw["kind"]))
    except ConfigError as err:
        raise ConfigError(f"{where}.kind: {err}") from None
    try:
        return cls.Config.model_validate(raw)
    except ValidationError as err:
        from research.config import describe_validation_error

        raise ConfigError(describe_validation_error(err, cls.Config, raw, prefix=where)) from None


# ------------------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class ModelView:
    """What an ability may ask of the model being fine-tuned: today its features; a kind that needs more (a
    language model's token log-probabilities, docs/design_causal_lm.md) would find it here, so the interface
    grows by a method rather than by a new signature."""

    model: torch.nn.Module  # research.models.multihead.MultiHeadNet
    batch_size: int

    def features(self, inputs: Inputs) -> Tensor:
        """The backbone features of ``inputs`` (model.features), in eval mode and inference mode, in batches,
        as a float64 CPU tensor (the metrics are computed in double precision). Restores every module's own
        mode and draws no random numbers."""
        model = self.model
        device = next(model.parameters()).device
        # Token inputs in order of length, so that each batch is cut after its own longest input (compact) and
        # short words are not padded to the length of a long text; the features come back in the given order.
        order = _by_length(inputs)
        if order is not None:
            inputs = take(inputs, order)
        parts = []
        with eval_mode(model), torch.inference_mode():
            for start in range(0, count(inputs), self.batch_size):
                part = take(inputs, slice(start, start + self.batch_size))
                batch = compact(to_device(part, device, non_blocking=True))
                parts.append(model.features(batch).to("cpu", torch.float64))  # type: ignore[operator]
        features = torch.cat(parts) if parts else torch.zeros(0, 0, dtype=torch.float64)
        if order is not None:
            features = features[torch.argsort(order)]
        return features


def _by_length(inputs: Inputs) -> Tensor | None:
    """A stable order of token inputs by their attended length, or None for other inputs."""
    if not isinstance(inputs, dict) or "attention_mask" not in inputs:
        return None
    return torch.argsort(inputs["attention_mask"].sum(dim=1), stable=True)


def require_kind(encoder: InputEncoder, kind: str, where: str, what: str) -> None:
    """ConfigError unless the model takes ``kind`` inputs (``text`` or ``array``); ``what`` says what holds them."""
    if kind not in encoder.kinds:
        raise ConfigError(f"{where}: {what}, which this model does not take (it takes {', '.join(encoder.kinds)})")


def items_kind(items: np.ndarray) -> str:
    """``text`` for strings (an object array), ``array`` for numbers."""
    return "text" if items.dtype == object else "array"


def seeded_sample(n: int, max_samples: int | None, seed: int) -> Tensor | None:
    """Sorted indices of a seeded sample of ``max_samples`` out of ``n`` (its own generator: the global streams
    stay untouched), or None when all ``n`` are scored."""
    if max_samples is None or n <= max_samples:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:max_samples].sort().values
