"""``synth-middleware demo ...``: argument parsing only (the demos import on use, so
``synth-middleware --help`` stays fast and works without the optional extras)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_parser", "configure_banking77", "run_banking77"]

STANDIN = "standin"


def configure_banking77(p: argparse.ArgumentParser) -> None:
    """Add the Banking77 demo's flags to ``p``."""
    p.add_argument("--rollouts", type=int, default=100, help="online rollouts to run (100)")
    p.add_argument("--train-size", type=int, default=200, help="train seeds 0..N-1 (200)")
    p.add_argument("--val-size", type=int, default=10, help="validation seeds after them (10)")
    p.add_argument(
        "--min-proposal-rollouts", type=int, default=20, help="rewards before proposals (20)"
    )
    p.add_argument(
        "--model",
        default=os.environ.get("BANKING77_MODEL") or STANDIN,
        help="policy model, e.g. gpt-4.1-nano (needs OPENAI_API_KEY, optional OPENAI_BASE_URL); "
        "default: the offline stand-in (TF-IDF nearest neighbours, not an LLM)",
    )
    p.add_argument("--proposer-model", default=None, help="proposer model (default: --model)")
    p.add_argument(
        "--pattern",
        choices=["a", "b"],
        default="a",
        help="a: the container calls the session's proxy; b: a wrapped client applies candidates",
    )
    p.add_argument("--seed", type=int, default=0, help="data order, rollout order, optimizer (0)")
    p.add_argument(
        "--test-size", type=int, default=400, help="held-out test queries to evaluate on (400)"
    )
    p.add_argument("--concurrency", type=int, default=4, help="rollouts in flight (4)")
    p.add_argument(
        "--data-dir", default=None, help="folder with train.csv, test.csv, categories.json"
    )
    p.add_argument("--out", default="results/banking77", help="where the JSON and PNG go")
    p.add_argument(
        "--backend-url",
        default=os.environ.get("SYNTH_URL") or os.environ.get("SYNTH_BACKEND_URL") or None,
        help="an existing backend (default: $SYNTH_URL, else an embedded one)",
    )
    p.add_argument(
        "--standin-latency",
        type=float,
        default=0.2,
        help="seconds each stand-in answer takes during rollouts, so the online loop runs at "
        "an LLM-like pace (0.2; evaluation calls skip it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")


def run_banking77(args: argparse.Namespace) -> int:
    """Run the Banking77 demo with parsed arguments; the exit code."""
    from synth_middleware.demos.banking77 import data
    from synth_middleware.demos.banking77.demo import DemoOptions, run

    opts = DemoOptions(
        rollouts=args.rollouts,
        train_size=args.train_size,
        val_size=args.val_size,
        min_proposal_rollouts=args.min_proposal_rollouts,
        model=args.model,
        proposer_model=args.proposer_model,
        pattern=args.pattern,
        seed=args.seed,
        test_size=args.test_size,
        concurrency=args.concurrency,
        data_dir=args.data_dir,
        out=args.out,
        backend_url=args.backend_url,
        progress=not args.no_progress,
        plot=not args.no_plot,
        standin_latency=args.standin_latency,
    )
    try:
        run(opts)
    except (data.DatasetNotFound, data.ChecksumError, ValueError) as exc:
        print(f"demo banking77: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub: Any) -> None:
    """Register ``demo banking77`` on the CLI's subparsers."""
    demo = sub.add_parser("demo", help="runnable demos (banking77)", description="Runnable demos.")
    demos = demo.add_subparsers(dest="demo", metavar="DEMO")
    p = demos.add_parser(
        "banking77",
        help="MIPRO online on Banking77 (offline by default, with a stand-in model)",
        description="MIPRO online on Banking77, end to end: container, backend, online "
        "session, rollouts, proposals, held-out evaluation, results JSON and plot. Offline by "
        "default (a TF-IDF stand-in model, not an LLM); --model gpt-4.1-nano uses a real one.",
    )
    configure_banking77(p)
    p.set_defaults(handler=run_banking77)

    def _usage(args: argparse.Namespace) -> int:
        demo.print_help()
        return 2

    demo.set_defaults(handler=_usage)
