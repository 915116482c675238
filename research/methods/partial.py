"""Partial fine-tuning: only the top k backbone blocks (and the new head) train."""

from typing import Literal

from pydantic import Field

from research.errors import ConfigError
from research.methods.base import FinetuneContext, Method, MethodConfig
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


class PartialConfig(MethodConfig):
    name: Literal["partial"] = "partial"
    unfreeze_top_k: int = Field(1, ge=0, description="number of top backbone blocks that train")


@register
class Partial(Method):
    """Partial unfreezing: the top ``unfreeze_top_k`` backbone blocks and the new head train; lower blocks stay
    at their pretrained values and in eval mode (Yosinski et al. 2014, "How transferable are features").

    ``unfreeze_top_k=0`` is feature extraction; ``unfreeze_top_k`` = number of blocks is full fine-tuning.
    """

    name = "partial"
    supports_ddp = True
    Config = PartialConfig
    supports_sequences = True
    why_no_neutral = "the number of blocks that makes it full fine-tuning depends on the model"
    config: PartialConfig

    def configure_trainable(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        blocks = model.blocks()
        k = self.config.unfreeze_top_k
        if k > len(blocks):
            raise ConfigError(
                f"method.unfreeze_top_k: {k} exceeds the backbone's {len(blocks)} blocks; valid range 0..{len(blocks)}"
            )
        for block in blocks[: len(blocks) - k]:
            block.requires_grad_(False)
