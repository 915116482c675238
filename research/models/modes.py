"""Train/eval flags: a model run in eval mode for a while, every submodule's own flag restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration (no dropout noise; BatchNorm uses and keeps its running statistics), restoring
    every submodule's own flag afterwards: frozen blocks stay in eval mode, training ones go back to training."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.training = training
