"""The configuration reference, generated from the typed schema (research.config, every method's and every
ability kind's own config), so it cannot drift from what the code accepts: `research config` prints it and
docs/configuration.md holds the same text (a test keeps the two equal).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from research.config import ExperimentConfig, TaskConfig, TransformConfig

HEADER = """# Configuration reference

Every key of an experiment file (`research run CONFIG key=value ...`), with its type, default and meaning.
Generated from the typed schema by `research config` (this file is its output: `uv run research config >
docs/configuration.md`). Keys are dotted paths: `train.lr=0.01` on the command line is `train: {lr: 0.01}` in
YAML. A relative path in an experiment file is relative to that file; on the command line, to the current folder.
"""


def section_names() -> list[str]:
    return [name for name, _, _ in _sections()]


def config_reference(section: str | None = None) -> str:
    """The reference as Markdown: one table per section (or only ``section``)."""
    parts = [HEADER] if section is None else []
    for name, intro, rows in _sections():
        if section is None or name == section:
            parts.append(_table(name, intro, rows))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- sections


Row = tuple[str, str, str, str]  # key, type, default, meaning


def _sections() -> Iterator[tuple[str, str, list[Row]]]:
    """(name, introduction, rows) of every section, in the order of an experiment file's keys."""
    top = [(k, f) for k, f in ExperimentConfig.model_fields.items() if _model(f.annotation) is None]
    yield "experiment", "The top level of an experiment file.", [_row(k, f) for k, f in top]
    for key, field in ExperimentConfig.model_fields.items():
        model = _model(field.annotation)
        if model is not None and key != "finetune":
            yield key, _doc(model), list(_rows(model, key, field.default_factory()))  # type: ignore[misc]
        if key == "finetune":
            yield key, _doc(field.annotation), list(_rows(field.annotation, key))
            yield (
                "task",
                "Each entry of `pretrain.tasks` and `finetune.tasks`. " + _doc(TaskConfig),
                list(_rows(TaskConfig, "tasks[i]")),
            )
            yield "transform", _doc(TransformConfig), list(_rows(TransformConfig, "tasks[i].transform"))
        if key == "method":
            yield "method", _METHOD_INTRO, [_method_name_row()]
            yield from _method_sections()
        if key == "abilities":
            yield "abilities", _ABILITY_INTRO, list(_rows(_ability_base(), "abilities[i]"))
            yield from _ability_sections()


_METHOD_INTRO = (
    "`method.name` picks the method (`research methods` describes each); its hyperparameters sit beside the name "
    "(`method.lam=1000`). A hyperparameter of another method is refused."
)
_ABILITY_INTRO = (
    "Each entry of `abilities` is `{name, kind, ...}` (`research abilities` lists the kinds). Every kind takes the "
    "keys below; its own keys follow in its section."
)


def _rows(model: type[BaseModel], prefix: str, defaults: BaseModel | None = None) -> Iterator[Row]:
    """``defaults``: the section's default value where its parent sets one (``pretrain.train`` has 20 epochs)."""
    for key, field in model.model_fields.items():
        nested = _model(field.annotation)
        if nested is not None and nested not in (TaskConfig, TransformConfig):  # a sub-section, dotted
            default = field.default_factory() if field.default_factory is not None else None  # type: ignore[call-arg]
            yield from _rows(nested, f"{prefix}.{key}", default)
        else:
            shown = None if defaults is None else getattr(defaults, key)
            yield _row(f"{prefix}.{key}", field, default=shown)


def _method_name_row() -> Row:
    from research.methods import method_names

    return ("method.name", " \\| ".join(f"`{n}`" for n in method_names()), "`finetune`", "the method")


def _method_sections() -> Iterator[tuple[str, str, list[Row]]]:
    from research.methods import method_class, method_names

    for name in method_names():
        cls = method_class(name)
        rows = [_row(f"method.{key}", field) for key, field in cls.Config.model_fields.items() if key != "name"]
        yield f"method: {name}", _text(_first_paragraph(cls.__doc__)), rows


