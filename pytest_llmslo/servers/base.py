"""The server interface shared by every backend, its errors, and the readiness check."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import httpx

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.netpolicy import ProbeAnswer, ProbeAnswerError, bounded_get, probe_client
from pytest_llmslo.records import Endpoint
from pytest_llmslo.redact import Secrets, redact_command

LOG_TAIL_LINES = 40
POLL_INTERVAL = 0.25  # seconds between readiness probes


class ServerStartError(RuntimeError):
    """A server did not become ready: it exited, timed out, or could not be launched."""


class BackendMissingError(ServerStartError):
    """The package that runs a backend is not installed in this environment."""


class PortInUseError(ServerStartError):
    """An explicitly configured port is already taken by another process."""


@runtime_checkable
class Server(Protocol):
    """An OpenAI-compatible inference server, managed by us or already running elsewhere."""

    config: ServerConfig

    def start(self) -> Endpoint:
        """Block until the server answers (or raise ServerStartError); return how to reach it."""
        ...

    def stop(self) -> None:
        """Stop the server and every process it started; calling it again does nothing."""
        ...

    def is_alive(self) -> bool: ...

    def pids(self) -> list[int]:
        """The live process tree (root and descendants); [] when the server is not ours."""
        ...

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str: ...

    @property
    def endpoint(self) -> Endpoint | None: ...


def start_error(
    name: str,
    what: str,
    *,
    command: Sequence[str] | None = None,
    log_tail: str = "",
    log_path: str | None = None,
    hint: str = "",
    secrets: Secrets | None = None,
) -> str:
    """Format a start failure: which server, what happened, the command, the log tail, the fix.

    The text ends up in test failures and reports, so credential options of the command and
    URL user-info are hidden, and `secrets` (the server's own credentials) are scrubbed from the
    whole of it, the log tail included: servers print their arguments when they start.
    """
    import shlex

    parts = [f"server {name!r}: {what}"]
    if command is not None:
        parts.append(f"command: {shlex.join(redact_command(command))}")
    if log_path:
        parts.append(f"log: {log_path}")
    if hint:
        parts.append(hint)
    if log_tail.strip():
        parts.append(f"last lines of the server log:\n{log_tail.rstrip()}")
    elif command is not None:
        parts.append("the server log is empty")
    # URL user-info (base_url) and Authorization lines go even when no secret values are known
    return (secrets or Secrets()).scrub("\n".join(parts))


def api_key_from_env(config: ServerConfig) -> str | None:
    """The API key from the variable `config.api_key_env` names; unset is an error, not None."""
    var = config.api_key_env
    if not var:
        return None
    key = os.environ.get(var)
    if key is None:
        raise ServerStartError(
            start_error(
                config.name,
                f"api_key_env names the environment variable {var!r}, which is not set",
                hint=f"export {var}=<key>, or remove api_key_env from the server's config",
            )
        )
    return key


def missing_modules(modules: Sequence[str]) -> list[str]:
    """Which of these top-level modules cannot be imported here (without importing them)."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def connect_host(host: str) -> str:
    """The address a client uses to reach a server listening on `host`, formatted for a URL."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on `host` now (another process may still take it later)."""
    bind_host = host.strip("[]")
    with socket.socket(_family(bind_host), socket.SOCK_STREAM) as sock:
        sock.bind((bind_host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    bind_host = host.strip("[]")
    with socket.socket(_family(bind_host), socket.SOCK_STREAM) as sock:
        # the same option servers use, so a port left in TIME_WAIT still counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError:
            return False
        return True


class NotReady(Exception):
    """The server was still starting; `reason` says what the last probe saw."""


class Unreachable(NotReady):
    """Nothing accepted the connection (refused, unknown host, no route): nothing is listening."""


def probe_ready(
    client: httpx.Client,
    base_url: str,
    paths: Sequence[str],
    headers: Mapping[str, str],
) -> list[str]:
    """Probe each readiness path once; return the model ids from /v1/models (if probed).

    Raises NotReady while any path does not answer 200 (Unreachable when the connection itself
    was refused).
    """
    model_ids: list[str] = []
    for path in paths:
        try:
            response = bounded_get(client, base_url + path, headers)
        except httpx.ConnectError as exc:
            raise Unreachable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise NotReady(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        except ProbeAnswerError as exc:
            raise NotReady(str(exc)) from exc
        if response.status != 200:
            raise NotReady(f"GET {path}: HTTP {response.status} {response.text[:200]!r}")
        if path.endswith("/v1/models"):
            model_ids = _model_ids(response)
    return model_ids


def _model_ids(response: ProbeAnswer) -> list[str]:
    try:
        body: Any = json.loads(response.content)
    except ValueError as exc:
        raise NotReady(f"GET /v1/models: not JSON: {response.text[:200]!r}") from exc
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise NotReady(f"GET /v1/models: no 'data' list in {response.text[:200]!r}")
    return [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]


def wait_ready(
    base_url: str,
    paths: Sequence[str],
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    check_alive: Callable[[], None] | None = None,
    unreachable_grace: float | None = None,
) -> list[str]:
    """Poll the readiness paths until all answer 200 or `timeout` seconds pass.

    `check_alive` runs before every probe and raises when the server process has exited, so a
    crash is reported at once instead of after the whole timeout. With `unreachable_grace`,
    connections refused for that long raise ConnectionRefusedError at once: a server that is
    already supposed to run fails fast, while one that accepts connections but is still loading
    gets the whole timeout. Returns the model ids seen at /v1/models; raises TimeoutError with
    the last probe's answer.
    """
    started = time.monotonic()
    deadline = started + timeout
    last = "no answer yet"
    with probe_client() as client:
        while True:
            if check_alive is not None:
                check_alive()
            try:
                return probe_ready(client, base_url, paths, headers or {})
            except Unreachable as exc:
                last = str(exc)
                if unreachable_grace is not None and (
                    time.monotonic() - started >= min(unreachable_grace, timeout)
                ):
                    raise ConnectionRefusedError(last) from None
            except NotReady as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise TimeoutError(last)
            time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def metrics_problem(base_url: str, headers: Mapping[str, str] | None = None) -> str | None:
    """None when GET /metrics answers Prometheus text, else what it answered instead."""
    try:
        with probe_client() as client:
            response = bounded_get(client, base_url + "/metrics", headers)
    except (httpx.HTTPError, ProbeAnswerError) as exc:
        return f"GET /metrics failed ({type(exc).__name__}: {exc})"
    if response.status != 200:
        return f"GET /metrics answered HTTP {response.status}"
    if "# TYPE" not in response.text:
        return "GET /metrics answered something other than Prometheus text"
    return None


def args_to_flags(args: Mapping[str, Any]) -> list[str]:
    """Map backend options to command-line flags.

    ``gpu_memory_utilization: 0.9`` -> ``--gpu-memory-utilization 0.9``; ``true`` -> the bare
    flag; ``false``/``None`` -> omitted; a list -> the flag followed by each value; a mapping ->
    the flag followed by its JSON text.
    """
    flags: list[str] = []
    for key, value in args.items():
        flag = key if key.startswith("-") else "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            flags.append(flag)
            flags.extend(_scalar(v) for v in value)
        elif isinstance(value, Mapping):
            flags.extend([flag, json.dumps(value, separators=(",", ":"))])
        else:
            flags.extend([flag, _scalar(value)])
    return flags


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def has_flag(command: Sequence[str], flag: str) -> bool:
    """Whether `flag` appears in a command line, as ``--flag value`` or ``--flag=value``."""
    return any(part == flag or part.startswith(flag + "=") for part in command)
