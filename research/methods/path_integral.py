"""The path integral of Synaptic Intelligence (Zenke, Poole & Ganguli 2017), tracked along an optimizer's
trajectory: ω_i = −Σ_t g_i(t) · Δθ_i(t), with g(t) the gradient the optimizer used at update t and Δθ(t) the
change that update made. The pretraining stage records it for every run, so that SI can anchor to what
pretraining found important (a user checkpoint carries no trajectory, so SI cannot run from one)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PathIntegral:
    def __init__(self, model: nn.Module) -> None:
        self.start = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.omega = {n: torch.zeros_like(p) for n, p in self.start.items()}
        self._before: dict[str, Tensor] = {}

    @torch.no_grad()
    def before_step(self, model: nn.Module) -> None:
        self._before = {n: p.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self._before:
                self.omega[name] -= p.grad * (p - self._before[name])
        self._before = {}

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"omega.{n}": t for n, t in self.omega.items()}, **{f"start.{n}": t for n, t in self.start.items()}}

    @staticmethod
    def split(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(ω, θ at the start of the trajectory) from a saved state dict."""
        omega = {n.removeprefix("omega."): t for n, t in state.items() if n.startswith("omega.")}
        start = {n.removeprefix("start."): t for n, t in state.items() if n.startswith("start.")}
        return omega, start
