"""The whole benchmark suite: every benchmark script in turn, then one Markdown table of all their results.

Each benchmark runs as its own subprocess, one after another (never two at once, so they do not disturb each
other's timings), and writes its result rows with ``--json``; every figure in them is a ratio, share or
difference measured against a reference taken in the same run of that benchmark. The final table has one row
per figure: benchmark, what is compared, measured value, target, and whether it was met.

    uv run python experiments/benchmarks/suite.py                  # full settings: tens of minutes
    uv run python experiments/benchmarks/suite.py --quick          # smoke test of every script (a few minutes)
    uv run python experiments/benchmarks/suite.py --only fisher_speed memory --out results/

``--threads N`` sets ``OMP_NUM_THREADS`` (torch's intra-op threads) for every benchmark process; ``--quick``
implies ``--threads 1`` unless given, because on a shared 2-core machine two spinning threads can make a small
model's step two orders of magnitude slower whenever another process holds a core. Grid workers choose their
own thread count (the cores divided among the workers). ``--out DIR`` keeps each benchmark's JSON, its console
output and the table (``suite.md``); without it they go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Row, read_rows

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# name -> what the benchmark compares (for the listing); each is HERE / f"{name}.py".
BENCHMARKS = {
    "overhead": "a research run's fine-tuning stage vs a bare PyTorch loop doing the same updates and evaluations",
    "grid_scaling": "research grid with 2 workers vs 1, and with 1 worker vs back-to-back runs in one process",
    "vs_avalanche": "our run vs avalanche-lib 0.6 on the same protocol: wall time and final accuracies",
    "fisher_speed": "the exact diagonal Fisher with torch.func vs a per-sample Python loop: speed and agreement",
    "evaluator_overhead": "~50 evaluations of every task during fine-tuning vs 2: share of the training time",
    "memory": "peak RSS of a research run and of a grid worker vs processes that only import torch / the stack",
    "minilm": "MiniLM: fine-tuning steps vs a bare transformers loop, peak RSS of an EWC run, the Fisher's cost",
    "minilm_study": "the MiniLM study: ability scoring at 21 evaluation points vs training; LoRA vs finetune",
    "sequences": "each method's state per learned task vs the model's size; the three-scenarios grid's wall time",
    "tools": "reading W&B offline runs back in-process vs one wandb subprocess per run; the CLI's start time",
}


def run_benchmark(name: str, out: Path, quick: bool, env: dict[str, str]) -> tuple[int, float, Path, Path]:
    json_path, log_path = out / f"{name}.json", out / f"{name}.log"
    command = [sys.executable, str(HERE / f"{name}.py"), "--json", str(json_path)]
    if quick:
        command.append("--quick")
    print(f"\n{'=' * 100}\n{name}: {BENCHMARKS[name]}\n$ {' '.join(command)}\n{'=' * 100}", flush=True)
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:  # shown as it comes, and kept
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    return code, time.perf_counter() - started, json_path, log_path


def markdown_table(rows: list[Row]) -> str:
    lines = ["| benchmark | what is compared | measured | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        compared = r.compared.replace("|", "\\|")
        lines.append(f"| {r.benchmark} | {compared} | {r.value_text()} | {r.target_text()} | {r.met_text()} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark in its --quick (smoke test) mode")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every benchmark (default: 1 with --quick)")
    parser.add_argument("--out", help="keep the JSON files, logs and the table here")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    threads = args.threads or (1 if args.quick else None)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("WANDB_SILENT", "true")
    env.pop("WANDB_API_KEY", None)  # W&B stays offline or disabled: nothing leaves the machine

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows: list[Row] = []
        status: list[str] = []
        for name in names:
            code, seconds, json_path, log_path = run_benchmark(name, out, args.quick, env)
            if code == 0 and json_path.is_file():
                _, benchmark_rows = read_rows(json_path)
                rows += benchmark_rows
                status.append(f"{name}: {len(benchmark_rows)} rows in {seconds:.0f} s")
            else:
                rows.append(Row(name, f"the benchmark failed (exit code {code}; see {log_path})", None, met=False))
                status.append(f"{name}: FAILED (exit code {code}) after {seconds:.0f} s")

        mode = "quick mode (smoke test: tiny settings, 1 repetition; the figures are noise)" if args.quick else "full"
        header = [
            f"# Benchmark suite, {mode}",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs"
            + (f", OMP_NUM_THREADS={threads}" if threads else "")
            + ". Each figure is measured against a reference taken in the same run of its benchmark.",
            "",
        ]
        table = markdown_table(rows)
        judged = [r for r in rows if r.met is not None]
        footer = f"\nTargets met: {sum(bool(r.met) for r in judged)} of {len(judged)}."
        report = "\n".join(header) + "\n" + table + "\n" + footer + "\n"
        print("\n" + "\n".join(status))
        print("\n" + report)
        if args.out:
            (out / "suite.md").write_text(report)
            print(f"JSON, logs and suite.md in {out}")
    failed = [s for s in status if "FAILED" in s]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
