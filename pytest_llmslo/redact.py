"""Credentials kept out of everything the plugin shows or writes: by name, and by known value.

Two layers. Where the structure is known (headers, server `env`, `args`, command lines, URLs), a
value whose name looks like a credential is replaced by ``***``. Free text (error messages, a
server's log tail, the reports as a whole) is scrubbed of every credential value collected from
the configuration, because a server or a library may echo one where no name says so.
Only what is displayed or stored is redacted: requests still carry the real key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

if TYPE_CHECKING:
    from pytest_llmslo.config import LoadConfig, ServerConfig
    from pytest_llmslo.records import Endpoint

REDACTED = "***"
# shorter values are hidden where a name marks them, but not searched for in free text: a
# "secret" of "1" or "true" would otherwise blank out every digit and boolean of a report
MIN_SCRUB_LENGTH = 6
# words that mark a credential wherever they stand in a name: `X-Api-Key`, `HF_TOKEN`,
# `client_secret`, `Proxy-Authorization`, `Set-Cookie`; `max_tokens` is not one of them
_SECRET_WORDS = frozenset(
    {
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "credential",
        "credentials",
        "key",
        "keys",
        "passphrase",
        "passwd",
        "password",
        "pwd",
        "secret",
        "secrets",
        "token",
    }
)
# run-together names: `apikey`, `accessToken` (lowercased), `clientsecret`
_SECRET_SUFFIXES = ("key", "token", "secret", "password", "passwd", "cookie")
_WORD_SPLIT = re.compile(r"[^0-9a-zA-Z]+|(?<=[a-z0-9])(?=[A-Z])")
# free-text patterns: an `Authorization: <value>` line and the user-info of any URL
_AUTHORIZATION = re.compile(
    r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?:(bearer|basic)\s+)?[^\s\"',}]+"
)
_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@]+@")


def is_secret_name(name: str) -> bool:
    """Whether a header, variable, option or field name suggests that its value is a credential."""
    words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
    return any(w in _SECRET_WORDS or w.endswith(_SECRET_SUFFIXES) for w in words)


def redact_mapping(values: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy with the value of every credential-named key replaced, at any depth."""
    return {key: _redact_value(key, value) for key, value in values.items()}


