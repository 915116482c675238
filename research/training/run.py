"""``run(cfg)``: one complete run, from config to run directory.

1. Check everything that can be checked without writing: tasks and classes, the method and its settings
   against the model, a user checkpoint's fit. Problems raise ConfigError (exit 2) and nothing is written.
2. Pretraining stage: cached weights, trained once per distinct setup, or the user's checkpoint.
3. Fine-tuning stage in a fresh run directory whose summary says ``running`` until the very end; on failure
   it says ``failed`` with the reason, and the measurements taken so far are kept.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from research.abilities import build_abilities
from research.config import ExperimentConfig, missing_files, resolved, run_id
from research.data.fingerprint import content_fingerprints
from research.data.tasks import TaskSet, build_tasks
from research.errors import ConfigError, RunBusy, RunFailed, RunInterrupted
from research.methods import build_method
from research.methods.applicability import refusal
from research.models.adapters import adapter
from research.store import (
    exclusive_lock,
    git_commit,
    is_completed,
    package_versions,
    read_summary,
    reopen_run_dir,
    start_run_dir,
    write_json,
    write_metrics,
    write_table,
)
from research.tracking import (
    Destination,
    Tracker,
    accuracy_matrix,
    forgetting_summary,
    replayed_drift,
    resolve_destination,
    tracked_name,
    wandb_config,
)
from research.training.finetune import (
    Checkpointing,
    FinetuneOutcome,
    expected_checkpoint,
    finetune_model,
    run_finetune,
)
from research.training.pretrain import Pretrained, check_checkpoint, pretrained_weights
from research.training.resume import (
    CHECKPOINT_FILE,
    Expected,
    UnusableCheckpoint,
    load_checkpoint,
    remove_checkpoint,
    set_aside,
)
from research.training.trainer import cpu_threads


def distributed_rank() -> int:
    """This process's rank in a DDP run (0 in a process Lightning did not start, and in the first one)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if os.environ.get("WORLD_SIZE") else 0


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    summary: dict[str, Any]
    skipped: bool = False  # True when a completed run with this id already existed

    @property
    def metrics(self) -> pd.DataFrame:
        return pd.read_parquet(self.run_dir / "metrics.parquet")


def check(cfg: ExperimentConfig, command_line: bool = False) -> TaskSet:
    """Everything that can fail because of the input, checked before anything is written. ``command_line``: the
    run was started by `research run`, which a DDP run needs (Lightning starts each further process by running
    that very command again; a run started from Python, a notebook or a grid worker has no such command)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {cfg.out} exists and is not a directory")
    if cfg.device == "gpu" and not torch.cuda.is_available():
        raise ConfigError("device: 'gpu' was asked for but no GPU is available; valid choices here: auto, cpu")
    for where, train in (("train", cfg.train), ("pretrain.train", cfg.pretrain.train)):
        if train.precision == "16-mixed" and (cfg.device == "cpu" or not torch.cuda.is_available()):
            raise ConfigError(
                f"{where}.precision: 16-mixed needs a GPU (CPU autocast has no float16); valid here: 32, bf16-mixed"
            )
    missing = missing_files(cfg)
    if missing is not None:
        raise ConfigError(missing)
    adapter(cfg.model.arch).check(cfg.model)  # the model can be found: a directory, a name, a factory
    method = build_method(cfg.method)
    refused = refusal(type(method), cfg)  # what the method declares it needs, against this experiment
    if refused is not None:
        raise ConfigError(refused.message())
    if cfg.train.strategy == "ddp":
        from research.methods import method_class, method_names

        if not method.supports_ddp:
            safe = [n for n in method_names() if method_class(n).supports_ddp]
            raise ConfigError(
                f"train.strategy: method {method.name} is not correct under ddp (what it trains changes during a fit, "
                f"which DDP cannot follow); methods that are: {', '.join(safe)}"
            )
        if not command_line:
            raise ConfigError(
                "train.strategy: ddp runs start from the command line (`research run CONFIG train.strategy=ddp "
                "train.devices=N`): Lightning starts each further process by running that command again, which a "
                "run started from Python or a grid worker does not have"
            )
    resolve_destination(cfg.logging)  # a WANDB_MODE that W&B would refuse stops here, before anything is written
    tasks = build_tasks(cfg)
    if cfg.abilities:  # their data can be found, read and taken by the model
        build_abilities(cfg, adapter(cfg.model.arch).input_encoder(cfg.model))
    finetune_model(cfg, tasks, method, state=None)
    check_checkpoint(cfg, tasks)
    return tasks


def pretrain_only(cfg: ExperimentConfig) -> Pretrained:
    with cpu_threads(cfg.threads):
        return pretrained_weights(cfg, check(cfg))


def run(cfg: ExperimentConfig, force: bool = False, wait: bool = True, command_line: bool = False) -> RunResult:
    """Run one experiment, or skip it when a completed run with the same id exists (unless ``force``).

    One process at a time per run id: a second one waits for the lock, then finds the run completed and skips
    it. With ``wait=False`` it raises :class:`~research.errors.RunBusy` instead of waiting (a grid worker then
    does other runs first). It computes with ``cfg.threads`` CPU threads, whatever the process's own setting."""
    with cpu_threads(cfg.threads):
        return _run(cfg, force, wait, command_line)


