"""The worked example of docs/adding_a_method.md, verbatim, and the tests that page tells an author to write.

The two classes between the markers are the page's example file; ``test_page_and_test_agree`` fails when the
page and this file drift apart. Importing this file registers the example (``@register``) and unregisters it at
once, so the real registry, and the registry-generated tests collected after this file, never see it; the
``l2_init`` fixture registers it for the tests that need it.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any, Literal

import pytest
import test_bad_input as corpus  # the bad-input corpus, for the cases it generates from each method's Config
import torch
from pydantic import Field
from torch import Tensor

from research.cli import DEMO_GRID, main
from research.data import build_tasks
from research.grid.spec import load_grid
from research.methods import build_method, method_names
from research.methods.base import FinetuneContext, HeadBatch, Method, MethodConfig, TrainStep
from research.methods.penalty import quadratic_penalty, snapshot
from research.methods.registry import register, unregister
from research.models.multihead import MultiHeadNet
from research.training import run
from research.training.finetune import finetune_model

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"
assert "l2_init" not in method_names(), "the docs example's name is taken by a real method: rename the example"


# --- the page's example (docs/adding_a_method.md), verbatim ----------------------------------------------------
class L2InitConfig(MethodConfig):
    """L2 Init's hyperparameters (Kumar, Marklund & Van Roy 2023)."""

    name: Literal["l2_init"] = "l2_init"
    lam: float = Field(0.01, ge=0, description="strength λ in λ/2 ‖θ − θ₀‖² over every trainable parameter")


@register
class L2Init(Method):
    """L2 Init (Kumar et al. 2023): λ/2 ‖θ − θ₀‖², every trainable parameter pulled to its starting value.

    Anchored: every parameter that trains, to its value before the first fine-tuning update: the backbone to
    its pretrained weights, the new head to its own seeded initialisation (L2-SP pulls the new head to zero
    instead). The paper anchors to the random initialisation of training from scratch; here training starts
    from the pretrained model. The paper writes λ‖θ − θ₀‖² without the 1/2: its λ is our ``lam`` / 2.
    Logged as ``train_loss_l2_init``.
    """

    name = "l2_init"
    Config = L2InitConfig
    config: L2InitConfig
    neutral = {"lam": 0.0}  # no pull: must train exactly like `finetune`

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.anchor = snapshot(model, trainable)  # detached copies of θ₀, on the training device

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        return {"l2_init": 0.5 * self.config.lam * quadratic_penalty(params, self.anchor)}

    def info(self) -> dict[str, Any]:
        return {"anchored_parameters": sum(t.numel() for t in self.anchor.values())}

    def state_dict(self) -> dict[str, Tensor]:
        return {f"anchor.{n}": t for n, t in self.anchor.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.anchor = {n.removeprefix("anchor."): t for n, t in state.items()}


# --- end of the page's example -----------------------------------------------------------------------------------

unregister(L2Init.name)  # importing a test file must not change the registry other test files are collected from


@pytest.fixture
def l2_init():
    """The example, registered for one test (configs resolve ``method.name`` through the registry at load time,
    so this must come before ``make_cfg``)."""
    register(L2Init)
    try:
        yield L2Init
    finally:
        unregister(L2Init.name)
    assert L2Init.name not in method_names()


# ------------------------------------------------------------------------------------------------- the page


def _page_example() -> str:
    """The page's code block that defines the example method."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)
    found = [b for b in blocks if "class L2Init(Method):" in b]
    assert len(found) == 1, "docs/adding_a_method.md must hold exactly one code block defining L2Init"
    return found[0]


def _imports(source: str) -> set[tuple[str, str]]:
    return {
        (node.module or "", alias.name)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_page_and_test_agree() -> None:
    """The page's example file is the code tested here: both classes verbatim, and every name it imports."""
    example = _page_example()
    for cls in (L2InitConfig, L2Init):
        assert inspect.getsource(cls) in example, f"{cls.__name__} differs between the page and this test"
    missing = _imports(example) - _imports(Path(__file__).read_text(encoding="utf-8"))
    assert not missing, f"the page's example imports {sorted(missing)}, this test does not"
    compile(example, "research/methods/l2_init.py", "exec")  # the page's block is a whole, valid module


# ------------------------------------------------------------------------------- what the page tells you to test


def test_listed_by_research_methods(l2_init, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    section = out.split("\nl2_init\n", 1)[1].split("\n\n")[0]
    assert section.splitlines()[0].strip() == L2Init.__doc__.splitlines()[0]
    lam = next(line.split() for line in section.splitlines() if line.split()[:1] == ["lam"])
    assert lam[1:4] == ["float", "default", "0.01"]
    assert "strength λ in λ/2 ‖θ − θ₀‖²" in " ".join(lam)


def _model_after_prepare(cfg) -> tuple[L2Init, MultiHeadNet, FinetuneContext]:
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None)
    method.prepare(model, ctx)
    return method, model, ctx


def _penalty(method: L2Init, model: MultiHeadNet, ctx: FinetuneContext) -> Tensor:
    x, y = ctx.task.splits["train"]
    batch = HeadBatch(ctx.task.head, x[:4], y[:4])
    return method.loss_terms(model, TrainStep([batch], [model(batch.x, batch.head)], 0))["l2_init"]


def test_penalty_is_zero_at_the_anchor_and_its_gradient_is_the_closed_form(l2_init, make_cfg) -> None:
    lam = 0.3
    method, model, ctx = _model_after_prepare(make_cfg("method.name=l2_init", f"method.lam={lam}"))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # everything that trains is anchored: the backbone and the new head, never the frozen old head
    old_heads = {n for n in ctx.pretrained_names if n.startswith("heads.")}
    assert set(method.anchor) == set(trainable) == (set(ctx.pretrained_names) - old_heads) | set(ctx.new_names)

    penalty = _penalty(method, model, ctx)
    assert penalty.item() == 0.0
    penalty.backward()
    assert all(p.grad is None or not p.grad.any() for p in trainable.values())

    generator = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=generator) for n, p in trainable.items()}
    with torch.no_grad():
        for n, p in trainable.items():
            p.add_(delta[n])
    model.zero_grad()
    penalty = _penalty(method, model, ctx)
    # hand-computed value: λ/2 Σ δ²
    expected = 0.5 * lam * sum(float((d.double() ** 2).sum()) for d in delta.values())
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    for n, p in trainable.items():  # ∂/∂θ λ/2 ‖θ − θ₀‖² = λ (θ − θ₀)
        torch.testing.assert_close(p.grad, lam * (p.detach() - method.anchor[n]))


