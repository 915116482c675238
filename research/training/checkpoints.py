"""Loading and saving model weights safely: safetensors, or ``torch.load(weights_only=True)``.

Nothing here unpickles arbitrary objects, so a pickle disguised as a checkpoint is refused without running it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from research.errors import ConfigError

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


def save_weights(model: nn.Module, path: Path, prefix: str = "") -> None:
    state = {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def read_state_dict(path: str | Path, key: str = "pretrain.checkpoint") -> dict[str, Tensor]:
    """A state dict from a .safetensors file, a folder holding model.safetensors, or a torch file (.pt, .pth,
    .ckpt; a Lightning checkpoint's ``state_dict`` with its ``model.`` prefix is accepted). ``key``: the config
    key that named the file, which every refusal names."""
    file = Path(path)
    if key == "pretrain.checkpoint":  # the manifest beside it is read with the weights: refuse a bad one now
        read_manifest(file, key)
    if file.is_dir():
        file = file / WEIGHTS_FILE
    if not file.is_file():
        raise ConfigError(f"{key}: file not found: {file}")
    if file.suffix == ".safetensors":
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            raise ConfigError(f"{key}: {file} is not a readable safetensors file ({err})") from None
        return _finite(state, file, key)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError and friends: refuse, never execute
        raise ConfigError(
            f"{key}: {file} cannot be loaded safely (weights only): {weights_only_failure(err)}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{key}: {file} does not hold a state dict of tensors")
    return _finite(state, file, key)


def _finite(state: dict[str, Tensor], file: Path, key: str) -> dict[str, Tensor]:
    """The state, unless a floating-point tensor holds NaN or Inf: such weights make every loss NaN, so a run
    from them would only fail at its first evaluation (this lab's own pretraining never stores them)."""
    broken = [
        name for name, tensor in state.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if broken:
        shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        raise ConfigError(f"{key}: {file} has non-finite weights (NaN or Inf) in {shown}")
    return state


def read_manifest(path: str | Path, key: str = "pretrain.checkpoint") -> dict[str, Any]:
    """The manifest.json of a checkpoint (in its folder, or beside its file) as a dict; {} when there is none.
    A manifest that is not valid JSON, or not a JSON object, is refused naming ``key``."""
    where = Path(path)
    manifest = (where if where.is_dir() else where.parent) / MANIFEST_FILE
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{key}: {manifest} is not valid JSON ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        kind = {"list": "a list", "str": "a string", "int": "a number", "float": "a number", "bool": "a boolean"}
        raise ConfigError(
            f"{key}: {manifest} must hold a JSON object ({{...}}), not {kind.get(type(data).__name__, 'null')}"
        )
    return data


def weights_only_failure(err: Exception) -> str:
    """The reason inside torch's weights-only refusal, which wraps it in paragraphs of boilerplate (one of them
    advises loading with ``weights_only=False``, exactly what must not happen to an untrusted file)."""
    if isinstance(err, EOFError):
        return "the file is empty or truncated"
    text = str(err)
    # torch names what it refused after "WeightsUnpickler error:", inside the paragraph of advice.
    reason = re.search(r"WeightsUnpickler error:\s*(\S.*?)(?: Please use|\n|$)", text)
    if reason:
        return " ".join(reason.group(1).split())[:200]
    boilerplate = ("Weights only load failed", "Check the documentation of torch.load")
    paragraphs = [p for p in text.split("\n\n") if p.strip() and not p.strip().startswith(boilerplate)]
    return " ".join(" ".join(paragraphs).split())[:200] or type(err).__name__


def load_into(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Strict load; a checkpoint of another architecture is a config error that says what differs."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{' …' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}{' …' if len(unexpected) > 4 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:2]}")
        raise ConfigError(
            f"pretrain.checkpoint: {source} does not fit the configured model (model.* and the pretraining "
            f"tasks' heads): {'; '.join(parts)}"
        )
    model.load_state_dict(state, strict=True)
