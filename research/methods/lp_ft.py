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

    In a sequence of fine-tuning tasks every task starts with its own probe: for its first ``probe_steps``
    updates (counted within the task) the backbone is frozen and in eval mode and only that task's head trains
    (with a shared head, the whole shared head, as in one task), then the task is fully fine-tuned. Each task
    is fitted with an optimizer of its own, so the optimizer state of every task starts afresh at its probe, and
    the backbone's at its switch. ``method_info.tasks`` records each task's switch (in updates within the task;
    None where the task ended during its probe), and ``switched_at_step`` the last task's.
    """

    name = "lp_ft"
    supports_sequences = True
    Config = LPFTConfig
    config: LPFTConfig
    neutral = {"probe_steps": 0}

    def __init__(self, config: LPFTConfig) -> None:
        super().__init__(config)
        self._probed: list[nn.Parameter] = []  # backbone parameters held frozen during the probe
        self._modes: dict[nn.Module, bool] = {}  # backbone submodules' train/eval flags to restore at the switch
        self.switched_at_step: int | None = None  # updates into the current task when full fine-tuning began
        self.task_switches: list[int | None] = []  # the same for every task started so far, in order
        self.task_names: list[str] = []

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        # Earlier tasks' switches are kept (a resume replays them through load_state_dict); this task's is new.
        self.task_switches = [*self.task_switches[: ctx.task_index], None]
        self.task_names = [*self.task_names[: ctx.task_index], ctx.task.name]
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
        self.task_switches[-1] = updates

    def state_dict(self) -> dict[str, Tensor]:
        """Whether (and when) the switch to full fine-tuning happened in the current task, and in every task
        before it: a resumed run re-prepares the probe and then switches again if the checkpoint was taken after
        the switch."""
        return {
            "switched_at_step": torch.tensor(-1 if self.switched_at_step is None else self.switched_at_step),
            "task_switches": torch.tensor([-1 if s is None else s for s in self.task_switches], dtype=torch.long),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "task_switches" in state:  # checkpoints written before sequences were supported lack it
            earlier = [None if s < 0 else int(s) for s in state["task_switches"].tolist()]
            self.task_switches = [*earlier[:-1], self.task_switches[-1]] if earlier else self.task_switches
        switched = int(state["switched_at_step"])
        if switched >= 0 and self.switched_at_step is None:
            self._switch(switched)

    def info(self) -> dict[str, Any]:
        # With probe_steps 0 the switch is at update 0; None: the task ended during its probe.
        switches = [0 if self.config.probe_steps == 0 else s for s in self.task_switches]
        return {
            "probe_steps": self.config.probe_steps,
            "switched_at_step": switches[-1] if switches else None,
            "tasks": [{"task": t, "switched_at_step": s} for t, s in zip(self.task_names, switches, strict=True)],
        }
