"""The ``synth-middleware`` command.

Subcommands are registered in :data:`SUBCOMMANDS`: each entry adds its parser
to the subparsers and sets ``handler`` (a function of the parsed arguments
returning an exit code). Heavy imports (the server's FastAPI and uvicorn)
happen inside handlers, so ``synth-middleware --help`` stays fast and works
without the optional extras.

::

    synth-middleware serve --port 8000 --db .synth/synth.db
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

_SubParsers = Any  # argparse's private _SubParsersAction


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _serve(args: argparse.Namespace) -> int:
    try:
        from synth_middleware.server.config import ServerConfig
        from synth_middleware.server.run import InsecureBindError, check_bind, serve
    except ImportError as exc:  # the server extra is missing
        print(
            f"synth-middleware serve needs the server extra: pip install 'synth-middleware[server]' "
            f"({exc})",
            file=sys.stderr,
        )
        return 1
    api_key = args.api_key or os.environ.get("SYNTH_API_KEY") or None
    try:
        check_bind(args.host, api_key, args.insecure)
    except InsecureBindError as exc:
        print(f"synth-middleware serve: {exc}", file=sys.stderr)
        return 2
    config = ServerConfig(
        api_key=api_key,
        upstream_url=args.upstream_url or os.environ.get("SYNTH_UPSTREAM_URL") or None,
        upstream_timeout=args.upstream_timeout,
        max_body_bytes=args.max_body_bytes,
        public_url=args.public_url,
        dashboard=not args.no_dashboard,
        **({"config_dirs": tuple(args.config_dir)} if args.config_dir else {}),
    )
    replica_options = None
    if args.lease_seconds is not None:
        from synth_middleware.engine.replicas import ReplicaOptions

        replica_options = ReplicaOptions(lease_seconds=args.lease_seconds)
    serve(
        host=args.host,
        port=args.port,
        db_path=args.db,
        config=config,
        insecure=args.insecure,
        log_level=args.log_level,
        access_log=args.access_log,
        optimizer=not args.no_optimizer,
        max_staleness=args.read_staleness_ms / 1000,
        replica_options=replica_options,
    )
    return 0


def _add_serve(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the embedded engine over HTTP (wire API, proxy, dashboard)",
        description="Serve the embedded optimization engine over HTTP: the wire API, the "
        "Pattern A chat-completions proxy and a dashboard at /.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.add_argument(
        "--db",
        default=os.environ.get("SYNTH_DB") or ".synth/synth.db",
        help="SQLite file of the event log (default $SYNTH_DB or .synth/synth.db), or a "
        "postgresql://user:password@host/db URL: several replicas may then serve the same "
        "sessions (needs the postgres extra; prefer $SYNTH_DB for a URL with a password)",
    )
    p.add_argument(
        "--read-staleness-ms",
        type=float,
        default=0.0,
        help="PostgreSQL: reads may be this old (a replica skips re-reading a session's log "
        "for that long); its own writes are always visible (default 0: always re-read)",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="PostgreSQL: how long a replica owns a session without renewing it, i.e. the "
        "takeover time after a crash (default 3)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="key every route but /health requires (default $SYNTH_API_KEY; prefer the "
        "environment variable: command lines are visible to other users)",
    )
    p.add_argument(
        "--upstream-url",
        default=None,
        help="OpenAI-compatible base URL the proxy forwards to, e.g. https://api.openai.com/v1 "
        "(default $SYNTH_UPSTREAM_URL); its key comes from $SYNTH_UPSTREAM_API_KEY or "
        "$OPENAI_API_KEY",
    )
    p.add_argument(
        "--upstream-timeout", type=float, default=60.0, help="seconds the proxy waits upstream"
    )
    p.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=1024 * 1024,
        help="largest request body accepted (default 1 MiB); larger ones get 413",
    )
    p.add_argument("--public-url", default=None, help="base of the URLs handed out to clients")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without an API key",
    )
    p.add_argument(
        "--config-dir",
        action="append",
        default=None,
        help="a folder whose TOML/JSON files a create request may name as config_path (the "
        "hosted client's config_path=); repeatable (default $SYNTH_CONFIG_DIRS, else none)",
    )
    p.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard at /")
    p.add_argument(
        "--no-optimizer",
        action="store_true",
        help="do not run the online optimizers (proposals, pruning) in this process; its "
        "proposer model comes from the session config or $SYNTH_PROPOSER_URL, "
        "$SYNTH_PROPOSER_MODEL, $SYNTH_PROPOSER_API_KEY",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(handler=_serve)


def _add_container(sub: _SubParsers) -> None:
    from synth_middleware.container._cli import add_parser

    add_parser(sub)


def _add_demo(sub: _SubParsers) -> None:
    from synth_middleware.demos._cli import add_parser

    add_parser(sub)


SUBCOMMANDS: list[Callable[[_SubParsers], None]] = [_add_serve, _add_container, _add_demo]
"""Functions that add one subcommand each (append yours)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="synth-middleware",
        description="Make an LLM app improve its own prompts from live traffic.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``synth-middleware`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
