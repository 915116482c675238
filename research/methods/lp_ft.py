"""LP-FT: a linear probe (backbone frozen, only the new head trains), then full fine-tuning, in one run."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from research.methods.base import FinetuneContext, Method, MethodConfig
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


class LPFTConfig(MethodConfig):
    """LP-FT's one setting: how long the linear probe lasts (Kumar et al. 2022)."""

    name: Literal["lp_ft"] = "lp_ft"
    probe_steps: int = Field(
        50,
        ge=0,
        description="optimizer updates with the backbone frozen before full fine-tuning (0 = plain fine-tuning)",
    )


@register
class LPFT(Method):
    """LP-FT: linear probing, then full fine-tuning (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
    Features and Underperform Out-of-Distribution", ICLR).

    What is frozen when, on the run's one step axis: updates 1..``probe_steps`` are the probe — the backbone's
    parameters take no gradients (so the optimizer, which skips parameters without a gradient, applies no step,
    momentum or weight decay to them) and the backbone runs in eval mode (its BatchNorm statistics and dropout
    are off, as in feature extraction); only the new head trains. From update ``probe_steps + 1`` on, everything
    the generic module left trainable trains, with the train/eval modes it had before the probe. Old heads stay
    frozen throughout. Nothing is anchored by a penalty: the pretrained features are protected only by starting
    full fine-tuning with a head already fit to them, not a random one whose large early gradients distort them.

    One optimizer serves both phases. The backbone is in it from the start (its parameter groups, learning rates
    and layer-wise decay are built as for plain fine-tuning); its optimizer state (Adam moments, SGD momentum)
    starts at the switch. The new head trains at ``train.lr`` in both phases, and its optimizer state carries
    over from the probe into full fine-tuning (Adam's step count included), as if the probe's head were the
    initialisation of a fine-tuning run that had already been going; Kumar et al. fit the probe separately
    (logistic regression) and then start fine-tuning afresh, so their fine-tuning begins with no optimizer
    state. A separate probe learning rate is not offered: the generic module owns the optimizer, and no method
    changes its rates. ``probe_steps=0`` is plain fine-tuning; a probe longer than training is feature extraction. The
    probe is counted in updates, not epochs, so it is independent of the dataset size: use
    ``probe_steps = k · steps_per_epoch`` for a k-epoch probe.
    """

    name = "lp_ft"
    Config = LPFTConfig
    config: LPFTConfig
    neutral = {"probe_steps": 0}

    def __init__(self, config: LPFTConfig) -> None:
        super().__init__(config)
        self._probed: list[nn.Parameter] = []  # backbone parameters held frozen during the probe
        self._modes: dict[nn.Module, bool] = {}  # backbone submodules' train/eval flags to restore at the switch
        self.switched_at_step: int | None = None  # updates done when full fine-tuning began

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        self.switched_at_step = None
        self._probed, self._modes = [], {}
        if self.config.probe_steps == 0:
            return
        # Only what would train under plain fine-tuning is frozen here and unfrozen at the switch; a block the
        # generic module (or a config) keeps frozen stays frozen, and keeps its eval mode.
        self._probed = [p for p in model.backbone.parameters() if p.requires_grad]
        self._modes = {m: m.training for m in model.backbone.modules()}
        for p in self._probed:
            p.requires_grad_(False)
        model.backbone.eval()

    def after_step(self, model: MultiHeadNet, step: int) -> None:
        if step + 1 == self.config.probe_steps and self.switched_at_step is None:
            self._switch(step + 1)

    def _switch(self, updates: int) -> None:
        for p in self._probed:
            p.requires_grad_(True)
        for module, training in self._modes.items():
            module.training = training
        self.switched_at_step = updates

    def state_dict(self) -> dict[str, Tensor]:
        """Whether (and when) the switch to full fine-tuning happened: a resumed run re-prepares the probe and
        then switches again if the checkpoint was taken after the switch."""
        return {"switched_at_step": torch.tensor(-1 if self.switched_at_step is None else self.switched_at_step)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        switched = int(state["switched_at_step"])
        if switched >= 0 and self.switched_at_step is None:
            self._switch(switched)

    def info(self) -> dict[str, Any]:
        return {
            "probe_steps": self.config.probe_steps,
            # None: training ended before the probe did (the whole run was a linear probe).
            "switched_at_step": 0 if self.config.probe_steps == 0 else self.switched_at_step,
        }
