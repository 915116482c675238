"""Grid files: a base experiment, seeds, and sub-grids, expanded into content-addressed runs.

    name: ewc_sweep                      # optional; default: the file's name (W&B: config logging.grid, a tag)
    base: ../split_digits.yaml           # experiment file, relative to this grid file
    overrides: {train.epochs: 5}         # optional; dotted keys applied to every run (values taken as they are)
    seeds: [0, 1, 2]
    grid:                                # sub-grids; each is the cartesian product of its lists
      - {method.name: finetune}
      - {method.name: ewc, method.lam: [100, 1000]}

In a sub-grid a list is a sweep axis, so ``method.lam: [100, 1000]`` makes two runs per seed. A setting whose
value is itself a list is written as a list of lists: ``model.hidden: [[64], [128, 128]]`` sweeps two models and
``model.hidden: [[64, 64]]`` sets one. A sub-grid that names a method different from the base experiment's
starts from that method's defaults, so hyperparameters only ever apply to the method they belong to.

``method.name: all`` sweeps every registered method (``research methods``), in the registry's order, each as a
sub-grid naming it alone would run it; a method added later joins the grid with no edit to the file. Methods that
cannot run on the experiment (one that needs pretraining data when it has no ``pretrain.tasks``, one defined for
a single fine-tuning task when ``finetune.tasks`` is a sequence...) are left out, and ``Grid.left_out`` says
which and why. Such a sub-grid sets no method hyperparameter: those belong to one method, in a sub-grid of its own.

Every expanded config is validated, and its run id is the hash of the resolved config (seed included), so
two sub-grids that resolve to the same run are one run, and rerunning a grid finds what already completed.
The runs are counted first, without expanding anything: a grid of more than ``MAX_RUNS`` runs is refused at once
(``research grid --max-runs N`` raises the limit), so a slip that multiplies two long lists costs no hours.

W&B: every run records its grid (``logging.grid``) and its setting's readable label (``logging.setting``, the
label the analysis gives it: research.labels), and the runs of one setting, all its seeds, share the W&B group
``<grid>/<setting>``, so W&B's grouped line is their mean over seeds. None of this is part of a run id.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field, ValidationError, field_validator

from research.config import (
    ExperimentConfig,
    Seed,
    Strict,
    describe_validation_error,
    parse_override,
    read_experiment,
    read_yaml_mapping,
    resolved,
    run_id,
    set_key,
    stable_hash,
    validate_config,
)
from research.data.fingerprint import content_fingerprints
from research.errors import ConfigError
from research.labels import flatten_config, setting_id, setting_labels
from research.tracking import setting_group, short_tag

# Keys a sub-grid may not set: seeds come from ``seeds``, and all runs of a grid share one ``out``.
NOT_IN_SUBGRIDS = ("seed", "out")
# ``method.name: all`` in a sub-grid: every registered method.
ALL_METHODS = "all"
# The most runs a grid file may expand to unless the user raises it (``research grid --max-runs N``): a typo that
# multiplies two long lists must be refused at once, not expanded and checked run by run for hours.
MAX_RUNS = 10_000
# A grid's name is a folder under ``<out>/grids``: plain, and not ``.``, ``..`` or a hidden name.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
PLAIN_FORM = "letters, digits, '_', '-' and '.', not starting with '.'"


class GridFile(Strict):
    """The schema of a grid file."""

    name: str | None = None
    base: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    seeds: list[Seed] = Field(min_length=1)
    grid: list[dict[str, Any]] = Field(default_factory=lambda: [{}], min_length=1)

    @field_validator("name")
    @classmethod
    def _usable_as_folder(cls, name: str | None) -> str | None:
        if name is not None and not PLAIN_NAME.fullmatch(name):
            raise ValueError(f"grid name '{name}' may only contain {PLAIN_FORM}")
        return name

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds has duplicates: {seeds}")
        return seeds


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: its validated config, content address and a name a person can read."""

    config: ExperimentConfig
    run_id: str
    subgrid: int  # index into the grid file's ``grid`` list
    settings: dict[str, Any]  # the sub-grid's values for this run (method.name included), seed excluded
    name: str  # e.g. "ewc lam=1000 seed=2"

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def setting(self) -> str:
        """The name without the seed: runs that differ only by seed share it."""
        return self.name.rsplit(" seed=", 1)[0]

    @property
    def setting_id(self) -> str:
        """Runs that differ only by seed share it (their resolved configs are equal but for the seed, the output
        folder and the logging keys other than the logging interval, which changes the recorded rows)."""
        data = resolved(self.config)
        for key in ("seed", "out"):
            data.pop(key)
        data["logging"] = {"log_every_n_steps": data["logging"]["log_every_n_steps"]}
        return stable_hash(data)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out) / self.run_id


