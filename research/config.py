"""Experiment configuration: YAML + ``key=value`` overrides, merged by OmegaConf, validated by pydantic.

Every field has a type and a default; unknown keys are errors. A validation failure becomes a single-line
:class:`~research.errors.ConfigError` that names the key and the valid choices, so the CLI can exit with code 2
before anything is written.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from research.errors import ConfigError

SOURCES = ("digits", "mnist1d", "npz", "folder", "text", "relations")
USER_SOURCES = ("npz", "folder", "text")  # sources that read the user's files from ``path``


class Strict(BaseModel):
    """Base for every config section: unknown keys are rejected, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Seeds feed numpy, torch and Lightning, which all take unsigned 32-bit values.
Seed = Annotated[int, Field(ge=0, lt=2**32)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class TransformConfig(Strict):
    """A transform applied to every example of a task, e.g. to express "same classes, shifted domain"."""

    kind: Literal["permute", "rotate"]
    seed: Seed = 0  # permute: which fixed permutation of the input features
    degrees: float = 0.0  # rotate: angle in degrees (image sources only)


class TaskConfig(Strict):
    """A named classification problem drawn from one source, optionally restricted to some classes."""

    name: str
    source: Literal["digits", "mnist1d", "npz", "folder", "text", "relations"]
    path: str | None = None  # npz file, image folder or text table, for the user-data sources
    # text only: a CSV, JSONL or parquet file (or a folder written by datasets' save_to_disk) with these columns.
    text_column: str = "text"
    text_pair_column: str | None = None  # the second text of a pair (e.g. premise and hypothesis)
    label_column: str = "label"
    classes: list[int | str] | None = None  # None = every class of the source
    transform: TransformConfig | None = None
    # npz only: x is divided by this (255 maps 8-bit pixels to [0, 1]); None = x as stored, integers included.
    # Image folders are always scaled to [0, 1] and built-in sources come scaled, so they take no scale.
    scale: PositiveFloat | None = None

    @field_validator("name")
    @classmethod
    def _usable_as_key(cls, name: str) -> str:
        # Task names become head names, W&B keys and parquet values: keep them plain.
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"task name '{name}' may only contain letters, digits, '_' and '-'")
        return name

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_applies(cls, scale: Any, info: ValidationInfo) -> Any:
        # A number that cannot apply, or silently does nothing, is refused rather than ignored.
        if scale is None:
            return None
        source = info.data.get("source")
        if source is not None and source != "npz":
            how = "folder images are always scaled to [0, 1]" if source == "folder" else "built-in sources come scaled"
            raise ValueError(f"only npz sources take a scale ({how}); source '{source}' takes none")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(
                f"must be a positive number that x is divided by (e.g. 255 for 8-bit pixels) or null to use x as "
                f"stored; got {scale!r}"
            )
        return float(scale)

    @model_validator(mode="after")
    def _path_matches_source(self) -> TaskConfig:
        if self.source in USER_SOURCES and not self.path:
            raise ValueError(f"source '{self.source}' needs a 'path' to the user's data")
        if self.source not in USER_SOURCES and self.path:
            raise ValueError(f"source '{self.source}' is built in and takes no 'path' (only npz, folder and text do)")
        if self.source in ("text", "relations") and self.transform is not None:
            raise ValueError(f"{self.transform.kind} transforms numeric inputs; source '{self.source}' is text")
        column_keys = {"text_column": "text", "text_pair_column": None, "label_column": "label"}
        if self.source != "text":
            misplaced = [k for k, default in column_keys.items() if getattr(self, k) != default]
            if misplaced:
                raise ValueError(f"{misplaced[0]} applies to source 'text' only; source '{self.source}' has no columns")
        if self.classes is not None and len(self.classes) == 0:
            raise ValueError("classes must not be empty (leave it out to use every class)")
        if self.classes is not None and len(set(map(str, self.classes))) != len(self.classes):
            raise ValueError(f"classes has duplicates: {self.classes}")
        return self


