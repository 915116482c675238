"""Experiment configuration: YAML + ``key=value`` overrides, merged by OmegaConf, validated by pydantic.

Every field has a type and a default; unknown keys are errors. A validation failure becomes a single-line
:class:`~research.errors.ConfigError` that names the key and the valid choices, so the CLI can exit with code 2
before anything is written.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
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

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


# Seeds feed numpy, torch and Lightning, which all take unsigned 32-bit values.
Seed = Annotated[int, Field(ge=0, lt=2**32)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class TransformConfig(Strict):
    """A transform applied to every example of a task, e.g. to express "same classes, shifted domain"."""

    kind: Literal["permute", "rotate"]
    """permute: a fixed permutation of the input features; rotate: images rotated counter-clockwise"""
    seed: Seed = 0
    """permute: which fixed permutation of the input features"""
    degrees: float = 0.0
    """rotate: the angle in degrees (image sources only)"""


class TaskConfig(Strict):
    """A named classification problem drawn from one source, optionally restricted to some classes."""

    name: str
    """the task's name: its head, its rows in metrics.parquet and its W&B keys (letters, digits, '_', '-')"""
    source: Literal["digits", "mnist1d", "npz", "folder", "text", "relations"]
    """built in: digits, mnist1d, relations; the user's files: npz, folder, text (with ``path``)"""
    path: str | None = None
    """npz, folder, text: the file or folder; a relative path in an experiment file is relative to that file"""
    text_column: str = "text"
    """text: the column of the text (a CSV, JSONL or parquet file, or a datasets ``save_to_disk`` folder)"""
    text_pair_column: str | None = None
    """text: the column of the second text of a pair (e.g. premise and hypothesis)"""
    label_column: str = "label"
    """text: the column of the label"""
    classes: list[int | str] | None = None
    """the classes the task takes from its source, by class name; null: every class"""
    transform: TransformConfig | None = None
    """a transform of every example (``{kind: rotate, degrees: 90}``, ``{kind: permute, seed: 1}``): a domain shift"""
    scale: PositiveFloat | None = None
    """npz only: x is divided by it (255 maps 8-bit pixels to [0, 1]); null: x as stored (folders and built-in
    sources come scaled)"""

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
    """the share of each source pool held out for validation (stratified by label)"""
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """the share of each source pool held out for testing (stratified by label)"""
    split_seed: Seed = 0
    """fixes the split of every pool, independently of the run's seed"""
    mnist1d_samples: PositiveInt = 5000
    """examples generated for the MNIST-1D source (before splitting)"""
    stream: Literal["auto", "always", "never"] = "auto"
    """image folders and text tables: read from disk when needed instead of held in memory; auto: when their
    model inputs would take more than ``memory_budget_mb`` (same numbers either way; not part of the run id)"""
    memory_budget_mb: PositiveFloat = 4096.0
    """the memory above which ``stream: auto`` streams a task"""
    workers: Annotated[int, Field(ge=0)] = 2
    """DataLoader processes preparing a streamed task's training batches"""

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
    """the backbone family (research.models.adapters): mlp, cnn (pretrained here), hf, timm, torchvision, custom
    (loaded from outside)"""
    hidden: list[PositiveInt] = Field(default_factory=lambda: [256, 256], min_length=1)
    """mlp: the width of each block"""
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64], min_length=1)
    """cnn: the channels of each block"""
    batchnorm: bool = False
    """mlp, cnn: batch normalisation in every block"""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """mlp, cnn: dropout probability in every block"""
    heads: Literal["per_task", "shared"] = "per_task"
    """per_task: an output layer per task (an old task is scored by its own head); shared: one output layer over
    the classes seen so far (scored by argmax over every output)"""
    name: str | None = None
    """hf: a hub id or a ``save_pretrained`` directory (null: the packaged all-MiniLM-L6-v2); timm, torchvision: a
    model name"""
    revision: str | None = None
    """hf: a hub branch, tag or commit"""
    pooling: Literal["mean", "cls", "pooler"] | None = None
    """hf: how token states become one feature vector; null: what the model card uses"""
    max_length: PositiveInt = 128
    """hf: tokens per text (pair); longer ones are truncated"""
    gradient_checkpointing: bool = False
    """hf: recompute activations in the backward pass (less memory, more time)"""
    weights: str | None = None
    """timm, torchvision: a local weights file (safetensors, or a weights-only torch file)"""
    pretrained: bool = True
    """timm, torchvision: load the family's pretrained weights (when there is no weights file)"""
    factory: str | None = None
    """custom: ``module.path:function`` returning the nn.Module"""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """custom: keyword arguments of the factory"""
    blocks: list[str] | None = None
    """custom: submodule names, bottom to top (what partial unfreezing and ``train.lr_decay`` count)"""

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

    @model_validator(mode="after")
    def _size_can_be_built(self) -> ModelConfig:
        # Refused before torch tries to allocate it (a width of 10^11 is a typo, not a model): the failed
        # allocation would be a traceback deep inside nn.Linear instead of a line naming the key.
        key = {"mlp": "hidden", "cnn": "channels"}.get(self.arch)
        if key is None:
            return self
        widths = getattr(self, key)
        least = least_parameters(widths)
        if least > MAX_PARAMETERS:
            raise ValueError(
                f"model.{key}: {widths} makes a model of at least {least:.2g} parameters ({least * 4 / 2**30:.3g} GiB "
                f"as float32), above the limit of {MAX_PARAMETERS:.0e}; each entry is one block's width, e.g. "
                "[256, 256]"
            )
        return self

    @property
    def external(self) -> bool:
        """Whether the backbone comes pretrained from outside the lab (no pretraining of ours trains it)."""
        from research.models.adapters import adapter

        return adapter(self.arch).external


