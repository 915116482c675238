"""The method registry: ``@register`` on a Method subclass makes it available by name."""

from __future__ import annotations

import inspect
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from research.errors import ConfigError
from research.methods.base import Method, MethodConfig

_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__qualname__} must set a class attribute 'name'")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, MethodConfig)):
        raise TypeError(f"method '{name}' must set 'Config' to a MethodConfig subclass")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"method name '{name}' is registered twice ({_METHODS[name].__module__} and {cls.__module__})")
    _METHODS[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a method (for tests that register throwaway methods)."""
    _METHODS.pop(name, None)


def method_names() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method '{name}'; valid choices: {', '.join(method_names())}") from None


def method_config(raw: Any) -> MethodConfig:
    """Validate a method section (``{name: ewc, lam: 100}``) against that method's own typed config."""
    if isinstance(raw, MethodConfig):
        return raw
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"method: needs a 'name'; valid choices: {', '.join(method_names())}")
    cls = method_class(str(raw["name"]))
    try:
        return cls.Config.model_validate(raw)
    except ValidationError as err:
        from research.config import describe_validation_error

        raise ConfigError(describe_validation_error(err, cls.Config, raw, prefix="method")) from None


def pretraining_recorders() -> dict[str, type]:
    """Every recorder the pretraining stage runs, by record name (``Method.records_in_pretraining``)."""
    recorders: dict[str, type] = {}
    for name in method_names():
        cls = _METHODS[name]
        if cls.records_in_pretraining is not None:
            if not cls.pretraining_record:
                raise TypeError(f"method '{name}' records during pretraining but sets no 'pretraining_record' name")
            recorders.setdefault(cls.pretraining_record, cls.records_in_pretraining)
    return recorders


def build_method(raw: Any) -> Method:
    config = method_config(raw)
    return method_class(config.name)(config)


def describe_methods() -> list[dict[str, Any]]:
    """Every method with its docstring's first line and its hyperparameters with types and defaults."""
    rows = []
    for name in method_names():
        cls = _METHODS[name]
        params = []
        for field_name, field in cls.Config.model_fields.items():
            if field_name == "name":
                continue
            params.append(
                {
                    "name": field_name,
                    "type": _type_name(field.annotation),
                    "default": field.get_default(call_default_factory=True),
                    "help": field.description or "",
                }
            )
        # The docstring's first paragraph, on one line (a first line alone often stops mid-sentence).
        first_paragraph = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
        rows.append(
            {
                "name": name,
                "summary": " ".join(first_paragraph.split()),
                "params": params,
                "sequences": cls.supports_sequences,
                "ddp": cls.supports_ddp,
                "needs": (
                    "the pretraining trajectory (not from a checkpoint or a model loaded from outside)"
                    if cls.records_in_pretraining is not None
                    else "pretraining data: " + cls.why_pretraining_data
                    if cls.needs_pretraining_data
                    else ""
                ),
            }
        )
    return rows


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " | ".join(str(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