def _ability_base() -> type[BaseModel]:
    from research.abilities.base import AbilityConfig

    return AbilityConfig


def _ability_sections() -> Iterator[tuple[str, str, list[Row]]]:
    from research.abilities import ability_class, ability_kinds

    common = set(_ability_base().model_fields)
    for kind in ability_kinds():
        cls = ability_class(kind)
        fields = cls.Config.model_fields.items()
        rows = [_row(f"abilities[i].{key}", field) for key, field in fields if key not in common]
        yield f"abilities: kind {kind}", _text(cls.summary), rows


def _first_paragraph(doc: str | None) -> str:
    return (doc or "").strip().split("\n\n")[0]


# --------------------------------------------------------------------------------------------- one key


def _row(key: str, field: FieldInfo, default: Any = None) -> Row:
    return key, _type(field.annotation, field.metadata), _default(field, default), _text(field.description)


def _text(text: str | None) -> str:
    """One line of Markdown: RST's double backticks become Markdown's single ones; a '|' would end the cell."""
    return " ".join((text or "").split()).replace("``", "`").replace("|", "\\|")


def _default(field: FieldInfo, given: Any = None) -> str:
    if field.is_required():
        return "required"
    if given is not None:
        value = given
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _type(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> str:
    """A short, readable type: ``float ≥ 0``, ``list of int > 0``, ``"mean" | "cls" | null``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0], [*args[1:], *metadata])
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        text = " \\| ".join(_type(a, metadata if len(kept) == 1 else ()) for a in kept)
        return text + (" \\| null" if len(kept) < len(args) else "")
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in args)
    if origin is list:
        return f"list of {_type(args[0])}" + (" (non-empty)" if _min_length(metadata) else "")
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {TaskConfig: "task", TransformConfig: "transform"}.get(annotation, "section")
    name = getattr(annotation, "__name__", str(annotation))
    return " ".join([name, *_bounds(metadata)])


def _bounds(metadata: list[Any] | tuple[Any, ...]) -> list[str]:
    """``≥ 0``, ``> 0``, or an interval such as ``in [0, 1)``."""
    found: dict[str, float] = {}
    for item in _flat(metadata):
        if isinstance(item, annotated_types.BaseMetadata):
            for attribute in ("ge", "gt", "le", "lt"):
                if getattr(item, attribute, None) is not None:
                    found[attribute] = getattr(item, attribute)
    low = next(((k, v) for k, v in found.items() if k in ("ge", "gt")), None)
    high = next(((k, v) for k, v in found.items() if k in ("le", "lt")), None)
    if low and high:
        return [
            f"in {'[' if low[0] == 'ge' else '('}{_number(low[1])}, {_number(high[1])}{']' if high[0] == 'le' else ')'}"
        ]
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return [f"{signs[bound[0]]} {_number(bound[1])}" for bound in (low, high) if bound]


def _number(value: float) -> str:
    return f"2^{int(value).bit_length() - 1}" if value >= 2**20 and int(value) & (int(value) - 1) == 0 else f"{value:g}"


def _min_length(metadata: list[Any] | tuple[Any, ...]) -> bool:
    return any(getattr(item, "min_length", None) for item in _flat(metadata))


def _flat(metadata: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    for item in metadata:
        if isinstance(item, FieldInfo):  # Annotated[int, Field(ge=0)] keeps its constraints in the FieldInfo
            yield from _flat(item.metadata)
        else:
            yield item


def _model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _doc(model: type[BaseModel]) -> str:
    return _text(model.__doc__)


def _table(name: str, intro: str, rows: list[Row]) -> str:
    lines = [f"## {name}", "", intro, "", "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{key}` | {kind} | {default} | {meaning} |" for key, kind, default, meaning in rows]
    return "\n".join(lines) + "\n"