def _redact_value(key: Any, value: Any) -> Any:
    if is_secret_name(str(key)) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, (list, tuple)):
        return [_redact_value("", v) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def redact_url(url: str) -> str:
    """``https://user:pw@host/x?api_key=k`` -> ``https://***@host/x?api_key=***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{name}={REDACTED}" if eq and is_secret_name(unquote_plus(name)) else f"{name}{eq}{value}"
        for name, eq, value in (pair.partition("=") for pair in parts.query.split("&"))
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_command(argv: Sequence[str]) -> list[str]:
    """A command line with the values of credential options hidden.

    ``--api-key K`` and ``--api-key=K`` -> ``--api-key ***``; ``HF_TOKEN=K`` (an environment
    assignment before the program) -> ``HF_TOKEN=***``; URLs lose their user-info.
    """
    out: list[str] = []
    hide_next = False
    for part in argv:
        if hide_next and not part.startswith("-"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        name, eq, _ = part.partition("=")
        if part.startswith("-"):
            if is_secret_name(name.lstrip("-")):
                if eq:
                    out.append(f"{name}={REDACTED}")
                    continue
                hide_next = True
            out.append(part)
        elif eq and _is_env_name(name) and is_secret_name(name):
            out.append(f"{name}={REDACTED}")
        else:
            out.append(redact_url(part) if "://" in part else part)
    return out


def _is_env_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name))


@dataclass(frozen=True)
class Secrets:
    """Credential values known to this run, to be scrubbed from any free text."""

    values: frozenset[str] = frozenset()

    def __or__(self, other: Secrets) -> Secrets:
        return Secrets(self.values | other.values)

    def scrub(self, text: str) -> str:
        """`text` with every known value, bearer token and URL user-info replaced by ``***``."""
        if not text:
            return text
        # longest first, so a value that contains another is replaced whole
        for value in sorted(self.values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, REDACTED)
        text = _AUTHORIZATION.sub(_hide_authorization, text)
        if "@" in text:
            text = _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
        return text

    def scrub_tree(self, value: Any) -> Any:
        """A copy of a JSON-like tree with every string scrubbed (keys included)."""
        kind = type(value)
        if kind is float or kind is int or kind is bool or value is None:
            return value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {self.scrub_tree(k): self.scrub_tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub_tree(v) for v in value]
        return value


def _hide_authorization(match: re.Match[str]) -> str:
    scheme = f"{match.group(2)} " if match.group(2) else ""
    return f"{match.group(1)}{scheme}{REDACTED}"


def collect_secrets(
    *,
    values: Iterable[str | None] = (),
    mappings: Iterable[Mapping[Any, Any]] = (),
    commands: Iterable[Sequence[str]] = (),
    urls: Iterable[str | None] = (),
) -> Secrets:
    """The credential values found in keys, credential-named mapping entries, options and URLs."""
    found: set[str] = set()
    found.update(v for v in values if v)
    for mapping in mappings:
        _mapping_values(mapping, found)
    for argv in commands:
        _command_values(argv, found)
    for url in urls:
        if url:
            _url_values(url, found)
    return Secrets(frozenset(v for v in found if _worth_scrubbing(v)))


def _worth_scrubbing(value: str) -> bool:
    v = value.strip()
    return len(v) >= MIN_SCRUB_LENGTH and v != REDACTED


def _mapping_values(mapping: Mapping[Any, Any], found: set[str]) -> None:
    for key, value in mapping.items():
        if is_secret_name(str(key)):
            _leaves(value, found)
        elif isinstance(value, Mapping):
            _mapping_values(value, found)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, Mapping):
                    _mapping_values(item, found)
        elif isinstance(value, str) and "://" in value:
            _url_values(value, found)


def _leaves(value: Any, found: set[str]) -> None:
    if isinstance(value, Mapping):
        for v in value.values():
            _leaves(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _leaves(v, found)
    elif value not in (None, True, False):
        text = str(value)
        found.add(text)
        # `Bearer K` and `Cookie: session=K; theme=V`: K may be echoed alone, without its label
        for segment in re.split(r"[;,]", text):
            label, eq, rest = segment.strip().partition("=")
            words = label.split()
            if eq:
                found.add(rest)
            elif words:
                found.add(words[-1])


def _command_values(argv: Sequence[str], found: set[str]) -> None:
    # whatever redact_command hides is, by definition, a value to look for elsewhere
    for part, shown in zip(argv, redact_command(argv), strict=True):
        if part == shown:
            continue
        if shown == REDACTED:
            found.add(part)
        elif shown.endswith("=" + REDACTED):
            found.add(part.partition("=")[2])
        else:
            _url_values(part, found)


def _url_values(url: str, found: set[str]) -> None:
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return
    if parts.password:
        found.add(parts.password)
    if parts.username:
        found.add(parts.username)
    found.update(v for k, v in pairs if is_secret_name(k))


def server_secrets(config: ServerConfig) -> Secrets:
    """What a server's configuration holds that must not be shown: its API key (read from the
    variable `api_key_env` names), credential-named `env` and `args`, credential options in
    `extra_args`, and the user-info of `base_url`."""
    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    return collect_secrets(
        values=[key],
        mappings=[config.env, config.args],
        commands=[list(config.extra_args)],
        urls=[config.base_url],
    )


def load_secrets(load: LoadConfig) -> Secrets:
    """Credential-named `headers` and `extra_body` fields of a load."""
    return collect_secrets(mappings=[load.headers, load.extra_body])


def endpoint_secrets(endpoint: Endpoint) -> Secrets:
    return collect_secrets(values=[endpoint.api_key], urls=[endpoint.base_url])


def scrub_file(path: str | Path, secrets: Secrets) -> bool:
    """Rewrite a text file (a server's log) without the known values; True if it changed.

    Never raises: a log that cannot be read or rewritten is left as it is.
    """
    if not secrets.values:
        return False
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8", errors="surrogateescape")
        clean = secrets.scrub(text)
        if clean == text:
            return False
        Path(path).write_bytes(clean.encode("utf-8", errors="surrogateescape"))
    except OSError:
        return False
    return True
