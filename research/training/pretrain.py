"""The pretraining stage: train once per distinct setup, cache the weights, or load a user's checkpoint.

A model loaded from outside (``model.arch`` hf, timm, torchvision, custom) is its own pretrained model: its
backbone is never trained here. Without pretraining tasks the stage has nothing to do. With pretraining tasks,
only their heads are trained, on the loaded model's frozen features (in eval mode), so that those tasks can be
scored before and during fine-tuning; the cache entry then holds these heads only, and its manifest says so.

The cache entry is ``<out>/pretrained/<key>/`` (model.safetensors + manifest.json), where the key hashes
everything that determines the weights: data, model, pretraining tasks and heads, optimizer and seed. An
exclusive file lock serialises concurrent runs of a grid, and the entry appears by an atomic rename, so every
run starts from bit-identical weights, pretraining happens once, and no reader ever sees a torn file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from research.config import DATA_HANDLING, ExperimentConfig, OptimConfig, stable_hash, without_file_paths
from research.data.batches import TensorBatches
from research.data.fingerprint import task_fingerprints
from research.data.inputs import Inputs, compact, concat, count, take, to_device
from research.data.tasks import TaskSet
from research.errors import RunFailed
from research.evaluation.evaluator import eval_sets, score
from research.methods.registry import pretraining_recorders
from research.models.adapters import adapter
from research.models.build import build_model
from research.models.modes import eval_mode
from research.models.multihead import MultiHeadNet
from research.store import exclusive_lock, package_versions
from research.training.checkpoints import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    load_into,
    read_state_dict,
    save_weights,
)
from research.training.module import ClassifierModule
from research.training.progress import Stage, TrainLoss, make_progress
from research.training.trainer import make_trainer


@dataclass
class Pretrained:
    state: dict[str, Tensor]
    manifest: dict[str, Any]
    cached: bool  # True when the weights were reused (cache hit or user checkpoint)
    seconds: float
    path: Path
    # What methods recorded during pretraining, by record name (SI's "path_integral"); empty for a user checkpoint
    # or a model loaded from outside.
    records: dict[str, dict[str, Tensor]] = field(default_factory=dict)


# Library versions that change the data or the training numerics; a new version means a new cache entry.
KEY_PACKAGES = (
    "torch",
    "lightning",
    "numpy",
    "scikit-learn",
    "scipy",
    "mnist1d",
    "forgetting-lab",
    "transformers",
    "timm",
)


def pretrain_key(cfg: ExperimentConfig, tasks: TaskSet) -> str:
    versions = package_versions()
    return stable_hash(
        {
            "format": 3,  # 2: the entry also holds the pretraining path integral; 3: every method's record
            "records": sorted(pretraining_recorders()),
            "versions": {name: versions.get(name) for name in KEY_PACKAGES},
            "content": task_fingerprints(cfg.pretrain.tasks),
            "backbone": adapter(cfg.model.arch).fingerprint(cfg.model),
            "data": cfg.data.model_dump(mode="json", exclude=set(DATA_HANDLING)),
            "model": without_file_paths({"model": cfg.model.model_dump(mode="json")})["model"],
            "tasks": without_file_paths(
                {"pretrain": {"tasks": [t.model_dump(mode="json") for t in cfg.pretrain.tasks]}}
            )["pretrain"]["tasks"],
            "heads": tasks.pretrain_head_sizes(),
            # Domain-incremental labels are within-task positions, not the union's: other targets, other weights.
            **({"labels": "within_task"} if cfg.scenario == "domain" else {}),
            "train": cfg.pretrain.train.model_dump(mode="json"),
            "seed": cfg.pretrain.seed,
            "device": cfg.device,
            **({"threads": cfg.threads} if cfg.threads != 1 else {}),  # the split of every reduction
        }
    )


def pretrained_skeleton(cfg: ExperimentConfig, tasks: TaskSet) -> MultiHeadNet:
    """The model as pretraining leaves it: backbone plus the pretraining tasks' heads. A model loaded from
    outside comes with its weights; the built-in ones are freshly initialised here."""
    return build_model(cfg.model, tasks.input_shape, tasks.pretrain_head_sizes())


def load_pretrained(model: MultiHeadNet, state: dict[str, Tensor], cfg: ExperimentConfig, source: str) -> None:
    """Pretrained weights into the skeleton: everything for the built-in models; for a model loaded from outside,
    only the heads trained on its frozen features (its backbone is already as loaded)."""
    if not cfg.model.external:
        load_into(model, state, source)
        return
    load_into(model.heads, {k.removeprefix("heads."): v for k, v in state.items()}, source)


def check_checkpoint(cfg: ExperimentConfig, tasks: TaskSet) -> None:
    """Fail early (ConfigError, nothing written) if a user checkpoint is unreadable or does not fit."""
    if cfg.pretrain.checkpoint:
        load_into(pretrained_skeleton(cfg, tasks), read_state_dict(cfg.pretrain.checkpoint), cfg.pretrain.checkpoint)


def pretrained_weights(cfg: ExperimentConfig, tasks: TaskSet) -> Pretrained:
    started = time.perf_counter()
    if cfg.model.external and not tasks.pretrain:
        # Nothing to pretrain: the loaded model is the pretrained model.
        name = cfg.model.name or cfg.model.factory or cfg.model.arch
        manifest = {"backbone": f"{name} as loaded; no pretraining tasks, so nothing was trained here"}
        return Pretrained({}, manifest, True, time.perf_counter() - started, Path(name))
    if cfg.pretrain.checkpoint:
        path = Path(cfg.pretrain.checkpoint)
        state = read_state_dict(path)
        manifest_file = (path if path.is_dir() else path.parent) / MANIFEST_FILE
        manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
        return Pretrained(state, {**manifest, "source": str(path)}, True, time.perf_counter() - started, path)

    key = pretrain_key(cfg, tasks)
    root = Path(cfg.out) / "pretrained"
    entry = root / key
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / f".{key}.lock"):
        cached = entry.is_dir() or entry.is_symlink()
        problem = entry_problem(entry) if cached else None
        if problem is not None:  # a damaged entry would fail, or silently change, every run that uses it
            print(
                f"warning: pretrained cache entry {entry} does not verify ({problem}); rebuilding it", file=sys.stderr
            )
            _discard(entry)
            cached = False
        if not cached:
            _train_and_store(cfg, tasks, key, entry)
    where = f"the pretrained cache entry {entry}"
    state = read_state_dict(entry / WEIGHTS_FILE, key=where)
    manifest = json.loads((entry / MANIFEST_FILE).read_text())
    records = {name: load_file(str(entry / f"{name}.safetensors")) for name in manifest.get("records", [])}
    return Pretrained(state, manifest, cached, time.perf_counter() - started, entry, records)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def entry_problem(entry: Path) -> str | None:
    """Why a pretrained cache entry cannot be trusted, or None: its manifest must be a JSON object whose
    ``sha256`` lists every file the entry holds besides itself (weights, records), each with the hash it was
    written with. An entry from before the hashes were kept cannot be verified, so it is rebuilt too."""
    if entry.is_symlink() or not entry.is_dir():
        return "not a folder"
    try:
        manifest = json.loads((entry / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as err:
        return f"{MANIFEST_FILE} unreadable: {type(err).__name__}"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), dict):
        return "no content hashes in its manifest"
    expected = manifest["sha256"]
    names = {WEIGHTS_FILE, *(f"{name}.safetensors" for name in manifest.get("records", []))}
    if set(expected) != names:
        return "its manifest's hashes do not list its files"
    for name, digest in expected.items():
        file = entry / name
        if file.is_symlink() or not file.is_file():
            return f"{name} missing"
        if file_sha256(file) != digest:
            return f"{name} does not match its hash"
    return None


def _discard(entry: Path) -> None:
    """Move a damaged entry out of the way at once (a rename), then delete it."""
    trash = entry.with_name(f".{entry.name}.damaged.{os.getpid()}")
    os.replace(entry, trash)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def pretrain_stage(tasks: TaskSet, batches: int, train: OptimConfig, loss: TrainLoss) -> Stage:
    """What the pretraining display names and counts: the pretraining tasks, updates per epoch and in all."""
    steps_per_epoch = -(-batches // train.accumulate_grad_batches)  # the last update takes what is left
    total = steps_per_epoch * train.epochs
    if train.max_steps:
        total = min(total, train.max_steps)
    return Stage("pretrain", "+".join(t.name for t in tasks.pretrain), steps_per_epoch, total, loss)


@torch.no_grad()  # not inference mode: the features are training data for the heads
def frozen_features(model: MultiHeadNet, x: Inputs, batch_size: int, device: str) -> Tensor:
    """The backbone's features of every example, in eval mode, on the training device when there is one."""
    on = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        with eval_mode(model.to(on)):
            parts = [
                model.features(compact(to_device(take(x, slice(i, i + batch_size)), on))).cpu()
                for i in range(0, count(x), batch_size)
            ]
    finally:
        model.cpu()
    return torch.cat(parts)