class DataConfig(Strict):
    """How every task's pool is split. The split is fixed by ``split_seed``, not by the run's seed."""

    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.15
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: Seed = 0
    mnist1d_samples: PositiveInt = 5000  # examples generated for the MNIST-1D source (before splitting)
    # Image folders and text tables whose model inputs would take more memory than the budget are read from disk
    # when needed instead of held in memory (research.data.stream); "always"/"never" decide for every such task.
    stream: Literal["auto", "always", "never"] = "auto"
    memory_budget_mb: PositiveFloat = 4096.0
    workers: Annotated[int, Field(ge=0)] = 2  # DataLoader processes reading a streamed task's training batches

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class ModelConfig(Strict):
    """Backbone (``arch``: a registered family, research.models.adapters) + heads. ``heads: per_task`` gives each
    task its own output layer (a new head for each new task, old heads kept for scoring); ``shared`` is one
    output layer over the union of all tasks' classes. Each family reads only its own keys; any other key set
    to a non-default value is refused."""

    arch: str = "mlp"
    hidden: list[PositiveInt] = Field(default_factory=lambda: [256, 256], min_length=1)  # mlp: block widths
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64], min_length=1)  # cnn: block channels
    batchnorm: bool = False  # mlp, cnn
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0  # mlp, cnn
    heads: Literal["per_task", "shared"] = "per_task"
    # hf: a hub id or local directory (default: the packaged all-MiniLM-L6-v2); timm/torchvision: a model name.
    name: str | None = None
    revision: str | None = None  # hf: a hub branch, tag or commit
    pooling: Literal["mean", "cls", "pooler"] | None = None  # hf; None: what the model card uses
    max_length: PositiveInt = 128  # hf: tokens per text (pair), longer ones truncated
    gradient_checkpointing: bool = False  # hf: recompute activations in the backward pass (saves memory)
    weights: str | None = None  # timm/torchvision: a local weights file (safetensors, or weights-only torch)
    pretrained: bool = True  # timm/torchvision: load the family's pretrained weights (when no weights file)
    factory: str | None = None  # custom: module.path:function returning the nn.Module
    kwargs: dict[str, Any] = Field(default_factory=dict)  # custom: keyword arguments of the factory
    blocks: list[str] | None = None  # custom: submodule names, bottom to top

    COMMON: ClassVar[tuple[str, ...]] = ("arch", "heads")
    BUILT_IN: ClassVar[tuple[str, ...]] = ("hidden", "channels", "batchnorm", "dropout")

    @field_validator("arch")
    @classmethod
    def _arch_is_registered(cls, arch: str) -> str:
        from research.models.adapters import adapter_names

        if arch not in adapter_names():
            raise ValueError(f"unknown architecture '{arch}'; valid choices: {', '.join(adapter_names())}")
        return arch

    @model_validator(mode="after")
    def _keys_apply_to_arch(self) -> ModelConfig:
        from research.models.adapters import adapter

        family = adapter(self.arch)
        defaults = ModelConfig.model_construct()
        for key in type(self).model_fields:
            if key in self.COMMON or key in family.keys:
                continue
            # One config may sweep model.arch over mlp and cnn, so either keeps the other's keys.
            if not family.external and key in self.BUILT_IN:
                continue
            if getattr(self, key) != getattr(defaults, key, None):
                raise ValueError(
                    f"model.{key} does not apply to model.arch={self.arch}; its keys: "
                    f"{', '.join(family.keys) or '(none)'}"
                )
        if self.arch == "custom" and not self.factory:
            raise ValueError("model.arch=custom needs model.factory: 'module.path:function' returning an nn.Module")
        if self.arch in ("timm", "torchvision") and not self.name:
            raise ValueError(f"model.arch={self.arch} needs model.name (a {self.arch} model name, e.g. resnet18)")
        return self

    @property
    def external(self) -> bool:
        """Whether the backbone comes pretrained from outside the lab (no pretraining of ours trains it)."""
        from research.models.adapters import adapter

        return adapter(self.arch).external