def _scores(metrics):
    """Every evaluation row (acc and loss of every task at every evaluated step), in a fixed order."""
    rows = metrics[metrics.metric.isin(["acc", "loss"])]
    return rows.sort_values(["step", "task", "metric"]).reset_index(drop=True)


def test_runs_logs_its_term_forgets_less_and_neutral_is_finetune(l2_init, make_cfg) -> None:
    dropout = "model.dropout=0.1"  # so that the neutral comparison also catches a method that consumes randomness
    strong = run(make_cfg("method.name=l2_init", "method.lam=1.0", "logging.log_every_n_steps=1", dropout))
    summary, metrics = strong.summary, strong.metrics
    assert summary["status"] == "completed" and summary["method"] == "l2_init"
    logged = metrics[metrics.metric == "train_loss_l2_init"].sort_values("step")
    assert len(logged) == summary["steps"] > 0
    assert logged.value.iloc[0] == 0.0 and (logged.value.iloc[1:] > 0).all()  # zero at θ₀, then the pull
    assert summary["method_info"]["anchored_parameters"] > 0

    finetune = run(make_cfg("method.name=finetune", dropout))
    neutral = run(make_cfg("method.name=l2_init", *(f"method.{k}={v}" for k, v in L2Init.neutral.items()), dropout))
    assert len(_scores(finetune.metrics)) > 0
    assert _scores(finetune.metrics).equals(_scores(neutral.metrics))  # bit-identical at every evaluation

    # what it is for: the old task's loss ends lower than under plain fine-tuning (same seed, same data)
    old = "digits_0_4"
    assert summary["final"][old]["role"] == "pretrain"
    assert summary["final"][old]["loss"] < finetune.summary["final"][old]["loss"]
    assert not _scores(metrics).equals(_scores(finetune.metrics))


# --------------------------------------------------------------------------------- what comes with registering


def test_picked_up_by_the_demo_grid_and_the_bad_input_corpus(
    l2_init, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Registering is the only edit: the demo grid (``method.name: all``) runs the method at its defaults, and the
    bad-input corpus generates its bad hyperparameters from its typed Config; neither file names it."""
    assert "l2_init" not in DEMO_GRID.read_text() and "l2_init" not in Path(corpus.__file__).read_text()

    grid = load_grid(DEMO_GRID, [f"out={tmp_path / 'runs'}"])
    runs = [run for run in grid.runs if run.config.method["name"] == "l2_init"]
    assert [run.name for run in runs] == ["l2_init seed=0", "l2_init seed=1", "l2_init seed=2"]
    assert all(run.config.method == {"name": "l2_init", "lam": 0.01} for run in runs)  # at its defaults
    assert not grid.left_out and not grid.duplicates

    generated = {case.id: case for case in corpus.method_cases(method_names())}
    cases = [case for name, case in generated.items() if name.startswith("l2_init-")]
    assert [case.id for case in cases] == ["l2_init-lam-below-0", "l2_init-unknown-key"]
    assert generated["l2_init-lam-below-0"].values[1] == ["method.lam", "greater than or equal to 0"]
    for case in cases:  # exit 2, one line naming method.<key>, nothing written: the corpus's own check
        (tmp_path / case.id).mkdir()
        corpus.test_bad_input_exits_2_with_one_line_and_writes_nothing(*case.values, tmp_path / case.id, capfd)
