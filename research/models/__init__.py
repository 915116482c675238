"""Models are a backbone (an ``nn.Sequential`` of blocks) plus named classification heads."""

from research.models.build import build_model
from research.models.multihead import MultiHeadNet

__all__ = ["MultiHeadNet", "build_model"]
