"""Talk to a container (task app) from the backend side: health, task info, rollouts.

::

    client = AsyncContainerClient("http://127.0.0.1:8102", api_key=os.environ["ENVIRONMENT_API_KEY"])
    result = await client.rollout(seed=3, inference_url=proxy_url, model="gpt-4.1-nano")
    result.reward, result.details["expected"]

Failures are typed so a job can tell them apart:

* :class:`ContainerUnreachable`: no connection after ``retries`` attempts with
  exponential backoff (connection refused, DNS, reset before an answer);
* :class:`RolloutTimeout`: no answer within ``timeout`` (the request is
  cancelled; the container's own timeout answers 504, also mapped here);
* :class:`RolloutFailed`: the container answered an error (``status`` 502 with
  ``code="llm_error"`` when its model call failed; 4xx for a bad request);
* :class:`~synth_middleware.offline.container.models.InvalidRolloutResponse`: it
  answered 2xx with something that is not a rollout answer.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import tenacity

from synth_middleware.offline.container._paseto import CONTAINER_AUTH_HEADER, ContainerTokenSigner
from synth_middleware.offline.container.models import (
    InvalidRolloutResponse,
    RolloutResult,
    parse_rollout_response,
)

__all__ = [
    "AsyncContainerClient",
    "ContainerClient",
    "ContainerError",
    "ContainerUnreachable",
    "InvalidRolloutResponse",
    "RolloutFailed",
    "RolloutTimeout",
    "container_dialect",
    "rollout_body",
]


class ContainerError(RuntimeError):
    """Base class of container call failures."""


class ContainerUnreachable(ContainerError):
    """The container could not be reached (after the retries)."""


class RolloutTimeout(ContainerError):
    """The rollout did not finish in time."""


class RolloutFailed(ContainerError):
    """The container answered an error status."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(f"container answered {status} {code or ''}: {message}".replace("  ", " "))
        self.status = status
        self.code = code


def rollout_body(
    *,
    seed: int,
    inference_url: str,
    model: str | None = None,
    trace_correlation_id: str | None = None,
    env_config: dict[str, Any] | None = None,
    prompt_template: dict[str, Any] | None = None,
    policy_id: str | None = None,
    timeout_seconds: float | None = None,
    extra_policy: dict[str, Any] | None = None,
    provider: str = "openai",
    dialect: str = "synth",
) -> dict[str, Any]:
    """A ``POST /rollout`` body in the wire shape.

    ``policy`` carries ``config`` (``{inference_url, model, ...}``, what task apps
    read) and, when ``model`` is known, ``provider``/``model``/``inference_url`` at
    its top too (what synth-containers requires). ``dialect="synth-containers"``
    leaves out the fields that its strict request model refuses (``policy_id``,
    ``timeout_seconds``; the policy id then travels in ``policy.config``).
    """
    cfg: dict[str, Any] = {"inference_url": inference_url}
    if model is not None:
        cfg["model"] = model
    if prompt_template is not None:
        cfg["prompt_template"] = prompt_template
    if extra_policy:
        cfg.update(extra_policy)
    policy: dict[str, Any] = {"config": cfg}
    if model is not None:
        policy.update(provider=provider, model=model, inference_url=inference_url)
    body: dict[str, Any] = {
        "trace_correlation_id": trace_correlation_id or f"tc_{time.time_ns():x}",
        "env": {"seed": seed, "config": dict(env_config or {})},
        "policy": policy,
    }
    strict = dialect == "synth-containers"
    if policy_id is not None:
        if strict:
            cfg["policy_id"] = policy_id
        else:
            policy["policy_id"] = policy_id
    if timeout_seconds is not None and not strict:
        body["timeout_seconds"] = timeout_seconds
    return body


def container_dialect(health: Any) -> str:
    """``"synth-containers"`` when a ``/health`` answer is synth-containers' own
    (``{status, contract_version}``), else ``"synth"``."""
    if isinstance(health, dict) and "contract_version" in health and "healthy" not in health:
        return "synth-containers"
    return "synth"


def _headers(api_key: str | None, signer: ContainerTokenSigner | None = None) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    if signer is not None:  # a fresh short-lived token per request
        headers[CONTAINER_AUTH_HEADER] = signer.header_value()
    return headers


def _failure(resp: httpx.Response) -> ContainerError:
    code: str | None = None
    message = resp.text[:300]
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            code = str(err.get("code")) if err.get("code") else None
            message = str(err.get("message") or message)[:300]
        elif resp.json().get("detail"):
            message = str(resp.json()["detail"])[:300]
    except (ValueError, AttributeError):
        pass
    if resp.status_code == 504:
        return RolloutTimeout(f"container rollout timed out: {message}")
    return RolloutFailed(resp.status_code, code, message)


def _result(resp: httpx.Response) -> RolloutResult:
    if resp.status_code >= 300:
        raise _failure(resp)
    try:
        data = resp.json()
    except ValueError:
        raise InvalidRolloutResponse("the container answered non-JSON") from None
    return parse_rollout_response(data)


def _json(resp: httpx.Response) -> Any:
    if resp.status_code >= 300:
        raise _failure(resp)
    try:
        return resp.json()
    except ValueError:
        raise InvalidRolloutResponse("the container answered non-JSON") from None


