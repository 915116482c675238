"""One shared head (class-incremental learning): every method must mean what its paper says, exactly as with
per-task heads. The shared head grows rows for new classes, which have no pretrained value: importances,
anchors, L2-SP's two strengths and WiSE-FT's interpolation must all treat those rows as new (regressions of the
review that found them treated as pretrained), and a sequence's head grows task by task."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import pytest
import torch
from helpers import prepare_method, small_batches, small_model

from research.data import build_tasks
from research.methods import FinetuneContext, Method, MethodConfig, TrainStep, build_method, register
from research.methods.fisher import FISHER_ESTIMATORS, fisher_diagonal
from research.methods.mas import MAS_ESTIMATORS, mas_importance
from research.methods.registry import unregister
from research.models import MultiHeadNet
from research.training import run
from research.training.checkpoints import read_state_dict
from research.training.finetune import finetune_model, start_task
from research.training.pretrain import pretrained_skeleton, pretrained_weights

SHARED = "model.heads=shared"
OLD_ROWS = 5  # split digits: the pretrained shared head knows digits 0-4; fine-tuning adds 5-9


def _final(result) -> dict[tuple[str, str], float]:
    final = result.summary["final"]
    return {(task, metric): scores[metric] for task, scores in final.items() for metric in ("acc", "loss")}


# --------------------------------------------------------------------------------------------- online EWC (item 1)


def test_online_ewc_anchors_the_pretrained_rows_of_a_shared_head(make_cfg) -> None:
    method, model, _, _ = prepare_method(make_cfg("method.name=online_ewc", SHARED, "method.fisher_samples=200"))
    assert {"heads.shared.weight", "heads.shared.bias"} <= set(method.anchor)
    fisher = method.importance["heads.shared.weight"]
    assert fisher.shape == model.heads["shared"].weight.shape
    assert float(fisher[:OLD_ROWS].sum()) > 0  # the old classes' rows are what must not be forgotten
    assert float(fisher[OLD_ROWS:].abs().sum()) == 0.0  # the new classes' rows had no earlier value


def test_online_ewc_keeps_the_old_classes_better_than_finetuning(make_cfg) -> None:
    """The review's case, as a new user would run it: split digits, shared head, λ = 1e4, 3 epochs. Online EWC
    used to leave the shared head unanchored and forget the old classes as completely as plain fine-tuning."""
    settings = [SHARED, "train.epochs=3"]
    finetune = run(make_cfg("method.name=finetune", *settings)).summary["final"]["digits_0_4"]["acc"]
    online = run(make_cfg("method.name=online_ewc", "method.lam=10000", "method.fisher_samples=200", *settings))
    assert online.summary["final"]["digits_0_4"]["acc"] > finetune + 0.15


# --------------------------------------------------------------------------------------------- importances (item 2)


def _pretrained_model(cfg, state: dict[str, torch.Tensor]) -> MultiHeadNet:
    """The pretrained model as pretraining left it: a shared head with outputs for the old classes only."""
    model = pretrained_skeleton(cfg, build_tasks(cfg))
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("name", ["ewc", "online_ewc", "mas"])
def test_importance_is_estimated_on_the_pretrained_models_own_outputs(name: str, make_cfg) -> None:
    cfg = make_cfg(f"method.name={name}", SHARED)
    tasks = build_tasks(cfg)
    state = pretrained_weights(cfg, tasks).state
    method, _, ctx, _ = prepare_method(cfg, state)
    reference = _pretrained_model(cfg, state)
    names = sorted(method.importance)
    assert "heads.shared.weight" in names
    if name == "mas":
        batches = ctx.pretrain_train_batches(method.config.importance_batch_size, method.config.importance_samples)
        expected = mas_importance(reference, batches, names, method.config.estimator)
    else:
        batches = ctx.pretrain_train_batches(method.config.fisher_batch_size, method.config.fisher_samples)
        generator = torch.Generator().manual_seed(cfg.seed)
        expected = fisher_diagonal(reference, batches, names, method.config.fisher, generator)
    for n in names:
        rows = expected[n].shape[0]
        torch.testing.assert_close(method.importance[n][:rows], expected[n], rtol=1e-5, atol=1e-9)
        assert float(method.importance[n][rows:].abs().sum()) == 0.0, n  # grown rows: no importance
    assert expected["heads.shared.weight"].shape[0] == OLD_ROWS


def test_si_gives_grown_rows_no_importance(make_cfg) -> None:
    cfg = make_cfg("method.name=si", SHARED)
    tasks = build_tasks(cfg)
    pretrained = pretrained_weights(cfg, tasks)
    method, _, _, _ = prepare_method(cfg, pretrained.state, pretrained.records)
    importance = method.importance["heads.shared.weight"]
    assert float(importance[:OLD_ROWS].sum()) > 0 and float(importance[OLD_ROWS:].abs().sum()) == 0.0


# --------------------------------------------------------------------------------------------- no graphs (item 3)


@pytest.mark.parametrize("estimator", FISHER_ESTIMATORS)
def test_fisher_estimates_carry_no_autograd_graph(estimator: str) -> None:
    model = small_model()
    model.requires_grad_(True)  # a trainable parameter on the forward path that is not estimated
    names = [n for n, _ in model.named_parameters() if n.startswith("backbone.1")]
    fisher = fisher_diagonal(model, small_batches(), names, estimator, torch.Generator().manual_seed(0))
    assert all(f.grad_fn is None and not f.requires_grad for f in fisher.values())


@pytest.mark.parametrize("estimator", MAS_ESTIMATORS)
def test_mas_estimates_carry_no_autograd_graph(estimator: str) -> None:
    model = small_model()
    model.requires_grad_(True)
    names = [n for n, _ in model.named_parameters() if n.startswith("backbone.1")]
    importance = mas_importance(model, small_batches(), names, estimator)
    assert all(t.grad_fn is None and not t.requires_grad for t in importance.values())


@pytest.mark.parametrize("estimator", [e for e in FISHER_ESTIMATORS if e != "exact"])
def test_online_ewc_with_a_shared_head_trains_with_every_estimator(estimator: str, make_cfg) -> None:
    """Used to crash with "backward through the graph a second time": the estimate kept the graph of the head."""
    cfg = make_cfg("method.name=online_ewc", SHARED, f"method.fisher={estimator}", "method.lam=1000")
    result = run(cfg)
    assert result.summary["status"] == "completed"
    assert result.summary["method_info"]["fisher_estimator"] == estimator


# --------------------------------------------------------------------------------------------- L2-SP (item 4)


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_l2sp_beta_acts_in_both_head_layouts(heads: str, make_cfg) -> None:
    """β is the strength on w_S̄, what the pretrained model lacked: a new head, or a shared head's new rows."""
    runs = [run(make_cfg("method.name=l2sp", f"model.heads={heads}", f"method.beta={beta}")) for beta in (0, 10)]
    assert runs[0].run_id != runs[1].run_id
    assert _final(runs[0]) != _final(runs[1])
    penalty = runs[1].metrics[runs[1].metrics.metric == "train_loss_l2_new_head"]
    assert len(penalty) > 0 and (penalty.value > 0).all()


