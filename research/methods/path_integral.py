"""The path integral of Synaptic Intelligence (Zenke, Poole & Ganguli 2017), tracked along an optimizer's
trajectory: ω_i = −Σ_t g_i(t) · Δθ_i(t), with g(t) the gradient of the data loss at update t (the gradient the
optimizer used, less any penalty's own gradient, as in Zenke et al.'s code) and Δθ(t) the change that update
made. The pretraining stage records it for every run, so that SI can anchor to what pretraining found important
(a user checkpoint carries no trajectory, so SI cannot run from one)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PathIntegral:
    """ω and θ at the start of the trajectory, per parameter, kept on each parameter's device (``to`` moves them
    with the model: the pretraining stage builds this before Lightning moves the model to its device)."""

    def __init__(self, model: nn.Module) -> None:
        self.start = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.omega = {n: torch.zeros_like(p) for n, p in self.start.items()}
        self._before: dict[str, Tensor] = {}
        self._exclude: dict[str, Tensor] = {}

    def to(self, device: torch.device) -> PathIntegral:
        self.start = {n: t.to(device) for n, t in self.start.items()}
        self.omega = {n: t.to(device) for n, t in self.omega.items()}
        return self

    @torch.no_grad()
    def before_step(self, model: nn.Module, exclude: dict[str, Tensor] | None = None) -> None:
        """Called with this step's gradients in ``p.grad``, before the update. ``exclude``: parts of ``p.grad``
        that are not the data loss's gradient (a penalty's own), left out of ω."""
        self._before = {n: p.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        self._exclude = exclude or {}

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self._before:
                gradient = p.grad - self._exclude[name] if name in self._exclude else p.grad
                self.omega[name] -= gradient * (p - self._before[name])
        self._before, self._exclude = {}, {}

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"omega.{n}": t for n, t in self.omega.items()}, **{f"start.{n}": t for n, t in self.start.items()}}

    @staticmethod
    def split(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(ω, θ at the start of the trajectory) from a saved state dict."""
        omega = {n.removeprefix("omega."): t for n, t in state.items() if n.startswith("omega.")}
        start = {n.removeprefix("start."): t for n, t in state.items() if n.startswith("start.")}
        return omega, start