@dataclass
class Grid:
    name: str
    path: Path
    runs: list[GridRun]
    # Expansion points that resolved to a run already in the grid: (its name, the name of the run it repeats).
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    # Methods of a ``method.name: all`` sub-grid that cannot run on the experiment: (which, why), once each.
    left_out: list[tuple[str, str]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.runs[0].config.out)

    @property
    def folder(self) -> Path:
        """Where the grid's own records go (its expansion, event log, summary, worker logs)."""
        return self.out / "grids" / self.name


def load_grid(path: str | Path, overrides: list[str] | None = None, max_runs: int = MAX_RUNS) -> Grid:
    """Read and expand a grid file; ``overrides`` (``key=value``) apply to every run, after the sub-grids.
    Every expanded config is validated here: a bad grid raises ConfigError before anything runs. A grid that
    would expand to more than ``max_runs`` runs is refused before any run is expanded."""
    path = Path(path)
    raw = read_yaml_mapping(path, "a grid file")
    try:
        spec = GridFile.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {describe_validation_error(err, GridFile, raw)}") from None
    name = spec.name or path.stem
    if not PLAIN_NAME.fullmatch(name):
        raise ConfigError(
            f"{path}: the grid's file name gives the grid name '{name}', which cannot name a folder (use "
            f"{PLAIN_FORM}); set 'name:' in the file"
        )
    total = count_runs(spec, path)
    if total > max_runs:
        seeds = f"{len(spec.seeds)} seed{'s' * (len(spec.seeds) != 1)}"
        raise ConfigError(
            f"{path}: the grid expands to {total} runs (its sub-grids x {seeds}), more than the limit "
            f"of {max_runs}; split the grid, or raise the limit with `research grid --max-runs N`"
        )
    base_path = (path.parent / spec.base).resolve()
    base = read_experiment(base_path)
    if "seed" in spec.overrides:
        raise ConfigError(f"{path}: overrides.seed: a grid's seeds come from its 'seeds' list")
    for key, value in spec.overrides.items():
        set_key(base, key, value, where=f"{path}: overrides.{key}")
    # Method hyperparameters set in ``overrides`` cannot follow a sub-grid to another method: refuse, not drop.
    method_overrides = [
        f"overrides.{key}" for key in _flat_keys(spec.overrides) if key.startswith("method.") and key != "method.name"
    ]
    cli = [parse_override(item) for item in overrides or []]
    for key, _ in cli:
        if key == "seed":
            raise ConfigError(f"override seed: a grid's seeds come from the 'seeds' list in {path}")

    runs: dict[str, GridRun] = {}
    duplicates: list[tuple[str, str]] = []
    left_out: list[tuple[str, str]] = []
    for index, subgrid in enumerate(spec.grid):
        where = f"{path}: grid[{index}]"
        subgrid, every_method = registered_methods(subgrid, where)
        for settings in expand_subgrid(subgrid, where):
            for seed in spec.seeds:
                run = _grid_run(base, settings, seed, cli, name, index, where, method_overrides)
                reason = cannot_run(run.config) if every_method else None
                if reason is not None:
                    note = (f"{run.setting} (grid[{index}])", reason)
                    if note not in left_out:
                        left_out.append(note)
                elif run.run_id in runs:
                    first = runs[run.run_id]
                    duplicates.append((f"{run.name} (grid[{index}])", f"{first.name} (grid[{first.subgrid}])"))
                else:
                    runs[run.run_id] = run
    if not runs:
        why = "; ".join(f"{which}: {reason}" for which, reason in left_out)
        raise ConfigError(f"{path}: nothing to run on {base_path.name}, every method is left out: {why}")
    label_settings(name, list(runs.values()))
    return Grid(name=name, path=path, runs=list(runs.values()), duplicates=duplicates, left_out=left_out)


