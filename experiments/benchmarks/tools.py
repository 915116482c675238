"""The tools around runs: reading W&B offline runs back, and starting the command line.

  wandb_read   analysis.wandb_load.load_wandb_offline (in-process: W&B's record format and protobufs) vs the
               reference it replaced, one ``wandb leet inspect --json`` subprocess per run, on the same runs;
               both give the same evaluation rows (checked here).
  cli_start    ``research --help`` and ``research --version`` in a fresh process vs ``python -c pass`` started
               the same way (the interpreter alone), medians of several starts.

The runs are a tiny grid built here (``--runs`` offline W&B runs of split digits, 2 epochs), or ``--folder`` a
folder of runs with offline W&B files (e.g. runs/demo after ``research demo``).

    uv run python experiments/benchmarks/tools.py [--runs 6] [--folder runs/demo]
    uv run python experiments/benchmarks/tools.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from common import Row, print_rows, scratch_out, spread, write_json

from analysis.wandb_load import history_frame, load_wandb_offline

BENCHMARK = "tools"
ROOT = Path(__file__).resolve().parents[2]
RESEARCH = Path(sys.executable).parent / "research"
WANDB = Path(sys.executable).parent / "wandb"


def make_runs(out: Path, runs: int) -> None:
    """``runs`` tiny offline-W&B runs of split digits (one pretraining shared by all)."""
    from research.config import load_config
    from research.training import run

    for seed in range(runs):
        overrides = [f"out={out}", f"seed={seed}", "train.epochs=2", "logging.wandb=offline", "logging.progress=false"]
        run(load_config(ROOT / "experiments" / "split_digits.yaml", overrides))


def leet_reference(folder: Path) -> pd.DataFrame:
    """What load_wandb_offline did before: one ``wandb leet inspect --json`` subprocess per run file."""
    frames = []
    for file in sorted(folder.rglob("run-*.wandb")):
        proc = subprocess.run([str(WANDB), "leet", "inspect", "--json", str(file)], capture_output=True, text=True)
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        run_id = next(r["run"]["run_id"] for r in records if r["type"] == "run")
        frames.append(history_frame(run_id, (r["history"]["item"] for r in records if r["type"] == "history")))
    return pd.concat(frames, ignore_index=True)


def timed(fn, repeats: int) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def start_seconds(command: list[str], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="runs to build when no --folder is given")
    parser.add_argument("--folder", help="a folder of runs with offline W&B files (instead of building runs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 runs, 1 repeat")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    rows: list[Row] = []
    with scratch_out() as scratch:
        folder = Path(args.folder) if args.folder else Path(scratch) / "runs"
        if not args.folder:
            make_runs(folder, 2 if args.quick else args.runs)
        count = len(list(folder.rglob("run-*.wandb")))
        new_seconds, loaded = timed(lambda: load_wandb_offline([folder]), repeats)
        old_seconds, reference = timed(lambda: leet_reference(folder), repeats)
        got = loaded.metrics  # type: ignore[attr-defined]
        keys = ["run_id", "step", "task", "role", "metric"]
        same = (
            got.sort_values(keys)
            .reset_index(drop=True)[[*keys, "value"]]
            .equals(reference.sort_values(keys).reset_index(drop=True)[[*keys, "value"]])
        )
        new, old = statistics.median(new_seconds), statistics.median(old_seconds)
        print(f"{count} W&B runs: in-process {spread(new_seconds)} s, leet subprocesses {spread(old_seconds)} s")
        rows.append(Row(BENCHMARK, f"load_wandb_offline, {count} runs: seconds", new, "s"))
        rows.append(Row(BENCHMARK, f"leet inspect per run (the old reader), {count} runs: seconds", old, "s"))
        rows.append(Row(BENCHMARK, "old reader time / load_wandb_offline time", old / new, "x", ">=", 5.0))
        rows.append(Row(BENCHMARK, "both readers give the same evaluation rows", same, "", "==", True))

    starts = 3 if args.quick else 7
    bare = start_seconds([sys.executable, "-c", "pass"], starts)
    for what in ("--help", "--version"):
        cli = start_seconds([str(RESEARCH), what], starts)
        print(f"research {what}: {spread(cli)} s; python -c pass: {spread(bare)} s")
        rows.append(Row(BENCHMARK, f"research {what}: seconds (median of {starts})", statistics.median(cli), "s"))
        ratio = statistics.median(cli) / statistics.median(bare)
        rows.append(Row(BENCHMARK, f"research {what} / bare interpreter start", ratio, "x"))
    print_rows("W&B read-back and CLI start", rows)
    write_json(args.json, BENCHMARK, rows, args.quick)


if __name__ == "__main__":
    main()
