"""How the plugin reaches servers: directly, with one TLS trust store, and with bounded answers.

Every HTTP request the plugin makes (the load, readiness probes, ``/v1/models``, ``/metrics``)
connects straight to the server: proxy environment variables (``HTTP_PROXY``, ``HTTPS_PROXY``,
``ALL_PROXY``, ``NO_PROXY``) are never used. A proxy between the client and the server would be
measured as the server's latency, and a proxy meant for the internet usually cannot reach the
local or cluster-internal servers this plugin tests. TLS trusts the system's certificate store
plus ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` (OpenSSL's own variables), the same for every request.

The plugin's own small GETs read at most ``max_bytes`` within ``deadline_s``: a server that
answers without end (a stream, a huge or dishonest ``Content-Length``) fails the probe instead
of filling memory.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

PROBE_MAX_BYTES = 16 * 2**20  # vLLM's /metrics is ~70 KB; thousands of series stay far below
PROBE_TIMEOUT = httpx.Timeout(2.0, connect=0.5)
PROBE_DEADLINE_S = 5.0  # a whole probe, however slowly its bytes trickle in


class ProbeAnswerError(Exception):
    """A probe's answer was too large or too slow to read; the message says which."""


@dataclass(frozen=True)
class ProbeAnswer:
    """A complete, bounded answer to one GET."""

    status: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def tls_context() -> ssl.SSLContext:
    """The TLS settings of every request: verify against the system store and SSL_CERT_FILE."""
    return ssl.create_default_context()


def probe_client(timeout: httpx.Timeout | float = PROBE_TIMEOUT) -> httpx.Client:
    """An httpx client that connects directly (no proxy variables) and follows no redirects."""
    return httpx.Client(
        timeout=timeout, trust_env=False, verify=tls_context(), follow_redirects=False
    )


def bounded_get(
    client: httpx.Client,
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    max_bytes: int = PROBE_MAX_BYTES,
    deadline_s: float = PROBE_DEADLINE_S,
) -> ProbeAnswer:
    """GET ``url`` and read the whole answer, refusing more than ``max_bytes`` or ``deadline_s``.

    Raises httpx.HTTPError for transport failures, ProbeAnswerError for an answer too large or
    too slow. A declared ``Content-Length`` above the limit fails before the body is read.
    """
    deadline = time.monotonic() + deadline_s
    with client.stream("GET", url, headers=dict(headers or {})) as response:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ProbeAnswerError(
                f"GET {url}: the answer announces {int(declared):,} bytes, more than the "
                f"{max_bytes:,} a probe reads"
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ProbeAnswerError(
                    f"GET {url}: the answer exceeds the {max_bytes:,} bytes a probe reads"
                )
            if time.monotonic() > deadline:
                raise ProbeAnswerError(f"GET {url}: the answer did not end within {deadline_s:g} s")
            chunks.append(chunk)
        return ProbeAnswer(response.status_code, b"".join(chunks), dict(response.headers))