def _train_and_store(cfg: ExperimentConfig, tasks: TaskSet, key: str, entry: Path) -> None:
    started = time.perf_counter()
    L.seed_everything(cfg.pretrain.seed, workers=True, verbose=False)
    model = pretrained_skeleton(cfg, tasks)
    external = cfg.model.external
    if external:  # the loaded backbone stays as loaded; only the pretraining tasks' heads learn its features
        model.backbone.requires_grad_(False)
    task_heads = [t.head for t in tasks.pretrain]
    heads = sorted(set(task_heads), key=task_heads.index)  # distinct; one entry when the head is shared
    x = concat([t.splits["train"][0] for t in tasks.pretrain])
    y = torch.cat([t.splits["train"][1] for t in tasks.pretrain])
    head_ids = torch.cat([torch.full((len(t.splits["train"][1]),), heads.index(t.head)) for t in tasks.pretrain])
    trained = model
    if external:
        # The frozen backbone in eval mode gives every example the same features in every epoch: compute them
        # once and train the heads on them (one pass of the loaded model instead of one per epoch).
        x = frozen_features(model, x, cfg.eval.batch_size, cfg.device)
        trained = MultiHeadNet(nn.Identity(), model.feature_dim)
        trained.heads = model.heads  # the same head modules: training them trains the model's
    batches = TensorBatches(
        x, y, head_ids, batch_size=cfg.pretrain.train.batch_size, seed=cfg.pretrain.seed, workers=cfg.data.workers
    )
    recorders = {name: recorder(trained) for name, recorder in pretraining_recorders().items()}
    loss = TrainLoss()  # what the display shows, from the module's logging steps
    progress = make_progress(cfg.logging.progress, pretrain_stage(tasks, len(batches), cfg.pretrain.train, loss))
    sink = loss.sink if progress is not None else None
    module = ClassifierModule(trained, heads, cfg.pretrain.train, recorders=recorders, scalar_sink=sink)
    trainer = make_trainer(cfg.pretrain.train, cfg.device, progress, [])
    try:
        trainer.fit(module, train_dataloaders=batches)
    except FloatingPointError as err:
        raise RunFailed(f"pretraining diverged ({err}); nothing was cached") from err
    model = model.cpu()
    broken = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if broken:  # never cache a diverged model as if it were a valid starting point
        raise RunFailed(f"pretraining diverged: non-finite weights in {broken[:3]}; nothing was cached")
    sets = {split: eval_sets(tasks.pretrain, split, None, 0) for split in ("val", "test")}
    metrics = {split: score(model, s, cfg.eval.batch_size) for split, s in sets.items() if all(len(e.y) for e in s)}

    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model.heads if external else model, tmp / WEIGHTS_FILE, prefix="heads." if external else "")
    for name, recorder in recorders.items():
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in recorder.state_dict().items()},
            str(tmp / f"{name}.safetensors"),
        )
    hashes = {file.name: file_sha256(file) for file in sorted(tmp.glob("*.safetensors"))}
    manifest = {
        "key": key,
        "sha256": hashes,  # verified whenever the entry is used (entry_problem)
        "tasks": [t.model_dump(mode="json") for t in cfg.pretrain.tasks],
        "heads": tasks.pretrain_head_sizes(),
        "input_shape": list(tasks.input_shape) if tasks.input_shape is not None else None,
        "model": cfg.model.model_dump(mode="json"),
        "backbone": (
            f"loaded from outside ({adapter(cfg.model.arch).describe(cfg.model, model.backbone)}), frozen: only the "
            "pretraining tasks' heads were trained here, on its features"
            if external
            else "pretrained here with the heads"
        ),
        "train": cfg.pretrain.train.model_dump(mode="json"),
        "seed": cfg.pretrain.seed,
        "records": sorted(recorders),  # what methods recorded during pretraining: <name>.safetensors each
        "steps": trainer.global_step,
        "metrics": metrics,
        "seconds": time.perf_counter() - started,
        "versions": package_versions(),
    }
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, entry)
