"""SI: the pretraining path integral, the importance, the penalty, and avalanche-lib's SynapticIntelligence."""

from __future__ import annotations

import pytest
import torch
from avalanche.training.plugins import SynapticIntelligencePlugin as AvalancheSI
from safetensors.torch import load_file

from research.cli import main
from research.config import ModelConfig
from research.data import build_tasks
from research.methods import build_method
from research.methods.base import TrainStep
from research.methods.path_integral import PathIntegral
from research.methods.si import si_importance
from research.models import build_model
from research.training import run
from research.training.finetune import finetune_model
from research.training.pretrain import pretrained_weights


def _sgd_trajectory(steps: int = 5, lr: float = 0.1):
    """A tiny model trained by plain SGD, with our path integral and Avalanche's bookkeeping side by side."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[5]), (3,), {"a": 2})
    ours = PathIntegral(model)
    ewc_data: tuple[dict, dict] = ({}, {})
    syn_data: dict = {"old_theta": {}, "new_theta": {}, "grad": {}, "trajectory": {}, "cum_trajectory": {}}
    AvalancheSI.create_syn_data(model, ewc_data, syn_data, set())
    AvalancheSI.init_batch(model, ewc_data, syn_data, set())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    grads_squared = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for _ in range(steps):
        AvalancheSI.pre_update(model, syn_data, set())
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x, "a"), y).backward()
        for n, p in model.named_parameters():
            grads_squared[n] += p.grad.pow(2)
        ours.before_step(model)
        optimizer.step()
        ours.after_step(model)
        AvalancheSI.post_update(model, syn_data, set())
    return model, ours, ewc_data, syn_data, grads_squared


def test_path_integral_of_plain_sgd_is_lr_times_summed_squared_gradients() -> None:
    # Δθ = −η g, so −g·Δθ = η g²: ω is η Σ_t g_t², elementwise and non-negative.
    _, ours, _, _, grads_squared = _sgd_trajectory(lr=0.1)
    for name, omega in ours.omega.items():
        torch.testing.assert_close(omega, 0.1 * grads_squared[name], rtol=1e-5, atol=1e-9)


def test_avalanche_si_records_nothing_on_cpu() -> None:
    """Pinned upstream behaviour (avalanche-lib 0.6): ``extract_weights`` stores ``param.detach().cpu().flatten()``,
    which on a CPU tensor is a view of the live parameter, so "old" and "new" weights are the same memory, every
    Δθ is 0, the trajectory stays 0 and its SI penalty is 0: on CPU Avalanche's SI silently does nothing. On a
    GPU ``.cpu()`` copies and the bookkeeping works; the next test compares against that path."""
    _, ours, _, syn_data, _ = _sgd_trajectory()
    assert all((t.data == 0).all() for t in syn_data["trajectory"].values())
    assert any((w != 0).any() for w in ours.omega.values())


@pytest.fixture
def avalanche_copying_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Avalanche's SI bookkeeping as it runs on a GPU, where ``.cpu()`` copies the weights."""

    def extract_weights(model, target, excluded_parameters) -> None:
        for name, param in AvalancheSI.allowed_parameters(model, excluded_parameters):
            target[name].data = param.detach().cpu().flatten().clone()

    monkeypatch.setattr(AvalancheSI, "extract_weights", staticmethod(extract_weights))


def test_path_integral_and_importance_match_avalanche(avalanche_copying_weights: None) -> None:
    model, ours, ewc_data, syn_data, _ = _sgd_trajectory()
    for name, omega in ours.omega.items():  # Avalanche accumulates g·Δθ, the negative of ω
        torch.testing.assert_close(-syn_data["trajectory"][name].data, omega.flatten(), rtol=1e-5, atol=1e-9)
    xi = 1e-3
    AvalancheSI.update_ewc_data(model, ewc_data, syn_data, 0.001, set(), 1, eps=xi)
    current = dict(model.named_parameters())
    for name, omega in ours.omega.items():
        displacement = current[name].detach() - ours.start[name]
        theirs = ewc_data[1][name].data
        mine = si_importance(omega, displacement, xi, clip=0.001).flatten()
        # Equal wherever ω ≥ 0; Avalanche keeps negative importances, we count them as 0 (always a pull).
        positive = omega.flatten() >= 0
        torch.testing.assert_close(mine[positive], theirs[positive], rtol=1e-5, atol=1e-9)
        assert (mine[~positive] == 0).all()


def test_si_importance_by_hand() -> None:
    omega = torch.tensor([2.0, -1.0, 0.5])
    displacement = torch.tensor([1.0, 3.0, 0.0])
    torch.testing.assert_close(si_importance(omega, displacement, xi=1.0), torch.tensor([1.0, 0.0, 0.5]))
    torch.testing.assert_close(si_importance(omega, displacement, xi=1.0, clip=0.75), torch.tensor([0.75, 0.0, 0.5]))


def test_pretraining_records_the_path_integral_and_its_start(make_cfg) -> None:
    cfg = make_cfg("pretrain.train.optimizer=sgd", "pretrain.train.momentum=0", "pretrain.train.lr=0.05")
    tasks = build_tasks(cfg)
    pretrained = pretrained_weights(cfg, tasks)
    saved = load_file(str(pretrained.path / "path_integral.safetensors"))
    omega, start = PathIntegral.split(saved)
    assert set(omega) == set(start) == {n for n in pretrained.state if not n.endswith(("running_mean", "running_var"))}
    assert all((w >= 0).all() for w in omega.values())  # plain SGD: ω = η Σ g² ≥ 0
    assert sum(float(w.sum()) for w in omega.values()) > 0
    moved = [n for n in start if not torch.equal(start[n], pretrained.state[n])]
    assert moved  # the trajectory starts at the initial weights, not the trained ones


def test_penalty_zero_at_anchor_and_gradient_is_closed_form(make_cfg) -> None:
    cfg = make_cfg("method.name=si", "method.lam=3.0")
    tasks = build_tasks(cfg)
    pretrained = pretrained_weights(cfg, tasks)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, pretrained.state, pretrained.records)
    method.prepare(model, ctx)
    assert float(method.loss_terms(model, TrainStep([], [], 0))["si"].detach()) == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    penalty = method.loss_terms(model, TrainStep([], [], 0))["si"]
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(penalty, [params[n] for n in method.anchor])
    for (name, anchor), grad in zip(method.anchor.items(), grads, strict=True):
        closed_form = 3.0 * method.importance[name] * (params[name].detach() - anchor)
        torch.testing.assert_close(grad, closed_form, rtol=1e-5, atol=1e-8)


def test_si_forgets_less_than_finetune(make_cfg) -> None:
    settings = ["train.lr=0.02", "train.epochs=4"]
    old = "digits_0_4"
    finetune = run(make_cfg("method.name=finetune", *settings)).summary["final"][old]["acc"]
    si = run(make_cfg("method.name=si", "method.lam=1000", *settings)).summary["final"][old]["acc"]
    assert si > finetune + 0.05


def test_si_with_a_shared_head_runs(make_cfg) -> None:
    result = run(make_cfg("method.name=si", "model.heads=shared"))
    assert result.summary["status"] == "completed"


def test_si_from_a_checkpoint_is_a_config_error(make_cfg, out, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_cfg()
    pretrained = pretrained_weights(cfg, build_tasks(cfg))
    args = [
        "run",
        "experiments/split_digits.yaml",
        f"out={out}/elsewhere",
        "method.name=si",
        f"pretrain.checkpoint={pretrained.path}",
    ]
    assert main(args) == 2
    assert "pretraining trajectory" in capsys.readouterr().err
    assert not (out / "elsewhere").exists()