def _run(cfg: ExperimentConfig, force: bool, wait: bool, command_line: bool) -> RunResult:
    started = time.perf_counter()
    tasks = check(cfg, command_line)
    rid = run_id(cfg, content_fingerprints(cfg))
    run_dir = Path(cfg.out) / rid
    if distributed_rank() > 0:
        return _run_distributed_worker(cfg, tasks, rid, run_dir, force)
    writable_out(Path(cfg.out))
    with exclusive_lock(run_lock_path(Path(cfg.out), rid), wait=wait):
        if is_completed(run_dir) and not force:
            return RunResult(rid, run_dir, read_summary(run_dir) or {}, skipped=True)
        # An earlier attempt that was killed or failed mid-training goes on from its last checkpoint.
        resume = None if force else load_checkpoint(run_dir, rid, _expected(cfg, tasks, run_dir))
        command = shlex.join(sys.argv) if command_line else None  # quoted, so it can be pasted back
        return _run_locked(cfg, tasks, rid, run_dir, started, resume, command)


def _expected(cfg: ExperimentConfig, tasks: TaskSet, run_dir: Path) -> Expected | None:
    """What a checkpoint in ``run_dir`` must match; built only when there is one (it builds the model)."""
    if not (run_dir / CHECKPOINT_FILE).is_file():
        return None
    return expected_checkpoint(cfg, tasks, build_method(cfg.method))


