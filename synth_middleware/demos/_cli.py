"""``synth-middleware demo ...``: argument parsing only (the demos import on use, so
``synth-middleware --help`` stays fast and works without the optional extras)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "add_parser",
    "configure_banking77",
    "configure_classify",
    "run_banking77",
    "run_classify",
]

STANDIN = "standin"


class _Parser(argparse.ArgumentParser):
    """A demo's parser: unknown arguments are reported with this demo's usage (argparse
    would otherwise hand them to the top-level parser, which prints its own usage)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _configure_common(p: argparse.ArgumentParser, *, model_env: str) -> None:
    from synth_middleware.demos.classify.demo import DemoOptions

    d = DemoOptions()
    p.add_argument(
        "--rollouts", type=_positive, default=d.rollouts, help=f"online rollouts ({d.rollouts})"
    )
    p.add_argument(
        "--optimizer",
        choices=["gepa", "mipro"],
        default=d.optimizer,
        help=f"the online optimizer ({d.optimizer})",
    )
    p.add_argument(
        "--train-size",
        type=_positive,
        default=None,
        help="training rows the rollouts draw from (default: up to 2000)",
    )
    p.add_argument(
        "--val-size",
        type=_non_negative,
        default=None,
        help="validation rows after them (default: up to 50)",
    )
    p.add_argument(
        "--min-proposal-rollouts",
        type=_non_negative,
        default=d.min_proposal_rollouts,
        help=f"rewards before proposals ({d.min_proposal_rollouts})",
    )
    p.add_argument(
        "--model",
        default=os.environ.get(model_env) or STANDIN,
        help="policy model, e.g. gpt-4.1-nano (needs OPENAI_API_KEY, optional OPENAI_BASE_URL); "
        "default: the offline stand-in (not an LLM)",
    )
    p.add_argument("--proposer-model", default=None, help="proposer model (default: --model)")
    p.add_argument(
        "--pattern",
        choices=["a", "b"],
        default="a",
        help="a: the container calls the session's proxy; b: a wrapped client applies candidates",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="data order, rollout order, optimizer, the proxy's draws (0); in lockstep the "
        "same seed gives the same proposals and candidates",
    )
    p.add_argument(
        "--test-size",
        type=_positive,
        default=None,
        help="held-out test queries to evaluate on (default: the whole test file)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=d.concurrency,
        help=f"rollouts in flight without lockstep ({d.concurrency})",
    )
    p.add_argument(
        "--no-lockstep",
        action="store_true",
        help="run rollouts concurrently with the optimizer in the background (timing-dependent; "
        "lockstep, the default on the embedded backend with pattern a, runs one rollout at a "
        "time and steps the optimizer after each reward)",
    )
    p.add_argument(
        "--copy-baseline-proposals",
        action="store_true",
        help="control run: no proposer; exact copies of the baseline prompt are added as "
        "candidates instead, so a sound backend names none of them",
    )
    p.add_argument(
        "--out",
        default=d.out,
        help=f"each run writes to a new <out>/runs/<name>-<time>-seed<N>/ ({d.out})",
    )
    p.add_argument(
        "--backend-url",
        default=os.environ.get("SYNTH_URL") or os.environ.get("SYNTH_BACKEND_URL") or None,
        help="an existing backend, e.g. `synth-middleware serve --upstream-url "
        "http://127.0.0.1:8011/v1` with --standin-port 8011 here (default: $SYNTH_URL, else "
        "an embedded one)",
    )
    p.add_argument(
        "--standin-port",
        type=_non_negative,
        default=0,
        help="serve the stand-in model on this port (default: any free port)",
    )
    p.add_argument(
        "--standin-latency",
        type=float,
        default=None,
        help="seconds each stand-in answer takes during rollouts (default: 0 in lockstep, "
        "0.2 otherwise, an LLM-like pace for the background optimizer)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")


def configure_banking77(p: argparse.ArgumentParser) -> None:
    """Add the Banking77 demo's flags to ``p``."""
    _configure_common(p, model_env="BANKING77_MODEL")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with train.csv, test.csv, categories.json (default: $BANKING77_DIR, the "
        "cache, else a verified download)",
    )