# Parameters above which a built-in model (mlp, cnn) is refused: 4e10 bytes of float32 weights, before gradients
# and optimizer state, is beyond any machine this lab trains on.
MAX_PARAMETERS = 10**10


def least_parameters(widths: list[int]) -> int:
    """A lower bound of the parameters of a stack of blocks of these widths: every block takes at least one input
    per unit of the one below (the first at least one input feature), and a head reads at least the top one."""
    return widths[0] + sum(a * b for a, b in itertools.pairwise(widths)) + widths[-1]


class OptimConfig(Strict):
    """One training stage's loop. ``backbone_lr_scale`` and ``lr_decay`` give reduced and layer-wise
    learning rates: the head trains at ``lr``, the top backbone block at ``lr * backbone_lr_scale``, and each
    block below it at a further factor of ``lr_decay`` (Howard & Ruder 2018, ULMFiT's discriminative rates)."""

    epochs: PositiveInt = 5
    """passes over the training data (each task of a sequence gets this many)"""
    max_steps: PositiveInt | None = None
    """stop after this many optimizer steps (per task), even within an epoch; null: epochs decide"""
    lr: PositiveFloat = 1e-3
    """the learning rate of the heads (and of the backbone, scaled by ``backbone_lr_scale`` and ``lr_decay``)"""
    batch_size: PositiveInt = 64
    """examples per batch"""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """the torch optimizer"""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """sgd only: momentum"""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """the optimizer's weight decay (decoupled for adamw)"""
    backbone_lr_scale: PositiveFloat = 1.0
    """the top backbone block trains at ``lr`` times this (to freeze the backbone, use method
    feature_extraction)"""
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 1.0
    """each block below the top one trains at this factor of the block above it (layer-wise rates)"""
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    """Lightning's precision of the training steps (evaluation and the methods' estimators stay 32-bit);
    16-mixed needs a GPU"""
    accumulate_grad_batches: PositiveInt = 1
    """this many consecutive batches are summed into one update (each batch's loss / k); steps, evaluations and
    logging count updates"""
    devices: PositiveInt = 1
    """processes (CPU) or GPUs of a distributed fine-tuning run; more than 1 needs ``strategy: ddp``"""
    strategy: Literal["auto", "ddp"] = "auto"
    """ddp: distributed data parallel fine-tuning, started from `research run` (each process takes its share of
    every batch; rank 0 writes)"""

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

    tasks: list[TaskConfig] = Field(default_factory=list)
    """the tasks the lab pretrains on; optional for a model loaded from outside (hf, timm, torchvision, custom),
    whose backbone stays as loaded while only these tasks' heads are trained on its frozen features"""
    checkpoint: str | None = None
    """mlp, cnn: your pretrained weights instead of pretraining here (a safetensors file, or a directory holding
    model.safetensors); a relative path in an experiment file is relative to that file"""
    seed: Seed = 0
    """the pretraining seed, fixed apart from the run's seed so every run of a grid starts from the same
    weights"""
    train: OptimConfig = Field(default_factory=lambda: OptimConfig(epochs=20))
    """the pretraining loop (the same keys as ``train``; default 20 epochs)"""

    @field_validator("train")
    @classmethod
    def _pretraining_in_one_process(cls, train: OptimConfig) -> OptimConfig:
        if train.strategy == "ddp" or train.devices > 1:
            raise ValueError("train: pretraining runs in one process; distributed training applies to fine-tuning")
        return train


