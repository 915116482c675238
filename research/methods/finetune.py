"""Full fine-tuning: the baseline every other method is measured against."""

from typing import Literal

from research.methods.base import Method, MethodConfig
from research.methods.registry import register


class FinetuneConfig(MethodConfig):
    """Plain fine-tuning has no hyperparameters of its own (learning rates live under ``train.``)."""

    name: Literal["finetune"] = "finetune"


@register
class Finetune(Method):
    """Full fine-tuning: the whole backbone and the new task's head train on the new task alone.

    Nothing is anchored; pretrained heads of other tasks are kept (frozen) only to score those tasks.
    """

    name = "finetune"
    supports_ddp = True
    Config = FinetuneConfig
    supports_sequences = True
    neutral = {}  # it is the reference itself