def count_runs(spec: GridFile, path: Path) -> int:
    """How many runs the grid file expands to, before duplicates and left-out methods: each sub-grid's product
    of list lengths, times the seeds, summed. Counted without expanding anything, so it is instant at 10^6."""
    total = 0
    for index, subgrid in enumerate(spec.grid):
        subgrid, _ = registered_methods(subgrid, f"{path}: grid[{index}]")
        total += math.prod(len(v) if isinstance(v, list) else 1 for v in subgrid.values()) * len(spec.seeds)
    return total


def label_settings(grid_name: str, runs: list[GridRun]) -> None:
    """Give each run its grid, its setting's label and the setting's W&B group (``logging.grid``,
    ``logging.setting``, ``logging.group``). The label is the analysis's (research.labels.setting_labels over the
    grid's runs); two settings it cannot tell apart (they differ only in the logging interval) get a hash
    suffix, so a group never mixes settings."""
    flat = [{"method": r.config.method["name"], **flatten_config(resolved(r.config))} for r in runs]
    labels = setting_labels(pd.DataFrame(flat))
    ids = [setting_id(row) for row in flat]  # the analysis's setting id (research.labels), from each run's own
    ids_of: dict[str, set[str]] = {}
    for label, sid in zip(labels, ids, strict=True):
        ids_of.setdefault(label, set()).add(sid)
    for run, label, sid in zip(runs, labels, ids, strict=True):
        if len(ids_of[label]) > 1:
            label = f"{label} [{sid[:6]}]"
        logging = run.config.logging
        # The group carries the setting's id too: a label depends on what varies in this expansion, so after an
        # edit of the grid file another setting could read the same, and must not join the group.
        logging.grid, logging.setting = grid_name, label
        logging.group = setting_group(grid_name, f"{label} #{sid[:6]}")


def registered_methods(subgrid: dict[str, Any], where: str) -> tuple[dict[str, Any], bool]:
    """The sub-grid with ``method.name: all`` (alone or in a list) replaced by every registered method, in the
    registry's order, and whether it held one. Method hyperparameters cannot go with it: each belongs to one
    method (a sub-grid that names it), and would be an unknown key to all the others."""
    value = subgrid.get("method.name")
    if not (value == ALL_METHODS or (isinstance(value, list) and ALL_METHODS in value)):
        return subgrid, False
    hyperparameters = [key for key in subgrid if key == "method" or key.startswith("method.")]
    hyperparameters.remove("method.name")
    if hyperparameters:
        raise ConfigError(
            f"{where}: '{hyperparameters[0]}' cannot go with 'method.name: {ALL_METHODS}', which runs every "
            "registered method at its defaults; sweep a method's hyperparameters in a sub-grid that names it"
        )
    from research.methods import method_names

    named = value if isinstance(value, list) else [value]
    methods = [m for item in named for m in (method_names() if item == ALL_METHODS else [item])]
    return {**subgrid, "method.name": list(dict.fromkeys(methods))}, True


