"""A-GEM: the projection on hand-made vectors and against Avalanche's plugin, the memory, and real runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from research.data import build_tasks
from research.methods import build_method
from research.methods.agem import agem_project
from research.training import run
from research.training.finetune import finetune_model
from research.training.pretrain import pretrained_weights


def prepared(make_cfg, *overrides: str, pretrained: bool = False):
    cfg = make_cfg("method.name=agem", *overrides)
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    state = pretrained_weights(cfg, tasks).state if pretrained else None
    model, ctx = finetune_model(cfg, tasks, method, state)
    method.prepare(model, ctx)
    return method, model, ctx


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in params])


# --------------------------------------------------------------------------------------------- projection


def test_projection_on_hand_made_vectors() -> None:
    g, g_ref = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    projected, fired = agem_project(g, g_ref)
    assert bool(fired)
    # g·g_ref = −1, |g_ref|² = 2: g̃ = g − (−1/2)·g_ref = (0.5, 0.5), orthogonal to g_ref.
    torch.testing.assert_close(projected, torch.tensor([0.5, 0.5]), rtol=0, atol=1e-7)

    generator = torch.Generator().manual_seed(0)
    conflicts = agreements = 0
    for _ in range(200):  # float64, so that "up to 1e-6" measures the formula rather than float32 rounding
        g, g_ref = (torch.randn(50, generator=generator, dtype=torch.float64) for _ in range(2))
        projected, fired = agem_project(g, g_ref)
        if torch.dot(g, g_ref) < 0:
            conflicts += 1
            assert bool(fired)
            assert torch.dot(projected, g_ref) >= -1e-6
            assert abs(float(torch.dot(projected, g_ref))) <= 1e-12 * float(g.norm() * g_ref.norm())
            assert torch.norm(projected) <= torch.norm(g)  # a projection never lengthens the step
        else:
            agreements += 1
            assert not bool(fired)
            assert torch.equal(projected, g)  # untouched, bit for bit
    assert conflicts > 50 and agreements > 50


def test_projection_edge_cases() -> None:
    g = torch.tensor([1.0, -2.0, 3.0])
    for g_ref in (torch.zeros(3), torch.tensor([0.0, 3.0, 2.0]), g.clone()):  # zero, orthogonal, aligned
        projected, fired = agem_project(g, g_ref)
        assert not bool(fired) and torch.equal(projected, g)
    projected, fired = agem_project(g, -g)  # exactly opposed: the step is cancelled
    assert bool(fired)
    torch.testing.assert_close(projected, torch.zeros(3), rtol=0, atol=1e-6)


@pytest.mark.parametrize("conflict", [True, False])
def test_projection_matches_avalanche(conflict: bool) -> None:
    """Avalanche 0.6's AGEMPlugin.after_backward on the same gradients gives the same projected gradients."""
    plugin_module = pytest.importorskip("avalanche.training.plugins.agem")
    generator = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)
    g = flat_grad(list(model.parameters())).clone()
    g_ref = torch.randn(g.shape, generator=generator)
    g_ref = g_ref if (torch.dot(g, g_ref) < 0) == conflict else -g_ref

    plugin = plugin_module.AGEMPlugin(patterns_per_experience=10, sample_size=4)
    plugin.buffers = [object()]  # a non-empty memory: the plugin only projects when it has one
    plugin.reference_gradients = g_ref
    plugin.after_backward(SimpleNamespace(model=model, device=torch.device("cpu")))

    ours, fired = agem_project(g, g_ref)
    assert bool(fired) == conflict
    torch.testing.assert_close(flat_grad(list(model.parameters())), ours, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("selection", ["reservoir", "class_balanced"])
def test_memory_is_the_replay_buffer(selection: str, make_cfg) -> None:
    """The memory is filled with replay's own selection functions: same size, seed and rule, same examples."""
    method, _, _ = prepared(make_cfg, "method.memory_size=60", f"method.selection={selection}")
    cfg = make_cfg("method.name=replay", "method.buffer_size=60", f"method.selection={selection}")
    replay = build_method(cfg.method)
    model, ctx = finetune_model(cfg, build_tasks(cfg), replay, state=None)
    replay.prepare(model, ctx)
    assert len(method.memory) == 60
    assert torch.equal(method.memory.x, replay.buffer_x) and torch.equal(method.memory.y, replay.buffer_y)
    if selection == "class_balanced":
        assert torch.bincount(method.memory.y).tolist() == [12] * 5


def test_reference_batch_draws(make_cfg) -> None:
    method, _, _ = prepared(make_cfg, "method.memory_size=100", "method.reference_batch_size=30")
    first, second = (method.memory.draw(30, method.generator) for _ in range(2))
    assert len(first) == len(set(first.tolist())) == 30  # without replacement
    assert not torch.equal(first, second)  # a fresh batch every step
    assert torch.equal(method.memory.draw(500, method.generator), torch.arange(100))  # more than held: all


# --------------------------------------------------------------------------------------------- the hook


def test_projection_removes_a_real_conflict(make_cfg) -> None:
    """On the pretrained model, a new-task gradient that would raise the memory's loss is projected so that
    it no longer does (to first order), and the memory's own gradient never lands in p.grad."""
    method, model, ctx = prepared(make_cfg, pretrained=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = ctx.task.splits["train"]
    for start in range(0, 320, 32):  # the first new-task batch whose gradient conflicts with the memory's
        model.zero_grad()
        F.cross_entropy(model(x[start : start + 32], ctx.task.head), y[start : start + 32]).backward()
        g = flat_grad(params).clone()
        drawn = method.generator.get_state()
        method.after_backward(model, start // 32)
        if int(method.projections) == 1:
            break
    else:
        pytest.fail("no conflicting batch among the first ten")
    method.generator.set_state(drawn)  # the same reference batch again, at the same weights
    g_ref = torch.cat([r.flatten() for r in method.reference_gradient(model, params)])
    assert torch.dot(g, g_ref) < 0
    projected = flat_grad(params)
    assert float(torch.dot(projected, g_ref)) >= -1e-6 * float(g.norm() * g_ref.norm())
    torch.testing.assert_close(projected, agem_project(g, g_ref)[0], rtol=0, atol=0)
    assert method.info()["projections"] == 1 and method.info()["steps"] == start // 32 + 1


def test_reference_pass_leaves_batchnorm_statistics(make_cfg) -> None:
    method, model, ctx = prepared(make_cfg, "model.batchnorm=true")
    model.train()
    x, y = ctx.task.splits["train"]
    F.cross_entropy(model(x[:32], ctx.task.head), y[:32]).backward()
    before = {n: b.clone() for n, b in model.named_buffers()}
    assert before
    method.after_backward(model, 0)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


# --------------------------------------------------------------------------------------------- real runs


def test_agem_run_reports_its_projections(make_cfg) -> None:
    result = run(make_cfg("method.name=agem"))
    info = result.summary["method_info"]
    assert result.summary["status"] == "completed"
    assert info["steps"] == result.summary["steps"] > 0
    assert info["memory_size"] == 200
    assert 0 < info["projections"] <= info["steps"]  # fine-tuning on new classes does conflict with the memory
    assert info["projection_share"] == pytest.approx(info["projections"] / info["steps"])
