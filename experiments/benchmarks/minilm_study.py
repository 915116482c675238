"""The MiniLM study's costs (experiments/minilm_relations.yaml): what scoring the abilities costs against
training, and LoRA against full fine-tuning.

1. Ability overhead. ``research.training.run`` on the study for 40 steps with an evaluation every 2 (21
   evaluation points, step 0 included), the abilities as shipped (WordSim-353, SimLex-999, the Lee corpus: every
   item). Printed: the time spent scoring abilities (the evaluator's own ``ability_seconds``) as a share of the
   training time (``finetune_seconds − eval_seconds``: the updates, Lightning's loop, the method hooks), the
   target ≤ 25 %, and the same share for the whole evaluation (tasks and abilities); then the same with every
   ability scored on a seeded ``--budgets`` sample of its items (default 100).
2. LoRA vs full fine-tuning. The same study, evaluations only at step 0 and the end, one fresh
   ``python -m research run`` process per method (``finetune`` and ``lora`` at its defaults), each read for
   its peak RSS (``VmHWM`` at exit, as minilm.py does) and its training time per step (from the summary, as
   above). Printed: lora / finetune for both, and lora's trainable share of the parameters.

    uv run python experiments/benchmarks/minilm_study.py [--steps 40] [--json PATH]
    uv run python experiments/benchmarks/minilm_study.py --quick        # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import Row, limit_threads, print_rows, write_json
from minilm import EXPERIMENT, NEVER, quiet, run_peak

BENCHMARK = "minilm_study"


def measure_abilities(out: str, steps: int, every: int, max_samples: int | None = None) -> list[Row]:
    import yaml

    from research.config import load_config
    from research.training import run

    budget = []
    if max_samples is not None:  # every ability of the study, scored on a seeded max_samples of its items
        entries = yaml.safe_load(EXPERIMENT.read_text())["abilities"]
        budget = [f"abilities={json.dumps([{**e, 'max_samples': max_samples} for e in entries])}"]
    budget_text = "as shipped" if max_samples is None else f"max_samples={max_samples} each"
    overrides = [
        *budget,
        f"out={out}",
        f"train.max_steps={steps}",
        f"train.epochs={steps}",
        f"eval.every_n_steps={every}",
        "logging.wandb=disabled",
        "logging.progress=false",
        "checkpoint.every_n_seconds=0",
    ]
    result = run(load_config(EXPERIMENT, overrides), force=True)
    timings, points = result.summary["timings"], result.summary["evaluations"]
    training = timings["finetune_seconds"] - timings["eval_seconds"]
    abilities, evaluation = timings["ability_seconds"], timings["eval_seconds"]
    scored = {name: a.get("pairs_scored", a.get("inputs_scored")) for name, a in result.summary["abilities"].items()}
    print(f"\nability overhead: {steps} steps, {points} evaluation points, abilities {scored}")
    print(f"  training {training:.1f} s, evaluation {evaluation:.1f} s, of which abilities {abilities:.1f} s")
    details = {"timings": timings, "evaluations": points, "scored": scored}
    return [
        Row(
            BENCHMARK,
            f"abilities ({budget_text}) at {points} evaluation points / training time",
            100 * abilities / training,
            "%",
            "<=",
            25.0,
            details=details,
        ),
        Row(
            BENCHMARK,
            f"whole evaluation (tasks, abilities {budget_text}) at {points} points / training time",
            100 * evaluation / training,
            "%",
        ),
    ]


def measure_lora(out: str, steps: int) -> list[Row]:
    from memory import child_env

    tmp = Path(out) / "lora"
    tmp.mkdir()
    env = child_env(tmp, None)
    env["HF_HUB_OFFLINE"] = "1"
    runs = Path(out) / "lora_runs"
    command = ["run", str(EXPERIMENT), f"out={runs}", f"train.max_steps={steps}", f"train.epochs={steps}"]
    command += [f"eval.every_n_steps={NEVER}", "logging.wandb=disabled", "logging.progress=false", "--force"]
    results = {}
    for method in ("finetune", "lora"):
        peak = run_peak([*command, f"method.name={method}"], env, tmp)
        (summary,) = [
            json.loads(p.read_text())
            for p in runs.glob("*/summary.json")
            if json.loads(p.read_text()).get("method") == method
        ]
        timings = summary["timings"]
        per_step = (timings["finetune_seconds"] - timings["eval_seconds"]) / summary["steps"]
        results[method] = {**peak, "step_seconds": per_step, "method_info": summary.get("method_info", {})}
    full, lora = results["finetune"], results["lora"]
    counts = lora["method_info"].get("parameters", {})
    trainable, total = counts.get("trainable"), counts.get("total")
    print(f"\nLoRA vs full fine-tuning, {steps} steps, one fresh process each:")
    for method, r in results.items():
        print(f"  {method:10s} {1000 * r['step_seconds']:7.1f} ms per step   peak {r['peak_mb']:6.0f} MB")
    rows = [
        Row(
            BENCHMARK,
            "lora / finetune, training time per step",
            lora["step_seconds"] / full["step_seconds"],
            "x",
            details=results,
        ),
        Row(
            BENCHMARK,
            f"lora ({lora['peak_mb']:.0f} MB) / finetune ({full['peak_mb']:.0f} MB), peak RSS",
            lora["peak_mb"] / full["peak_mb"],
            "x",
        ),
    ]
    if trainable and total:
        rows.append(Row(BENCHMARK, "lora: trainable share of the parameters", 100 * trainable / total, "%"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=2, help="evaluation interval of part 1 (steps)")
    parser.add_argument("--lora-steps", type=int, default=20)
    parser.add_argument(
        "--budgets", type=int, nargs="*", default=[100], help="also measure with every ability at max_samples N"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke test: a few steps")
    parser.add_argument("--only", nargs="+", choices=["abilities", "lora"])
    parser.add_argument("--json", help="write the result rows to this file")
    args = parser.parse_args()
    limit_threads(args.threads)
    if args.quick:
        args.steps, args.every, args.lora_steps = 4, 2, 3
    quiet()
    parts = args.only or ["abilities", "lora"]
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        os.environ.setdefault("WANDB_DIR", out)
        os.environ.setdefault("WANDB_SILENT", "true")
        if "abilities" in parts:
            rows += measure_abilities(out, args.steps, args.every)
            for budget in args.budgets:
                rows += measure_abilities(out, args.steps, args.every, budget)
        if "lora" in parts:
            rows += measure_lora(out, args.lora_steps)
    print_rows(f"{BENCHMARK}: the MiniLM study's costs ({time.perf_counter() - started:.0f} s)", rows)
    write_json(args.json, BENCHMARK, rows, args.quick, settings=vars(args))


if __name__ == "__main__":
    main()
