"""Feature extraction (linear probing): the pretrained backbone is frozen, only the new head trains."""

from typing import Literal

from research.methods.base import FinetuneContext, Method, MethodConfig
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


class FeatureExtractionConfig(MethodConfig):
    name: Literal["feature_extraction"] = "feature_extraction"


@register
class FeatureExtraction(Method):
    """Feature extraction: backbone frozen (and kept in eval mode), only the new head trains.

    With per-task heads the pretraining tasks' predictions cannot change at all: their backbone and heads are
    both fixed. A classic transfer baseline (e.g. Donahue et al. 2014, DeCAF; Kumar et al. 2022 as "linear
    probing").
    """

    name = "feature_extraction"
    supports_ddp = True
    Config = FeatureExtractionConfig
    supports_sequences = True
    why_no_neutral = "freezing the backbone is the method itself"

    def configure_trainable(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        model.backbone.requires_grad_(False)
