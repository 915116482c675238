"""Abilities scored alongside the tasks (research.abilities): every registered kind on a text model (the tiny
Hugging Face encoder) and on a numeric one (the MLP), step-0 values against an independent computation, scoring
that never disturbs training, resume, and bad input."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from test_model_families import example_config
from test_resume import SETTINGS, assert_same_run, reference_root, run_interrupted  # noqa: F401

from research.abilities import ability_class, ability_kinds
from research.cli import main
from research.config import validate_config
from research.data import build_tasks
from research.errors import ConfigError
from research.methods import build_method
from research.models.adapters import adapter
from research.training import run
from research.training.finetune import finetune_model

INPUTS = {"hf": "text", "mlp": "array"}


def with_abilities(family_example, family: str, out: Path, entries: list[dict[str, Any]], **overrides: Any):
    cfg = example_config(family_example(family), out).model_dump(mode="json")
    cfg["abilities"] = entries
    for key, value in overrides.items():
        section, leaf = key.split(".")
        cfg[section][leaf] = value
    return validate_config(cfg)


@pytest.mark.parametrize("family", list(INPUTS))
@pytest.mark.parametrize("kind", ability_kinds())
def test_every_ability_kind_is_scored_from_step_0_on_each_model(
    kind: str, family: str, family_example, out: Path, tmp_path: Path
) -> None:
    cls = ability_class(kind)
    entry = cls.example(tmp_path, INPUTS[family])
    result = run(with_abilities(family_example, family, out, [entry]))
    assert result.summary["status"] == "completed", result.summary["error"]
    rows = result.metrics[result.metrics.task == entry["name"]]
    assert set(rows.role) == {"pretrain"} and set(rows.metric) == set(cls.metrics)
    evaluated = sorted(result.metrics[result.metrics.metric == "acc"].step.unique())
    assert sorted(rows.step.unique()) == evaluated  # at step 0 and at every evaluation of the tasks
    assert np.isfinite(rows.value).all()
    summary = result.summary["abilities"][entry["name"]]
    assert summary["kind"] == kind and set(cls.metrics) <= set(summary["initial"]) and summary["final"]


def _model_features(cfg, texts_or_arrays: np.ndarray) -> torch.Tensor:
    """The loaded model's features, computed here without the evaluator: the adapter's encoder and backbone."""
    encoder = adapter(cfg.model.arch).input_encoder(cfg.model)
    model, _ = finetune_model(cfg, build_tasks(cfg), build_method(cfg.method), state=None)
    model.eval()
    with torch.no_grad():
        return model.features(encoder.encode(texts_or_arrays)).double()


def test_step_0_similarity_is_the_spearman_of_the_loaded_models_cosines(family_example, out, tmp_path) -> None:
    """On the tiny BERT with pairs over its vocabulary, step 0's Spearman equals scipy's on cosines computed
    here from the loaded model (pretrained = step 0: the backbone is not trained before fine-tuning)."""
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(60)]
    a, b = rng.choice(words, 30), rng.choice(words, 30)
    gold = rng.uniform(0, 10, 30).round(2)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("word1\tword2\tscore\n" + "".join(f"{x}\t{y}\t{s}\n" for x, y, s in zip(a, b, gold, strict=True)))
    cfg = with_abilities(family_example, "hf", out, [{"name": "sim", "kind": "similarity", "data": str(pairs)}])
    result = run(cfg)
    step0 = result.metrics[(result.metrics.task == "sim") & (result.metrics.step == 0)].value.item()

    fa, fb = _model_features(cfg, a.astype(object)), _model_features(cfg, b.astype(object))
    cosines = torch.nn.functional.cosine_similarity(fa, fb).numpy()
    assert step0 == pytest.approx(spearmanr(cosines, gold).statistic, abs=1e-6)
    assert result.summary["abilities"]["sim"]["pairs_scored"] == 30


def test_representation_starts_at_one_and_moves_with_training(family_example, out) -> None:
    entry = {"name": "drift", "kind": "representation", "data": "digits", "max_samples": 100}
    cfg = with_abilities(family_example, "mlp", out, [entry], **{"train.lr": 0.05})
    rows = run(cfg).metrics.query("task == 'drift'").pivot(index="step", columns="metric", values="value")
    assert rows.loc[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-12)  # step 0 against itself
    assert rows.iloc[-1].cka < 1 - 1e-4 and rows.iloc[-1].cosine < 1 - 1e-4


def test_the_probe_at_step_0_is_a_probe_fitted_on_the_loaded_models_features(family_example, out) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    entry = {"name": "probe", "kind": "probe", "data": {"source": "digits", "classes": [0, 1, 2]}, "max_samples": 90}
    cfg = with_abilities(family_example, "mlp", out, [entry])
    result = run(cfg)
    step0 = result.metrics.query("task == 'probe' and step == 0").value.item()

    ability = ability_class("probe")(
        ability_class("probe").Config.model_validate(entry),
        adapter("mlp").input_encoder(cfg.model),
        "abilities[0]",
    )
    f = _model_features(cfg, ability.inputs.numpy())
    n, y = ability.fitting, ability.labels.numpy()
    scaler = StandardScaler().fit(f[:n].numpy())
    probe = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(f[:n].numpy()), y[:n])
    expected = float((probe.predict(scaler.transform(f[n:].numpy())) == y[n:]).mean())
    assert step0 == pytest.approx(expected, abs=1e-12)
    assert ability.fitting == 45  # stratified halves: each class split evenly between fitting and scoring
    assert (abs(np.bincount(y[:n]) - np.bincount(y[n:])) <= 1).all()


def test_abilities_never_disturb_training(family_example, out, tmp_path) -> None:
    """Scoring abilities draws no random numbers and changes no module's mode: the run's task rows are those of
    the same run without them, bit for bit."""
    entries = [ability_class(k).example(tmp_path, "text") for k in ability_kinds()]
    plain = run(example_config(family_example("hf"), out))
    scored = run(with_abilities(family_example, "hf", tmp_path / "other", entries))
    a = plain.metrics.sort_values(["step", "task", "metric"]).reset_index(drop=True)
    b = scored.metrics[~scored.metrics.task.isin([e["name"] for e in entries])]
    b = b.sort_values(["step", "task", "metric"]).reset_index(drop=True)
    assert a[["step", "task", "metric"]].equals(b[["step", "task", "metric"]])
    np.testing.assert_array_equal(a.value.to_numpy(), b.value.to_numpy())


def test_a_run_with_abilities_resumes_to_the_uninterrupted_one(
    make_cfg,
    reference_root: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The representation's step-0 reference travels in the checkpoint: a resumed run scores against the same
    reference (a fresh one taken at the resume would read 1.0 there)."""
    entries = [ability_class(k).example(tmp_path, "array") for k in ability_kinds()]
    settings = [*SETTINGS, "checkpoint.every_n_steps=4", f"abilities={entries}"]
    reference = run(make_cfg(*settings, root=reference_root))
    cfg = make_cfg(*settings)
    run_interrupted(cfg, monkeypatch, update=10)
    resumed = run(cfg)
    assert resumed.summary["resumed_from_step"] == 8
    assert_same_run(resumed.run_dir, reference.run_dir)
    drift = resumed.metrics.query("task == 'drift' and metric == 'cka'")
    assert (drift[drift.step > 8].value < 1).all()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "x", "kind": "smell"}, "abilities[0].kind: unknown ability kind 'smell'; valid choices: similarity"),
        ({"name": "x", "kind": "similarity", "data": "nowhere.tsv"}, "abilities[0].data: 'nowhere.tsv' is neither"),
        ({"name": "x", "kind": "similarity", "data": "wordsim353", "extra": 1}, "abilities[0].extra"),
        ({"name": "x", "kind": "representation", "data": "lee"}, "holds text inputs, which this model does not take"),
        ({"name": "x", "kind": "classification"}, "classification abilities are the pretraining tasks"),
        ({"name": "d59", "kind": "representation", "data": "digits"}, "ability names must be unique"),
        ({"name": "x", "kind": "probe", "data": {"source": "digits", "classes": [42]}}, "class 42 is not in source"),
    ],
    ids=["unknown-kind", "missing-file", "unknown-key", "text-on-mlp", "classification", "name-clash", "bad-class"],
)
def test_bad_abilities_exit_2_with_one_line_and_nothing_written(
    entry: dict, expected: str, family_example, out: Path, tmp_path: Path, capsys
) -> None:
    import yaml

    cfg = example_config(family_example("mlp"), out).model_dump(mode="json")
    cfg["abilities"] = [entry]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not [p for p in out.iterdir() if p.name != "pretrained"]