def cannot_run(config: ExperimentConfig) -> str | None:
    """Why the method of ``config`` cannot run on its experiment (the refusal `research run` would make, asked
    before anything is built), or None where it can."""
    from research.methods import method_class
    from research.methods.applicability import refusal

    refused = refusal(method_class(config.method["name"]), config)
    return None if refused is None else f"it {refused.reason}"


def expand_subgrid(subgrid: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The cartesian product of a sub-grid's lists, in the order its keys are written."""
    for key, values in subgrid.items():
        if key in NOT_IN_SUBGRIDS:
            choice = "the grid's 'seeds' list" if key == "seed" else "the grid's 'overrides' (one out per grid)"
            raise ConfigError(f"{where}: '{key}' cannot vary within a grid; use {choice}")
        if isinstance(values, list) and not values:
            raise ConfigError(f"{where}: '{key}' is an empty list, so the sub-grid has no runs")
    axes = [values if isinstance(values, list) else [values] for values in subgrid.values()]
    return [dict(zip(subgrid, point, strict=True)) for point in itertools.product(*axes)]


def _grid_run(
    base: dict[str, Any],
    settings: dict[str, Any],
    seed: int,
    cli: list[tuple[str, Any]],
    grid_name: str,
    subgrid: int,
    where: str,
    method_overrides: list[str],
) -> GridRun:
    raw = copy.deepcopy(base)
    flat = _flatten(settings)
    method = flat.get("method.name")
    if method is not None and method != _lookup(raw, "method.name"):
        if method_overrides:
            raise ConfigError(
                f"{where}: {', '.join(method_overrides)} belongs to method {_lookup(raw, 'method.name')}, but this "
                f"sub-grid runs {method}; set method hyperparameters in the sub-grids they belong to"
            )
        raw["method"] = {"name": method}  # the base method's hyperparameters belong to the base method
    for key, value in settings.items():
        set_key(raw, key, value, where=f"{where}: {key}")
    raw["seed"] = seed
    for key, value in cli:
        set_key(raw, key, value, where=f"override {key}")
    name = run_name(flat, raw)
    logging = raw.get("logging")
    raw["logging"] = {
        **(logging if isinstance(logging, dict) else {}),
        "grid": grid_name,  # the setting and its W&B group follow once every run is known (label_settings)
        "run_name": name,
        "tags": [f"subgrid-{subgrid}", *(short_tag(f"setting:{k}") for k in flat if k != "method.name")][:20],
        "progress": False,  # the grid shows one progress display; per-run bars would interleave
    }
    try:
        config = validate_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{where} ({name}): {err}") from None
    return GridRun(config, run_id(config, content_fingerprints(config)), subgrid, settings, name)


def run_name(settings: dict[str, Any], raw: dict[str, Any]) -> str:
    """``ewc lam=1000 seed=2``: the method, then each sub-grid setting as it resolved (method hyperparameters by
    their own name, anything else by its full key, e.g. ``train.lr=0.01``), then the seed."""
    parts = [str(_lookup(raw, "method.name") or "?")]
    for key in settings:
        if key != "method.name":
            parts.append(f"{key.removeprefix('method.')}={_short(_lookup(raw, key))}")
    return " ".join([*parts, f"seed={raw.get('seed')}"])


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys all the way down: ``{method: {name: ewc, lam: 5}}`` is ``method.name`` and ``method.lam``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _flat_keys(settings: dict[str, Any]) -> list[str]:
    return list(_flatten(settings))


def _lookup(raw: Any, dotted: str) -> Any:
    """The value at a dotted key (list indices allowed) in plain data, or None where there is none."""
    for part in dotted.split("."):
        if isinstance(raw, dict):
            raw = raw.get(part)
        elif isinstance(raw, list) and part.isdigit() and int(part) < len(raw):
            raw = raw[int(part)]
        else:
            return None
    return raw


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.12g}"  # exact enough to tell settings apart, without float noise
    if isinstance(value, list):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)
