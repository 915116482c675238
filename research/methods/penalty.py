"""The one quadratic penalty shared by every weight-anchoring regularizer (EWC, L2-SP, and later online
EWC, SI and MAS), so that their forms cannot drift apart.

    quadratic_penalty(θ, θ*, Ω) = Σ_i Ω_i (θ_i − θ*_i)²

Callers multiply by their own strength and the conventional 1/2 (EWC: λ/2; L2-SP: α/2), which makes the
gradient of the term ``strength · Ω · (θ − θ*)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


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
