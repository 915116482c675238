"""Grid throughput: 2 local workers against 1, and the grid machinery against plain back-to-back runs.

Three ways to do the same runs (the demo grid by default, pretraining cached beforehand so no side pays it):
  reference   one fresh Python process that imports the library and calls ``run(cfg)`` for every run in turn
  grid, 1     ``research grid GRID --workers 1`` (a fresh process: grid checks, one worker process, records)
  grid, 2     ``research grid GRID --workers 2``
Each is timed end to end (the whole command, imports included) and in steady state: seconds per run between
the first and the last run to finish (from the reference's own clock and from the grid's events.jsonl), which
leaves out process start-up, imports and W&B's one-off service start. Repetitions alternate.

    uv run python experiments/benchmarks/grid_scaling.py [--grid experiments/grids/demo.yaml] [--repeats 2]
    uv run python experiments/benchmarks/grid_scaling.py --quick [--json PATH]

``--quick`` is a smoke test: a 4-run grid (finetune and ewc on split digits, 2 seeds, 2 epochs), W&B disabled,
one repetition. Its figures mean little: with so few runs, process start-up dominates end to end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Row, write_json

ROOT = Path(__file__).resolve().parents[2]

REFERENCE = """
import json, sys, time
from research.grid.spec import load_grid
from research.training import run
grid = load_grid(sys.argv[1], sys.argv[2:])
ends, statuses = [], []
for r in grid.runs:
    statuses.append(run(r.config).summary["status"])
    ends.append(time.time())
print(json.dumps({"per_run": (ends[-1] - ends[0]) / (len(ends) - 1), "runs": len(statuses),
                  "completed": statuses.count("completed")}))
"""


def fresh_out(root: Path, label: str, cache: Path) -> Path:
    out = root / label
    out.mkdir()
    (out / "pretrained").symlink_to(cache, target_is_directory=True)
    return out


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def steady_seconds(out: Path) -> tuple[float, int]:
    """Seconds per run between the first and the last run to finish, from the grid's event log; and how many
    runs completed."""
    (folder,) = (out / "grids").iterdir()
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    ends = sorted(e["time"] for e in events if e["event"] in ("completed", "failed"))
    return (ends[-1] - ends[0]) / (len(ends) - 1), sum(e["event"] == "completed" for e in events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(ROOT / "experiments" / "grids" / "demo.yaml"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="key=value for every run, e.g. logging.wandb=disabled")
    parser.add_argument("--quick", action="store_true", help="smoke test: a 4-run grid, W&B disabled, 1 repetition")
    parser.add_argument("--json", help="write the result rows to this file")
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            args.grid, args.repeats = str(quick_grid(root)), 1
            args.overrides = ["logging.wandb=disabled", *args.overrides]
        cache = root / "pretrained-cache"
        cache.mkdir()
        warm = fresh_out(root, "warm", cache)
        # Pretrain once, outside every timing: all three sides then find the cached model.
        first = f"out={warm}"
        timed([python, "-m", "research", "grid", args.grid, first, *args.overrides, "--dry-run"])
        timed(
            [
                python,
                "-c",
                "import sys; from research.grid.spec import load_grid; from research.training import "
                "pretrain_only; pretrain_only(load_grid(sys.argv[1], sys.argv[2:]).runs[0].config)",
                args.grid,
                first,
                *args.overrides,
            ]
        )
        rows: dict[str, list[tuple[float, float]]] = {"reference": [], "grid, 1 worker": [], "grid, 2 workers": []}
        runs = 0
        for repeat in range(args.repeats):
            out = fresh_out(root, f"ref{repeat}", cache)
            wall, stdout = timed([python, "-c", REFERENCE, args.grid, f"out={out}", *args.overrides])
            report = json.loads(stdout.strip().splitlines()[-1])
            assert report["completed"] == report["runs"], report
            runs = report["runs"]
            rows["reference"].append((wall, report["per_run"]))
            for workers, label in ((1, "grid, 1 worker"), (2, "grid, 2 workers")):
                out = fresh_out(root, f"w{workers}-{repeat}", cache)
                wall, _ = timed(
                    [
                        python,
                        "-m",
                        "research",
                        "grid",
                        args.grid,
                        f"out={out}",
                        *args.overrides,
                        "--workers",
                        str(workers),
                    ]
                )
                steady, completed = steady_seconds(out)
                assert completed == runs, (completed, runs)
                rows[label].append((wall, steady))

    def med(label: str, index: int) -> float:
        return statistics.median(r[index] for r in rows[label])

    print(f"{runs} runs ({args.grid}), {args.repeats} repetitions, medians")
    print(f"  {'':18s} {'end to end':>12s} {'steady, per run':>16s}")
    for label in rows:
        print(f"  {label:18s} {med(label, 0):10.1f} s {med(label, 1):14.3f} s")
    ref, one, two = (med(label, 0) for label in rows)
    ref_s, one_s, two_s = (med(label, 1) for label in rows)
    print(f"throughput 2 workers / 1 worker: end to end {one / two:.2f}, steady {one_s / two_s:.2f}  (target >= 1.7)")
    print(
        f"grid machinery, 1 worker vs back-to-back in one process: end to end {one / ref:.2f} "
        f"({(one - ref) / runs * 1000:+.0f} ms per run), steady {one_s / ref_s:.2f} "
        f"({(one_s - ref_s) * 1000:+.0f} ms per run)"
    )
    what = f"{runs} runs, {' '.join(args.overrides) or 'W&B as configured'}"
    details = {label: [{"end_to_end": w, "steady_per_run": s} for w, s in rows[label]] for label in rows}
    result = [
        Row("grid_scaling", f"{what}: 2 workers / 1 worker, end to end", one / two, "x", ">=", 1.7, details=details),
        Row("grid_scaling", f"{what}: 2 workers / 1 worker, steady state", one_s / two_s, "x", ">=", 1.7),
        Row("grid_scaling", f"{what}: grid with 1 worker / back-to-back runs, end to end", one / ref, "x"),
        Row("grid_scaling", f"{what}: grid with 1 worker / back-to-back runs, steady state", one_s / ref_s, "x"),
    ]
    write_json(args.json, "grid_scaling", result, args.quick, settings=vars(args))


def quick_grid(root: Path) -> Path:
    path = root / "quick_grid.yaml"
    path.write_text(
        "name: quick\n"
        f"base: {ROOT / 'experiments' / 'split_digits.yaml'}\n"
        "overrides: {train.epochs: 2, logging.progress: false}\n"
        "seeds: [0, 1]\n"
        "grid:\n  - {method.name: finetune}\n  - {method.name: ewc}\n"
    )
    return path


if __name__ == "__main__":
    main()