class OptimConfig(Strict):
    """One training stage's loop. ``backbone_lr_scale`` and ``lr_decay`` give reduced and layer-wise
    learning rates: the head trains at ``lr``, the top backbone block at ``lr * backbone_lr_scale``, and each
    block below it at a further factor of ``lr_decay`` (Howard & Ruder 2018, ULMFiT's discriminative rates)."""

    epochs: PositiveInt = 5
    max_steps: PositiveInt | None = None
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 64
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    backbone_lr_scale: PositiveFloat = 1.0  # to freeze the backbone, use method feature_extraction
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 1.0
    # Lightning's mixed precision for the training steps (evaluation and the methods' estimators stay in 32-bit).
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    # Gradients of this many consecutive batches are summed into one update (each batch's loss / k), so an
    # optimizer step sees batch_size · k examples; steps, evaluations and logging count updates.
    accumulate_grad_batches: PositiveInt = 1
    # Distributed data parallel (fine-tuning only; started from `research run`, which Lightning runs once more per
    # extra process): each process takes its share of every batch, gradients are averaged, rank 0 writes.
    devices: PositiveInt = 1
    strategy: Literal["auto", "ddp"] = "auto"

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _several_devices_need_ddp(self) -> OptimConfig:
        if self.devices > 1 and self.strategy != "ddp":
            raise ValueError(f"devices={self.devices} needs strategy=ddp (the only multi-process strategy here)")
        return self


class PretrainConfig(Strict):
    """The pretraining stage: trained once per distinct config (cached by hash) or loaded from a checkpoint."""

    @field_validator("train")
    @classmethod
    def _pretraining_in_one_process(cls, train: OptimConfig) -> OptimConfig:
        if train.strategy == "ddp" or train.devices > 1:
            raise ValueError("train: pretraining runs in one process; distributed training applies to fine-tuning")
        return train

    # The tasks the lab pretrains on. Optional for a model loaded from outside (model.arch hf, timm, torchvision,
    # custom): its backbone stays as loaded and only these tasks' heads are trained, on its frozen features.
    tasks: list[TaskConfig] = Field(default_factory=list)
    checkpoint: str | None = None  # safetensors file, or a directory holding model.safetensors
    seed: Seed = 0  # fixed independently of the run seed so every run of a grid starts from the same weights
    train: OptimConfig = Field(default_factory=lambda: OptimConfig(epochs=20))


