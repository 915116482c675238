"""Progress displays: a Lightning bar naming the stage, the task and the last scores on a terminal; plain, few
lines in a log or a pipe; and what ``research run`` really writes through a pipe and on a pseudo terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, ROOT, TINY

from research.training.progress import (
    EvalScores,
    StageBar,
    StageLines,
    TrainLoss,
    finetune_stage,
    make_progress,
    progress_mode,
)

# The conftest's tiny runs with the display on (TINY switches it off).
SHOWN = [o for o in TINY if not o.startswith("logging.progress")] + ["logging.progress=true"]


class Terminal(io.StringIO):
    """A stream that says it is a terminal, to see what a bar writes."""

    def isatty(self) -> bool:
        return True


def acc(step: int, task: str, role: str, value: float) -> dict:
    return {"step": step, "epoch": 0, "task": task, "role": role, "metric": "acc", "value": value}


def test_the_display_follows_the_stream() -> None:
    assert progress_mode(True, Terminal()) == "bar"
    assert progress_mode(True, io.StringIO()) == "lines"  # a file, a pipe, a notebook's stream
    assert progress_mode(False, Terminal()) == "off"
    stage = finetune_stage(_tasks(["a"], ["b"]), 0, 10, 20, 0, [])
    assert isinstance(make_progress(True, stage, Terminal()), StageBar)
    assert isinstance(make_progress(True, stage, io.StringIO()), StageLines)
    assert make_progress(False, stage, Terminal()) is None


def _tasks(pretrain: list[str], finetune: list[str]):
    """A stand-in TaskSet: finetune_stage reads only the tasks' names."""
    from types import SimpleNamespace

    def named(names):
        return [SimpleNamespace(name=n) for n in names]

    return SimpleNamespace(pretrain=named(pretrain), finetune=named(finetune))


def test_scores_are_those_of_the_last_evaluation() -> None:
    records = [
        acc(0, "a", "pretrain", 0.9),
        acc(0, "b", "pretrain", 0.8),
        acc(0, "c", "finetune", 0.2),
        {"step": 0, "epoch": 0, "task": "a", "role": "pretrain", "metric": "loss", "value": 0.3},
    ]
    scores = EvalScores(records, ["a", "b"], [], "c")
    assert scores.poll() and scores.text == "old 0.850 new 0.200"
    assert not scores.poll()  # nothing new
    records += [
        {"step": 3, "epoch": 0, "task": "c", "role": "finetune", "metric": "train_loss", "value": 1.0},
        acc(5, "a", "pretrain", 0.7),
        acc(5, "b", "pretrain", 0.5),
        acc(5, "c", "finetune", 0.6),
    ]
    assert scores.poll() and scores.text == "old 0.600 new 0.600"
    # The second task of a sequence: its own score, the earlier task's, and a later task's is never shown.
    records += [acc(9, "a", "pretrain", 0.4), acc(9, "c", "finetune", 0.5), acc(9, "d", "finetune", 0.1)]
    second = EvalScores(records, ["a"], ["c"], "d")
    assert second.poll() and second.text == "old 0.400 earlier 0.500 new 0.100"
    # A task not scored yet (a class-incremental task before its classes have outputs) is left out, not zero.
    later = EvalScores([acc(0, "a", "pretrain", 0.9)], ["a"], [], "d")
    later.poll()
    assert later.text == "old 0.900"
    # A list refilled from a checkpoint (a resumed run) is read again.
    records[:] = [acc(20, "a", "pretrain", 0.3), acc(20, "c", "finetune", 0.9)]
    assert scores.poll() and scores.text == "new 0.900"  # b has no score at step 20: no mean over part of them


def test_pretraining_shows_the_logged_loss() -> None:
    import torch

    loss = TrainLoss()
    assert not loss.poll() and loss.text == ""
    loss.sink(25, {"loss": torch.tensor(0.12345)})
    assert loss.poll() and loss.text == "loss 0.1235"
    assert not loss.poll()


def _final(summary: dict, role: str) -> float:
    values = [v["acc"] for v in summary["final"].values() if v["role"] == role]
    return sum(values) / len(values)


def test_a_run_on_a_terminal_draws_bars_that_name_stage_task_and_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from research.config import load_config
    from research.training import run

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    # A fresh out: pretraining runs here, so its bar is drawn too.
    result = run(load_config(EXPERIMENTS / "split_digits.yaml", [*SHOWN, f"out={tmp_path / 'runs'}"]))
    text = screen.getvalue()
    assert "\r" in text  # a bar redrawn in place
    assert re.search(r"pretrain digits_0_4 epoch 10/10: 100%.*loss \d\.\d{4}\]", text), text[-500:]
    old, new = _final(result.summary, "pretrain"), _final(result.summary, "finetune")
    # The bar's last state shows the last evaluation's accuracies, exactly as the summary has them.
    last = text.rsplit("finetune digits_5_9 epoch", 1)[1]
    assert last.startswith(" 2/2: 100%"), last
    assert f"old {old:.3f} new {new:.3f}]" in last, last


