"""The SLURM executor, through submitit: one SLURM job per run, submitted as one job array.

``--workers`` caps how many of the array's jobs run at once (``slurm_array_parallelism``). Each job calls the
same :func:`~research.grid.execute.execute_run` a local worker calls, so a run behaves identically on both.
``cluster="local"`` sends the same submissions through submitit's local executor (each job a local process),
which is how this path is tested on a machine without SLURM.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from research.config import resolved
from research.errors import ConfigError
from research.grid.outcome import Outcome, record_abandoned

if TYPE_CHECKING:
    from research.grid.spec import GridRun

POLL_SECONDS = 2.0


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 60  # per run
    gpus: int = 0  # per job
    cpus: int = 2  # per job
    mem_gb: float | None = None
    cluster: str = "slurm"  # or "local": submitit's local executor, for testing on one machine

    def check(self) -> None:
        if self.cluster not in ("slurm", "local"):
            raise ConfigError(f"submitit cluster '{self.cluster}' is not supported; valid choices: slurm, local")
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if self.cluster == "slurm" and missing:
            raise ConfigError(
                f"--executor slurm: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH, so "
                "this machine cannot submit SLURM jobs; valid choices here: --executor local, or "
                "--submitit-cluster local to try the SLURM path locally"
            )
        for name, value, low in (("time", self.time_min, 1), ("gpus", self.gpus, 0), ("cpus", self.cpus, 1)):
            if value < low:
                raise ConfigError(f"--{name} must be at least {low} (got {value})")
        if self.mem_gb is not None and not (0 < self.mem_gb < float("inf")):
            raise ConfigError(f"--mem-gb must be a positive number of gigabytes (got {self.mem_gb})")


class SlurmExecutor:
    def __init__(self, options: SlurmOptions, folder: Path, max_parallel: int, job_name: str) -> None:
        self.options = options
        self.folder = folder
        self.log_dir = folder  # submitit writes each job's stdout and stderr here
        self.max_parallel = max_parallel
        self.job_name = job_name
        self._seen_running: set[str] = set()

    def execute(
        self,
        runs: list[GridRun],
        on_start: Callable[[GridRun], None],
        on_finish: Callable[[GridRun, Outcome], None],
        on_tick: Callable[[], None],
        force: bool = False,
    ) -> None:
        """On SLURM every run is submitted at once as one array (SLURM caps how many run at a time); submitit's
        local executor has no such cap, so there runs are submitted as slots free up. ``force``: completed runs
        are rerun from the start (`research grid --force`)."""
        executor = self.submitit_executor()
        queue = list(runs)
        pending: dict = {}
        try:
            while queue or pending:
                slots = len(queue) if self.options.cluster == "slurm" else self.max_parallel - len(pending)
                if slots > 0 and queue:
                    batch, queue = queue[:slots], queue[slots:]
                    pending.update(self._submit(executor, batch, on_start, on_finish, force))
                self._poll(pending, on_start, on_finish)
                on_tick()
                if pending:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:  # Ctrl-C stops the grid here as it does locally: cancel what was submitted
            for job in pending:
                job.cancel(check=False)
            raise

    @staticmethod
    def _submit(executor, runs: list[GridRun], on_start, on_finish, force: bool = False) -> dict:
        """Submit runs as one batch; if the scheduler refuses it (a bad partition, a limit), they fail with its
        message instead of ending the grid with a traceback."""
        from research.grid.execute import execute_run

        try:
            with executor.batch():
                jobs = [executor.submit(execute_run, resolved(run.config), True, force) for run in runs]
        except Exception as err:  # noqa: BLE001 - sbatch's refusal, reported per run
            reason = f"submission refused: {_last_line(err)}"
            for run in runs:
                on_start(run)
                on_finish(run, Outcome("failed", reason))
            return {}
        return dict(zip(jobs, runs, strict=True))

    def _poll(self, pending: dict, on_start, on_finish) -> None:
        """Report every job seen running for the first time, and every job that is done."""
        for job, run in list(pending.items()):
            if run.run_id not in self._seen_running and (job.done() or job.state == "RUNNING"):
                self._seen_running.add(run.run_id)
                on_start(run)
            if not job.done():
                continue
            del pending[job]
            outcome = _outcome(job)
            if outcome.seconds is None and outcome.status == "failed":
                record_abandoned(run, outcome.reason or "the job died")
            on_finish(run, outcome)

    def submitit_executor(self):
        """submitit's executor with this grid's options: SLURM's sbatch parameters, or the local executor's."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.options.cluster)
        parameters = {
            "name": self.job_name,
            "timeout_min": self.options.time_min,
            "cpus_per_task": self.options.cpus,
            "gpus_per_node": self.options.gpus,
        }
        if self.options.mem_gb is not None:
            parameters["mem_gb"] = self.options.mem_gb
        if self.options.cluster == "slurm":
            parameters["slurm_array_parallelism"] = self.max_parallel
            if self.options.partition:
                parameters["slurm_partition"] = self.options.partition
        executor.update_parameters(**parameters)
        return executor


def _outcome(job) -> Outcome:
    """A job that returned gives the run's own result; a job that died (timeout, node failure) is a failure."""
    try:
        result = job.result()
    except Exception as err:  # noqa: BLE001 - submitit raises whatever ended the job
        return Outcome("failed", f"job {job.job_id} failed: {_last_line(err)}")
    if result["status"] == "busy":  # cannot happen with wait=True; kept honest rather than silent
        return Outcome("failed", "run was busy in another process")
    return Outcome(result["status"], result["reason"], result["seconds"])


def _last_line(err: Exception) -> str:
    """The informative line of an error that may carry a whole traceback (tracebacks end with the error)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[-1]
