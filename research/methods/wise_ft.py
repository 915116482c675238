"""WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): after fine-tuning, ensemble the
pretrained and fine-tuned weights in weight space, θ_α = (1 − α)·θ₀ + α·θ_ft, and score every task at each α."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from research.methods.base import FinetuneContext, Method, MethodConfig
from research.methods.registry import register
from research.models.extent import earlier_part, rows_of, values_at
from research.models.multihead import MultiHeadNet


class WiSEFTConfig(MethodConfig):
    name: Literal["wise_ft"] = "wise_ft"
    alphas: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        min_length=1,
        description="mixing coefficients α (0 = pretrained, 1 = fine-tuned) at which every task is scored",
    )

    @field_validator("alphas")
    @classmethod
    def _in_unit_interval(cls, alphas: list[float]) -> list[float]:
        if any(not 0.0 <= a <= 1.0 for a in alphas):
            raise ValueError(f"every alpha must lie in [0, 1]; got {alphas}")
        return sorted(set(alphas))

    sweep: Literal["end", "every_task"] = Field(
        "end",
        description="end: one sweep after the last task; every_task: in a sequence, also one after each earlier "
        "task, between θ₀ and the weights that task ended with",
    )


@register
class WiSEFT(Method):
    """WiSE-FT: fine-tune exactly as ``finetune``, then score θ_α = (1 − α)·θ₀ + α·θ_ft at every α in ``alphas``.

    Interpolated: every parameter that exists in the pretrained model θ₀ (backbone, old heads, and a shared
    head's rows for the pretraining classes), between its pretrained value and its fine-tuned value. What was
    created for fine-tuning has no pretrained value (it starts from a random initialisation): a new per-task
    head, or the rows a shared head grew for the new classes. It keeps its fine-tuned values at every α, as when
    the paper's fine-tuned linear head sits on interpolated features, so both head layouts mean the same thing
    (α = 0 is the pretrained model plus the fine-tuned new outputs, never a random head). BatchNorm running
    statistics are interpolated like the weights. The sweep goes to ``method.parquet`` (alpha, task, role,
    metric, value, after_task, final) so the trade-off curve can be drawn; training itself is plain
    fine-tuning, so its forgetting curves are finetune's.

    In a sequence of fine-tuning tasks θ₀ stays the pretrained model, the weights before the first task (taken
    once, at the first task's start), and the sweep after the last task interpolates between θ₀ and the
    sequence's final weights θ_K: everything created during the sequence (each later task's head, every row a
    shared head grew) keeps its final value, as in one task. In domain-incremental sequences nothing is created,
    so α = 0 is the pretrained model itself. With ``sweep: every_task`` each earlier task k also gets a sweep
    between θ₀ and the weights θ_k it ended with, right after its last evaluation, over the tasks that model can
    score (``after_task`` names k; ``final`` marks the last task's sweep, the one the report draws). These are
    measurements only: training continues from θ_k, never from an interpolated model (that would be a different
    method, weight averaging along the sequence). The sweeps' wall time is fine-tuning time not spent training;
    ``method_info.sweep_seconds`` reports it.
    """

    name = "wise_ft"
    supports_ddp = True
    supports_sequences = True
    Config = WiSEFTConfig
    config: WiSEFTConfig
    neutral = {}  # training is plain fine-tuning; the sweep only adds measurements after it

    def __init__(self, config: WiSEFTConfig) -> None:
        super().__init__(config)
        self.sweep_seconds = 0.0

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        if ctx.task_index > 0:  # θ₀ is the model before the sequence, not before each task
            return
        # θ₀: the pretrained model's own parameters and rows; a shared head's grown rows are not part of it.
        self.start = {n: t.clone() for n, t in values_at(model, ctx.pretrained_rows).items()}
        # BatchNorm running statistics belong to the pretrained model too.
        self.start_buffers = {n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()}

    def end_task(
        self, model: MultiHeadNet, ctx: FinetuneContext, score: Callable[[MultiHeadNet], dict[str, dict[str, float]]]
    ) -> list[dict[str, Any]]:
        last = ctx.task_index == len(ctx.tasks.finetune) - 1
        if self.config.sweep != "every_task" or last:  # the last task's sweep is ``finish``'s
            return []
        return self._sweep(model, ctx, score, final=False)

    def finish(
        self, model: MultiHeadNet, ctx: FinetuneContext, score: Callable[[MultiHeadNet], dict[str, dict[str, float]]]
    ) -> list[dict[str, Any]]:
        return self._sweep(model, ctx, score, final=True)

    def _sweep(
        self,
        model: MultiHeadNet,
        ctx: FinetuneContext,
        score: Callable[[MultiHeadNet], dict[str, dict[str, float]]],
        final: bool,
    ) -> list[dict[str, Any]]:
        """Every task the model can score, at every α, between θ₀ and the model as it is now."""
        started = time.perf_counter()
        roles = {t.name: t.role for t in ctx.tasks.all}
        where = {"after_task": ctx.task.name, "final": final}
        rows = []
        for alpha in self.config.alphas:
            results = score(interpolate(model, self.start, self.start_buffers, alpha))
            for task, metrics in results.items():
                for metric, value in metrics.items():
                    rows.append(
                        {"alpha": alpha, "task": task, "role": roles[task], "metric": metric, "value": value, **where}
                    )
        self.sweep_seconds += time.perf_counter() - started
        return rows

    def info(self) -> dict[str, Any]:
        return {"alphas": self.config.alphas, "sweep": self.config.sweep, "sweep_seconds": self.sweep_seconds}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            **{f"start.{n}": t for n, t in self.start.items()},
            **{f"start_buffer.{n}": t for n, t in self.start_buffers.items()},
            # So that a resumed run's sweep_seconds counts the sweeps done before the kill too.
            "sweep_seconds": torch.tensor(self.sweep_seconds, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "sweep_seconds" in state:
            self.sweep_seconds = float(state["sweep_seconds"])
        self.start = {n.removeprefix("start."): t for n, t in state.items() if n.startswith("start.")}
        self.start_buffers = {
            n.removeprefix("start_buffer."): t for n, t in state.items() if n.startswith("start_buffer.")
        }


def interpolate(
    model: MultiHeadNet, start: dict[str, torch.Tensor], start_buffers: dict[str, torch.Tensor], alpha: float
) -> MultiHeadNet:
    """A copy of ``model`` with (1 − α)·start + α·current for every parameter and floating buffer in ``start``.
    A parameter that grew since ``start`` was taken (a shared head with new rows) interpolates the rows ``start``
    has and keeps the rest at their current values; parameters absent from ``start`` are kept whole."""
    mixed = copy.deepcopy(model)
    with torch.no_grad():
        tensors = {**dict(mixed.named_parameters()), **dict(mixed.named_buffers())}
        for name, initial in {**start, **start_buffers}.items():
            target = earlier_part(tensors[name], rows_of(initial))
            target.copy_((1.0 - alpha) * initial + alpha * target)
    return mixed
