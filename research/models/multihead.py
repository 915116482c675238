"""Backbone + named heads: the one model shape every method works with."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from research.data.inputs import Inputs
from research.models.adapters.base import block_names_of, blocks_of


class MultiHeadNet(nn.Module):
    """A backbone of blocks followed by one linear head per name.

    The backbone maps a batch of inputs (a tensor, or a mapping of tensors such as a tokenizer's output) to
    features; its "blocks" (``blocks()``, bottom to top; research.models.adapters) are what partial unfreezing and
    layer-wise learning rates count from the top. Heads live in a ``ModuleDict`` keyed by head name: one per task
    for the per-task layout, or a single ``"shared"`` head over all classes.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.heads = nn.ModuleDict()

    def add_head(self, name: str, num_outputs: int, generator: torch.Generator | None = None) -> nn.Linear:
        """Append a freshly initialised head. ``generator`` makes the initialisation independent of global RNG."""
        if name in self.heads:
            raise ValueError(f"head '{name}' already exists")
        if generator is None:
            head = nn.Linear(self.feature_dim, num_outputs)
        else:
            # Built on the meta device so that nn.Linear's own initialisation draws nothing from global RNG.
            first = next(self.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
            head = nn.Linear(self.feature_dim, num_outputs, device="meta").to_empty(device=device)
            weight, bias = self._seeded_rows(num_outputs, generator)
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
        self.heads[name] = head
        return head

    def _seeded_rows(self, num_outputs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A head's initial weight and bias drawn from ``generator`` on the CPU (a CPU generator cannot fill a
        tensor on another device): nn.Linear's default distribution, Kaiming-uniform with bound 1/sqrt(fan_in),
        weight first, then bias."""
        bound = 1.0 / self.feature_dim**0.5
        weight = torch.empty(num_outputs, self.feature_dim).uniform_(-bound, bound, generator=generator)
        bias = torch.empty(num_outputs).uniform_(-bound, bound, generator=generator)
        return weight, bias

    def resize_head(self, name: str, num_outputs: int, generator: torch.Generator) -> None:
        """Give a head ``num_outputs`` outputs in place: its weight and bias stay the same Parameter objects, so
        an optimizer built on them keeps working. Appended rows (a shared head meeting new classes) are drawn as
        a new head's would be, from ``generator`` (on the CPU, then moved to the head's device); existing rows
        keep their values, so the classes the head knew score as before. Shrinking drops the last rows; only a
        resumed run does that, when it replays earlier tasks before loading the weights they started from."""
        head = self.heads[name]
        old = head.out_features
        if num_outputs == old:
            return
        weight, bias = head.weight.detach(), head.bias.detach()
        if num_outputs < old:
            weight, bias = weight[:num_outputs].clone(), bias[:num_outputs].clone()
        else:
            # The rows a whole new head of this size would get from the same generator, beyond the existing ones.
            fresh_weight, fresh_bias = self._seeded_rows(num_outputs, generator)
            weight = torch.cat([weight, fresh_weight[old:].to(weight)])
            bias = torch.cat([bias, fresh_bias[old:].to(bias)])
        head.weight.data, head.bias.data = weight, bias
        head.out_features = num_outputs

    def features(self, x: Inputs) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Inputs, head: str) -> Tensor:
        return self.heads[head](self.backbone(x))

    def blocks(self) -> list[nn.Module]:
        """The backbone's blocks, bottom to top."""
        return blocks_of(self.backbone)

    def block_names(self) -> list[str]:
        return block_names_of(self.backbone)

    def parameter_blocks(self) -> dict[str, str]:
        """Each parameter's block: ``backbone.<block name>`` (``backbone.0``, ``backbone.layer_3``) or
        ``heads.<head>``, the units weight drift is reported in."""
        owner = {
            id(p): f"backbone.{name}"
            for name, b in zip(self.block_names(), self.blocks(), strict=True)
            for p in b.parameters()
        }
        return {n: owner.get(id(p), ".".join(n.split(".")[:2])) for n, p in self.named_parameters()}

    def head_sizes(self) -> dict[str, int]:
        return {name: module.out_features for name, module in self.heads.items()}