class FinetuneConfig(Strict):
    """The new tasks, fine-tuned one after another on one step axis (methods that support sequences only)."""

    tasks: list[TaskConfig]

    @field_validator("tasks")
    @classmethod
    def _non_empty(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        if not tasks:
            raise ValueError("at least one fine-tuning task is needed")
        return tasks


class EvalConfig(Strict):
    every_n_steps: PositiveInt = 10
    split: Literal["val", "test"] = "test"
    batch_size: PositiveInt = 2048
    max_samples: PositiveInt | None = None  # per task; a fixed-seed subsample for large eval sets


class LoggingConfig(Strict):
    """Where numbers go besides the run directory. Not part of the run id: it does not change results."""

    wandb: Literal["offline", "online", "disabled"] = Field(
        default_factory=lambda: "online" if os.environ.get("WANDB_API_KEY") else "offline"
    )
    project: str = "forgetting-lab"
    group: str | None = None  # W&B group; a grid sets it to the grid's name
    run_name: str | None = None  # W&B display name; default: experiment, method, changed settings, seed
    tags: list[str] = Field(default_factory=list)  # extra W&B tags (a grid adds its sub-grid's)
    progress: bool = True
    log_every_n_steps: PositiveInt = 25


class CheckpointConfig(Strict):
    """Fine-tuning checkpoints, so that a run killed mid-training resumes where it was instead of starting over.
    Not part of the run id: a resumed run produces exactly the numbers of an uninterrupted one."""

    # A checkpoint costs tens of milliseconds (model, optimizer, method state, measurements so far), so by
    # default one is taken once a minute of training has passed: short runs take none, long runs lose at most
    # a minute. ``every_n_steps`` adds checkpoints at fixed step intervals. 0 switches either off.
    every_n_seconds: Annotated[float, Field(ge=0)] = 60.0
    every_n_steps: Annotated[int, Field(ge=0)] = 0


class ExperimentConfig(Strict):
    name: str = "experiment"
    seed: Seed = 0
    out: str = "runs"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)  # optional for a model loaded from outside
    finetune: FinetuneConfig
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "finetune"})
    # What the loaded model could do before fine-tuning, scored with the tasks (research.abilities): each entry
    # {name, kind, ...} is validated against its kind's typed config.
    abilities: list[dict[str, Any]] = Field(default_factory=list)
    train: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _eval_split_exists(self) -> ExperimentConfig:
        if self.eval.split == "val" and self.data.val_fraction == 0:
            raise ValueError("eval.split is 'val' but data.val_fraction is 0: there is no validation split")
        return self

    @model_validator(mode="after")
    def _pretraining_tasks_when_pretrained_here(self) -> ExperimentConfig:
        if not self.pretrain.tasks and not self.model.external:
            raise ValueError(
                f"pretrain.tasks: at least one pretraining task is needed for model.arch={self.model.arch}, which "
                "is pretrained here; only a model loaded from outside (hf, timm, torchvision, custom) may go without"
            )
        if self.pretrain.checkpoint and self.model.external:
            raise ValueError(
                f"pretrain.checkpoint: model.arch={self.model.arch} loads its own weights (model.name / "
                "model.factory / model.weights); a checkpoint applies to the built-in mlp and cnn only"
            )
        return self

    @model_validator(mode="after")
    def _tasks_are_distinct(self) -> ExperimentConfig:
        names = [t.name for t in self.pretrain.tasks + self.finetune.tasks]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"task names must be unique across pretrain and finetune; repeated: {duplicated}")
        return self

    @field_validator("abilities", mode="before")
    @classmethod
    def _abilities_are_registered(cls, raw: Any) -> list[dict[str, Any]]:
        from research.abilities import ability_config

        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ValueError("abilities must be a list of {name, kind, ...} entries")
        try:
            return [ability_config(entry, f"abilities[{i}]").model_dump(mode="json") for i, entry in enumerate(raw)]
        except ConfigError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _abilities_are_distinct(self) -> ExperimentConfig:
        tasks = {t.name for t in self.pretrain.tasks + self.finetune.tasks}
        names = [a["name"] for a in self.abilities]
        clash = sorted({n for n in names if names.count(n) > 1 or n in tasks})
        if clash:
            raise ValueError(f"ability names must be unique and differ from task names; repeated: {clash}")
        return self

    @field_validator("method", mode="before")
    @classmethod
    def _method_is_registered(cls, raw: Any) -> dict[str, Any]:
        # Validated against the method's own typed config; stored back as a plain dict of resolved values.
        from research.methods import method_config

        try:
            return method_config(raw).model_dump(mode="json")
        except ConfigError as err:
            raise ValueError(str(err)) from None

    def method_config(self):
        from research.methods import method_config

        return method_config(self.method)


# --------------------------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML, apply ``key=value`` overrides, and validate. Raises ConfigError."""
    raw = read_experiment(path)
    for item in overrides or []:
        key, value = parse_override(item)
        set_key(raw, key, value, where=f"override '{item}'")
    return validate_config(raw)


