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
from pathlib import Path
from typing import Any, NoReturn

_SubParsers = Any  # argparse's private _SubParsersAction
_DEFAULT_DB = ".synth/synth.db"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


class CliError(Exception):
    """A user error: printed as one line (``synth-middleware <command>: ...``), exit code 2."""


_DB_SCHEMES = ("postgresql://", "postgres://")


def check_db_target(target: str, *, default: bool = False) -> str:
    """Check ``serve --db``: a SQLite file path or a ``postgresql://`` URL. Raises
    :class:`CliError` saying what is wrong and what to do.

    The folder of a SQLite file must exist, unless ``default`` (``.synth/`` is created).
    """
    text = str(target).strip()
    if not text:
        raise CliError("--db is empty: give a SQLite file (e.g. .synth/synth.db)")
    lowered = text.lower()
    if lowered.startswith(_DB_SCHEMES):
        return text
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise CliError(
            f"--db {scheme}://...: only SQLite files and postgresql:// URLs are supported "
            "(e.g. --db .synth/synth.db or --db postgresql://user@host/db)"
        )
    if text == ":memory:":
        return text
    path = Path(text).expanduser()
    if path.is_dir():
        raise CliError(
            f"--db {text} is a directory: give a file inside it, e.g. --db {path / 'synth.db'}"
        )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise CliError(f"--db {text}: {parent} is not a directory; choose another --db")
    if not parent.exists() and not default:
        raise CliError(
            f"--db {text}: the folder {parent} does not exist; create it (mkdir -p {parent}) "
            "or choose another --db"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise CliError(f"--db {text}: no permission to read and write it; choose another --db")
    return text


def _serve(args: argparse.Namespace) -> int:
    db = check_db_target(args.db, default=args.db == _DEFAULT_DB)
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
    extra: dict[str, Any] = {}
    if args.config_dir:  # else the config's own default
        extra["config_dirs"] = tuple(args.config_dir)
    config = ServerConfig(
        api_key=api_key,
        upstream_url=args.upstream_url or os.environ.get("SYNTH_UPSTREAM_URL") or None,
        upstream_timeout=args.upstream_timeout,
        max_body_bytes=args.max_body_bytes,
        public_url=args.public_url,
        dashboard=not args.no_dashboard,
        upstream_total_timeout=args.upstream_total_timeout,
        allowed_hosts=tuple(
            args.allowed_host
            or [
                h.strip() for h in os.environ.get("SYNTH_ALLOWED_HOSTS", "").split(",") if h.strip()
            ]
        ),
        **extra,
    )
    replica_options = None
    if args.lease_seconds is not None:
        from synth_middleware.engine.replicas import ReplicaOptions

        replica_options = ReplicaOptions(lease_seconds=args.lease_seconds)
    from synth_middleware.engine import StorageError

    try:
        _run_serve(serve, args, db, config, replica_options)
    except StorageError as exc:
        raise CliError(f"cannot open --db {args.db}: {exc}") from None
    except ImportError as exc:  # postgresql:// without the postgres extra
        raise CliError(
            f"{exc}; install the postgres extra: pip install 'synth-middleware[postgres]'"
        ) from None
    return 0


def _run_serve(
    serve: Callable[..., None],
    args: argparse.Namespace,
    db: str,
    config: Any,
    replica_options: Any,
) -> None:
    serve(
        host=args.host,
        port=args.port,
        db_path=db,
        config=config,
        insecure=args.insecure,
        log_level=args.log_level,
        access_log=args.access_log,
        optimizer=not args.no_optimizer,
        max_staleness=args.read_staleness_ms / 1000,
        replica_options=replica_options,
    )


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
        default=os.environ.get("SYNTH_DB") or _DEFAULT_DB,
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
        "--upstream-timeout",
        type=float,
        default=60.0,
        help="seconds the proxy waits upstream: for a connection, for each read, and (unless "
        "--upstream-total-timeout) for a whole non-streaming call or a stream's first byte",
    )
    p.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=1024 * 1024,
        help="largest request body accepted (default 1 MiB); larger ones get 413",
    )
    p.add_argument(
        "--upstream-total-timeout",
        type=float,
        default=None,
        help="seconds a non-streaming proxy call may take in all, and a stream to its first "
        "byte (default: the --upstream-timeout)",
    )
    p.add_argument("--public-url", default=None, help="base of the URLs handed out to clients")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="HOST",
        help="without an API key: a Host name (besides loopback and --host) the server "
        "answers and whose web pages may call it; repeatable; '*' allows any (default "
        "$SYNTH_ALLOWED_HOSTS, comma separated)",
    )
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
    from synth_middleware.offline.container._cli import add_parser

    add_parser(sub)


def _add_demo(sub: _SubParsers) -> None:
    from synth_middleware.demos._cli import add_parser

    add_parser(sub)


SUBCOMMANDS: list[Callable[[_SubParsers], None]] = [_add_serve, _add_container, _add_demo]
"""Functions that add one subcommand each (append yours)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to look, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from synth_middleware import __version__

    parser = _Parser(
        prog="synth-middleware",
        description="Make an LLM app improve its own prompts from live traffic.",
    )
    parser.add_argument("--version", action="version", version=f"synth-middleware {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``synth-middleware`` console script."""
    from synth_middleware._shared_data import default_banking77_env

    default_banking77_env()  # ../shared/data/banking77 when there, as `make demo` does
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except CliError as exc:
        command = " ".join(
            str(p) for p in (args.command, getattr(args, "container_command", None)) if p
        )
        print(f"synth-middleware {command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
