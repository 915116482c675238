"""What became of one grid run, and the interface every executor implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from research.grid.spec import GridRun


STATUSES = ("completed", "failed", "skipped")


@dataclass(frozen=True)
class Outcome:
    status: str  # completed | failed | skipped
    reason: str | None = None  # why it failed or was skipped
    seconds: float | None = None  # wall time of the attempt, where one was made


class Executor(Protocol):
    """Runs grid runs somewhere and reports each one's start and outcome as they happen. With ``force`` each run
    starts over even when it is completed (``research.training.run.run(cfg, force=True)``); the grid passes it
    only when it is true, and refuses ``--force`` on an executor whose ``execute`` does not take it."""

    def execute(
        self,
        runs: list[GridRun],
        on_start: Callable[[GridRun], None],
        on_finish: Callable[[GridRun, Outcome], None],
        on_tick: Callable[[], None],
        force: bool = False,
    ) -> None: ...


def record_abandoned(run: GridRun, reason: str) -> None:
    """A run whose process died before it could say so itself: mark its directory failed with ``reason``."""
    from research.training.run import mark_abandoned

    mark_abandoned(Path(run.config.out), run.run_id, reason)
