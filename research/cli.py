"""The ``research`` command line. Exit codes: 0 success, 2 usage or config error (nothing written),
1 a run that started and failed (its summary.json says why)."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from research.errors import ConfigError, RunFailed

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


DEMO_GRID = EXPERIMENTS / "grids" / "demo.yaml"
TEXT_GRID = EXPERIMENTS / "grids" / "minilm.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come after options too (`grid G --dry-run seed=5`); argparse alone would refuse them there.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
    run.add_argument(
        "--force",
        action="store_true",
        help="start over: rerun a completed run, or an interrupted one without resuming from its checkpoint",
    )
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
    abilities = sub.add_parser(
        "abilities",
        help="list every ability kind (abilities: [...]) with its metrics and settings",
        description="List registered ability kinds, their metrics (the score first) and settings with defaults.",
    )
    abilities.set_defaults(handler=_cmd_abilities)

    grid = sub.add_parser(
        "grid",
        help="run a comparison grid (methods x hyperparameters x seeds), resumable",
        description="Expand a grid file into runs and run those not completed yet (completed runs are "
        "skipped, failed and interrupted ones rerun). See experiments/grids/ for the format.",
    )
    grid.add_argument("grid", help="grid YAML, e.g. experiments/grids/demo.yaml")
    grid.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    _grid_options(grid)
    grid.add_argument("--dry-run", action="store_true", help="print the expanded runs and their ids; run nothing")
    grid.set_defaults(handler=_cmd_grid)

    report = sub.add_parser(
        "report",
        help="tables, figures and an HTML report from a folder of runs",
        description="Read every run directory under RUNS_DIR and write the results tables (Markdown, LaTeX), the "
        "figures (PDF, PNG), the tidy data and a self-contained report.html.",
    )
    report.add_argument("runs_dir", metavar="RUNS_DIR", help="a folder of run directories, e.g. runs/demo")
    report.add_argument("--out", help="where the report goes (default: RUNS_DIR/report)")
    report.set_defaults(handler=_cmd_report)

    demo = sub.add_parser(
        "demo",
        help="run the shipped demo grid on embedded data",
        description=f"Run the demo grid ({DEMO_GRID.relative_to(EXPERIMENTS.parent)}: every method on split "
        "digits, an EWC strength sweep, 3 seeds) and print what each setting forgot.",
    )
    demo.add_argument(
        "--text",
        action="store_true",
        help=f"run the MiniLM study instead ({TEXT_GRID.relative_to(EXPERIMENTS.parent)}: a pretrained sentence "
        "encoder fine-tuned on word-pair relations, its word similarity and representation scored from step 0)",
    )
    demo.add_argument("--out", default=None, help="where the run directories go (default: runs/demo, runs/minilm)")
    demo.add_argument(
        "--workers", type=_positive, default=min(2, os.cpu_count() or 1), help="worker processes (default: 2)"
    )
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _grid_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_positive, default=1, help="runs at once (local processes or SLURM jobs)")
    parser.add_argument("--executor", choices=["local", "slurm"], default="local", help="where runs execute")
    slurm = parser.add_argument_group("slurm executor (through submitit)")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--time", type=_positive, default=60, metavar="MINUTES", help="time limit per run")
    slurm.add_argument("--gpus", type=int, default=0, help="GPUs per run")
    slurm.add_argument("--cpus", type=_positive, default=2, help="CPU cores per run")
    slurm.add_argument("--mem-gb", type=float, default=None, help="memory per run")
    slurm.add_argument(
        "--submitit-cluster",
        choices=["slurm", "local"],
        default="slurm",
        help="'local' sends the SLURM submissions through submitit's local executor (to try the path here)",
    )


def _cmd_grid(args: argparse.Namespace) -> int:
    return _run_grid(args.grid, args.overrides, args, dry_run=args.dry_run)


def _run_grid(path: Path | str, overrides: list[str], args: argparse.Namespace, dry_run: bool = False) -> int:
    from research.grid.local import LocalExecutor
    from research.grid.results import results_table
    from research.grid.runner import check_grid, describe_plan, describe_result, run_grid
    from research.grid.slurm import SlurmExecutor, SlurmOptions
    from research.grid.spec import load_grid

    slurm = None
    if args.executor == "slurm":
        slurm = SlurmOptions(args.partition, args.time, args.gpus, args.cpus, args.mem_gb, args.submitit_cluster)
        slurm.check()
    with LocalExecutor(args.workers) as local:
        if slurm is None and not dry_run:
            local.start()  # the workers import torch & co. while this process reads and checks the grid
        grid = load_grid(path, overrides)
        setups = check_grid(grid)
        if dry_run:
            print(describe_plan(grid, setups))
            return 0
        if slurm is not None:
            executor = SlurmExecutor(slurm, grid.folder / "submitit", args.workers, f"research-{grid.name}")
        else:
            local.log_dir = grid.folder / "logs"
            executor = local
        try:
            result = run_grid(grid, executor, args.workers, args.executor)
        except KeyboardInterrupt:
            print("\ngrid interrupted; run the same command again to resume", file=sys.stderr)
            return 130
    print(describe_result(result))
    print()
    print(results_table(grid))
    print(f"\nRun directories (config.yaml, metrics.parquet, summary.json, W&B files): {grid.out}")
    return 1 if result.count("failed") else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import NoRuns, build_report

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"RUNS_DIR: {runs_dir} is not a folder of runs")
    try:
        report = build_report(runs_dir, args.out or runs_dir / "report")
    except NoRuns as err:
        raise ConfigError(str(err)) from None
    print(f"report: {report.html}")
    print(f"  tables: {', '.join(str(p) for p in report.tables)}")
    print(f"  figures: {len(report.figures)} files in {report.html.parent / 'figures'}")
    for reason in report.skipped:
        print(f"  not drawn: {reason}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from research.config import load_config
    from research.training import run

    cfg = load_config(args.config, args.overrides)
    # command_line: DDP's further processes are this very command, started again by Lightning.
    result = run(cfg, force=args.force, command_line=True)
    if result.summary.get("status") == "worker":  # one of DDP's further processes: rank 0 reports the run
        return 0
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
        supports = [what for what, key in (("fine-tuning sequences", "sequences"), ("ddp", "ddp")) if method[key]]
        if supports:
            print(f"    (supports {' and '.join(supports)})")
        if method["needs"]:
            print(f"    (needs {method['needs']})")
        for p in method["params"]:
            print(f"    {p['name']:<22} {p['type']:<28} default {p['default']!r:<12} {p['help']}")
        if not method["params"]:
            print("    (no hyperparameters)")
    print("\nEvery method also takes the learning-rate settings under train.: lr, backbone_lr_scale, lr_decay.")
    return 0


def _cmd_abilities(args: argparse.Namespace) -> int:
    from research.abilities import ability_class, ability_kinds

    for kind in ability_kinds():
        cls = ability_class(kind)
        print(kind)
        print(textwrap.fill(cls.summary, width=110, initial_indent="    ", subsequent_indent="    "))
        print(f"    metrics: {', '.join(cls.metrics)} (score: {cls.metrics[0]})")
        for name, field in cls.Config.model_fields.items():
            if name in ("name", "kind"):
                continue
            default = "required" if field.is_required() else f"default {field.get_default()!r}"
            print(f"    {name:<22} {default}")
    print("classification")
    print("    the pretraining tasks (pretrain.tasks), scored by their heads; metrics: acc, loss (score: acc)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The demo grid, then its report."""
    args.executor = "local"
    grid, default_out = (TEXT_GRID, "runs/minilm") if args.text else (DEMO_GRID, "runs/demo")
    args.out = args.out or default_out
    status = _run_grid(grid, [f"out={args.out}"], args)
    if status != 0:
        return status
    print()
    return _cmd_report(argparse.Namespace(runs_dir=args.out, out=None))


def _print_result(summary: dict, run_dir: Path) -> None:
    print(f"run {summary.get('run_id')} {summary.get('status')}: {run_dir}")
    for task, final in summary.get("final", {}).items():
        initial = summary["initial"].get(task, {})
        # A class-incremental task is not scored before its own task starts (its classes have no outputs yet).
        start = f"{initial['acc']:.4f}" if "acc" in initial else "   n/a"
        print(f"  {final['role']:8s} {task:20s} acc {start} -> {final['acc']:.4f}")
    for name, ability in summary.get("abilities", {}).items():
        for metric, value in ability["final"].items():
            if metric != "role":
                start = ability["initial"].get(metric)
                shown = f"{start:.4f}" if start is not None else "   n/a"
                print(f"  ability  {name:20s} {metric} {shown} -> {value:.4f}")


if __name__ == "__main__":
    sys.exit(main())
