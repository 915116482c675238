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
# research.grid.spec.MAX_RUNS, written out so that parsing the command line imports no grid code (the grid
# command's default; tests/test_grid_bad_input.py checks that the two agree).
GRID_MAX_RUNS = 10_000


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = _plain_overrides(parser, sys.argv[1:] if argv is None else list(argv))
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
        return getattr(err, "exit_code", 1)  # RunInterrupted: 130, as for any program stopped by Ctrl-C
    except BrokenPipeError:  # `research ... | head` closed our output: stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not raise again
        return 1


def _plain_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--method.lam=100`` → ``method.lam=100``: a W&B sweep agent passes its parameters that way (its default
    command ends in ``${args}``). An option of the chosen command (``grid --workers=2``) is left as it is."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    command = next((item for item in argv if item in commands), None)
    own = [*parser._actions, *(commands[command]._actions if command else [])]
    options = {option for action in own for option in action.option_strings if option.startswith("--")}
    plain = []
    for item in argv:
        name, sep, _ = item.partition("=")
        if item.startswith("--") and sep and name not in options and len(name) > 2:
            item = item[2:]
        plain.append(item)
    return plain


def _version() -> str:
    from importlib.metadata import version

    from research.store import git_commit

    git = git_commit()
    commit = f", commit {git['commit'][:10]}{' (uncommitted changes)' if git['dirty'] else ''}" if git["commit"] else ""
    return f"research (forgetting-lab) {version('forgetting-lab')}{commit}"