class FinetuneConfig(Strict):
    """The new tasks, fine-tuned one after another on one step axis (methods that support sequences only)."""

    tasks: list[TaskConfig]
    """the new tasks, fine-tuned one after another on one step axis (several: methods that support sequences)"""

    @field_validator("tasks")
    @classmethod
    def _non_empty(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        if not tasks:
            raise ValueError("at least one fine-tuning task is needed")
        return tasks


class EvalConfig(Strict):
    every_n_steps: PositiveInt = 10
    """every task is scored at step 0 and every this many optimizer steps (and at the end)"""
    split: Literal["val", "test"] = "test"
    """which held-out split the evaluations score"""
    batch_size: PositiveInt = 2048
    """examples per evaluation batch"""
    max_samples: PositiveInt | None = None
    """per task: score a fixed-seed subsample of this many examples (large eval sets); null: all of them"""


class LoggingConfig(Strict):
    """Where numbers go besides the run directory. Not part of the run id (it does not change results), except
    ``log_every_n_steps``, which changes the rows a run records.

    ``wandb``, ``project`` and ``entity`` left at None follow W&B's own conventions, resolved when the run starts
    (research.tracking.resolve_destination; the values used are in summary.json's ``wandb``): the config, then
    ``WANDB_MODE`` / ``WANDB_PROJECT`` / ``WANDB_ENTITY``, then a stored ``wandb login`` (``online``); otherwise
    ``offline``, project ``forgetting-lab`` and W&B's default entity."""

    # The keys that are part of the run id; every other logging key is left out of it (research.config.run_id).
    IN_RUN_ID: ClassVar[tuple[str, ...]] = ("log_every_n_steps",)

    wandb: Literal["offline", "online", "disabled"] | None = None
    """W&B mode; null: `WANDB_MODE`, else online when a `wandb login` is stored, else offline"""
    project: str | None = None
    """W&B project; null: `WANDB_PROJECT`, else forgetting-lab"""
    entity: str | None = None
    """W&B entity (user or team); null: `WANDB_ENTITY`, else W&B's default"""
    group: str | None = None
    """W&B group; a grid sets it per setting (`<grid>/<setting>`), so W&B's grouped line is the seeds' mean"""
    grid: str | None = None
    """the grid this run belongs to (set by the grid; `research report --grid` selects by it)"""
    setting: str | None = None
    """the run's readable setting label within its grid (set by the grid)"""
    run_name: str | None = None
    """W&B display name; null: experiment, method, changed settings, seed"""
    tags: list[str] = Field(default_factory=list)
    """extra W&B tags (a grid adds its name and the sub-grid's)"""
    progress: bool = True
    """progress display while training (display only)"""
    log_every_n_steps: PositiveInt = 25
    """training scalars (the loss and each method term) are recorded every this many optimizer steps (part of the
    run id: it changes the recorded rows)"""


class CheckpointConfig(Strict):
    """Fine-tuning checkpoints, so that a run killed mid-training resumes where it was instead of starting over.
    Not part of the run id: a resumed run produces exactly the numbers of an uninterrupted one."""

    every_n_seconds: Annotated[float, Field(ge=0)] = 60.0
    """take a checkpoint once this much training time has passed since the last one (0: never by time); one
    costs tens of milliseconds, so short runs take none and long runs lose at most this much"""
    every_n_steps: Annotated[int, Field(ge=0)] = 0
    """also take one every this many optimizer steps (0: never by steps)"""


# The head layout of each continual-learning scenario (van de Ven & Tolias 2019).
SCENARIO_HEADS = {"task": "per_task", "domain": "shared", "class": "shared"}


class ExperimentConfig(Strict):
    name: str = "experiment"
    """the experiment's name (W&B tags, report labels)"""
    seed: Seed = 0
    """the run's seed: the fine-tuning order of batches, new heads, methods' sampling"""
    out: str = "runs"
    """the folder run directories go to, one per run id"""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """where training runs; auto: a GPU when there is one"""
    threads: PositiveInt = 1
    """torch's intra-op CPU threads for this run (``torch.set_num_threads``), whatever the machine or the number
    of grid workers: how a reduction is split over threads changes the last bits of every number, so the same
    run id must always run on as many; part of the run id when not 1. Raise it for one large model on many cores
    (keep workers × threads within the cores)"""
    data: DataConfig = Field(default_factory=DataConfig)
    """how every task's data is split and read"""
    scenario: Literal["task", "domain", "class"] | None = None
    """the continual-learning scenario (van de Ven & Tolias 2019), which sets ``model.heads`` and how tasks are
    scored: task: a head per task (task-incremental); domain: one shared head whose outputs are each task's
    classes by their position in the task, so every task needs as many classes (split tasks relabelled, or the
    same classes under a transform; domain-incremental); class: one shared head that grows outputs for each
    task's new classes, scored over every output seen so far (class-incremental; no class in two tasks);
    null: ``model.heads`` decides"""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """the backbone and its heads"""
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    """the pretraining stage (cached by config hash), or your checkpoint"""
    finetune: FinetuneConfig
    """the new tasks"""
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "finetune"})
    """``name`` (see `research methods`) and that method's own hyperparameters"""
    abilities: list[dict[str, Any]] = Field(default_factory=list)
    """what the model could do before fine-tuning, scored with the tasks: ``{name, kind, ...}`` entries (see
    `research abilities`)"""
    train: OptimConfig = Field(default_factory=OptimConfig)
    """the fine-tuning loop"""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """when and on what the tasks are scored"""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """W&B, progress display, training-scalar interval (not part of the run id)"""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """fine-tuning checkpoints for resuming a killed run (not part of the run id)"""

    @model_validator(mode="after")
    def _eval_split_exists(self) -> ExperimentConfig:
        if self.eval.split == "val" and self.data.val_fraction == 0:
            raise ValueError("eval.split is 'val' but data.val_fraction is 0: there is no validation split")
        return self

    @model_validator(mode="after")
    def _scenario_sets_heads(self) -> ExperimentConfig:
        if self.scenario is None:
            return self
        heads = SCENARIO_HEADS[self.scenario]
        if "heads" in self.model.model_fields_set and self.model.heads != heads:
            raise ValueError(
                f"scenario={self.scenario} uses model.heads={heads}, but model.heads={self.model.heads} was set; "
                "leave model.heads out (the scenario sets it) or choose scenario "
                + " or ".join(s for s, h in SCENARIO_HEADS.items() if h == self.model.heads)
            )
        self.model.heads = heads
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
    parsed = [(item, *parse_override(item)) for item in overrides or []]
    for item, key, value in parsed:
        set_key(raw, key, value, where=f"override '{item}'")
    try:
        return validate_config(raw)
    except ConfigError as err:
        sweeps = [item for item, _, value in parsed if isinstance(value, str) and "," in value]
        if not sweeps:
            raise
        raise ConfigError(
            f"{err} (override '{sweeps[0]}' looks like a Hydra sweep: one command runs one setting; list the "
            "values in a grid file and run `research grid` (see experiments/grids/))"
        ) from None


