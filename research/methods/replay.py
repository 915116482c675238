"""Experience replay (Ratcliff 1990; Rolnick et al. 2019, "Experience replay for continual learning"): a small
buffer of pretraining examples mixed into every fine-tuning step."""

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from research.data.inputs import Inputs, take
from research.methods.base import FinetuneContext, HeadBatch, Method, MethodConfig, split_by_head
from research.methods.memory import PretrainMemory
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


class ReplayConfig(MethodConfig):
    name: Literal["replay"] = "replay"
    buffer_size: int = Field(200, gt=0, description="pretraining examples kept in the buffer")
    selection: Literal["reservoir", "class_balanced"] = Field(
        "reservoir", description="how the buffer is filled from the pretraining data"
    )
    ratio: float = Field(0.5, ge=0, lt=1, description="share of each training step's examples drawn from the buffer")


@register
class Replay(Method):
    """Replay: every step trains on the new task's batch plus buffer examples, so that replayed examples make up
    ``ratio`` of the mixed batch (a new batch of B gets round(B·ratio/(1−ratio)) replayed examples, drawn
    uniformly without replacement, or with replacement when the buffer holds fewer). The task loss is the mean
    over the mixed batch, each replayed example scored by its own task's head. The buffer is filled once from the
    pretraining tasks' training data, by reservoir sampling (Vitter 1985) over a seeded random stream or
    class-balanced (equal counts per class). In a sequence of fine-tuning tasks, each task joins the buffer when
    it has been learned (from the buffer and that task's data only; see ``PretrainMemory.absorb``).
    """

    name = "replay"
    supports_ddp = True
    needs_pretraining_data = True
    why_pretraining_data = "its buffer holds pretraining examples"
    Config = ReplayConfig
    neutral = {"ratio": 0.0}
    config: ReplayConfig

    supports_sequences = True

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        if ctx.task_index == 0:
            self.memory = PretrainMemory.fill(ctx, self.config.buffer_size, self.config.selection)
            self.seen = sum(len(t.splits["train"][1]) for t in ctx.tasks.pretrain)
            self.generator = torch.Generator().manual_seed(ctx.seed + 1)  # one draw stream for the whole run
        else:  # in a sequence: the task just learned joins the buffer
            learned = ctx.tasks.finetune[ctx.task_index - 1]
            generator = torch.Generator().manual_seed(ctx.seed + 1000 + ctx.task_index)
            self.memory = self.memory.absorb(
                learned, self.config.buffer_size, self.config.selection, self.seen, generator
            )
            self.seen += len(learned.splits["train"][1])

    # The buffer, by the names the tests and summaries use.
    @property
    def heads(self) -> list[str]:
        return self.memory.heads

    @property
    def buffer_x(self) -> Inputs:
        return self.memory.x

    @property
    def buffer_y(self) -> Tensor:
        return self.memory.y

    @property
    def buffer_head(self) -> Tensor:
        return self.memory.head

    def replay_count(self, batch_size: int) -> int:
        ratio = self.config.ratio
        return round(batch_size * ratio / (1 - ratio))

    def extra_batches(self, batch_size: int) -> list[HeadBatch]:
        count = self.replay_count(batch_size)
        if count == 0:
            return []
        if count <= len(self.buffer_y):
            idx = torch.randperm(len(self.buffer_y), generator=self.generator)[:count]
        else:  # a buffer smaller than the replay share: draw with replacement so the ratio still holds
            idx = torch.randint(0, len(self.buffer_y), (count,), generator=self.generator)
        idx = idx.to(self.buffer_y.device)
        return split_by_head(self.heads, take(self.buffer_x, idx), self.buffer_y[idx], self.buffer_head[idx], "replay")

    def info(self) -> dict[str, Any]:
        classes = torch.unique(self.buffer_head * 10_000 + self.buffer_y, return_counts=True)[1]
        return {
            "buffer_size": len(self.buffer_y),
            "buffer_classes": len(classes),
            "buffer_min_per_class": int(classes.min()),
            "buffer_max_per_class": int(classes.max()),
        }

    def state_dict(self) -> dict[str, Tensor]:
        return {**self.memory.state_dict("buffer"), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.memory = PretrainMemory.from_state(self.memory.heads, state, "buffer")  # heads come from prepare
        self.generator.set_state(state["generator"])  # the draws go on where they were
