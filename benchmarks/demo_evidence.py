"""Evidence for the classification demo: datasets x seeds x budgets, plus the control.

For each dataset, seed and budget (rollouts) it runs the demo (lockstep, embedded
backend, pattern A, offline stand-in unless ``--model``) and records what the
backend **names** best, the held-out comparison with the baseline on all test
queries (paired 95% CI) and the rollouts until the first promotion; then the
same run with ``--copy-baseline-proposals`` (the candidates are exact copies of
the baseline prompt, so nothing should be named). Writes a Markdown table (and
the raw rows as JSON) and prints the table::

    .venv/bin/python benchmarks/demo_evidence.py --seeds 0 1 2 --budgets default 2000 \\
        --out results/evidence

Datasets: ``banking77`` (the ``make demo`` run: verified files, Banking77's
prompt), ``hwu64`` (the generic task), and any ``--data NAME:TRAIN:TEST`` (the
generic task; CSV or JSONL with ``text``/``label`` columns).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def _datasets(names: list[str], extra: list[str]) -> dict[str, Any]:
    """name -> (LabelledData, task or None, title)."""
    from synth_middleware.demos.banking77 import data as b77
    from synth_middleware.demos.banking77.task import Banking77Task
    from synth_middleware.demos.classify.data import load_labelled

    out: dict[str, Any] = {}
    for name in names:
        if name == "banking77":
            ds = b77.load(SHARED / "banking77", allow_download=False, progress=False)
            out[name] = (ds.as_labelled(), Banking77Task(ds.labels), "Banking77")
        elif name == "hwu64":
            d = load_labelled(SHARED / "hwu64" / "train.csv", SHARED / "hwu64" / "test.csv")
            out[name] = (d, None, "HWU64 (generic task)")
        else:
            raise SystemExit(f"unknown dataset {name!r}: use banking77, hwu64 or --data")
    for spec in extra:
        try:
            name, train, test = spec.split(":", 2)
        except ValueError:
            raise SystemExit(f"--data {spec!r}: expected NAME:TRAIN:TEST") from None
        out[name] = (load_labelled(train, test, name=name), None, f"{name} (generic task)")
    return out


def _row(dataset: str, budget: str, seed: int, control: bool, r: dict[str, Any]) -> dict[str, Any]:
    test = r["evaluation"]["test"]
    base = test["baseline"]
    best = test.get("named best")
    d = best["vs_baseline"] if best else None
    return {
        "dataset": dataset,
        "budget": budget,
        "rollouts": r["options"]["rollouts"],
        "seed": seed,
        "run": "copies of the baseline" if control else "optimizer",
        "proposals": len(r["proposals"]),
        "named": r["named_best"]["name"] if not r["named_best"]["is_baseline"] else None,
        "first_named_after": r["first_named_after_rollouts"],
        "best_changes": len(r["promotions"]),
        "n_test": base["n"],
        "baseline": base["accuracy"],
        "named_best": best["accuracy"] if best else None,
        "diff": d["diff"] if d else 0.0,
        "ci95": d["ci95"] if d else None,
        "excludes_zero_up": bool(d and d["ci95"][0] > 0),
        "seconds": r["seconds"]["total"],
        "run_dir": r["run_dir"],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with one verdict line per dataset, budget and run kind."""
    head = (
        "| dataset | budget (rollouts) | run | seed | proposals | named best at the end "
        "| first named after (rollouts) | changes of the best | baseline % | named best % "
        "| diff pts [95% CI] | CI > 0 | wall s |\n"
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"
    )
    lines = [head]
    for x in rows:
        ci = x["ci95"]
        diff = (
            f"{100 * x['diff']:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
            if ci
            else "0 (nothing named)"
        )
        lines.append(
            f"| {x['dataset']} | {x['budget']} ({x['rollouts']}) | {x['run']} | {x['seed']} | "
            f"{x['proposals']} | {x['named'] or 'baseline kept'} | "
            f"{x['first_named_after'] if x['first_named_after'] is not None else '-'} | "
            f"{x['best_changes']} | "
            f"{_pct(x['baseline'])} | {_pct(x['named_best'])} | {diff} | "
            f"{'yes' if x['excludes_zero_up'] else 'no'} | {x['seconds']:.0f} |"
        )
    lines.append("")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for x in rows:
        groups.setdefault((x["dataset"], x["budget"], x["run"]), []).append(x)
    for (dataset, budget, kind), xs in groups.items():
        up = sum(1 for x in xs if x["excludes_zero_up"])
        named = sum(1 for x in xs if x["named"])
        ever = sum(1 for x in xs if x["first_named_after"] is not None)
        mean = math.fsum(x["diff"] for x in xs) / len(xs)
        lines.append(
            f"- {dataset}, {budget}, {kind}: a candidate named at the end in {named}/{len(xs)} "
            f"seeds (at some point in {ever}/{len(xs)}); "
            f"CI above zero in {up}/{len(xs)}; mean gain {100 * mean:+.1f} points"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the matrix; write ``evidence.md`` and ``evidence.json`` under ``--out``."""
    from synth_middleware.demos.classify.demo import DemoOptions, run

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="*", default=["banking77", "hwu64"])
    p.add_argument("--data", action="append", default=[], help="NAME:TRAIN:TEST (generic task)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--budgets",
        nargs="+",
        default=["default", "2000"],
        help="rollouts per run; 'default' is the demo's default budget",
    )
    p.add_argument("--no-control", action="store_true", help="skip the copy-baseline runs")
    p.add_argument("--test-size", type=int, default=None, help="default: all test queries")
    p.add_argument("--model", default="standin")
    p.add_argument("--out", default="results/evidence")
    p.add_argument("--verbose", action="store_true", help="show each run's output")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = _datasets(args.datasets, args.data)
    default = DemoOptions().rollouts
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name, (data, task, title) in datasets.items():
        for budget in args.budgets:
            rollouts = default if budget == "default" else int(budget)
            for control in (False,) if args.no_control else (False, True):
                for seed in args.seeds:
                    opts = DemoOptions(
                        rollouts=rollouts,
                        seed=seed,
                        test_size=args.test_size,
                        model=args.model,
                        out=str(out),
                        progress=False,
                        copy_baseline_proposals=control,
                    )
                    stream = sys.stdout if args.verbose else io.StringIO()
                    r = run(opts, data, task, title=title, stream=stream)
                    row = _row(name, budget, seed, control, r)
                    rows.append(row)
                    print(
                        f"{name} {budget} seed {seed} {row['run']}: named {row['named']}, "
                        f"diff {100 * row['diff']:+.1f} pts, {row['seconds']:.0f}s",
                        flush=True,
                    )
    table = markdown(rows)
    cmd = "benchmarks/demo_evidence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "evidence.md").write_text(
        f"Command: `.venv/bin/python {cmd.strip()}`\n\n{table}\n"
        f"Total {time.perf_counter() - started:.0f}s\n"
    )
    (out / "evidence.json").write_text(json.dumps(rows, indent=2))
    print()
    print(table)
    print(f"Wrote {out / 'evidence.md'} and {out / 'evidence.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
