"""A server that is already running somewhere: we only check that it answers, never stop it.

It is expected to run already: a refused connection fails the start within seconds, while a
server that accepts connections but is not ready (503 while loading) is waited for up to
``startup_timeout``. Its ``/metrics`` is asked for once at start unless ``metrics: false``.
"""

from __future__ import annotations

from typing import ClassVar

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.records import Endpoint
from pytest_llmslo.servers.base import (
    LOG_TAIL_LINES,
    ServerStartError,
    api_key_from_env,
    metrics_problem,
    start_error,
    wait_ready,
)

UNREACHABLE_GRACE_S = 2.0  # refused connections for this long: nothing is listening there


def normalize_base_url(url: str) -> str:
    """``http://host:8000/v1/`` -> ``http://host:8000``: clients add /v1 themselves."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url.rstrip("/")


class ExternalServer:
    """Any OpenAI-compatible URL (LLaMA-Factory's API, SGLang, TGI, a deployed service)."""

    backend: ClassVar[str] = "external"
    # /health is not part of the OpenAI API, so only /v1/models is required
    readiness_paths: ClassVar[tuple[str, ...]] = ("/v1/models",)

    def __init__(self, config: ServerConfig) -> None:
        if not config.base_url:
            raise ValueError(
                f"server {config.name!r}: backend 'external' needs `base_url` "
                "(for example http://127.0.0.1:8000/v1)"
            )
        if not config.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"server {config.name!r}: base_url {config.base_url!r} must start with http:// "
                "or https://"
            )
        self.config = config
        self.base_url = normalize_base_url(config.base_url)
        self._endpoint: Endpoint | None = None
        # why /metrics is not scraped, for the report; None while it is (or before start)
        self.metrics_reason: str | None = None

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    def api_key(self) -> str | None:
        return api_key_from_env(self.config)

    def start(self) -> Endpoint:
        api_key = self.api_key()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            model_ids = wait_ready(
                self.base_url,
                self.readiness_paths,
                timeout=self.config.startup_timeout,
                headers=headers,
                unreachable_grace=UNREACHABLE_GRACE_S,
            )
        except ConnectionRefusedError as exc:
            raise ServerStartError(
                start_error(
                    self.config.name,
                    f"nothing accepts connections at {self.base_url} ({exc})",
                    hint="an external server must be running before the tests start: check "
                    "base_url (or --slo-server-url) and that the service is up",
                )
            ) from None
        except TimeoutError as exc:
            raise ServerStartError(
                start_error(
                    self.config.name,
                    f"{self.base_url}/v1/models did not answer 200 within "
                    f"{self.config.startup_timeout:g} s (last probe: {exc})",
                    hint="check base_url, that the server is up, and the API key",
                )
            ) from None
        model = self.config.served_model_name or self.config.model
        if not model:
            if not model_ids:
                raise ServerStartError(
                    start_error(
                        self.config.name,
                        f"{self.base_url}/v1/models lists no model",
                        hint="set `model` to the name the server expects in requests",
                    )
                )
            model = model_ids[0]
        self._endpoint = Endpoint(
            base_url=self.base_url,
            model=model,
            backend=self.backend,
            api_key=api_key,
            # not started by this run: its start-up time is unknown, not the probe's 40 ms
            startup_seconds=None,
            has_metrics=self._check_metrics(headers),
        )
        return self._endpoint

    def _check_metrics(self, headers: dict[str, str]) -> bool:
        """Whether to scrape /metrics, as `config.metrics` asks; sets metrics_reason if not."""
        if self.config.metrics is False:
            self.metrics_reason = "not scraped: the server's spec sets `metrics: false`"
            return False
        problem = metrics_problem(self.base_url, headers)
        if problem is None:
            self.metrics_reason = None
            return True
        if self.config.metrics is True:
            raise ServerStartError(
                start_error(
                    self.config.name,
                    f"`metrics: true`, but {self.base_url}/metrics is not served: {problem}",
                    hint="set metrics: auto (scrape when served) or false, or serve /metrics",
                )
            )
        self.metrics_reason = f"not served by this server ({problem} when the run started)"
        return False

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""
        self._endpoint = None

    def is_alive(self) -> bool:
        if self._endpoint is None:
            return False
        try:
            wait_ready(self.base_url, self.readiness_paths, timeout=0, headers=self._headers())
        except (TimeoutError, ServerStartError):
            return False
        return True

    def _headers(self) -> dict[str, str]:
        key = self._endpoint.api_key if self._endpoint else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def pids(self) -> list[int]:
        return []

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return ""
