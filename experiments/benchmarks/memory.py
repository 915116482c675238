"""Peak resident memory of a ``research run`` process and of a grid worker, against bare imports.

Each process is started fresh from this environment's Python (never through ``uv run``, whose own process would
be measured instead), with W&B's folders in a temporary directory:

  references   python -c "import torch"                 the floor of any torch process
               python -c "import research.training"     the training stack a run or worker imports
  measured     python -m research run split_digits.yaml  method finetune, W&B disabled; method ewc (exact Fisher
                                                          from per-sample Jacobians, one minibatch at a time),
                                                          W&B disabled; method finetune, W&B offline
               python -m research grid G --workers 1     a small grid (finetune, ewc and replay, 2 seeds): the
                                                          peak of its worker process, and of the grid process
Pretraining is cached before anything is measured, so every process fine-tunes only.

What "peak" means. A Python process that has imported torch touches about another 115 MB in the last ~20 ms of
its life, after every Python exit handler, while the interpreter and the native libraries tear down (seen in
``/proc/<pid>/status`` sampled every 0.5 ms). That exit spike is not memory a run needs while it works, and it
would lift the small references more than the runs, so the figures compared are working peaks:
- a process this script starts runs under a small wrapper (``runpy``, the same as ``python -m``) whose exit
  handler, registered first and so run last, records ``ru_maxrss`` of the process (``getrusage(RUSAGE_SELF)``:
  the kernel's high-water mark of its resident set, children not included);
- a grid worker, a child of the grid process, is read from the kernel's high-water mark ``VmHWM`` in
  ``/proc/<pid>/status``, sampled every 20 ms while it lives (psutil finds the grid's children). ``VmHWM`` never
  decreases, so this is the peak up to the last sample; it may include part of the worker's exit spike when a
  sample lands in it. The grid process itself is read the same way.
The teardown-inclusive figures (``os.wait4``'s ``ru_maxrss`` for each started process: the larger of the process
and its waited-for children, e.g. the grid and its worker) are printed beside them and kept in the JSON.

Printed: each working peak in MB and as a ratio to the ``import research.training`` reference measured in the same
run. There is no target; the figures say how many workers fit in a machine's memory.

    uv run python experiments/benchmarks/memory.py [--repeats 2]
    uv run python experiments/benchmarks/memory.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from common import Row, print_rows, write_json

BENCHMARK = "memory"
ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = ROOT / "experiments" / "split_digits.yaml"
MB = 1024 * 1024
SAMPLE_SECONDS = 0.02

# python -c WRAPPER PEAK_FILE code CODE | PEAK_FILE module MODULE ARGS...: runs the code or module as
# ``python -c`` / ``python -m`` would, and records the process's ru_maxrss (KiB) from its last exit handler.
WRAPPER = """\
import atexit, resource, runpy, sys
path, kind, what, *rest = sys.argv[1:]
def record():
    with open(path, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(record)  # registered first, so it runs last
if kind == "code":
    sys.argv = ["-c", *rest]
    exec(compile(what, "<string>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = [what, *rest]
    runpy.run_module(what, run_name="__main__", alter_sys=True)
"""


def child_env(tmp: Path, threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        (tmp / "wandb" / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp / "wandb" / sub)
    env["WANDB_SILENT"] = "true"
    env.pop("WANDB_API_KEY", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def measure(command: list[str], env: dict[str, str], tmp: Path, wrapped: bool) -> dict[str, Any]:
    """Run ``command`` to the end. Wrapped: its working peak from the wrapper; otherwise from sampling it and its
    descendants. Always: the teardown-inclusive ``wait4`` figure."""
    peak_file = tmp / "peak.txt"
    peak_file.unlink(missing_ok=True)
    if wrapped:  # [python, -c, CODE] or [python, -m, MODULE, ARGS...]
        python, flag, what, *rest = command
        command = [python, "-c", WRAPPER, str(peak_file), "code" if flag == "-c" else "module", what, *rest]
    log = tmp / "log.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        family: dict[int, dict[str, Any]] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(proc.pid, family, stop), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(command)}\n{log.read_text()[-3000:]}")
    sampled = list(family.values())
    root = max((p["peak_mb"] for p in sampled if p["root"]), default=0.0)
    return {
        "peak_mb": int(peak_file.read_text()) * 1024 / MB if wrapped else root,
        "sampled_mb": root,
        "wait4_mb": usage.ru_maxrss * 1024 / MB,
        "processes": sampled,
    }


def _sample(pid: int, seen: dict[int, dict[str, Any]], stop: threading.Event) -> None:
    """Every SAMPLE_SECONDS: VmHWM of the process and each of its descendants, keeping the largest per pid."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            family = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in family:
            try:
                hwm = _vm_hwm_mb(proc.pid)
                if proc.pid not in seen:
                    cmdline = " ".join(proc.cmdline())[:200]
                    seen[proc.pid] = {"pid": proc.pid, "root": proc.pid == pid, "cmdline": cmdline, "peak_mb": 0.0}
            except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
                continue
            if hwm is not None:
                seen[proc.pid]["peak_mb"] = max(seen[proc.pid]["peak_mb"], hwm)
        time.sleep(SAMPLE_SECONDS)


def _vm_hwm_mb(pid: int) -> float | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    return None  # a zombie: its memory is gone


def _is_worker(cmdline: str) -> bool:
    return "spawn_main" in cmdline and "resource_tracker" not in cmdline


def grid_file(tmp: Path, seeds: list[int], epochs: int) -> Path:
    path = tmp / "memory_grid.yaml"
    path.write_text(
        "name: memory\n"
        f"base: {EXPERIMENT}\n"
        f"overrides: {{train.epochs: {epochs}, logging.progress: false}}\n"
        f"seeds: {seeds}\n"
        "grid:\n  - {method.name: finetune}\n  - {method.name: ewc}\n  - {method.name: replay}\n"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="repetitions of every measurement (medians)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the processes")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1 epoch, 1 seed, 1 repetition, no ewc or W&B-offline run"
    )
    parser.add_argument("--json", help="write the result rows to this file")
    args = parser.parse_args()
    epochs, seeds = (1, [0]) if args.quick else (10, [0, 1])
    repeats = 1 if args.quick else args.repeats
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = child_env(tmp, args.threads)
        out = tmp / "runs"
        run = [python, "-m", "research", "run", str(EXPERIMENT), f"out={out}", f"train.epochs={epochs}"]
        run += ["logging.progress=false", "--force"]
        subprocess.run(
            [python, "-m", "research", "pretrain", str(EXPERIMENT), f"out={out}", "logging.progress=false"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        grid = grid_file(tmp, seeds, epochs)
        commands: dict[str, list[str]] = {
            "import torch": [python, "-c", "import torch"],
            "import research.training": [python, "-c", "import research.training"],
            "run, finetune, W&B disabled": [*run, "logging.wandb=disabled"],
            "run, ewc (exact Fisher), W&B disabled": [*run, "method.name=ewc", "logging.wandb=disabled"],
            "run, finetune, W&B offline": [*run, "logging.wandb=offline"],
            "grid": [python, "-m", "research", "grid", str(grid), "--workers", "1"],
        }
        if args.quick:
            del commands["run, ewc (exact Fisher), W&B disabled"], commands["run, finetune, W&B offline"]
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in commands}
        for repeat in range(repeats):  # alternate, so every process sees the machine in the same state
            for label, command in commands.items():
                if label == "grid":  # a fresh out each time, so the grid runs everything again
                    grid_out = tmp / f"grid{repeat}"
                    grid_out.mkdir()
                    (grid_out / "pretrained").symlink_to(out / "pretrained", target_is_directory=True)
                    command = [*command, f"out={grid_out}"]
                results[label].append(measure(command, env, tmp, wrapped=label != "grid"))

    def med(values: list[float]) -> float:
        return statistics.median(values)

    grid_runs = results.pop("grid")
    working = {label: med([r["peak_mb"] for r in rs]) for label, rs in results.items()}
    teardown = {label: med([r["wait4_mb"] for r in rs]) for label, rs in results.items()}
    worker = "grid, 1 worker: the worker process"
    working[worker] = med([max(p["peak_mb"] for p in r["processes"] if _is_worker(p["cmdline"])) for r in grid_runs])
    working["grid, 1 worker: the grid process itself"] = med([r["sampled_mb"] for r in grid_runs])
    teardown[worker] = teardown["grid, 1 worker: the grid process itself"] = med([r["wait4_mb"] for r in grid_runs])
    reference = working["import research.training"]
    print(f"peak RSS (MB), medians of {repeats}; {len(seeds) * 3} grid runs, {epochs} epoch(s) per run")
    print(f"  {'':44s} {'working peak':>12s}  {'/ reference':>11s}   {'with exit teardown (wait4)':>26s}")
    rows = []
    for label, mb in working.items():
        ratio = mb / reference
        note = " (grid and worker: the larger)" if label.startswith("grid") else ""
        print(f"  {label:44s} {mb:9.0f} MB  {ratio:10.2f}×   {teardown[label]:13.0f} MB{note}")
        if label == "import research.training":
            continue
        rows.append(
            Row(
                BENCHMARK,
                f"peak RSS, {label} ({mb:.0f} MB) / import research.training ({reference:.0f} MB)",
                ratio,
                "x",
                details={"peak_mb": mb, "reference_mb": reference, "with_teardown_mb": teardown[label]},
            )
        )
    print_rows(f"{BENCHMARK}: working peak RSS against a process that only imports the training stack", rows)
    write_json(
        args.json,
        BENCHMARK,
        rows,
        args.quick,
        settings=vars(args),
        working_mb=working,
        teardown_mb=teardown,
        runs={**results, "grid": grid_runs},
    )


if __name__ == "__main__":
    main()
