"""SI (Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence"): a quadratic pull toward
the pretrained weights, each weight weighted by how much it contributed to lowering the pretraining loss along
the pretraining trajectory."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from research.methods.base import FinetuneContext, MethodConfig
from research.methods.path_integral import PathIntegral
from research.methods.penalty import ImportanceAnchor
from research.methods.registry import register
from research.models.extent import pad_rows, values_at
from research.models.multihead import MultiHeadNet


class SIConfig(MethodConfig):
    name: Literal["si"] = "si"
    lam: float = Field(1.0, ge=0, description="penalty strength c in c/2 Σ Ω_i (θ_i − θ*_i)²")
    xi: float = Field(0.1, gt=0, description="damping ξ in Ω = ω / (Δ² + ξ)")
    clip: float | None = Field(None, gt=0, description="upper bound on Ω (Avalanche clips at 0.001); None: none")


@register
class SI(ImportanceAnchor):
    """SI: c/2 Σ_i Ω_i (θ_i − θ*_i)² with Ω_i = max(ω_i, 0) / (Δ_i² + ξ).

    Anchored: the parameters that came from the pretrained model and train, at their pretrained values θ*. ω is
    the path integral −Σ_t g_i(t)·Δθ_i(t) over every pretraining update (recorded by the pretraining stage,
    research.methods.path_integral), Δ_i = θ*_i − θ_i(start of pretraining). Negative ω (noise along the
    trajectory) counts as 0 so the penalty is always a pull. Rows a shared head grew at fine-tuning get Ω = 0.

    The paper writes the penalty as c·Σ Ω (θ − θ*)²; ours carries the usual 1/2 (so c here is twice the paper's).
    Avalanche's SynapticIntelligencePlugin computes the same ω and Ω (its ``eps`` is our ξ, default 1e-7) and then
    clips Ω at 0.001, which ``clip=0.001`` reproduces (tests compare both on one trajectory). Note that on CPU
    avalanche-lib 0.6 records no trajectory at all (its saved "old" weights are views of the live parameters), so
    its SI penalty is 0 there; ξ = 0.1 follows van de Ven et al.'s continual-learning code.
    Needs the pretraining trajectory, so it cannot start from a user checkpoint (a config error says so).

    In a sequence of fine-tuning tasks the path integral goes on accumulating: during each task it is recorded
    over that task's updates with the gradient of the unregularised (data) loss, as in Zenke et al.'s code (the
    penalty's own gradient is subtracted from the total; Avalanche's plugin and van de Ven et al.'s code use the
    total gradient instead, which also credits the weights the penalty held back), and at the start of the next
    task Ω += max(ω_task, 0) / (Δ_task² + ξ) and the anchor moves to the current weights. With a shared head
    the rows grown for a task's new classes start at Ω = 0 and gain importance from the tasks that train them.
    """

    name = "si"
    supports_ddp = True
    needs_pretraining_data = True
    why_pretraining_data = "its importance is the path integral of pretraining"
    Config = SIConfig
    config: SIConfig
    neutral = {"lam": 0.0}
    records_in_pretraining = PathIntegral
    pretraining_record = "path_integral"
    supports_sequences = True
    term = "si"
    importance_name = "importance"
    _trajectory: PathIntegral | None = None

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        if ctx.task_index == 0:
            super().prepare(model, ctx)
        else:
            self._consolidate(model, ctx)
        # Record this task's trajectory only if another task follows.
        last = ctx.task_index == len(ctx.tasks.finetune) - 1
        self._trajectory = None if last else PathIntegral(model)

    def _consolidate(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        """The task just learned adds Ω += max(ω_task, 0) / (Δ_task² + ξ), and the anchor moves to the weights it
        ended with. Rows a shared head grows for this task's new classes get Ω = 0 (no history yet)."""
        assert self._trajectory is not None
        ended = values_at(model, ctx.earlier_rows)  # the weights the task ended with, before this task's growth
        params = dict(model.named_parameters())
        for name, importance in self.importance.items():
            omega, start = self._trajectory.omega[name], self._trajectory.start[name]
            gained = si_importance(omega, ended[name] - start, self.config.xi, self.config.clip)
            self.importance[name] = pad_rows(pad_rows(importance, gained.shape) + gained, params[name].shape)
        self.anchor = {n: params[n].detach().clone() for n in self.importance}

    def after_backward(self, model: MultiHeadNet, step: int) -> None:
        if self._trajectory is not None:
            # ω integrates the data loss's gradient, not the total one: Zenke et al.'s code uses the gradient of
            # the unregularised loss (``unreg_grads``). p.grad also holds this penalty's own gradient, known in
            # closed form, so it is taken out exactly.
            self._trajectory.before_step(model, exclude=self.term_gradient(model))

    def after_step(self, model: MultiHeadNet, step: int) -> None:
        if self._trajectory is not None:
            self._trajectory.after_step(model)

    def state_dict(self) -> dict[str, Tensor]:
        trajectory = self._trajectory.state_dict() if self._trajectory is not None else {}
        return {**super().state_dict(), **{f"trajectory.{n}": t for n, t in trajectory.items()}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        super().load_state_dict(state)
        saved = {n.removeprefix("trajectory."): t for n, t in state.items() if n.startswith("trajectory.")}
        if self._trajectory is not None and saved:  # the current task's path integral so far
            self._trajectory.omega, self._trajectory.start = PathIntegral.split(saved)

    def estimator(self) -> str:
        return "path_integral"

    def estimate_importance(
        self, model: MultiHeadNet, ctx: FinetuneContext, names: list[str], values: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], int]:
        record = ctx.pretrain_records.get(self.pretraining_record)
        if record is None:
            raise ValueError("si: no pretraining path integral (a model loaded from a checkpoint has none)")
        omega, start = PathIntegral.split(record)
        importance = {}
        for name in names:
            pretrained = values[name]  # the pretrained rows only; rows grown since have no history
            importance[name] = si_importance(
                omega[name].to(pretrained.device),
                pretrained - start[name].to(pretrained.device),
                self.config.xi,
                self.config.clip,
            )
        return importance, 0


def si_importance(omega: Tensor, displacement: Tensor, xi: float, clip: float | None = None) -> Tensor:
    """Ω = max(ω, 0) / (Δ² + ξ), optionally clipped from above."""
    importance = omega.clamp(min=0) / (displacement.pow(2) + xi)
    return importance.clamp(max=clip) if clip is not None else importance
