"""``synth-middleware container serve module:app``: serve a container standalone.

``module:attr`` names an ASGI app (e.g. built by
:func:`~synth_middleware.offline.container.create_container_app`), a
:class:`~synth_middleware.offline.container.TaskDefinition` (an app is built from it),
or, with ``--factory``, a callable returning either::

    synth-middleware container serve mytasks.qa:app --port 8102
    synth-middleware container serve synth_middleware.demos.banking77.task:create_app --factory

The key clients must send is ``ENVIRONMENT_API_KEY`` (generated and printed
once when unset, since this process is the only one that knows it).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from typing import Any

__all__ = ["add_parser", "load_app"]


def load_app(target: str, *, factory: bool = False) -> Any:
    """Import ``module:attr`` and return an ASGI app (see the module docstring)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if factory:
        obj = obj()
    from synth_middleware.offline.container.app import TaskDefinition, create_container_app

    if isinstance(obj, TaskDefinition):
        obj = create_container_app(obj)
    if not callable(obj):
        raise TypeError(
            f"{target} is not an ASGI app, a TaskDefinition or (with --factory) a factory"
        )
    _check_asgi(obj, target)
    return obj


def _load_error(target: str, exc: BaseException) -> str:
    """One line for a target that could not be loaded: what is wrong, what to do."""
    module_name = target.partition(":")[0]
    if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
        return (
            f"cannot import {module_name!r} ({exc}); run from the folder that holds it or "
            "put it on PYTHONPATH"
        )
    if isinstance(exc, AttributeError) and ":" in target:
        return f"{target}: {exc}; check the name after the colon"
    if isinstance(exc, ValueError | TypeError) and str(exc).startswith(("expected", target)):
        return str(exc)
    return f"cannot load {target}: {type(exc).__name__}: {exc}"


def _check_asgi(obj: Any, target: str) -> None:
    """Refuse a callable that cannot be an ASGI app (it must accept scope, receive, send)."""
    call = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else obj.__call__
    try:
        sig = inspect.signature(call)
    except (TypeError, ValueError):  # a builtin or C callable: let the server try it
        return
    try:
        sig.bind(object(), object(), object())
    except TypeError:
        raise TypeError(
            f"{target} is not an ASGI app (it does not take scope, receive, send): name an "
            "app, a TaskDefinition, or a factory with --factory"
        ) from None


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        print(
            f"container serve needs the server extra: pip install 'synth-middleware[server]' ({exc})",
            file=sys.stderr,
        )
        return 1
    from synth_middleware.offline.container.app import ENV_API_KEY

    generated = False
    if args.api_key:
        os.environ[ENV_API_KEY] = args.api_key
    elif not os.environ.get(ENV_API_KEY):
        if not sys.stderr.isatty():
            print(
                "synth-middleware container serve: set ENVIRONMENT_API_KEY (or pass --api-key): "
                "a key generated here would be shown only on an interactive terminal, and "
                "callers need it",
                file=sys.stderr,
            )
            return 2
        from synth_middleware.offline.container.app import ensure_environment_api_key

        ensure_environment_api_key()
        generated = True
    try:
        app = load_app(args.target, factory=args.factory)
    except Exception as exc:  # the user's module or factory: one line, not a traceback
        print(f"synth-middleware container serve: {_load_error(args.target, exc)}", file=sys.stderr)
        return 2
    print(
        f"synth-middleware: container {args.target} on http://{args.host}:{args.port}", flush=True
    )
    if generated:
        # interactive only (checked above), once, on the terminal: nobody else knows this key
        key = os.environ.get(ENV_API_KEY)
        print(
            f"  generated ENVIRONMENT_API_KEY={key} (set it yourself to keep it)", file=sys.stderr
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``container serve`` on the CLI's subparsers."""
    container = sub.add_parser(
        "container",
        help="task apps (containers): serve one standalone",
        description="Task apps (containers) that optimizers evaluate prompts against.",
    )
    commands = container.add_subparsers(dest="container_command", metavar="COMMAND")
    p = commands.add_parser(
        "serve",
        help="serve module:app (an ASGI app, a TaskDefinition, or a factory with --factory)",
        description="Serve a container (task app) standalone. TARGET is module:attribute "
        "naming an ASGI app, a TaskDefinition, or (with --factory) a callable returning "
        "either, e.g. mytasks.qa:app.",
    )
    p.add_argument("target", metavar="TARGET", help="module:attribute")
    p.add_argument("--factory", action="store_true", help="call the attribute to get the app")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8102, help="port (default 8102)")
    p.add_argument(
        "--api-key",
        default=None,
        help="the key callers must send (default $ENVIRONMENT_API_KEY; when unset, one is "
        "generated and shown on an interactive terminal, and required otherwise)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.set_defaults(handler=_serve)

    def _usage(args: argparse.Namespace) -> int:
        container.print_help()
        return 2

    container.set_defaults(handler=_usage)
