"""The local executor: N long-lived worker processes, each running one grid run at a time.

Workers are real processes started with ``spawn`` (a clean interpreter, no inherited torch state). Each imports
torch, Lightning and W&B once and then runs many runs, so the import cost (several seconds) is paid once per
worker, not once per run. Their output goes to one log file per worker, which keeps the grid's own progress
display readable.

A run that fails is reported and the worker takes the next one. A worker that dies (killed, out of memory)
is noticed through its process sentinel; its run is marked failed with the signal in its ``summary.json``
(unless it got that far itself), and a fresh worker takes its place.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from research.config import resolved
from research.grid.outcome import Outcome, record_abandoned

if TYPE_CHECKING:
    from research.grid.spec import GridRun

SHUTDOWN_GRACE_SECONDS = 15.0


def default_threads(workers: int) -> int:
    """A worker's default threads (OpenMP's, and torch's between runs): the cores shared out, since more threads
    than cores makes small models crawl. Each run sets torch's own to its ``threads`` while it works
    (research.training.trainer.cpu_threads), so no run's numbers depend on this."""
    return max(1, (os.cpu_count() or 1) // workers)


class LocalExecutor:
    """``start()`` spawns the workers; the CLI calls it only once the grid has passed its checks, so that a
    refused grid starts no process. A started worker writes nothing until it gets its first run.
    ``close()`` (or leaving the ``with`` block) stops workers that never got one."""

    def __init__(self, workers: int, log_dir: Path | None = None, threads: int | None = None) -> None:
        self.workers = workers
        self.log_dir = log_dir
        self.threads = threads or default_threads(workers)
        self._spawned = 0
        self._started: list[_Worker] = []

    def start(self) -> None:
        while len(self._started) < self.workers:
            self._started.append(self._spawn())

    def close(self) -> None:
        """Stop started workers that never got a run (e.g. the grid was invalid); they have written nothing."""
        for worker in self._started:
            worker.close()
        self._started = []

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(
        self,
        runs: list[GridRun],
        on_start: Callable[[GridRun], None],
        on_finish: Callable[[GridRun, Outcome], None],
        on_tick: Callable[[], None],
        force: bool = False,
    ) -> None:
        """Run ``runs`` on the workers; ``force``: start each over even when it is completed."""
        # (run, wait): the first attempt does not wait for a run another process holds; it goes to the back
        # of the queue and is retried, waiting, once everything else has been handed out.
        if self.log_dir is None:
            raise ValueError("LocalExecutor.log_dir must be set before execute()")
        queue: deque[tuple[GridRun, bool]] = deque((run, False) for run in runs)
        idle, self._started = self._started, []
        busy: dict[_Worker, tuple[GridRun, bool]] = {}
        failed_starts = 0
        try:
            while queue or busy:
                handles = [w.conn for w in busy] + [w.process.sentinel for w in busy]
                ready = set(wait(handles, timeout=1.0)) if handles else set()
                finished: list[tuple[GridRun, Outcome]] = []
                for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
                    result = worker.drain()
                    if result is None and worker.process.is_alive():
                        continue  # only "ready" or "started" so far
                    run, wait_for_lock = busy.pop(worker)
                    if result is None and not worker.started_run:
                        # Died before it took the run (e.g. failed to start): the run goes back to the queue.
                        failed_starts += 1
                        worker.close()
                        queue.appendleft((run, wait_for_lock))
                    elif result is None:  # died during the run
                        reason = worker.death_reason()
                        worker.close()
                        record_abandoned(run, reason)
                        finished.append((run, Outcome("failed", reason)))
                    elif result["status"] == "busy":
                        idle.append(worker)
                        queue.append((run, True))
                    else:
                        idle.append(worker)
                        finished.append((run, Outcome(result["status"], result["reason"], result["seconds"])))
                if failed_starts > self.workers + 2:
                    reason = f"worker processes failed to start {failed_starts} times (their error is printed above)"
                    finished.extend((run, Outcome("failed", reason)) for run, _ in queue)
                    queue.clear()
                # Hand out the next runs before reporting, so the display's "running" count is current.
                while queue and (idle or len(busy) < self.workers):
                    worker = idle.pop() if idle else self._spawn()
                    if not worker.process.is_alive():  # died while idle; never counts against a run
                        failed_starts += not worker.ready
                        worker.close()
                        continue
                    run, wait_for_lock = queue.popleft()
                    worker.send_run(resolved(run.config), wait_for_lock, self.log_dir, force)
                    busy[worker] = (run, wait_for_lock)
                    on_start(run)
                for run, outcome in finished:
                    on_finish(run, outcome)
                on_tick()
        finally:
            self._shutdown(idle, {w: run for w, (run, _) in busy.items()})

    def _spawn(self) -> _Worker:
        self._spawned += 1
        return _Worker(self._spawned, self.threads)

    @staticmethod
    def _shutdown(idle: list[_Worker], busy: dict[_Worker, GridRun]) -> None:
        """Idle workers are told to stop; busy ones (only on an interrupt) get SIGTERM so their runs record the
        interruption, then are killed if they do not exit in time."""
        for worker in idle:
            worker.send(None)
        for worker in busy:
            worker.interrupt()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for worker in [*idle, *busy]:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            worker.close()
        for run in busy.values():
            record_abandoned(run, "interrupted: the grid was stopped while this run was going")


class _Worker:
    def __init__(self, number: int, threads: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.number = number
        self.has_log = False
        self.ready = False  # imports done
        self.started_run = False  # took the run it was last sent
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, threads, os.getpid()), daemon=True)
        self.process.start()
        child.close()

    def send_run(self, config: dict[str, Any], wait_for_lock: bool, log_dir: Path, force: bool = False) -> None:
        self.started_run = False
        message: dict[str, Any] = {"config": config, "wait": wait_for_lock, "force": force}
        if not self.has_log:  # the first run tells the worker where its output goes from now on
            log_dir.mkdir(parents=True, exist_ok=True)
            message["log"] = str(log_dir / f"worker-{self.number}.log")
            self.has_log = True
        self.send(message)

    def send(self, message: dict[str, Any] | None) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):  # a dead worker; its sentinel reports it
            self.conn.send(message)

    def drain(self) -> dict[str, Any] | None:
        """Read every message waiting: ("ready",) after the imports, ("started",) when it takes a run, and
        ("result", {...}) when the run is over. Returns the result, if one came."""
        result = None
        try:
            while self.conn.poll():
                kind, *payload = self.conn.recv()
                if kind == "ready":
                    self.ready = True
                elif kind == "started":
                    self.started_run = True
                else:
                    result = payload[0]
        except (EOFError, OSError):
            pass  # a dead worker; its sentinel tells
        return result

    def death_reason(self) -> str:
        self.process.join(5)
        code = self.process.exitcode
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return f"worker process {self.process.pid} {how} while running this run"

    def interrupt(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: the worker's handler ends its run as failed, then exits

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for this process when its parent dies


def _stop_requested(signum: int, frame: Any) -> None:
    raise SystemExit("stopped by the grid (SIGTERM, or the grid process died) before it finished")


def _stop_with_the_grid(grid_pid: int) -> None:
    """Ask Linux to send this worker SIGTERM when the grid process dies, however it dies (SIGKILL included):
    the run in progress then ends as failed and keeps its checkpoint for the next grid to resume, instead of
    going on unsupervised with nobody to collect its result."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the worker finishes its run, then finds the grid gone
        return
    if os.getppid() != grid_pid:  # the grid died before the request was in place
        raise SystemExit("the grid process is gone")


def _worker_main(conn: Connection, threads: int, grid_pid: int) -> None:
    """A worker's whole life: import once, then run whatever the grid sends until told to stop."""
    # Ctrl-C in the terminal reaches the whole process group; the grid process alone decides what happens and
    # stops busy workers with SIGTERM, which ends the current run as failed ("stopped by the grid").
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_requested)
    _stop_with_the_grid(grid_pid)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    import research.training  # noqa: F401
    from research.grid.execute import execute_run  # imports the training stack once, for every run to come

    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, SystemExit):
            return
        if message is None:
            return
        log_path = message.pop("log", None)
        if log_path:  # from here on, Lightning's and W&B's messages go to this worker's log, not the display
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
        conn.send(("started",))
        conn.send(("result", execute_run(**message)))