def test_a_kind_without_an_example_says_the_generated_tests_need_one() -> None:
    from research.abilities import Ability

    class Bare(Ability):
        kind = "bare"

    with pytest.raises(NotImplementedError, match="gives no example"):
        Bare.example(Path("unused"), "text")


def test_the_validated_config_fills_each_kinds_defaults() -> None:
    cfg = validate_config(
        {
            "finetune": {"tasks": [{"name": "n", "source": "digits", "classes": [5, 6]}]},
            "pretrain": {"tasks": [{"name": "o", "source": "digits", "classes": [0, 1]}]},
            "abilities": [{"name": "w", "kind": "similarity", "data": "wordsim353"}],
        }
    )
    assert cfg.abilities == [
        {
            "name": "w",
            "kind": "similarity",
            "max_samples": 1000,
            "seed": 0,
            "data": "wordsim353",
            "a_column": None,
            "b_column": None,
            "score_column": None,
        }
    ]
    with pytest.raises(ConfigError, match="max_samples"):
        validate_config(
            {
                **cfg.model_dump(mode="json"),
                "abilities": [{"name": "w", "kind": "similarity", "data": "x", "max_samples": 0}],
            }
        )


def test_mas_runs_label_free_on_an_abilitys_inputs_without_pretraining_tasks(family_example, out, tmp_path) -> None:
    """MAS on the tiny BERT with no pretraining tasks: Ω from the features' sensitivity on the representation
    ability's texts, equal to the importance computed here from the definition (per-example |∇ ‖f(x)‖²|)."""
    from research.methods.mas import mas_importance, reference_batches

    ex = family_example("hf")
    table = ex.finetune_tasks[0]["path"]
    entry = {"name": "drift", "kind": "representation", "data": table, "text_column": "second", "max_samples": 12}
    cfg = example_config(ex, out, "mas", pretrain=False).model_dump(mode="json")
    cfg["abilities"] = [entry]
    cfg["method"].update(reference="drift", importance_samples=8, lam=1e4)
    result = run(validate_config(cfg))
    assert result.summary["status"] == "completed", result.summary["error"]
    info = result.summary["method_info"]
    assert "ability 'drift'" in info["importance_data"] and info["importance_examples"] == 8
    assert info["importance_trace"] > 0

    # The definition, on the loaded model: mean over the 8 sampled inputs of |d ||features(x)||^2 / d theta|.
    config = validate_config(cfg)
    model, ctx = finetune_model(config, build_tasks(config), build_method(config.method), state=None)
    ability = ability_class("representation")(
        ability_class("representation").Config.model_validate(entry), adapter("hf").input_encoder(config.model), "a"
    )
    ctx.references = {"drift": ability.inputs}
    names = [n for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    ours = mas_importance(model, reference_batches(ctx, "drift", 64, 8), names)
    (batch,) = reference_batches(ctx, "drift", 64, 8)
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
    model.eval()
    for i in range(8):
        model.zero_grad()
        xi = {k: v[i : i + 1] for k, v in batch.x.items()}
        model.features(xi).pow(2).sum().backward()
        for n, p in model.named_parameters():
            if n in names and p.grad is not None:
                total[n] += p.grad.abs()
    for n in names:
        torch.testing.assert_close(ours[n], total[n] / 8, rtol=1e-4, atol=1e-7)


def test_mas_without_pretraining_tasks_or_reference_names_both_ways_to_run(family_example, out) -> None:
    cfg = example_config(family_example("hf"), out, "mas", pretrain=False)
    with pytest.raises(ConfigError, match=re.escape("method.reference=<ability name>")):
        run(cfg)
    bad = cfg.model_dump(mode="json")
    bad["method"]["reference"] = "nowhere"
    with pytest.raises(ConfigError, match=re.escape("method.reference: mas uses the inputs of ability 'nowhere'")):
        run(validate_config(bad))


def test_the_report_tables_and_plots_abilities_and_works_without_pretraining_tasks(family_example, tmp_path) -> None:
    """A loaded model without pretraining tasks, scored on abilities only: the report has its results table,
    an abilities table whose numbers are the seeds' mean of each run's own curve metrics, and the figure."""
    from analysis.report import build_report

    table = family_example("hf").finetune_tasks[0]["path"]
    entries = [{"name": "drift", "kind": "representation", "data": table, "text_column": "text", "max_samples": 40}]
    out = tmp_path / "runs"
    finals = {}
    for method in ("finetune", "feature_distill"):
        for seed in (0, 1):
            cfg = example_config(family_example("hf"), out, method, pretrain=False).model_dump(mode="json")
            cfg.update(abilities=entries, seed=seed)
            cfg["train"]["lr"] = 0.01
            result = run(validate_config(cfg))
            cka = result.metrics.query("task == 'drift' and metric == 'cka'").sort_values("step").value
            finals.setdefault(method, []).append((cka.iloc[0], cka.iloc[-1]))
    report = build_report(out, tmp_path / "report")
    assert (tmp_path / "report" / "results.md").read_text().startswith("| setting | n | new tasks")
    lines = (tmp_path / "report" / "abilities.md").read_text().splitlines()
    assert lines[0] == ("| setting | ability | n | at step 0 | final | final drop | stability gap | forgetting AUC |")
    for method, pairs in finals.items():
        (row,) = [line for line in lines if line.startswith(f"| {method} | drift (cka) |")]
        cells = [c.strip() for c in row.strip("|").split("|")]
        start, final = (np.mean([p[i] for p in pairs]) for i in (0, 1))
        assert cells[2] == "2" and cells[3].startswith(f"{start:.3f}") and cells[4].startswith(f"{final:.3f}")
        assert cells[5].startswith(f"{start - final:.3f}")
    assert any(p.name == "abilities.png" for p in report.figures)
    assert any("Stability and plasticity" in s for s in report.skipped)


def test_the_readmes_abilities_example_builds_on_a_text_model(family_example) -> None:
    import yaml

    from research.abilities import build_abilities

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Abilities") :]
    block = section[section.index("```yaml") + len("```yaml") : section.index("```", section.index("```yaml") + 7)]
    cfg = example_config(family_example("hf"), Path("unused")).model_dump(mode="json")
    cfg["abilities"] = yaml.safe_load(block)["abilities"]
    config = validate_config(cfg)
    built = build_abilities(config, adapter("hf").input_encoder(config.model))
    assert [a.kind for a in built] == ["similarity", "representation", "probe"]


def test_research_abilities_lists_every_kind_with_its_score(capsys) -> None:
    assert main(["abilities"]) == 0
    shown = capsys.readouterr().out
    for kind in [*ability_kinds(), "classification"]:
        assert f"\n{kind}\n" in f"\n{shown}"
    assert "metrics: cka, cosine (score: cka)" in shown


def test_a_run_with_abilities_killed_by_sigkill_resumes_with_the_same_curves(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    """A real ``research run`` process, SIGKILLed once its first checkpoint exists: run again, it resumes, and
    its ability rows equal those of the same run left alone (the representation's step-0 reference came back
    from the checkpoint, not from the model at the resume)."""
    import json
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd

    from research.training.resume import CHECKPOINT_FILE

    entries = [ability_class(k).example(tmp_path, "array") for k in ability_kinds()]
    settings = [*SETTINGS, "train.epochs=30", "checkpoint.every_n_steps=20", f"abilities={json.dumps(entries)}"]
    root = Path(__file__).resolve().parents[1]

    def command(out: Path) -> list[str]:
        overrides = [o for o in tiny_overrides if not o.startswith("out=")]
        return [
            sys.executable,
            "-m",
            "research",
            "run",
            "experiments/split_digits.yaml",
            *overrides,
            *settings,
            f"out={out}",
        ]

    reference = subprocess.run(command(tmp_path / "reference"), cwd=root, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "killed"
    victim = subprocess.Popen(command(out), cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, checkpoints = time.monotonic() + 120, []
    while not checkpoints and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
        checkpoints = list(out.glob(f"*/{CHECKPOINT_FILE}"))
    assert checkpoints, "no checkpoint appeared"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    again = subprocess.run(command(out), cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    run_dir = checkpoints[0].parent
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from_step"] > 0

    def ability_rows(directory: Path) -> pd.DataFrame:
        metrics = pd.read_parquet(directory / "metrics.parquet")
        rows = metrics[metrics.task.isin([e["name"] for e in entries])]
        return rows.sort_values(["step", "task", "metric"]).reset_index(drop=True)

    (reference_dir,) = [p for p in (tmp_path / "reference").iterdir() if p.name == run_dir.name]
    pd.testing.assert_frame_equal(ability_rows(run_dir), ability_rows(reference_dir), check_exact=True)


def test_an_ability_kind_may_not_name_its_metrics_like_a_tasks() -> None:
    """An ability's rows named ``acc`` would be counted as an old task's accuracy by the analysis."""
    from research.abilities.base import Ability, AbilityConfig, register_ability

    class Looks(Ability):
        kind = "looks_like_a_task"
        Config = AbilityConfig
        metrics = ("acc",)

    with pytest.raises(TypeError, match=r"metric names \['acc'\] belong to tasks"):
        register_ability(Looks)
