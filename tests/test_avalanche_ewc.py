"""EWC against avalanche-lib's EWCPlugin on identical weights and data.

Our ``batched`` estimator reproduces Avalanche's importance (squared minibatch-mean gradients, averaged over
minibatches, eval mode, sequential batches). The penalties differ by a deliberate factor: Avalanche adds
λ·Σ F (θ−θ*)², we add the paper's λ/2·Σ F (θ−θ*)², so our λ equals twice Avalanche's for the same penalty.
"""

from __future__ import annotations

import pytest
import torch
from avalanche.training.plugins import EWCPlugin
from torch import nn
from torch.utils.data import TensorDataset

from research.config import ModelConfig
from research.data import build_tasks
from research.methods import build_method
from research.methods.base import HeadBatch, TrainStep
from research.methods.fisher import fisher_diagonal
from research.models import build_model
from research.training.finetune import finetune_model


class OneHead(nn.Module):
    """Avalanche calls ``model(x)``; ours takes the head by name."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.head)


def _avalanche_importance(model: nn.Module, head: str, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    wrapped = OneHead(model, head)
    dataset = TensorDataset(x, y, torch.zeros(len(y), dtype=torch.long))
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.0)
    importances = EWCPlugin(ewc_lambda=1.0).compute_importances(
        wrapped, nn.CrossEntropyLoss(), optimizer, dataset, "cpu", batch_size
    )
    return {name.removeprefix("model."): imp.data for name, imp in importances.items()}


@pytest.mark.parametrize("batch_size", [16, 50])
def test_batched_fisher_reproduces_avalanche_importance(batch_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[12, 8]), (1, 8, 8), {"old": 5})
    x, y = torch.randn(120, 1, 8, 8), torch.randint(0, 5, (120,))
    batches = [HeadBatch("old", x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, 120, batch_size)]
    names = [n for n, _ in model.named_parameters()]
    ours = fisher_diagonal(model, batches, names, "batched")
    theirs = _avalanche_importance(model, "old", x, y, batch_size)
    assert set(ours) == set(theirs)
    for name in names:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-8)


def test_exact_and_batched_differ_by_about_the_batch_size() -> None:
    """Why λ is not comparable across estimators: the batched importance shrinks with the batch size."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(arch="mlp", hidden=[12]), (10,), {"old": 3})
    x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
    names = [n for n, _ in model.named_parameters()]
    empirical = fisher_diagonal(model, [HeadBatch("old", x, y)], names, "empirical")
    traces = []
    for batch_size in (8, 64):
        batches = [HeadBatch("old", x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, 256, batch_size)]
        batched = fisher_diagonal(model, batches, names, "batched")
        traces.append(sum(float(f.sum()) for f in batched.values()))
    empirical_trace = sum(float(f.sum()) for f in empirical.values())
    assert traces[1] < traces[0] < empirical_trace  # larger batches average more gradient away


def test_ewc_penalty_is_half_of_avalanche_at_the_same_lambda(make_cfg) -> None:
    cfg = make_cfg("method.name=ewc", "method.fisher=batched", "method.lam=3.0", "method.fisher_samples=null")
    tasks = build_tasks(cfg)
    method = build_method(cfg.method)
    model, ctx = finetune_model(cfg, tasks, method, state=None)
    method.prepare(model, ctx)

    # Avalanche's importance on the same weights and the same (sequential) pretraining batches.
    task = tasks.pretrain[0]
    x, y = task.splits["train"]
    theirs = _avalanche_importance(model, task.head, x, y, cfg.method["fisher_batch_size"])
    for name, fisher in method.fisher.items():
        torch.testing.assert_close(fisher, theirs[name], rtol=1e-5, atol=1e-8)

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ours = method.loss_terms(model, TrainStep([], [], 0))["ewc"]
    anchored = dict(model.named_parameters())
    avalanche_penalty = 3.0 * sum((theirs[n] * (anchored[n] - method.anchor[n]).pow(2)).sum() for n in method.anchor)
    torch.testing.assert_close(ours, 0.5 * avalanche_penalty, rtol=1e-5, atol=1e-10)
