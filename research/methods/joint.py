"""Joint (multi-task) training, the usual upper bound of continual learning (Caruana 1997, "Multitask
learning"; van de Ven, Tuytelaars & Tolias 2022, "Three types of incremental learning"): fine-tune on the new
task's data together with all of the earlier tasks' data (the pretraining tasks and, in a sequence, every
fine-tuning task learned before)."""

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from research.data.inputs import concat, take, to_device
from research.methods.base import FinetuneContext, HeadBatch, Method, MethodConfig, split_by_head
from research.methods.registry import register
from research.models.multihead import MultiHeadNet


class JointConfig(MethodConfig):
    name: Literal["joint"] = "joint"
    old_data_ratio: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="share of each step's examples drawn from the earlier tasks' data; "
        "None = in proportion to the data sizes (every example seen about equally often)",
    )


@register
class Joint(Method):
    """Joint training: every step trains on the new task's batch plus examples from ALL of the earlier tasks'
    training splits (no buffer), each scored by its own task's head, with the earlier heads trainable, so that
    the backbone and every head are fitted to all tasks at once (Caruana 1997; van de Ven et al. 2022 use it as
    the upper bound). Nothing is anchored: this is the reference that anti-forgetting methods approximate.

    In a sequence it is the cumulative upper bound: while fine-tuning task k, the earlier tasks are the
    pretraining tasks and fine-tuning tasks 1..k−1 (their full training splits, not a memory), and their heads
    train too; with a shared head every example is scored over the outputs that exist while task k trains.

    A new batch of B gets round(B·N_old/N_new) earlier-task examples, so that over one epoch of the new task
    each earlier example is seen about as often as each new example; ``old_data_ratio`` r instead makes
    them round(B·r/(1−r)), a share r of the mixed batch as in replay. They come from one seeded stream over the
    concatenated earlier data (rebuilt at each task's start), without replacement: a random permutation,
    reshuffled once it is used up, so every example is drawn once per pass before any repeats. The task loss is
    the mean over the mixed batch. With ``old_data_ratio=0`` nothing is mixed in and the old heads stay frozen:
    plain fine-tuning.
    """

    name = "joint"
    supports_ddp = True
    supports_sequences = True
    needs_pretraining_data = True
    why_pretraining_data = "it trains on the pretraining data alongside the new task"
    Config = JointConfig
    neutral = {"old_data_ratio": 0.0}
    config: JointConfig

    def configure_trainable(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        if self.config.old_data_ratio == 0:
            return  # no old data: nothing to train the old heads on
        for task in ctx.tasks.learned_before(ctx.task_index):
            model.heads[task.head].requires_grad_(True)

    def prepare(self, model: MultiHeadNet, ctx: FinetuneContext) -> None:
        earlier = ctx.tasks.learned_before(ctx.task_index)
        self.old_tasks = [t.name for t in earlier]
        pools = [(t.head, *t.splits["train"]) for t in earlier]
        self.heads = list(dict.fromkeys(h for h, _, _ in pools))
        self.x = to_device(concat([x for _, x, _ in pools]), ctx.device)
        self.y = torch.cat([y for _, _, y in pools]).to(ctx.device)
        self.head = torch.cat([torch.full((len(y),), self.heads.index(h), dtype=torch.long) for h, _, y in pools]).to(
            ctx.device
        )
        self.n_old = len(self.y)
        self.n_new = len(ctx.task.splits["train"][1])
        self.batch_size = ctx.batch_size
        # Task 0 keeps the single-task stream's seed; each later task draws from a stream of its own.
        self.generator = torch.Generator().manual_seed(ctx.seed + 2 + 1000 * ctx.task_index)
        self.order = torch.randperm(self.n_old, generator=self.generator)
        self.position = 0  # next unread place in ``order``
        self.passes = 0  # completed passes over the earlier tasks' data
        self.drawn = 0

    def old_count(self, batch_size: int) -> int:
        """Pretraining examples mixed into a step whose new batch holds ``batch_size`` examples."""
        ratio = self.config.old_data_ratio
        if ratio is None:
            return round(batch_size * self.n_old / self.n_new)
        return round(batch_size * ratio / (1 - ratio))

    def draw(self, count: int) -> Tensor:
        """The next ``count`` indices of the stream; a new permutation starts whenever the current one is used up."""
        chunks = []
        while count > 0:
            if self.position == self.n_old:
                self.order = torch.randperm(self.n_old, generator=self.generator)
                self.position = 0
                self.passes += 1
            n = min(count, self.n_old - self.position)
            chunks.append(self.order[self.position : self.position + n])
            self.position += n
            self.drawn += n
            count -= n
        return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)

    def extra_batches(self, batch_size: int) -> list[HeadBatch]:
        count = self.old_count(batch_size)
        if count == 0:
            return []
        idx = self.draw(count).to(self.y.device)
        x = to_device(take(self.x, idx), self.y.device)  # examples read from disk arrive on the CPU
        return split_by_head(self.heads, x, self.y[idx], self.head[idx], "joint")

    def info(self) -> dict[str, Any]:
        full, rest = divmod(self.n_new, self.batch_size)
        per_epoch = full * self.old_count(self.batch_size) + self.old_count(rest)  # the last batch may be short
        return {
            "old_per_step": self.old_count(self.batch_size),  # for a full new batch
            "old_tasks": self.old_tasks,  # while the last fine-tuning task trained
            "n_old": self.n_old,
            "n_new": self.n_new,
            "old_passes_per_new_epoch": per_epoch / self.n_old,
            "old_examples_drawn": self.drawn,
            "old_passes": self.drawn / self.n_old,
        }

    def state_dict(self) -> dict[str, Tensor]:
        """Where the stream stands (the data itself comes from the tasks), so a resumed run draws the same."""
        return {
            "order": self.order,
            "position": torch.tensor(self.position),
            "passes": torch.tensor(self.passes),
            "drawn": torch.tensor(self.drawn),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.order = state["order"].clone()
        self.position, self.passes, self.drawn = (int(state[k]) for k in ("position", "passes", "drawn"))
        self.generator.set_state(state["generator"].clone())
