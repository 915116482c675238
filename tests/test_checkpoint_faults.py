"""Checkpoints that load but cannot be resumed from, and runs stopped by Ctrl-C (issue 16).

A checkpoint that is incomplete (a field missing), inconsistent (positions that contradict each other, an
impossible step) or does not match the run (model tensors of other shapes) is set aside as
``checkpoint.pt.unusable``, reported once, and the run starts over: it must neither fail with a traceback and
stay ``running`` nor fail again on every rerun because the bad file is kept. One that passes every check but
still does not fit (a method state the method cannot take) fails the run with that reason and is set aside, so
the next attempt starts over. Ctrl-C records "interrupted" and how to resume.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_resume import SETTINGS, run_interrupted, wait_for_checkpoint

from research.errors import RunFailed
from research.store import read_summary
from research.training import run
from research.training.resume import CHECKPOINT_FILE, checkpoint_problem

ROOT = Path(__file__).resolve().parents[1]


def _killed_run(make_cfg, monkeypatch, *overrides: str):
    """A run killed after 5 updates, with its checkpoint at step 4; returns the config and the checkpoint."""
    cfg = make_cfg(*SETTINGS, *overrides)
    run_interrupted(cfg, monkeypatch, update=5)
    (checkpoint,) = Path(cfg.out).glob(f"*/{CHECKPOINT_FILE}")
    return cfg, checkpoint


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.pop(key)


def _wrong_shape(payload: dict[str, Any]) -> None:
    name = next(n for n in payload["model"] if n.endswith("weight"))
    payload["model"][name] = torch.zeros(3, 3)


def _impossible_step(payload: dict[str, Any]) -> None:
    payload["task_step"] += 10**6
    payload["global_step"] += 10**6


def _inconsistent_step(payload: dict[str, Any]) -> None:
    payload["global_step"] += 1


def _bare(payload: dict[str, Any]) -> None:
    for key in list(payload):
        if key not in ("format", "run_id"):
            del payload[key]


CASES = {
    "only_format_and_run_id": (_bare, "no task_index"),
    "no_global_step": (_drop("global_step"), "no global_step"),
    "no_records": (_drop("records"), "no records"),
    "no_method_state": (_drop("method"), "no method"),
    "model_of_other_shapes": (_wrong_shape, "shapes"),
    "impossible_step": (_impossible_step, "updates"),
    "steps_that_contradict": (_inconsistent_step, "global_step"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_incomplete_or_inconsistent_checkpoint_is_set_aside_once_and_the_run_starts_over(
    case: str, make_cfg, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt, reason = CASES[case]
    cfg, checkpoint = _killed_run(make_cfg, monkeypatch)
    payload = torch.load(checkpoint, weights_only=True)
    corrupt(payload)
    torch.save(payload, checkpoint)
    capsys.readouterr()

    result = run(cfg)
    assert result.summary["status"] == "completed" and result.summary["resumes"] == []
    warnings = [line for line in capsys.readouterr().err.splitlines() if "cannot resume from checkpoint" in line]
    assert len(warnings) == 1 and reason in warnings[0] and "set aside as checkpoint.pt.unusable" in warnings[0]
    assert (checkpoint.parent / f"{CHECKPOINT_FILE}.unusable").is_file()  # kept for inspection, never read again
    assert not checkpoint.exists()
    # Reported once: the next run finds the completed run and says nothing more about the checkpoint.
    assert run(cfg).skipped
    assert "cannot resume" not in capsys.readouterr().err


def test_a_checkpoint_whose_method_state_does_not_fit_fails_the_run_once(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every field is there and consistent, but EWC's state is another method's: only replaying the method's
    preparation finds that out. The run fails with that reason, the checkpoint is set aside, and the next
    attempt starts over and completes, instead of failing the same way on every rerun."""
    cfg, checkpoint = _killed_run(make_cfg, monkeypatch, "method.name=ewc")
    payload = torch.load(checkpoint, weights_only=True)
    payload["method"] = {"switched_at_step": torch.tensor(3)}  # LP-FT's
    payload["method_ends"] = []
    torch.save(payload, checkpoint)
    assert checkpoint_problem(payload, payload["run_id"]) is None

    with pytest.raises(RunFailed, match="checkpoint does not fit this run"):
        run(cfg)
    summary = read_summary(checkpoint.parent)
    assert summary["status"] == "failed"
    assert "checkpoint does not fit this run" in summary["error"] and "set aside" in summary["error"]
    assert not checkpoint.exists() and (checkpoint.parent / f"{CHECKPOINT_FILE}.unusable").is_file()
    again = run(cfg)
    assert again.summary["status"] == "completed" and again.summary["resumes"] == []


def test_ctrl_c_records_interrupted_and_how_to_resume(tmp_path: Path, tiny_overrides: list[str]) -> None:
    """A real ``research run`` process and a real SIGINT, as a terminal's Ctrl-C sends it: exit code 130, one
    line saying how to go on, the run marked failed with "interrupted" (never "SystemExit: 1"), and the same
    command then resumes from the checkpoint."""
    overrides = [*tiny_overrides, *SETTINGS, "train.epochs=60", "checkpoint.every_n_steps=20"]
    command = [sys.executable, "-m", "research", "run", "experiments/split_digits.yaml", *overrides]
    out = Path(next(o for o in overrides if o.startswith("out=")).removeprefix("out="))
    victim = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background commands with SIGINT ignored, and the child would
        # inherit that: give it the terminal's default, as a foreground command has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoints = wait_for_checkpoint(victim, out)
    victim.send_signal(signal.SIGINT)
    _, stderr = victim.communicate(timeout=120)
    assert victim.returncode == 130, stderr
    ours = [line for line in stderr.splitlines() if line.startswith("research:")]
    assert len(ours) == 1 and "interrupted (Ctrl-C)" in ours[0] and "run the same command again to resume" in ours[0]
    summary = read_summary(checkpoints[0].parent)
    assert summary["status"] == "failed" and summary["error"].startswith("interrupted (Ctrl-C) at step")
    assert "SystemExit" not in summary["error"]

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = read_summary(checkpoints[0].parent)
    assert summary["status"] == "completed" and summary["resumed_from_step"] > 0
