"""The ``research`` command line. Exit codes: 0 success, 2 usage or config error (nothing written),
1 a run that started and failed (its summary.json says why)."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from research.errors import ConfigError, RunFailed

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def demo_runs() -> list[tuple[str, list[str]]]:
    """The demo: every registered method on the split-digits experiment (so a new method joins it the moment it
    exists), then the two other shipped experiments under plain fine-tuning. A grid with seeds and a report
    replace this list when they exist."""
    from research.methods import method_names

    methods = ["finetune", *[m for m in method_names() if m != "finetune"]]
    return [
        *[("split_digits.yaml", [f"method.name={m}"]) for m in methods],
        ("rotated_digits.yaml", ["method.name=finetune"]),
        ("mnist1d.yaml", ["method.name=finetune"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"research: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"research: {err}", file=sys.stderr)
        return 1


class _Parser(argparse.ArgumentParser):
    """argparse with the contract's error format: one line on stderr, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"research: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="research",
        description="Measure what a pretrained model forgets while it is fine-tuned, under a chosen method.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="pretrain (cached) and fine-tune one experiment",
        description="Run one experiment: pretraining (cached by config hash), then "
        "fine-tuning with every task scored at step 0 and every N steps.",
    )
    run.add_argument("config", help="experiment YAML, e.g. experiments/split_digits.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. method.name=ewc")
    run.add_argument("--force", action="store_true", help="rerun even if a completed run with this id exists")
    run.set_defaults(handler=_cmd_run)

    pre = sub.add_parser(
        "pretrain",
        help="run only the pretraining stage (or reuse its cache)",
        description="Train and cache the pretrained model of an experiment.",
    )
    pre.add_argument("config")
    pre.add_argument("overrides", nargs="*", metavar="key=value")
    pre.set_defaults(handler=_cmd_pretrain)

    methods = sub.add_parser(
        "methods",
        help="list every method with its hyperparameters and defaults",
        description="List registered methods, their hyperparameters and defaults.",
    )
    methods.set_defaults(handler=_cmd_methods)

    demo = sub.add_parser(
        "demo",
        help="run the shipped demo experiments on embedded data",
        description="Run the shipped experiments (split digits under every method, rotated "
        "digits, MNIST-1D) and print what each run forgot.",
    )
    demo.add_argument("--out", default="runs/demo", help="where the run directories go (default: runs/demo)")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from research.config import load_config
    from research.training import run

    cfg = load_config(args.config, args.overrides)
    result = run(cfg, force=args.force)
    if result.skipped:
        print(f"already completed: {result.run_dir} (use --force to rerun)")
    _print_result(result.summary, result.run_dir)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from research.config import load_config
    from research.training import pretrain_only

    pretrained = pretrain_only(load_config(args.config, args.overrides))
    state = "reused" if pretrained.cached else "trained"
    print(f"pretrained model {state}: {pretrained.path}")
    for split, scores in (pretrained.manifest.get("metrics") or {}).items():
        for task, values in scores.items():
            print(f"  {split:4s} {task:20s} acc {values['acc']:.4f}  loss {values['loss']:.4f}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from research.methods import describe_methods

    for method in describe_methods():
        print(method["name"])
        print(textwrap.fill(method["summary"], width=110, initial_indent="    ", subsequent_indent="    "))
        if method["sequences"]:
            print("    (supports fine-tuning sequences)")
        for p in method["params"]:
            print(f"    {p['name']:<22} {p['type']:<28} default {p['default']!r:<12} {p['help']}")
        if not method["params"]:
            print("    (no hyperparameters)")
    print("\nEvery method also takes the learning-rate settings under train.: lr, backbone_lr_scale, lr_decay.")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from research.config import load_config
    from research.training import run

    started = time.perf_counter()
    rows = []
    runs = demo_runs()
    for file, overrides in runs:
        cfg = load_config(EXPERIMENTS / file, [f"out={args.out}", "logging.progress=false", *overrides])
        print(f"[{len(rows) + 1}/{len(runs)}] {cfg.name} / {cfg.method['name']} ...", flush=True)
        result = run(cfg)
        rows.append((cfg.name, cfg.method["name"], result.summary))
    print(f"\nForgetting in {len(rows)} runs ({time.perf_counter() - started:.0f} s), accuracy at step 0 -> final:")
    print(f"{'experiment':16s} {'method':19s} {'pretraining task (old)':>26s} {'new task':>18s}")
    for name, method, summary in rows:
        cells = []
        for role in ("pretrain", "finetune"):
            tasks = [t for t, v in summary["final"].items() if v["role"] == role]
            start = sum(summary["initial"][t]["acc"] for t in tasks) / len(tasks)
            end = sum(summary["final"][t]["acc"] for t in tasks) / len(tasks)
            cells.append(f"{start:.3f} -> {end:.3f}")
        print(f"{name:16s} {method:19s} {cells[0]:>26s} {cells[1]:>18s}")
    print(f"\nRun directories (config.yaml, metrics.parquet, summary.json, W&B files): {args.out}")
    return 0


def _print_result(summary: dict, run_dir: Path) -> None:
    print(f"run {summary.get('run_id')} {summary.get('status')}: {run_dir}")
    for task, final in summary.get("final", {}).items():
        initial = summary["initial"].get(task, {})
        print(f"  {final['role']:8s} {task:20s} acc {initial.get('acc', float('nan')):.4f} -> {final['acc']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