class _VersionAction(argparse.Action):
    """``--version``, asking git only when it is given (not on every start of the command line)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(_version())
        parser.exit()


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, except where there is none to show or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
            or action.nargs == 0
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with the contract's error format: one line on stderr, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"research: error: {message} (see '{self.prog} --help')\n")


def _subparser(formatter: type[argparse.HelpFormatter]) -> type[_Parser]:
    class Sub(_Parser):
        def __init__(self, **kwargs) -> None:
            super().__init__(formatter_class=formatter, **kwargs)

    return Sub


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="research",
        description="Measure what a pretrained model forgets while it is fine-tuned, under a chosen method.",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and git commit, then exit")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_subparser(_DefaultsFormatter)
    )

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
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything (data, method, model) and print the resolved config, run id and what a run would "
        "do (start, resume, skip); write nothing",
    )
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML (a file `research run` takes) and its run id; check and write nothing",
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

    reference = sub.add_parser(
        "config",
        help="the configuration reference: every key, its type, default and meaning",
        description="Print every experiment config key with its type, default and meaning, generated from the typed "
        "schema (docs/configuration.md holds the same text).",
    )
    reference.add_argument("section", nargs="?", help="only this section, e.g. train or model")
    reference.set_defaults(handler=_cmd_config)

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
    grid.add_argument(
        "--max-runs",
        type=_positive,
        default=GRID_MAX_RUNS,
        metavar="N",
        help="refuse a grid file that expands to more runs than this (counted before anything is expanded)",
    )
    grid.set_defaults(handler=_cmd_grid)

    report = sub.add_parser(
        "report",
        help="tables, figures and an HTML report from a folder of runs",
        description="Read the run directories under RUNS_DIR and write the results tables (Markdown, LaTeX), the "
        "figures (PDF, PNG), the tidy data and a self-contained report.html. Runs are compared within their study "
        "(their grid, or the experiment of a run started alone): one section per study, never one pooled table.",
    )
    report.add_argument("runs_dir", metavar="RUNS_DIR", help="a folder of run directories, e.g. runs/demo")
    report.add_argument("--out", help="where the report goes (default: RUNS_DIR/report)")
    report.add_argument("--grid", help="only the runs of this grid (its name: the grid file's `name`)")
    report.add_argument("--experiment", help="only the runs of this experiment (its `name`)")
    report.add_argument("--runs", nargs="+", metavar="ID", help="only these run ids")
    report.set_defaults(handler=_cmd_report)

    sync = sub.add_parser(
        "sync",
        help="upload the offline W&B runs of a folder of runs",
        description="Upload the offline W&B runs of every run directory under RUNS_DIR with the project's own "
        "`wandb sync`, skipping runs already uploaded (plain `wandb sync --sync-all` finds none of them: each run "
        "directory has its own wandb/ folder). Log in first (`wandb login`).",
    )
    sync.add_argument("runs_dir", metavar="RUNS_DIR", help="a folder of run directories, e.g. runs/demo")
    sync.add_argument("--dry-run", action="store_true", help="list the runs that would be uploaded; upload nothing")
    sync.add_argument("--include-synced", action="store_true", help="upload runs already uploaded too")
    sync.add_argument("--project", help="the W&B project to upload to (default: the one each run was logged for)")
    sync.add_argument("--entity", help="the W&B entity to upload to (default: the one each run was logged for)")
    sync.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS", help="stop wandb sync after this")
    sync.set_defaults(handler=_cmd_sync)

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
    parser.add_argument(
        "--force",
        action="store_true",
        help="rerun every run of the grid from the start, completed ones too (as `research run --force` does)",
    )
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
    from research.grid.runner import check_grid, describe_plan, describe_result, run_grid, runs_to_do
    from research.grid.slurm import SlurmExecutor, SlurmOptions
    from research.grid.spec import load_grid

    force = getattr(args, "force", False)  # `research demo` has no --force
    slurm = None
    if args.executor == "slurm":
        slurm = SlurmOptions(args.partition, args.time, args.gpus, args.cpus, args.mem_gb, args.submitit_cluster)
        slurm.check()
    with LocalExecutor(args.workers) as local:
        grid = load_grid(path, overrides, getattr(args, "max_runs", GRID_MAX_RUNS))  # `research demo`: no option
        if dry_run:
            print(describe_plan(grid, check_grid(grid), force))
            return 0
        # A grid with nothing left to run starts no worker and checks nothing (its runs passed the checks when
        # they ran, and the run ids would differ had their configs or data changed since).
        if runs_to_do(grid, force):
            check_grid(grid)
            if slurm is None:
                local.start()  # only now: a grid refused by its checks starts no worker process
        if not force:
            _note_other_code(grid)
        if slurm is not None:
            executor = SlurmExecutor(slurm, grid.folder / "submitit", args.workers, f"research-{grid.name}")
        else:
            local.log_dir = grid.folder / "logs"
            executor = local
        try:
            result = run_grid(grid, executor, args.workers, args.executor, force=force)
        except KeyboardInterrupt:
            print("\ngrid interrupted; run the same command again to resume", file=sys.stderr)
            return 130
    print(describe_result(result))
    print()
    print(results_table(grid))
    print(f"\nRun directories (config.yaml, metrics.parquet, summary.json, W&B files): {grid.out}")
    return 1 if result.count("failed") else 0


def _note_other_code(grid) -> None:
    """Say when completed runs the grid will skip were made by other code than this (another commit, or
    uncommitted changes): their numbers may differ from what this code gives."""
    from research.store import read_summary

    changed = []
    for run in grid.runs:
        summary = read_summary(run.run_dir) if run.run_dir.is_dir() else None
        if summary and summary.get("status") == "completed" and code_changed(summary):
            changed.append((run, code_changed(summary)))
    if changed:
        first, why = changed[0]
        print(
            f"note: completed runs to skip that other code made: {len(changed)} (e.g. {first.name}: {why}); "
            "--force reruns them",
            flush=True,
        )


def _runs_dir(text: str) -> Path:
    runs_dir = Path(text)
    if not runs_dir.is_dir():
        raise ConfigError(f"RUNS_DIR: {runs_dir} is not a folder of runs")
    return runs_dir


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import NoRuns, build_report

    runs_dir = _runs_dir(args.runs_dir)
    try:
        report = build_report(
            runs_dir,
            args.out or runs_dir / "report",
            grid=getattr(args, "grid", None),
            experiment=getattr(args, "experiment", None),
            run_ids=getattr(args, "runs", None),
        )
    except NoRuns as err:
        raise ConfigError(str(err)) from None
    print(f"report: {report.html}")
    if len(report.studies) > 1:
        print(f"  studies (one section each): {', '.join(report.studies)}")
    print(f"  tables: {', '.join(str(p) for p in report.tables)}")
    print(f"  figures: {len(report.figures)} files in {report.html.parent / 'figures'}")
    for reason in report.skipped:
        print(f"  not drawn: {reason}")
    for line in report.left_out:  # runs that failed or could not be read: named, never silently dropped
        print(f"  left out: {line}")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from research.sync import SyncError, sync_runs

    runs_dir = _runs_dir(args.runs_dir)
    try:
        runs = sync_runs(
            runs_dir,
            dry_run=args.dry_run,
            include_synced=args.include_synced,
            project=args.project,
            entity=args.entity,
            timeout=args.timeout,
        )
    except SyncError as err:
        print(f"research: {err}", file=sys.stderr)
        return 1
    verb = "would upload" if args.dry_run else "uploaded"
    for r in runs:
        print(f"  {verb} {r.run_dir.name} (W&B run {r.wandb_id}{', already uploaded before' if r.synced else ''})")
    print(f"{verb} {len(runs)} offline W&B run{'s' * (len(runs) != 1)} from {runs_dir}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from research.config import load_config
    from research.training import run

    cfg = load_config(args.config, args.overrides)
    if args.print_config or args.dry_run:
        return _show_run(cfg, check=args.dry_run, force=args.force)
    # command_line: DDP's further processes are this very command, started again by Lightning.
    result = run(cfg, force=args.force, command_line=True)
    if result.summary.get("status") == "worker":  # one of DDP's further processes: rank 0 reports the run
        return 0
    if result.skipped:
        print(f"already completed: {result.run_dir} (use --force to rerun)")
        changed = code_changed(result.summary)
        if changed:
            print(f"note: {changed}; its numbers may differ from what this code gives (--force reruns it)")
    _print_result(result.summary, result.run_dir)
    return 0


def _show_run(cfg, check: bool, force: bool) -> int:
    """``--print-config`` and ``--dry-run``: the resolved config (YAML that `research run` reads back) and the run
    id; a dry run first checks everything a run would check, then says what the run would do. Nothing is written."""
    import yaml

    from research.config import resolved, run_id
    from research.data.fingerprint import content_fingerprints

    if check:
        from research.training.run import check as check_run

        check_run(cfg, command_line=True)
    else:  # the run id fingerprints the user's files: a missing one would give an id no run can have
        from research.config import missing_files

        missing = missing_files(cfg)
        if missing is not None:
            raise ConfigError(missing)
    rid = run_id(cfg, content_fingerprints(cfg))
    print(f"# run id: {rid}")
    print(yaml.safe_dump(resolved(cfg), sort_keys=False, allow_unicode=True), end="")
    if check:
        print(f"# {_planned(Path(cfg.out) / rid, force)}")
    return 0


def _planned(run_dir: Path, force: bool) -> str:
    """What `research run` would do with this run directory."""
    from research.store import read_summary

    summary = read_summary(run_dir) if run_dir.is_dir() else None
    if summary is None:
        return f"would start a new run in {run_dir}"
    status = summary.get("status")
    if status == "completed":
        return f"{run_dir} is completed: " + (
            "would rerun it (--force)" if force else "would skip it (--force reruns it)"
        )
    from research.training.resume import CHECKPOINT_FILE

    if (run_dir / CHECKPOINT_FILE).is_file() and not force:
        return f"{run_dir} is {status}: would resume it from its checkpoint (if the checkpoint is usable)"
    return f"{run_dir} is {status}: would start it over"


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


def _cmd_config(args: argparse.Namespace) -> int:
    from research.reference import config_reference, section_names

    if args.section is not None and args.section not in section_names():
        raise ConfigError(f"section '{args.section}' does not exist; valid sections: {', '.join(section_names())}")
    print(config_reference(args.section), end="")
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


def code_changed(summary: dict) -> str | None:
    """How the code now differs from the code that produced a completed run, or None when it is the same commit
    with a clean tree (a dirty tree counts as different: which edits made the run is unknown)."""
    from research.store import git_commit

    then, now = summary.get("git") or {}, git_commit()
    if now["commit"] is None or then.get("commit") is None:
        return None
    if then["commit"] != now["commit"]:
        return f"this run was made by commit {then['commit'][:10]}, and the code is now at {now['commit'][:10]}"
    if then.get("dirty") or now["dirty"]:
        return f"this run or the code now has uncommitted changes (commit {now['commit'][:10]})"
    return None


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
