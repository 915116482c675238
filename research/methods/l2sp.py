"""L2-SP (Li, Grandvalet & Davoine 2018, "Explicit inductive bias for transfer learning with convolutional
networks"): an L2 pull of the pretrained weights toward their starting point."""

from typing import Literal

from pydantic import Field
from torch import Tensor

from research.methods.base import FinetuneContext, Method, MethodConfig, TrainStep
from research.methods.penalty import quadratic_penalty, snapshot
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


class L2SPConfig(MethodConfig):
    name: Literal["l2sp"] = "l2sp"
    alpha: float = Field(0.1, ge=0, description="strength of the pull toward the pretrained weights w⁰")
    beta: float = Field(0.01, ge=0, description="plain L2 on the new head's weights")


@register
class L2SP(Method):
    """L2-SP: Ω(w) = α/2 ‖w_S − w⁰_S‖² + β/2 ‖w_new‖².

    Anchored: every parameter that came from the pretrained model (backbone, and the shared head when heads
    are shared) to its pretrained value w⁰. The new head is pulled toward zero with β. Logged as
    ``train_loss_l2sp`` (the α part) and ``train_loss_l2_new_head`` (the β part).
    """

    name = "l2sp"
    Config = L2SPConfig
    neutral = {"alpha": 0.0, "beta": 0.0}
    config: L2SPConfig

    supports_sequences = True

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.new_names = [n for n in ctx.new_names if n in trainable]
        if ctx.task_index == 0:  # in a sequence the starting point stays the pretrained model
            self.anchor = snapshot(model, [n for n in ctx.pretrained_names if n in trainable])

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        terms = {"l2sp": 0.5 * self.config.alpha * quadratic_penalty(params, self.anchor)}
        if self.config.beta > 0 and self.new_names:
            zeros = {n: params[n].new_zeros(()) for n in self.new_names}
            terms["l2_new_head"] = 0.5 * self.config.beta * quadratic_penalty(params, zeros)
        return terms

    def state_dict(self) -> dict[str, Tensor]:
        return {f"anchor.{n}": t for n, t in self.anchor.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.anchor = {n.removeprefix("anchor."): t for n, t in state.items()}