def _interrupted(error: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, or the SystemExit(1) Lightning turns one into after its own shutdown."""
    return isinstance(error, KeyboardInterrupt) or (
        isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt)
    )


def writable_out(out: Path) -> None:
    """Refuse an ``out`` that cannot be written (read-only, not a folder, full) before anything else is: a
    file is created in ``out/.locks`` and removed again. Raises ConfigError naming ``out``."""
    try:
        locks = out / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        probe = locks / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"out: cannot write to {out} ({err.strerror or type(err).__name__})") from None


def run_lock_path(out: Path, rid: str) -> Path:
    return out / ".locks" / f"{rid}.lock"


def mark_abandoned(out: Path, rid: str, reason: str) -> bool:
    """Mark a run whose process died (killed, out of memory) as failed with ``reason``, if its summary still says
    ``running`` and nobody holds its lock. Returns whether it did. Without this the run would still read
    ``running``, which is honest (never "completed") but says nothing about why."""
    run_dir = out / rid
    try:
        with exclusive_lock(run_lock_path(out, rid), wait=False):
            summary = read_summary(run_dir)
            if summary is None or summary.get("status") != "running":
                return False
            summary.update(status="failed", error=reason)
            write_json(run_dir / "summary.json", summary)
            return True
    except RunBusy:
        return False


def _run_locked(
    cfg: ExperimentConfig,
    tasks: TaskSet,
    rid: str,
    run_dir: Path,
    started: float,
    resume: dict[str, Any] | None = None,
    command: str | None = None,
) -> RunResult:
    data_seconds = time.perf_counter() - started  # building and checking the tasks
    method = build_method(cfg.method)
    config = resolved(cfg)
    summary: dict[str, Any] = {
        "status": "running",
        "error": None,
        "run_id": rid,
        "name": cfg.name,
        "method": cfg.method["name"],
        "method_config": cfg.method,
        "seed": cfg.seed,
        "tasks": {
            t.name: {
                "role": t.role,
                "head": t.head,
                "classes": list(t.classes),
                "sizes": {k: len(v[1]) for k, v in t.splits.items()},
            }
            for t in tasks.all
        },
        "versions": package_versions(),
        "git": git_commit(),
        "process": {"pid": os.getpid(), "host": socket.gethostname()},
    }
    if command is not None:  # started from the command line: how to run it again
        summary["command"] = command
    if resume is not None:
        summary["resumed_from_step"] = resume["global_step"]
        if resume.get("commit") != summary["git"]["commit"]:  # the numbers before and after come from different code
            summary["checkpoint_commit"] = resume.get("commit")
            print(
                f"warning: run {rid} resumes from a checkpoint written by commit {resume.get('commit')}, "
                f"now at {summary['git']['commit']}",
                file=sys.stderr,
            )
    try:
        if resume is None:
            start_run_dir(run_dir, config, summary)
        else:
            reopen_run_dir(run_dir, config, summary)
    except OSError as err:  # a full disk: the run could not even start
        summary.update(status="failed", error=f"could not write the run directory ({type(err).__name__}: {err})")
        recorded = run_dir.is_dir() and record_failure(run_dir, summary)
        where = f"see {run_dir / 'summary.json'}" if recorded else "nothing could be recorded"
        raise RunFailed(f"run {rid} failed: {summary['error']} ({where})") from err

    timings = {"data_seconds": data_seconds}
    outcome = FinetuneOutcome()
    tracker: Tracker | None = None
    error: BaseException | None = None
    try:
        pretrained = pretrained_weights(cfg, tasks)
        timings["pretrain_seconds"] = pretrained.seconds
        summary["pretrained"] = {
            "path": str(pretrained.path),
            "cached": pretrained.cached,
            "metrics": pretrained.manifest.get("metrics"),
        }
        tracker_started = time.perf_counter()
        destination = resolve_destination(cfg.logging)
        tracker = start_tracker(cfg, destination, run_dir, wandb_config(config, rid, summary["git"]))
        timings["wandb_init_seconds"] = time.perf_counter() - tracker_started
        if resume is not None:  # the new W&B run gets the history so far, so it is complete on its own
            replay_history(tracker, resume["records"], resume["drift"])
        checkpointing = Checkpointing(run_dir, rid, resume, summary["git"]["commit"])
        run_finetune(cfg, tasks, method, pretrained.state, tracker, outcome, pretrained.records, checkpointing)
    except BaseException as err:  # noqa: BLE001 - recorded in summary.json, then re-raised below
        error = err

    summary.update(_results(outcome))
    summary["method_info"] = outcome.method_info
    summary["method_state_bytes"] = outcome.method_state_bytes
    if outcome.model_info:
        summary["model"] = outcome.model_info
    summary["timings"] = {
        **timings,
        "finetune_seconds": outcome.seconds,
        "eval_seconds": outcome.eval_seconds,
        "ability_seconds": outcome.ability_seconds,
        "prepare_seconds": outcome.prepare_seconds,  # part of finetune_seconds
    }
    summary["steps"] = outcome.steps
    # Where each fine-tuning task ended on the step axis: the rows of a sequence's accuracy matrix.
    summary["task_ends"] = outcome.task_ends
    summary["evaluations"] = outcome.evaluations
    summary["resumes"] = outcome.resumes
    if error is not None:
        summary["status"] = "failed"
        summary["error"] = f"{type(error).__name__}: {error}"
        if _interrupted(error):
            summary["error"] = interrupted_reason(run_dir, outcome)
        elif isinstance(error, UnusableCheckpoint) and (run_dir / CHECKPOINT_FILE).is_file():
            aside = set_aside(run_dir / CHECKPOINT_FILE, str(error))
            summary["error"] += f"; the checkpoint was set aside as {aside.name}: run again to start over"
    if tracker is not None:
        finish_started = time.perf_counter()
        finish_tracker(tracker, summary, outcome)
        summary["timings"]["wandb_finish_seconds"] = time.perf_counter() - finish_started
        summary["wandb"] = {**destination.record(), "run_id": tracker.run_id, "problem": tracker.problem}

    try:
        write_results(run_dir, outcome, summary)
    except OSError as err:  # a full disk, a file-size limit, a file system gone read-only
        written = f"could not write the run's results ({type(err).__name__}: {err})"
        summary["error"] = written if error is None else f"{summary['error']}; {written}"
        error = error or err
        summary["status"] = "failed"
    summary["timings"]["total_seconds"] = time.perf_counter() - started
    if error is None:
        summary["status"] = "completed"
        try:
            write_json(run_dir / "summary.json", summary)
        except OSError as err:  # the results are there, but nothing says so: not a completed run
            summary.update(status="failed", error=f"could not write summary.json ({type(err).__name__}: {err})")
            error = err
        else:
            remove_checkpoint(run_dir)  # after the summary: a kill in between leaves a completed run, never a lost one
            return RunResult(rid, run_dir, summary)
    summary["traceback"] = "".join(traceback.format_exception(error))[-4000:]
    recorded = record_failure(run_dir, summary)
    if _interrupted(error):
        raise RunInterrupted(f"run {rid} {summary['error']}") from error
    if isinstance(error, KeyboardInterrupt | SystemExit):
        raise error
    where = f"see {run_dir / 'summary.json'}" if recorded else "summary.json could not be written either"
    raise RunFailed(f"run {rid} failed: {summary['error']} ({where})") from error


def write_results(run_dir: Path, outcome: FinetuneOutcome, summary: dict[str, Any]) -> None:
    """The run's tables: metrics, weight drift, and what the method measured (summary.json comes after)."""
    write_metrics(run_dir, outcome.records)
    if outcome.drift:
        write_table(run_dir / "diagnostics.parquet", outcome.drift)
    if outcome.method_rows:
        write_table(run_dir / "method.parquet", outcome.method_rows)
        summary["method_table"] = "method.parquet"


def record_failure(run_dir: Path, summary: dict[str, Any]) -> bool:
    """Write a failed run's summary; where the whole of it cannot be written (a full disk), at least its
    status and reason, so that the run never stays ``running``. Returns whether either could be written."""
    try:
        write_json(run_dir / "summary.json", summary)
        return True
    except OSError:
        pass
    try:
        write_json(run_dir / "summary.json", {k: summary.get(k) for k in ("status", "error", "run_id", "name")})
        return True
    except OSError:
        return False


def interrupted_reason(run_dir: Path, outcome: FinetuneOutcome) -> str:
    """What a run stopped by Ctrl-C records, and how to go on."""
    if (run_dir / CHECKPOINT_FILE).is_file() and outcome.checkpoint_step is not None:
        return (
            f"interrupted (Ctrl-C) at step {outcome.steps}; run the same command again to resume from its "
            f"checkpoint at step {outcome.checkpoint_step}"
        )
    return (
        f"interrupted (Ctrl-C) at step {outcome.steps}, before any checkpoint (checkpoint.every_n_steps / "
        "every_n_seconds); run the same command again to start over"
    )


def _run_distributed_worker(cfg: ExperimentConfig, tasks: TaskSet, rid: str, run_dir: Path, force: bool) -> RunResult:
    """One of a DDP run's further processes: the same fine-tuning on its share of every batch, from the same
    checkpoint as rank 0 when it resumes, writing nothing (rank 0 holds the run directory's lock, writes the run
    store and W&B, and saves the checkpoints)."""
    resume = None if force else load_checkpoint(run_dir, rid)
    pretrained = pretrained_weights(cfg, tasks)  # rank 0 pretrained (or found the cache) before it started us
    tracker = Tracker("disabled", run_dir, "", rid, {}, job_type="", tags=[])
    checkpointing = Checkpointing(run_dir, rid, resume, save=False)
    outcome = FinetuneOutcome()
    run_finetune(
        cfg, tasks, build_method(cfg.method), pretrained.state, tracker, outcome, pretrained.records, checkpointing
    )
    return RunResult(rid, run_dir, {"status": "worker", "rank": distributed_rank()}, skipped=True)


def start_tracker(cfg: ExperimentConfig, destination: Destination, run_dir: Path, config: dict[str, Any]) -> Tracker:
    """The run's W&B run: named by ``logging.run_name`` (default :func:`readable_name`), grouped by
    ``logging.group`` (a grid sets ``<grid>/<setting>``), tagged with the method, the experiment, the grid and
    ``logging.tags``."""
    grid = [f"grid:{cfg.logging.grid}"] if cfg.logging.grid else []
    tags = list(dict.fromkeys([cfg.method["name"], cfg.name, *grid, *cfg.logging.tags]))
    return Tracker(
        destination.mode,
        run_dir,
        destination.project,
        cfg.logging.run_name or readable_name(cfg),
        config,
        job_type=cfg.method["name"],
        group=cfg.logging.group,
        tags=tags,
        entity=destination.entity,
    )


def finish_tracker(tracker: Tracker, summary: dict[str, Any], outcome: FinetuneOutcome) -> None:
    """End the W&B run with what the report would say of it: a completed run's final scores (``final/<task>/<m>``)
    and forgetting numbers (research.tracking.forgetting_summary), its accuracy matrix and a method's own table
    (WiSE-FT's α sweep) as ``wandb.Table``s, and its task boundaries; a failed run's ``error``, exit code 1."""
    if tracker.logger is None:  # disabled, or W&B failed earlier
        return
    if summary["status"] == "failed":
        tracker.summary({"status": "failed", "error": summary["error"]})
        tracker.finish(exit_code=1)
        return
    values: dict[str, Any] = {
        f"final/{task}/{m}": v for task, ms in summary["final"].items() for m, v in ms.items() if m != "role"
    }
    try:  # computed from this run's records; a problem here is W&B's, never the run's
        values.update(forgetting_summary(outcome.records, outcome.task_ends))
        matrix = accuracy_matrix(outcome.records, outcome.task_ends) if outcome.records else None
    except Exception as err:  # noqa: BLE001 - reported like any W&B trouble, the run stays completed
        tracker.problem = f"W&B summary not computed ({type(err).__name__}: {err})"
        print(f"warning: {tracker.problem}", file=sys.stderr)
        matrix = None
    values["task_ends"] = outcome.task_ends  # so a run read back from W&B has its accuracy matrix's rows
    tracker.summary(values)
    if matrix is not None:
        tracker.table("accuracy_matrix", matrix.reset_index().rename(columns={"boundary": "measured"}))
    if outcome.method_rows:
        tracker.table("method_table", pd.DataFrame.from_records(outcome.method_rows))
    tracker.finish(exit_code=0)


def replay_history(tracker: Tracker, records: list[dict[str, Any]], drift: list[dict[str, Any]]) -> None:
    """Log the measurements of earlier attempts under the names the live run uses, step by step (weight drift
    only where a block trained, as live logging sends it)."""
    by_step: dict[int, dict[str, float]] = {}
    for row in [*records, *replayed_drift(drift)]:
        by_step.setdefault(int(row["step"]), {})[tracked_name(row)] = float(row["value"])
    for step in sorted(by_step):
        tracker.log(by_step[step], step)


def _results(outcome: FinetuneOutcome) -> dict[str, Any]:
    """Scores per task at step 0 and at the last evaluation, and the same for each ability (under
    ``abilities``, with what each was scored on)."""
    abilities = set(outcome.ability_info)
    evals = [r for r in outcome.records if r["metric"] in ("acc", "loss") and r["task"] not in abilities]
    scored = [r for r in outcome.records if r["task"] in abilities]
    results: dict[str, Any] = {"initial": {}, "final": {}}
    if evals:
        first, last = min(r["step"] for r in evals), max(r["step"] for r in evals)
        results = {"initial": _at(evals, first), "final": _at(evals, last), "final_step": last}
    if abilities:
        steps = [r["step"] for r in scored]
        initial, final = (_at(scored, min(steps)), _at(scored, max(steps))) if steps else ({}, {})
        results["abilities"] = {
            name: {"initial": initial.get(name, {}), "final": final.get(name, {}), **info}
            for name, info in outcome.ability_info.items()
        }
    return results


def _at(rows: list[dict[str, Any]], step: int) -> dict[str, dict[str, Any]]:
    """{task: {"role": …, metric: value}} of the rows at ``step``."""
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["step"] == step:
            table.setdefault(r["task"], {"role": r["role"]})[r["metric"]] = r["value"]
    return table


def readable_name(cfg: ExperimentConfig) -> str:
    """``split_digits ewc lam=1000 seed=0``: the experiment, the method, its hyperparameters that differ from
    their defaults, and the seed."""
    from research.methods import method_config

    defaults = method_config({"name": cfg.method["name"]}).model_dump(mode="json")
    changed = [f"{k}={v}" for k, v in cfg.method.items() if k != "name" and v != defaults.get(k)]
    return " ".join([cfg.name, cfg.method["name"], *changed, f"seed={cfg.seed}"])
