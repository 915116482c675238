"""The one quadratic penalty shared by every weight-anchoring regularizer (EWC, online EWC, L2-SP, SI and MAS),
so that their forms cannot drift apart.

    quadratic_penalty(θ, θ*, Ω) = Σ_i Ω_i (θ_i − θ*_i)²

Callers multiply by their own strength and the conventional 1/2 (EWC: λ/2; L2-SP: α/2), which makes the
gradient of the term ``strength · Ω · (θ − θ*)``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from research.methods.base import FinetuneContext, Method, TrainStep
from research.models.extent import pad_rows, values_at
from research.models.multihead import MultiHeadNet


def quadratic_penalty(
    params: Mapping[str, Tensor],
    anchors: Mapping[str, Tensor],
    importance: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Σ over the anchored parameters of importance · (param − anchor)²; importance 1 when omitted.

    Only names present in ``anchors`` are penalised. Returns a 0-dim tensor on the parameters' device.
    """
    total: Tensor | None = None
    for name, anchor in anchors.items():
        diff = params[name] - anchor
        term = (diff * diff * importance[name]).sum() if importance is not None else (diff * diff).sum()
        total = term if total is None else total + term
    if total is None:
        first = next(iter(params.values()))
        return torch.zeros((), device=first.device, dtype=first.dtype)
    return total


def snapshot(module: nn.Module, names: list[str] | None = None) -> dict[str, Tensor]:
    """Detached copies of a module's parameters (all, or those named), e.g. the pretrained anchor θ₀."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if names is None or name in names}


class ImportanceAnchor(Method):
    """Base of the methods that add λ/2 Σ_i Ω_i (θ_i − θ*_i)² (EWC, online EWC, MAS, SI).

    Anchored: every parameter that trains and existed before the current task (``FinetuneContext.earlier_rows``:
    the pretrained model's parameters for the first or only task), at its value θ* then. Ω comes from
    ``estimate_importance``, which evaluates the model as it stood before the current task grew it
    (``research.models.extent.values_at``): a shared head keeps only the outputs it had, so a Fisher's softmax or
    MAS's output norm is the pretrained model's own, not one that includes the new classes' random outputs. Rows
    a shared head grew for new classes then get Ω = 0: they had no earlier value to keep, exactly as a new
    per-task head is not anchored at all. This is the one place that decides this for every importance-based
    method. A subclass names the term, what its importance is called in state dicts and summaries
    (``importance_name``), where its λ and estimator live, and how a new estimate joins the old one
    (``accumulate``; replaced by default).
    """

    term: ClassVar[str]
    importance_name: ClassVar[str]
    importance: dict[str, Tensor]
    anchor: dict[str, Tensor]

    def strength(self) -> float:
        return self.config.lam  # type: ignore[attr-defined]

    def estimator(self) -> str:
        raise NotImplementedError

    def estimate_importance(
        self, model: MultiHeadNet, ctx: FinetuneContext, names: list[str], values: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], int]:
        """The importance of each named parameter at ``values`` (every earlier parameter, cut to its earlier
        rows), shaped like those values, and how many examples it was estimated from."""
        raise NotImplementedError

    def accumulate(self, new: dict[str, Tensor]) -> dict[str, Tensor]:
        """The importance to use from now on, given this task's estimate ``new`` (full-size, grown rows 0)."""
        return new

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        params = dict(model.named_parameters())
        names = [n for n, p in params.items() if p.requires_grad and ctx.earlier_rows.get(n, 0) > 0]
        started = time.perf_counter()
        estimate, self._examples = self.estimate_importance(model, ctx, names, values_at(model, ctx.earlier_rows))
        self.importance = self.accumulate({n: pad_rows(estimate[n], params[n].shape) for n in names})
        self.anchor = snapshot(model, names)
        self._seconds = time.perf_counter() - started

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        return {self.term: 0.5 * self.strength() * quadratic_penalty(params, self.anchor, self.importance)}

    @torch.no_grad()
    def term_gradient(self, model: MultiHeadNet) -> dict[str, Tensor]:
        """The gradient of this method's own term at the current weights, λ · Ω · (θ − θ*), per anchored
        parameter: what separates the regularised gradient in ``p.grad`` from the data loss's."""
        params = dict(model.named_parameters())
        return {n: self.strength() * self.importance[n] * (params[n] - a) for n, a in self.anchor.items()}

    def info(self) -> dict[str, Any]:
        label = self.importance_name
        return {
            f"{label}_estimator": self.estimator(),
            f"{label}_trace": float(sum(t.sum() for t in self.importance.values())),
            f"{label}_seconds": self._seconds,
            f"{label}_examples": self._examples,
        }

    def state_dict(self) -> dict[str, Tensor]:
        label = self.importance_name
        return {
            **{f"anchor.{n}": t for n, t in self.anchor.items()},
            **{f"{label}.{n}": t for n, t in self.importance.items()},
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        prefix = f"{self.importance_name}."
        self.anchor = {n.removeprefix("anchor."): t for n, t in state.items() if n.startswith("anchor.")}
        self.importance = {n.removeprefix(prefix): t for n, t in state.items() if n.startswith(prefix)}