# Connection-level failures before any answer: retried with exponential backoff.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


def _reconnects(retries: int, backoff: float) -> dict[str, Any]:
    """tenacity options: reconnect ``retries`` times on a connection-level failure,
    waiting ``backoff``, ``2 * backoff``, ... (no jitter: one job's calls, not a herd);
    then the last error is raised as it was."""
    return {
        "retry": tenacity.retry_if_exception_type(_RETRYABLE),
        "stop": tenacity.stop_after_attempt(max(0, retries) + 1),
        "wait": tenacity.wait_exponential(multiplier=backoff),
        "reraise": True,
    }


def _unreachable(url: str, attempt: int, exc: Exception) -> ContainerUnreachable:
    return ContainerUnreachable(
        f"cannot reach the container at {url} after {attempt + 1} attempt(s) ({type(exc).__name__})"
    )


def _attempts(retrying: tenacity.BaseRetrying) -> int:
    """Attempts the last call of ``retrying`` made (in this thread)."""
    return int(retrying.statistics.get("attempt_number", 1))


def _timeout(url: str, method: str, path: str) -> RolloutTimeout:
    return RolloutTimeout(f"the container at {url} did not answer {method} {path} in time")


class AsyncContainerClient:
    """Async client of one container. ``retries``/``backoff``: reconnect attempts
    (exponential: backoff, 2*backoff, ...) before :class:`ContainerUnreachable`.
    ``token_signer``: also send ``X-Synth-Container-Authorization`` (a PASETO token,
    see :mod:`~synth_middleware.offline.container._paseto`) for the vendor's containers."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.25,
        http: httpx.AsyncClient | None = None,
        token_signer: ContainerTokenSigner | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.token_signer = token_signer
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._http = http
        self._owns = http is None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=5.0),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                trust_env=False,
            )
        return self._http

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def request() -> httpx.Response:
            # a fresh token per attempt (the signer's tokens are short-lived)
            headers = _headers(self.api_key, self.token_signer)
            return await self._client().request(method, self.url + path, headers=headers, **kwargs)

        retrying = tenacity.AsyncRetrying(**_reconnects(self.retries, self.backoff))
        try:
            return await retrying(request)
        except _RETRYABLE as exc:  # the reconnects ran out
            raise _unreachable(self.url, max(0, self.retries), exc) from exc
        except httpx.TimeoutException as exc:
            raise _timeout(self.url, method, path) from exc
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, _attempts(retrying) - 1, exc) from exc

    async def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return _json(await self._send("GET", "/health"))  # type: ignore[no-any-return]

    async def task_info(
        self, *, seed: int | None = None, seeds: list[int] | None = None, split: str | None = None
    ) -> Any:
        """``GET /task_info`` (a dict, or a list with ``seeds``)."""
        params: dict[str, Any] = {}
        if seed is not None:
            params["seed"] = seed
        if seeds is not None:
            params["seeds"] = ",".join(str(s) for s in seeds)
        if split is not None:
            params["split"] = split
        return _json(await self._send("GET", "/task_info", params=params))

    async def rollout(self, body: dict[str, Any] | None = None, **fields: Any) -> RolloutResult:
        """``POST /rollout`` with ``body`` or :func:`rollout_body` ``(**fields)``."""
        payload = body if body is not None else rollout_body(**fields)
        resp = await self._send("POST", "/rollout", content=json.dumps(payload))
        return _result(resp)

    async def aclose(self) -> None:
        """Close the connections (when this client opened them)."""
        if self._http is not None and self._owns:
            await self._http.aclose()
        self._http = None


class ContainerClient:
    """Synchronous twin of :class:`AsyncContainerClient`."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.25,
        token_signer: ContainerTokenSigner | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.token_signer = token_signer
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), trust_env=False)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        def request() -> httpx.Response:
            # a fresh token per attempt (the signer's tokens are short-lived)
            headers = _headers(self.api_key, self.token_signer)
            return self._http.request(method, self.url + path, headers=headers, **kwargs)

        retrying = tenacity.Retrying(**_reconnects(self.retries, self.backoff))
        try:
            return retrying(request)
        except _RETRYABLE as exc:  # the reconnects ran out
            raise _unreachable(self.url, max(0, self.retries), exc) from exc
        except httpx.TimeoutException as exc:
            raise _timeout(self.url, method, path) from exc
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, _attempts(retrying) - 1, exc) from exc

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return _json(self._send("GET", "/health"))  # type: ignore[no-any-return]

    def task_info(
        self, *, seed: int | None = None, seeds: list[int] | None = None, split: str | None = None
    ) -> Any:
        """``GET /task_info``."""
        params: dict[str, Any] = {}
        if seed is not None:
            params["seed"] = seed
        if seeds is not None:
            params["seeds"] = ",".join(str(s) for s in seeds)
        if split is not None:
            params["split"] = split
        return _json(self._send("GET", "/task_info", params=params))

    def rollout(self, body: dict[str, Any] | None = None, **fields: Any) -> RolloutResult:
        """``POST /rollout``."""
        payload = body if body is not None else rollout_body(**fields)
        return _result(self._send("POST", "/rollout", content=json.dumps(payload)))

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> ContainerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