def configure_classify(p: argparse.ArgumentParser) -> None:
    """Add the generic classification demo's flags to ``p``."""
    p.add_argument("--train", required=True, help="training file: CSV with a header, or JSONL")
    p.add_argument("--test", required=True, help="held-out test file (same format)")
    p.add_argument("--text-col", default="text", help="the text column or key (text)")
    p.add_argument(
        "--label-col",
        default=None,
        help="the label column or key (default: label, else category, intent or class)",
    )
    p.add_argument("--name", default=None, help="the dataset's name in outputs (its folder's)")
    _configure_common(p, model_env="CLASSIFY_MODEL")


def _options(args: argparse.Namespace, **extra: Any) -> Any:
    from synth_middleware.demos.classify.demo import DemoOptions

    return DemoOptions(
        rollouts=args.rollouts,
        optimizer=args.optimizer,
        train_size=args.train_size,
        val_size=args.val_size,
        min_proposal_rollouts=args.min_proposal_rollouts,
        model=args.model,
        proposer_model=args.proposer_model,
        pattern=args.pattern,
        seed=args.seed,
        test_size=args.test_size,
        concurrency=args.concurrency,
        out=args.out,
        backend_url=args.backend_url,
        progress=not args.no_progress,
        plot=not args.no_plot,
        standin_latency=args.standin_latency,
        standin_port=args.standin_port,
        lockstep=not args.no_lockstep,
        copy_baseline_proposals=args.copy_baseline_proposals,
        **extra,
    )


def _guarded(prog: str, fn: Any) -> int:
    from synth_middleware.demos.classify.demo import DemoError

    try:
        fn()
    except DemoError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:  # bad data or options
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_banking77(args: argparse.Namespace) -> int:
    """Run the Banking77 demo with parsed arguments; the exit code (1: the run failed,
    2: bad data or options)."""
    from synth_middleware.demos.banking77.demo import run

    opts = _options(args, data_dir=args.data_dir)
    return _guarded("demo banking77", lambda: run(opts))


def run_classify(args: argparse.Namespace) -> int:
    """Run the generic classification demo with parsed arguments; the exit code (1: the
    run failed, 2: bad data or options)."""
    from synth_middleware.demos.classify.data import load_labelled
    from synth_middleware.demos.classify.demo import run

    def go() -> None:
        data = load_labelled(
            args.train, args.test, text_col=args.text_col, label_col=args.label_col, name=args.name
        )
        run(_options(args), data)

    return _guarded("demo classify", go)


def add_parser(sub: Any) -> None:
    """Register ``demo banking77`` and ``demo classify`` on the CLI's subparsers."""
    demo = sub.add_parser(
        "demo", help="runnable demos (banking77, classify)", description="Runnable demos."
    )
    demos = demo.add_subparsers(dest="demo", metavar="DEMO", parser_class=_Parser)
    p = demos.add_parser(
        "banking77",
        help="MIPRO online on Banking77 (offline by default, with a stand-in model)",
        description="MIPRO online on Banking77, end to end: container, backend, online "
        "session, rollouts, proposals, held-out evaluation of the baseline against the "
        "candidate the backend names, results JSON and plot in a new run directory. Offline "
        "by default (a stand-in model, not an LLM); --model gpt-4.1-nano uses a real one.",
    )
    configure_banking77(p)
    p.set_defaults(handler=run_banking77)
    c = demos.add_parser(
        "classify",
        help="MIPRO online on your own labelled data (CSV or JSONL of text,label rows)",
        description="Optimize a classification prompt on any labelled dataset: a training "
        "file and a held-out test file (CSV with a header, or JSONL), a generic baseline "
        "prompt listing the labels, reward 1 for the expected label. Same flow and outputs "
        "as demo banking77.",
    )
    configure_classify(c)
    c.set_defaults(handler=run_classify)

    def _usage(args: argparse.Namespace) -> int:
        demo.print_help()
        return 2

    demo.set_defaults(handler=_usage)