def read_experiment(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """An experiment YAML as plain data (not yet validated). Raises ConfigError."""
    if path is None:
        return {}
    return read_yaml_mapping(path, "an experiment file")


def read_yaml_mapping(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        # OmegaConf.load turns a top-level string into a mapping ({'just a sentence': None}) and a number into an
        # OSError; look at what the YAML holds first so both get the message they deserve.
        with open(path, encoding="utf-8") as handle:
            top = yaml.safe_load(handle)
        if top is not None and not isinstance(top, dict):
            kind = {"str": "string", "int": "number", "float": "number", "bool": "boolean"}.get(type(top).__name__)
            raise ConfigError(f"{path}: the top level of {what} must be a mapping, not a {kind or type(top).__name__}")
        loaded = OmegaConf.load(path)
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: the top level of {what} must be a mapping")
        # Interpolations (``${train.lr}``) stay unresolved until validation, so overrides reach them.
        return OmegaConf.to_container(loaded, resolve=False)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}") from err
    except ConfigError:
        raise
    except Exception as err:  # YAML syntax errors come from the yaml package
        raise ConfigError(f"cannot parse {path}: {' '.join(str(err).split())}") from err


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed by OmegaConf's grammar (numbers, lists, null, strings)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        return key, OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]
    except OmegaConfBaseException as err:
        raise ConfigError(f"override '{item}': cannot parse the value ({str(err).splitlines()[0]})") from None


def set_key(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set a dotted key (list indices allowed, e.g. ``finetune.tasks.0.name``) in place; dict values merge into
    an existing section. Whether the key exists in the schema is for validation to say."""
    merged = OmegaConf.create(raw)
    try:
        OmegaConf.update(merged, key, value, merge=True)
    except (OmegaConfBaseException, ValueError, KeyError, IndexError) as err:
        raise ConfigError(f"{where}: cannot apply it ({str(err).splitlines()[0]})") from None
    raw.clear()
    raw.update(OmegaConf.to_container(merged, resolve=False))  # type: ignore[arg-type]


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        raw = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve an interpolation: {str(err).splitlines()[0]}") from None
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, ExperimentConfig, raw)) from None


def describe_validation_error(err: ValidationError, model: type[BaseModel], raw: Any, prefix: str = "") -> str:
    """One line for the first problem: the dotted key, what is wrong, and the valid choices."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc) or "config"
    kind = first["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(model, first["loc"][:-1], raw)
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        message = f"{key}: unknown key{hint}; valid keys here: {', '.join(valid)}"
    elif kind == "missing":
        message = f"{key}: required key is missing"
    elif kind == "value_error":
        text = first["msg"].removeprefix("Value error, ")
        # The method validator already names its own keys (``method.lam: ...``).
        message = text if text.startswith(f"{key}.") or text.startswith(f"{key}:") else f"{key}: {text}"
    else:
        message = f"{key}: {first['msg']} (got {first.get('input')!r})"
    more = len(err.errors()) - 1
    return message + (f" [and {more} more problem{'s' * (more > 1)}]" if more else "")


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...], raw: Any) -> list[str]:
    """Field names of the (nested) pydantic model at ``loc``; list indices are skipped."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    return sorted(current.model_fields) if current is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as ``X``, ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------------------------- identity


# Settings that change neither a run's numbers nor which rows it records, so are not part of its identity.
# How data is held and read (data.*), which changes no number: streamed tasks give the very batches in-memory
# ones do. Left out of run ids and of the pretraining cache key.
DATA_HANDLING = ("stream", "memory_budget_mb", "workers")

NOT_IN_RUN_ID = (
    "out",
    *(f"data.{key}" for key in DATA_HANDLING),
    "checkpoint",
    "logging.wandb",
    "logging.project",
    "logging.group",
    "logging.run_name",
    "logging.tags",
    "logging.progress",
)


def resolved(cfg: ExperimentConfig) -> dict[str, Any]:
    """The fully resolved config as plain data: what config.yaml holds."""
    return cfg.model_dump(mode="json")


def stable_hash(data: Any, length: int = 12) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_id(cfg: ExperimentConfig, extra: dict[str, str] | None = None) -> str:
    """Content address of a run: hash of everything that determines its numbers, seed included. ``extra`` holds
    fingerprints of the contents of user files the config names by path (data, checkpoint)."""
    data = resolved(cfg)
    for dotted in NOT_IN_RUN_ID:
        *parents, leaf = dotted.split(".")
        section = data
        for part in parents:
            section = section[part]
        section.pop(leaf)
    return stable_hash({**data, **({"content": extra} if extra else {})})
