"""A frozen copy of the model that a distillation method compares the student with (LwF's old heads,
feature_distill's features), and how it travels through checkpoints."""

from __future__ import annotations

from torch import Tensor, nn

from research.methods.base import Method


class FrozenTeacher(Method):
    """Base of the methods that keep a frozen teacher, made in ``prepare`` from the model as a task starts.

    A resume loads the method's state before ``prepare`` runs: the saved teacher weights are kept until then and
    replace the fresh copy's (``freeze``), so the teacher is the saved one, not the current student."""

    teacher: nn.Module | None = None
    _pending_teacher_state: dict[str, Tensor] | None = None

    def freeze(self, teacher: nn.Module) -> nn.Module:
        """``teacher`` with any saved teacher weights loaded, in eval mode, without gradients; it becomes
        ``self.teacher``."""
        if self._pending_teacher_state is not None:
            teacher.load_state_dict(self._pending_teacher_state, strict=True)
            self._pending_teacher_state = None
        self.teacher = teacher.eval().requires_grad_(False)
        return self.teacher

    def state_dict(self) -> dict[str, Tensor]:
        assert self.teacher is not None, f"{self.name}: prepare() must run before state_dict()"
        return {f"teacher.{n}": t for n, t in self.teacher.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Loads into the teacher; before ``prepare`` the weights are kept and become the teacher there."""
        teacher_state = {n.removeprefix("teacher."): t for n, t in state.items()}
        if self.teacher is None:
            self._pending_teacher_state = teacher_state
        else:
            self.teacher.load_state_dict(teacher_state, strict=True)
