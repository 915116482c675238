"""Abilities (``abilities`` in a config): what the loaded model could do before fine-tuning, scored alongside the
tasks. One file per kind, found by discovery like the methods; see research.abilities.base for the interface.

The kinds: ``similarity`` (Spearman of feature cosines against human pair scores), ``representation``
(label-free drift of reference features from step 0: linear CKA and mean cosine), ``probe`` (a linear or k-NN
probe refitted on the current features of a labelled set), and ``classification``: the pretraining tasks
themselves, scored by their heads (``acc``, ``loss``; research.evaluation.evaluator), configured as
``pretrain.tasks`` rather than here.
"""

import importlib
import pkgutil

from research.abilities.base import (
    Ability,
    AbilityConfig,
    ability_class,
    ability_kinds,
    register_ability,
    score_metrics,
)
from research.abilities.base import ability_config as _validated
from research.errors import ConfigError

# The kinds first, in its order, so that listings and error messages show them so; then any other file.
_FIRST = ["similarity", "representation", "probe"]
_FOUND = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("base", "data", "measures")]
for _module in [n for n in _FIRST if n in _FOUND] + sorted(n for n in _FOUND if n not in _FIRST):
    importlib.import_module(f"{__name__}.{_module}")


def ability_config(raw, where: str) -> AbilityConfig:
    """One ``abilities`` entry validated against its kind; ``classification`` is refused with a pointer to where
    those are configured."""
    if isinstance(raw, dict) and raw.get("kind") == "classification":
        raise ConfigError(
            f"{where}.kind: classification abilities are the pretraining tasks, scored by their heads; list them "
            f"under pretrain.tasks; kinds configured here: {', '.join(ability_kinds())}"
        )
    return _validated(raw, where)


def build_abilities(cfg, encoder) -> list[Ability]:
    """The experiment's abilities, their data loaded, sampled and encoded for the model (ConfigError for bad
    input)."""
    built = []
    for i, raw in enumerate(cfg.abilities):
        config = ability_config(raw, f"abilities[{i}]")
        built.append(ability_class(config.kind)(config, encoder, f"abilities[{i}]"))
    return built


__all__ = [
    "Ability",
    "AbilityConfig",
    "ability_class",
    "ability_config",
    "ability_kinds",
    "build_abilities",
    "register_ability",
    "score_metrics",
]
