"""L2-SP (Li, Grandvalet & Davoine 2018, "Explicit inductive bias for transfer learning with convolutional
networks"): an L2 pull of the pretrained weights toward their starting point."""

from typing import Literal

from pydantic import Field
from torch import Tensor

from research.methods.base import FinetuneContext, Method, MethodConfig, TrainStep
from research.methods.penalty import quadratic_penalty
from research.methods.registry import register
from research.models.extent import earlier_part, grown_part, has_grown, rows_of
from research.models.multihead import MultiHeadNet


class L2SPConfig(MethodConfig):
    name: Literal["l2sp"] = "l2sp"
    alpha: float = Field(0.1, ge=0, description="strength of the pull toward the pretrained weights w⁰")
    beta: float = Field(
        0.01, ge=0, description="plain L2 on the weights the pretrained model did not have (new head or new rows)"
    )


@register
class L2SP(Method):
    """L2-SP: Ω(w) = α/2 ‖w_S − w⁰_S‖² + β/2 ‖w_S̄‖² (Li et al. 2018, eq. 3).

    w_S is what the pretrained model had: the backbone, old heads, and with a shared head the rows of the
    pretraining classes, each pulled toward its pretrained value w⁰ with α. w_S̄ is what fine-tuning created:
    a new per-task head, or the rows a shared head grew for new classes (in a sequence, every row of a class the
    pretrained model did not know), pulled toward zero with β, whichever the head layout. In a sequence the
    starting point stays the pretrained model. Logged as ``train_loss_l2sp`` (the α part) and
    ``train_loss_l2_new_head`` (the β part).
    """

    name = "l2sp"
    supports_ddp = True
    Config = L2SPConfig
    neutral = {"alpha": 0.0, "beta": 0.0}
    config: L2SPConfig

    supports_sequences = True

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        pretrained = ctx.pretrained_rows
        # w_S̄ of what trains now, as the row from which each parameter is new (0: all of it).
        self.new_from = {
            n: pretrained.get(n, 0) for n, p in trainable.items() if n not in pretrained or has_grown(p, pretrained[n])
        }
        if ctx.task_index == 0:  # in a sequence the starting point stays the pretrained model
            self.anchor = {
                n: earlier_part(p.detach(), pretrained[n]).clone() for n, p in trainable.items() if n in pretrained
            }

    def loss_terms(self, model: MultiHeadNet, step: TrainStep) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        source = {n: earlier_part(params[n], rows_of(a)) for n, a in self.anchor.items()}
        terms = {"l2sp": 0.5 * self.config.alpha * quadratic_penalty(source, self.anchor)}
        if self.config.beta > 0 and self.new_from:
            new = {n: grown_part(params[n], rows) for n, rows in self.new_from.items()}
            zeros = {n: t.new_zeros(()) for n, t in new.items()}
            terms["l2_new_head"] = 0.5 * self.config.beta * quadratic_penalty(new, zeros)
        return terms

    def state_dict(self) -> dict[str, Tensor]:
        return {f"anchor.{n}": t for n, t in self.anchor.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.anchor = {n.removeprefix("anchor."): t for n, t in state.items()}