def test_a_run_in_a_log_writes_few_plain_lines(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from research.config import load_config
    from research.training import run

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    cfg = load_config(EXPERIMENTS / "sequence_digits.yaml", [*SHOWN, f"out={out}", "method.name=finetune"])
    result = run(cfg)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert result.summary["steps"] > 40 and len(lines) <= 8, lines  # each stage writes a first and a last line
    tuning = [line for line in lines if line.startswith("finetune")]  # pretraining's only if it was not cached
    assert [line.split(":")[0] for line in tuning] == ["finetune 1/2 digits_4_6"] * 2 + ["finetune 2/2 digits_7_9"] * 2
    final = result.summary["final"]
    old, earlier, new = _final(result.summary, "pretrain"), final["digits_4_6"]["acc"], final["digits_7_9"]["acc"]
    # The last line: the end of the sequence, with the scores of the last evaluation as the summary has them.
    last = rf"finetune 2/2 digits_7_9: epoch 2/2, step (\d+)/\1, old {old:.3f} earlier {earlier:.3f} new {new:.3f}, "
    assert re.fullmatch(last + r"done in \d+ s", tuning[-1]), tuning[-1]
    second_start = r"finetune 2/2 digits_7_9: epoch 1/2, step 0/\d+, old 0\.\d{3} earlier 0\.\d{3} new 0\.\d{3}, 0 s"
    assert re.fullmatch(second_start, tuning[2]), tuning[2]


def test_lines_are_spaced_by_time_not_by_step() -> None:
    """A long stage writes a line at an evaluation or an epoch's end only once ``interval`` has passed."""
    from types import SimpleNamespace

    records: list[dict] = []
    stage = finetune_stage(_tasks(["a"], ["c"]), 0, 10, 1000, 0, records)
    log = io.StringIO()
    lines = StageLines(stage, log, interval=0.05)
    trainer = SimpleNamespace(current_epoch=0, global_step=0)
    records += [acc(0, "a", "pretrain", 0.9), acc(0, "c", "finetune", 0.1)]
    lines.on_train_start(trainer, None)
    for step in range(1, 200):  # a fast loop: an evaluation every step, far more than the lines written
        trainer.global_step, trainer.current_epoch = step, step // 10
        records += [acc(step, "a", "pretrain", 0.9 - step / 1000), acc(step, "c", "finetune", step / 1000)]
        lines.on_train_batch_end(trainer, None)
        time.sleep(0.001)
    lines.on_train_end(trainer, None)
    written = log.getvalue().splitlines()
    assert written[0] == "finetune c: epoch 1/100, step 0/1000, old 0.900 new 0.100, 0 s"
    assert re.fullmatch(r"finetune c: epoch 20/100, step 199/1000, old 0\.701 new 0\.199, done in 0 s", written[-1])
    assert 3 <= len(written) <= 12, written  # ~0.25 s of steps at one line per 0.05 s, not 200 lines


def _research(*args: str) -> list[str]:
    return [sys.executable, "-m", "research", *args]


def test_a_piped_research_run_writes_no_bar_fragments(tmp_path: Path) -> None:
    out = tmp_path / "runs"  # its own pretraining: both stages write
    command = _research("run", str(EXPERIMENTS / "split_digits.yaml"), *SHOWN, f"out={out}")
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) <= 6, lines
    assert any(line.startswith("pretrain digits_0_4: epoch 10/10") for line in lines), lines
    assert any(line.startswith("finetune digits_5_9: epoch 2/2") and " new 0." in line for line in lines), lines
    assert "Epoch" not in proc.stdout + proc.stderr  # no Lightning/Rich default bar


def _on_a_terminal(command: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``command`` with a pseudo terminal (120 columns) as its stdin, stdout and stderr; what it wrote."""
    leader, follower = pty.openpty()
    attrs = termios.tcgetattr(follower)
    attrs[1] &= ~termios.OPOST  # as written: no "\n" → "\r\n" translation
    termios.tcsetattr(follower, termios.TCSANOW, attrs)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the other end is closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow  # a whole `research run` in a subprocess, 15-20 s; the in-process bar test above is the quick one
def test_research_run_on_a_terminal_draws_a_bar(out: Path) -> None:
    code, text = _on_a_terminal(_research("run", str(EXPERIMENTS / "split_digits.yaml"), *SHOWN, f"out={out}"))
    assert code == 0, text[-2000:]
    assert "\r" in text and re.search(r"finetune digits_5_9 epoch 2/2: 100%\|.*old 0\.\d{3} new 0\.\d{3}\]", text)


def test_a_resumed_fit_counts_on_from_its_checkpoint() -> None:
    from types import SimpleNamespace

    stage = finetune_stage(_tasks(["a"], ["b", "c"]), 1, 10, 95, 35, [])  # resumed 35 updates into task 2 of 2
    trainer = SimpleNamespace(current_epoch=0, global_step=0)  # the resumed fit's own counters start at 0
    assert (stage.label, stage.epochs, stage.epoch(trainer), stage.step(trainer)) == ("finetune 2/2 c", 10, 4, 35)
    trainer.current_epoch, trainer.global_step = 6, 60
    assert (stage.epoch(trainer), stage.step(trainer)) == (10, 95)
