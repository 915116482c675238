"""One progress display for a whole grid, readable however many workers run at once.

Every finished run prints one permanent line (its outcome, then the grid's counts, elapsed and estimated
remaining time). On a terminal a single status bar below those lines keeps the counts and the clock live; in a
log file or CI there is no bar, only the lines. Per-run progress bars are switched off inside grid runs.

The bar is drawn as soon as it is made, so whatever is printed before it (the grid's header) must be printed
before a ``GridProgress`` is made: a line printed after would land on the bar's line. A grid with nothing to
run has no bar.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from research.grid.outcome import Outcome

if TYPE_CHECKING:
    from research.grid.spec import GridRun


def clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class GridProgress:
    def __init__(self, to_run: int, workers: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.to_run = to_run
        self.workers = workers
        self.started_at = time.monotonic()
        self.running: set[str] = set()
        self.counts = {"completed": 0, "failed": 0, "skipped": 0}
        self.bar: tqdm | None = None
        if to_run and self.stream.isatty():
            self.bar = tqdm(
                total=to_run,
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
                # The status as the bar's description: tqdm puts ", " before a postfix.
                bar_format="{percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} runs | {desc}",
            )

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def remaining_seconds(self) -> float | None:
        """Elapsed time per finished run times the runs left: throughput-based, so it accounts for workers."""
        if not self.finished:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed / self.finished * (self.to_run - self.finished)

    def status(self) -> str:
        left = self.remaining_seconds()
        eta = "?" if left is None else f"~{clock(left)}"
        c = self.counts
        return (
            f"done {c['completed']}, running {len(self.running)}, failed {c['failed']}, skipped {c['skipped']}"
            f" | {clock(time.monotonic() - self.started_at)} elapsed, {eta} left"
        )

    def started(self, run: GridRun) -> None:
        # No redraw here: an executor hands out the next run before it reports the last one's end, and the
        # bar would show one run too many running meanwhile. The report (or the executor's tick) redraws.
        self.running.add(run.run_id)

    def finished_run(self, run: GridRun, outcome: Outcome) -> None:
        self.running.discard(run.run_id)
        self.counts[outcome.status] += 1
        took = f" ({outcome.seconds:.1f} s)" if outcome.seconds is not None else ""
        why = f": {outcome.reason}" if outcome.status != "completed" and outcome.reason else ""
        width = len(str(self.to_run))
        line = f"[{self.finished:{width}d}/{self.to_run}] {outcome.status:9s} {run.name}{took}{why}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            self.bar.update(1)
            self.tick()
        else:
            print(f"{line}  | {self.status()}", file=self.stream, flush=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.set_description_str(self.status(), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
