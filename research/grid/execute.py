"""One grid run inside whichever process executes it (a local worker or a SLURM job).

Returns a plain dict, so it crosses a pipe or submitit's pickles unchanged:
``{"status": "completed" | "failed" | "skipped" | "busy", "reason": str | None, "seconds": float}``.
A failing run never raises here: its failure is the result, and the grid goes on.
"""

from __future__ import annotations

import time
from typing import Any


def execute_run(config: dict[str, Any], wait: bool = True, force: bool = False) -> dict[str, Any]:
    """Run one grid run; ``force`` starts it over even when it is completed (``research grid --force``)."""
    from research.config import validate_config
    from research.errors import ConfigError, RunBusy, RunFailed
    from research.training.run import run

    started = time.perf_counter()

    def result(status: str, reason: str | None = None) -> dict[str, Any]:
        return {"status": status, "reason": reason, "seconds": time.perf_counter() - started}

    try:
        outcome = run(validate_config(config), force=force, wait=wait)
    except RunBusy:
        return result("busy", "another process is running it")
    except RunFailed as err:
        cause = err.__cause__
        return result("failed", f"{type(cause).__name__}: {cause}" if cause else str(err))
    except ConfigError as err:  # checked before submission; can still happen if a user file changed since
        return result("failed", f"config error: {err}")
    except Exception as err:  # noqa: BLE001 - e.g. a full disk while writing the run directory
        return result("failed", f"{type(err).__name__}: {err}")
    if outcome.skipped:
        return result("skipped", "completed by another process")
    return result("completed")
