"""The public API, pinned (in the spirit of httpx's ``tests/test_exported_members.py``).

Each public package's ``__all__`` is spelled out here: adding, removing or
renaming a public name fails this test until the list is changed on purpose.
Every exported name must import and be documented: classes and functions by
their docstring, constants and type aliases by an attribute docstring (the
string literal right after the assignment, which Sphinx and IDEs show). And a
package exports what it binds: a public name in its namespace that is not in
``__all__`` is a leak (or a missing export).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import sys
import types
from typing import Any

import pytest

PUBLIC: dict[str, list[str]] = {
    "synth_middleware": [
        "BackendError",
        "CandidateError",
        "InvalidRequestError",
        "NotFoundError",
        "Rollout",
        "Settings",
        "SynthError",
        "TokenData",
        "TokenError",
        "__version__",
        "configure",
        "current_rollout",
        "decode_token",
        "flush",
        "reward",
        "rollout",
        "rollout_of",
        "settings",
        "stats",
        "wrap",
    ],
    "synth_middleware.backends": [
        "Backend",
        "CandidateItem",
        "RewardRecord",
        "RewardResult",
        "RolloutRecord",
        "SessionState",
    ],
    "synth_middleware.container": [
        "ENV_API_KEY",
        "AsyncContainerClient",
        "ContainerClient",
        "ContainerError",
        "ContainerSettings",
        "ContainerUnreachable",
        "InProcessContainer",
        "InProcessServer",
        "InvalidRolloutResponse",
        "LLMError",
        "OnlineRolloutResult",
        "OnlineRunner",
        "Outcome",
        "RolloutContext",
        "RolloutFailed",
        "RolloutFn",
        "RolloutRequest",
        "RolloutResponse",
        "RolloutResult",
        "RolloutTimeout",
        "TaskDefinition",
        "chat_completions_url",
        "create_container_app",
        "ensure_environment_api_key",
        "parse_rollout_response",
        "rollout_body",
        "wait_healthy",
    ],
    "synth_middleware.engine": [
        "CandidateState",
        "Engine",
        "Event",
        "OptimizerOptions",
        "OptimizerRunner",
        "RolloutsResult",
        "SessionConfig",
        "SessionStateMachine",
        "SqliteStore",
        "StorageError",
        "Store",
        "WriteTxn",
        "best_candidate",
        "is_postgres_url",
        "open_store",
        "parse_session_config",
        "validate_session_id",
    ],
    "synth_middleware.sdk": [
        "AsyncSynthClient",
        "ConfigError",
        "GepaOnlineSession",
        "MiproOnlineSession",
        "OnlineSession",
        "OptimizationConfig",
        "SynthClient",
        "load_config",
        "parse_config",
    ],
    # the offline side's home (synth_middleware.container and .sdk re-export it)
    "synth_middleware.offline.container": [
        "ENV_API_KEY",
        "AsyncContainerClient",
        "ContainerClient",
        "ContainerError",
        "ContainerSettings",
        "ContainerUnreachable",
        "InProcessContainer",
        "InProcessServer",
        "InvalidRolloutResponse",
        "LLMError",
        "OnlineRolloutResult",
        "OnlineRunner",
        "Outcome",
        "RolloutContext",
        "RolloutFailed",
        "RolloutFn",
        "RolloutRequest",
        "RolloutResponse",
        "RolloutResult",
        "RolloutTimeout",
        "TaskDefinition",
        "chat_completions_url",
        "create_container_app",
        "ensure_environment_api_key",
        "parse_rollout_response",
        "rollout_body",
        "wait_healthy",
    ],
    "synth_middleware.offline.sdk": [
        "AsyncSynthClient",
        "ConfigError",
        "GepaOnlineSession",
        "MiproOnlineSession",
        "OnlineSession",
        "OptimizationConfig",
        "SynthClient",
        "load_config",
        "parse_config",
    ],
    "synth_middleware.server": ["ServerConfig", "create_app"],
    "synth_middleware.testing": [
        "FakeOpenAIServer",
        "ReplyFn",
        "async_in_memory_http_client",
        "default_reply",
        "in_memory_http_client",
    ],
    "synth_middleware_fastapi": [
        "ROLLOUT_HEADER",
        "AuthCheck",
        "FeedbackError",
        "SynthMiddleware",
        "SynthRollout",
        "WebConfig",
        "feedback_router",
        "get_rollout",
        "synth_rollout",
    ],
    "synth_middleware_django": ["SynthMiddleware", "get_rollout"],
}

# Public too, but imported on first use so that `import synth_middleware` stays light
# (the engine, the HTTP backend, the SDK): `synth_middleware.LocalBackend` works,
# `from synth_middleware import *` does not pull them in.
LAZY_TOP_LEVEL = ["AsyncSynthClient", "HttpBackend", "LocalBackend", "SynthClient"]


def _module(name: str) -> types.ModuleType:
    if name == "synth_middleware_django":
        pytest.importorskip("django")
    return importlib.import_module(name)


def _attribute_doc(name: str, value: Any) -> str | None:
    """The attribute docstring of the module-level assignment that made ``value``."""
    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith("synth_middleware") or vars(mod).get(name) is not value:
            continue
        try:
            body = ast.parse(inspect.getsource(mod)).body
        except (OSError, TypeError):
            continue
        for node, after in itertools.pairwise(body):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                if (
                    isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                ):
                    return after.value.value
    return None


def _assert_documented(where: str, name: str, value: Any) -> None:
    if inspect.isclass(value) or inspect.isroutine(value):
        doc = value.__doc__  # the object's own: a class does not inherit its base's here
    else:
        doc = _attribute_doc(name, value)
    assert doc and doc.strip(), f"{where}.{name} has no docstring"


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_all_is_pinned(package: str) -> None:
    module = _module(package)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{package}.__all__ has duplicates"
    assert sorted(exported) == sorted(PUBLIC[package]), (
        f"{package}.__all__ changed: update the pinned list here if that was on purpose"
    )


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_every_export_imports_and_is_documented(package: str) -> None:
    module = _module(package)
    for name in module.__all__:
        value = getattr(module, name)  # AttributeError: listed but not importable
        if name == "__version__":
            assert isinstance(value, str) and value
        _assert_documented(package, name, value)
    assert module.__doc__ and module.__doc__.strip(), f"{package} has no module docstring"


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_names_are_exported(package: str) -> None:
    module = _module(package)
    for name in module.__all__:
        getattr(module, name)  # lazy packages bind their names on first use
    leaked = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)  # subpackages are reached by path
        and name not in ("annotations", "TYPE_CHECKING", "Any")  # typing imports
        and name not in module.__all__
    ]
    assert leaked == [], f"{package} binds public names it does not export: {leaked}"


def test_lazy_top_level_names() -> None:
    import synth_middleware

    for name in LAZY_TOP_LEVEL:
        assert name not in synth_middleware.__all__
        _assert_documented("synth_middleware", name, getattr(synth_middleware, name))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        synth_middleware.NoSuchThing  # noqa: B018


def test_version_comes_from_the_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import tomllib
    from pathlib import Path

    import synth_middleware

    pyproject = Path(synth_middleware.__file__).resolve().parent.parent / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert synth_middleware.__version__ == declared
    assert synth_middleware.__version__ == importlib.metadata.version("synth-middleware")

    # a source tree that was never installed: no metadata, pyproject.toml is read
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    from synth_middleware._version import _version

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert _version() == declared