def read_experiment(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """An experiment YAML as plain data (not yet validated), its relative file paths made absolute against the
    file's own folder (so it runs the same from any working directory). Raises ConfigError."""
    if path is None:
        return {}
    raw = read_yaml_mapping(path, "an experiment file")
    paths_relative_to(raw, Path(path).resolve().parent)
    return raw


def missing_files(cfg: ExperimentConfig) -> str | None:
    """The first user file or folder the config names that does not exist, as ``key: message`` with the absolute
    path tried (relative paths in an experiment file were made relative to that file when it was read; on the
    command line they are relative to the working directory); None when all exist."""
    named = [
        (f"{section}.tasks.{i}.path", t.path)
        for section in ("pretrain", "finetune")
        for i, t in enumerate(getattr(cfg, section).tasks)
    ]
    named += [("pretrain.checkpoint", cfg.pretrain.checkpoint), ("model.weights", cfg.model.weights)]
    for key, path in named:
        if path and not Path(path).expanduser().exists():
            return f"{key}: no such file or folder: {Path(path).expanduser().absolute()}"
    return None


def paths_relative_to(raw: dict[str, Any], folder: Path) -> None:
    """Make the file paths of a raw config absolute against ``folder``, in place: task ``path``s,
    ``pretrain.checkpoint`` and ``model.weights``; and, where the value may also be a name rather than a path
    (an hf ``model.name`` is a directory or a hub id; an ability's ``data`` is a file or a built-in set such as
    ``wordsim353``), only when it starts with ``./`` or ``../`` or names something that exists there."""
    sections = {key: raw.get(key) if isinstance(raw.get(key), dict) else {} for key in ("pretrain", "finetune")}
    for section in sections.values():
        tasks = section.get("tasks")
        for task in tasks if isinstance(tasks, list) else []:
            _absolute(task, "path", folder)
    _absolute(sections["pretrain"], "checkpoint", folder)
    model = raw.get("model")
    _absolute(model, "weights", folder)
    if isinstance(model, dict) and model.get("arch") == "hf":
        _absolute(model, "name", folder, maybe_a_name=True)
    abilities = raw.get("abilities")
    for ability in abilities if isinstance(abilities, list) else []:
        _absolute(ability, "data", folder, maybe_a_name=True)
        if isinstance(ability, dict):
            _absolute(ability.get("data"), "path", folder)


def _absolute(section: Any, key: str, folder: Path, maybe_a_name: bool = False) -> None:
    value = section.get(key) if isinstance(section, dict) else None
    if not isinstance(value, str) or not value or "${" in value:  # interpolations resolve later, as written
        return
    path = Path(value).expanduser()
    if path.is_absolute():
        return
    if maybe_a_name and not (value.startswith(("./", "../")) or (folder / path).exists()):
        return
    section[key] = os.path.normpath(folder / path)


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
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]
    except OmegaConfBaseException as err:
        raise ConfigError(f"override '{item}': cannot parse the value ({str(err).splitlines()[0]})") from None
    except yaml.YAMLError as err:  # an unclosed ``[`` or ``{``: OmegaConf hands the value to the yaml package
        raise ConfigError(f"override '{item}': cannot parse the value as YAML ({_yaml_problem(err)})") from None
    if key in SECTIONS and not isinstance(parsed, dict):  # Hydra's config groups: `method=ewc`
        example = f"{key}.name={value}" if key == "method" else SECTIONS[key]
        raise ConfigError(f"override '{item}': {key} is a section, not a value; set one of its keys, e.g. {example}")
    return key, parsed


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The yaml package's reason in one line, without its marks into the ``<unicode string>`` OmegaConf parsed
    (they point into ``value=...``, not into what the user typed)."""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    text = ": ".join(p for p in parts if p) or " ".join(str(err).split())
    return f"{text}; quote the value if it is text, or close its brackets"


# The config's sections, with an example override of each (for the hint when one is given a plain value).
SECTIONS = {
    "method": "method.name=ewc",
    "data": "data.split_seed=1",
    "model": "model.arch=cnn",
    "pretrain": "pretrain.seed=1",
    "finetune": "finetune.tasks.0.classes=[5,6]",
    "train": "train.lr=0.01",
    "eval": "eval.every_n_steps=5",
    "logging": "logging.wandb=disabled",
    "checkpoint": "checkpoint.every_n_steps=100",
}


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


# An OmegaConf resolver call, ``${name:...}`` (``${oc.env:HOME}``, ``${oc.decode:...}``); a reference to another
# key (``${train.lr}``, ``${..lr}``) has no colon.
RESOLVER = re.compile(r"\$\{\s*([\w.\-]+)\s*:")


def refuse_resolvers(value: Any, key: str = "") -> None:
    """Only references to other keys may be interpolated. A resolver would put what it returns into config.yaml,
    summary.json and the W&B run: ``${oc.env:WANDB_API_KEY}`` in a shared config would copy a secret into a W&B
    project, and a value read from the environment is not reproducible from the config. ConfigError names the
    key and the resolver."""
    if isinstance(value, dict):
        for name, item in value.items():
            refuse_resolvers(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            refuse_resolvers(item, f"{key}.{index}")
    elif isinstance(value, str) and (match := RESOLVER.search(value)):
        raise ConfigError(
            f"{key or 'config'}: the interpolation '${{{match.group(1)}:...}}' calls a resolver, which this lab does "
            "not allow (its value would be recorded in config.yaml, summary.json and W&B); only references to "
            "other keys, e.g. '${train.lr}', are allowed; write the value itself (on the command line the shell "
            "can fill it in: key=$NAME)"
        )


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    refuse_resolvers(raw)
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
    *(f"logging.{key}" for key in LoggingConfig.model_fields if key not in LoggingConfig.IN_RUN_ID),
)


def resolved(cfg: ExperimentConfig) -> dict[str, Any]:
    """The fully resolved config as plain data: what config.yaml holds."""
    return cfg.model_dump(mode="json")


def stable_hash(data: Any, length: int = 12) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def without_file_paths(data: dict[str, Any]) -> dict[str, Any]:
    """A resolved config (or section of one, in place) with the paths of the user files whose contents are
    fingerprinted (task data, ``pretrain.checkpoint``, ``model.weights``, a local hf ``model.name``) replaced by a
    marker: a run's identity is what those files hold, not where they are, so the same experiment and data in
    another folder (another machine, a moved checkout) are the same run."""
    for section in ("pretrain", "finetune"):
        for task in (data.get(section) or {}).get("tasks") or []:
            if task.get("path"):
                task["path"] = FINGERPRINTED
    if (data.get("pretrain") or {}).get("checkpoint"):
        data["pretrain"]["checkpoint"] = FINGERPRINTED
    model = data.get("model") or {}
    if model.get("weights"):
        model["weights"] = FINGERPRINTED
    if model.get("arch") == "hf" and model.get("name") and Path(model["name"]).expanduser().is_dir():
        model["name"] = FINGERPRINTED
    return data


FINGERPRINTED = "<a user file: its contents are in the fingerprints>"


def run_id(cfg: ExperimentConfig, extra: dict[str, str] | None = None) -> str:
    """Content address of a run: hash of everything that determines its numbers, seed included. ``extra`` holds
    fingerprints of the contents of user files the config names by path (data, checkpoint), which stand for
    those paths (``without_file_paths``)."""
    data = without_file_paths(resolved(cfg))
    if data["scenario"] is None:  # as before the key existed: model.heads alone says the layout
        data.pop("scenario")
    if data["threads"] == 1:  # the default: run ids from before the key existed stay as they were
        data.pop("threads")
    for dotted in NOT_IN_RUN_ID:
        *parents, leaf = dotted.split(".")
        section = data
        for part in parents:
            section = section[part]
        section.pop(leaf)
    return stable_hash({**data, **({"content": extra} if extra else {})})