# --------------------------------------------------------------------------------------------- WiSE-FT (item 5)


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_wise_ft_interpolates_what_was_pretrained_and_keeps_what_was_created(
    heads: str, make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real run: each α-model the sweep scores holds (1 − α)·θ₀ + α·θ_ft on every parameter and row
    the pretrained model had, and the fine-tuned values on what fine-tuning created (a new head, or a shared
    head's new rows); its scores are what method.parquet records."""
    import research.methods.wise_ft as wise_ft

    seen: list[tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
    original = wise_ft.interpolate

    def spy(model, start, start_buffers, alpha):
        mixed = original(model, start, start_buffers, alpha)
        fine_tuned = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen.append((alpha, fine_tuned, {n: p.detach().clone() for n, p in mixed.named_parameters()}))
        return mixed

    monkeypatch.setattr(wise_ft, "interpolate", spy)
    result = run(make_cfg("method.name=wise_ft", f"model.heads={heads}", "train.lr=0.02"))
    pretrained = read_state_dict(Path(result.summary["pretrained"]["path"]) / "model.safetensors")
    assert [alpha for alpha, _, _ in seen] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for alpha, fine_tuned, mixed in seen:
        for name, value in mixed.items():
            if name in pretrained:
                rows = pretrained[name].shape[0]
                expected = (1 - alpha) * pretrained[name] + alpha * fine_tuned[name][:rows]
                torch.testing.assert_close(value[:rows], expected, rtol=1e-6, atol=1e-7)
                assert torch.equal(value[rows:], fine_tuned[name][rows:]), name  # a shared head's new rows
            else:
                assert torch.equal(value, fine_tuned[name]), name  # a new per-task head
    # α = 0 is the pretrained model plus the fine-tuned new outputs: the new task scores well above chance.
    sweep = pd.read_parquet(result.run_dir / "method.parquet")
    at_zero = sweep[(sweep.alpha == 0.0) & (sweep.metric == "acc")].set_index("task").value
    assert at_zero["digits_5_9"] > 0.2 + result.summary["initial"]["digits_5_9"]["acc"]


# --------------------------------------------------------------------------------------------- growing (item 6)


class HeadProbeConfig(MethodConfig):
    name: Literal["head_size_probe"] = "head_size_probe"


class HeadProbe(Method):
    """Test-only: records the shared head's width whenever a task starts and at every training step."""

    name = "head_size_probe"
    Config = HeadProbeConfig
    supports_sequences = True
    neutral: ClassVar[dict[str, Any] | None] = {}
    widths: ClassVar[list[tuple[str, int, int]]] = []

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        HeadProbe.widths.append(("prepare", ctx.task_index, model.heads["shared"].out_features))

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, torch.Tensor]:
        HeadProbe.widths.append(("step", step.step, step.logits[0].shape[1]))
        return {}


@pytest.fixture
def head_probe():
    register(HeadProbe)
    HeadProbe.widths = []
    try:
        yield HeadProbe
    finally:
        unregister(HeadProbe.name)


def test_a_class_incremental_sequence_grows_its_head_task_by_task(make_cfg, head_probe) -> None:
    """Outputs exist only for the classes seen so far (van de Ven et al. 2022): the first task trains over
    digits 0-6, the second over 0-9; a later task's classes never compete in the argmax before it starts."""
    cfg = make_cfg(SHARED, "method.name=head_size_probe", "train.epochs=1", experiment="sequence_digits.yaml")
    result = run(cfg)
    prepared = [(i, width) for kind, i, width in head_probe.widths if kind == "prepare"]
    assert prepared == [(0, 7), (1, 10)]
    widths = [width for kind, _, width in head_probe.widths if kind == "step"]
    first_end = result.summary["task_ends"][0]["step"]
    assert set(widths[:first_end]) == {7} and set(widths[first_end:]) == {10}
    # The later task is scored from its own start on, never with outputs its classes do not have.
    acc = result.metrics[result.metrics.metric == "acc"]
    later = acc[acc.task == "digits_7_9"].step
    assert later.min() > first_end
    assert set(acc[acc.step <= first_end].task) == {"digits_0_3", "digits_4_6"}


def test_a_single_task_grows_the_shared_head_once(make_cfg) -> None:
    cfg = make_cfg(SHARED)
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None)
    assert model.heads["shared"].out_features == 10
    assert ctx.pretrained_rows["heads.shared.weight"] == OLD_ROWS == ctx.earlier_rows["heads.shared.bias"]


def test_earlier_rows_follow_the_sequence(make_cfg) -> None:
    """What had a value before each task: the pretrained rows first, then every row trained so far; with
    per-task heads, a later task's head (present from the start, never trained) is not "earlier"."""
    for heads in ("shared", "per_task"):
        cfg = make_cfg(f"model.heads={heads}", experiment="sequence_digits.yaml")
        tasks = build_tasks(cfg)
        method = build_method(cfg.method)
        model, ctx = finetune_model(cfg, tasks, method, state=None)
        before_first = dict(ctx.earlier_rows)
        start_task(model, ctx, method, 1)
        if heads == "shared":
            assert before_first["heads.shared.weight"] == 4
            assert ctx.earlier_rows["heads.shared.weight"] == 7 and model.heads["shared"].out_features == 10
        else:
            assert "heads.digits_4_6.weight" not in before_first
            assert ctx.earlier_rows["heads.digits_4_6.weight"] == 3
            assert "heads.digits_7_9.weight" not in ctx.earlier_rows


# --------------------------------------------------------------------------------------------- logging (item 11)


def test_a_sequence_logs_training_losses_on_the_run_step_axis(make_cfg) -> None:
    """``log_every_n_steps`` counts the run's steps, not each task's: with 7 it logs at 0, 7, 14, ... across the
    task boundary, so the second task's penalty is seen away from its first step (where it is 0 by design)."""
    cfg = make_cfg("method.name=si", "method.lam=10", "logging.log_every_n_steps=7", experiment="sequence_digits.yaml")
    result = run(cfg)
    train = result.metrics[result.metrics.metric == "train_loss_si"]
    first_end = result.summary["task_ends"][0]["step"]
    assert first_end % 7 != 0  # otherwise counting per task would look the same
    assert list(train.step) == list(range(0, result.summary["steps"], 7))
    second = train[train.task == "digits_7_9"]
    assert len(second) > 1 and (second.value > 0).any()


# --------------------------------------------------------------------------------------------- SI (item 9)


def test_si_path_integral_uses_the_data_loss_gradient(make_cfg) -> None:
    """Zenke et al.'s ω = −Σ_t g_data(t)·Δθ(t): the gradient of the unregularised loss, while the update itself
    is driven by the total loss (data + SI's penalty)."""
    cfg = make_cfg("method.name=si", "method.lam=50", experiment="sequence_digits.yaml")
    tasks = build_tasks(cfg)
    pretrained = pretrained_weights(cfg, tasks)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, pretrained.state, pretrained.records)
    method.prepare(model, ctx)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    x, y = ctx.task.splits["train"]
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for step in range(3):
        batch = slice(32 * step, 32 * (step + 1))
        data_loss = torch.nn.functional.cross_entropy(model(x[batch], ctx.task.head), y[batch])
        penalty = method.loss_terms(model, TrainStep([], [], step))["si"]
        data_grads = dict(
            zip(
                [n for n, p in model.named_parameters() if p.requires_grad],
                torch.autograd.grad(data_loss, trainable, retain_graph=True),
                strict=True,
            )
        )
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer.zero_grad()
        (data_loss + penalty).backward()
        method.after_backward(model, step)
        optimizer.step()
        method.after_step(model, step)
        for n, p in model.named_parameters():
            if n in data_grads:
                expected[n] -= data_grads[n] * (p.detach() - before[n])
        if step == 1:
            assert float(penalty.detach()) > 0  # the penalty's gradient is really in the update from here on
    for n, omega in method._trajectory.omega.items():
        torch.testing.assert_close(omega, expected[n], rtol=1e-4, atol=1e-9)


# --------------------------------------------------------------------------------------------- devices (item 10)


def test_the_pretraining_path_integral_follows_the_model_to_its_device() -> None:
    """The pretraining stage builds the path integral before Lightning moves the model; the module moves it
    along at fit start. (Simulated with the meta device: this machine has no GPU.)"""
    from research.config import OptimConfig
    from research.methods.path_integral import PathIntegral
    from research.training.module import ClassifierModule

    model = small_model()
    trajectory = PathIntegral(model)  # on the CPU, where the model was built
    module = ClassifierModule(model, ["a", "b"], OptimConfig(), recorders={"path_integral": trajectory}).to(
        torch.device("meta")
    )
    module.on_fit_start()
    devices = {t.device for t in [*trajectory.omega.values(), *trajectory.start.values()]}
    assert devices == {next(model.parameters()).device} == {torch.device("meta")}
