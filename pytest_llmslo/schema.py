"""The configuration schema, derived from the config dataclasses: sections read from any source.

A server, dataset or load section is read key by key with the kinds its dataclass declares
(``config.py``), then checked as a whole (a backend's required keys, `parallel` or `rate`, ...).
The source is a ``Value``: a spec's YAML nodes (``spec.py``) or a Python mapping (``load_config``
and friends), so both get the same checks and messages. The key tables of
docs/spec-reference.md come from the same declarations (``schema_docs.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pytest_llmslo.config import (
    BACKENDS,
    FORMATS,
    DatasetConfig,
    LoadConfig,
    ServerConfig,
    VerdictsConfig,
)
from pytest_llmslo.kinds import Context, keys_of
from pytest_llmslo.values import PyValue, Site, Value

SERVER_KEYS: tuple[str, ...] = tuple(keys_of(ServerConfig))
DATASET_KEYS: tuple[str, ...] = tuple(keys_of(DatasetConfig))
LOAD_KEYS: tuple[str, ...] = tuple(keys_of(LoadConfig))
VERDICTS_KEYS: tuple[str, ...] = tuple(keys_of(VerdictsConfig))


_NO_CONTEXT = Context()


def _read_keys(cls: type, entries: Mapping[str, Value], ctx: Context) -> dict[str, Any]:
    """Each entry read by the kind its field declares, in the order written."""
    keys = keys_of(cls)
    return {name: keys[name].kind.read(value, ctx) for name, value in entries.items()}


def read_server(
    name: str, entries: Mapping[str, Value], site: Site, ctx: Context = _NO_CONTEXT
) -> ServerConfig:
    """A server section; ``site`` is where the section is, for what it lacks."""
    if "backend" not in entries:
        raise site.error(
            "missing required key 'backend'",
            choices=BACKENDS,
            choices_label="Valid backends",
            fix="Add backend: vllm (or hf, external).",
        )
    backend = keys_of(ServerConfig)["backend"].kind.read(entries["backend"], ctx)
    ctx = replace(ctx, section={"backend": backend})
    kw = _read_keys(ServerConfig, {k: v for k, v in entries.items() if k != "backend"}, ctx)
    if backend == "external":
        if "base_url" not in kw:
            raise site.error(
                "missing required key 'base_url' for backend external",
                fix="Add base_url: http://host:port of the running service.",
            )
    else:
        if "model" not in kw:
            raise site.error(
                f"missing required key 'model' for backend {backend}",
                fix="Add model: a hub id or a local model directory.",
            )
        if "base_url" in kw:
            raise entries["base_url"].key_error(
                f"base_url is for backend external; backend {backend} starts its own server",
                fix="Remove base_url, or set backend: external.",
            )
    return ServerConfig(name=name, backend=backend, **kw)


def read_dataset(
    name: str, entries: Mapping[str, Value], site: Site, ctx: Context = _NO_CONTEXT
) -> DatasetConfig:
    """A dataset section; relative paths start at ``ctx.base_dir``."""
    if "format" not in entries:
        raise site.error(
            "missing required key 'format'", choices=FORMATS, choices_label="Valid formats"
        )
    fmt = keys_of(DatasetConfig)["format"].kind.read(entries["format"], ctx)
    ctx = replace(ctx, section={"format": fmt})
    kw = _read_keys(DatasetConfig, {k: v for k, v in entries.items() if k != "format"}, ctx)
    if fmt == "random":
        if "input_tokens" not in kw:
            raise site.error(
                "missing required key 'input_tokens' for format random",
                fix="Add input_tokens: the prompt length in tokens, e.g. 128.",
            )
    elif "path" not in kw:
        raise site.error(
            f"missing required key 'path' for format {fmt}",
            fix=f"Add path: the dataset file, relative to {ctx.base_name}.",
        )
    low, high = kw.get("min_prompt_tokens"), kw.get("max_prompt_tokens")
    if low is not None and high is not None and low > high:
        raise entries["max_prompt_tokens"].key_error(
            f"max_prompt_tokens ({high}) is below min_prompt_tokens ({low})"
        )
    return DatasetConfig(name=name, format=fmt, **kw)


def read_load(entries: Mapping[str, Value], site: Site) -> LoadConfig:
    """A load section (defaults and overrides already merged into ``entries``)."""
    kw = _read_keys(LoadConfig, entries, Context())
    if isinstance(kw.get("failure_budget"), float) and kw.get("requests") is None:
        raise entries["failure_budget"].error(
            "a percentage budget is a share of 'requests', and this load sets only 'duration'",
            fix="Give a count of failed requests instead, e.g. failure_budget: 10.",
        )
    if kw.get("parallel") is None and kw.get("rate") is None:
        raise site.error(
            "needs 'parallel' (concurrent users) or 'rate' (requests per second)",
            fix="Add e.g. parallel: 10.",
        )
    if kw.get("requests") is None and kw.get("duration") is None:
        raise site.error(
            "needs 'requests' (how many to measure) or 'duration' (how long)",
            fix="Add e.g. requests: 100 or duration: 60s.",
        )
    return LoadConfig(**kw)


def read_verdicts(entries: Mapping[str, Value]) -> VerdictsConfig:
    """A verdicts section (``confidence``, ``inconclusive``), defaults merged in."""
    return VerdictsConfig(**_read_keys(VerdictsConfig, entries, Context()))


# --- the Python API -------------------------------------------------------------------------------


def load_config(load: Mapping[str, Any], where: str = "run_workload(load=...)") -> LoadConfig:
    """A LoadConfig from a mapping of its fields, checked as a spec's ``load:`` is.

    Values are written as in a spec (``"30 s"``, ``"5 req/s"``, ``"64 MiB"`` or plain numbers);
    ConfigError names ``where`` and the key, says what is wrong and how to fix it.
    """
    section = PyValue(load, where=where)
    return read_load(section.entries(LOAD_KEYS), section)


def server_config(
    settings: Mapping[str, Any], *, name: str = "server", where: str = "server settings"
) -> ServerConfig:
    """A ServerConfig from a mapping of its fields, checked as a spec's server is."""
    section = PyValue(settings, where=where)
    return read_server(name, section.entries(SERVER_KEYS), section)


def dataset_config(
    settings: Mapping[str, Any],
    *,
    name: str = "dataset",
    where: str = "dataset settings",
    base_dir: Path | None = None,
) -> DatasetConfig:
    """A DatasetConfig from a mapping of its fields, checked as a spec's dataset is; relative
    paths start at ``base_dir`` (default: the working directory)."""
    section = PyValue(settings, where=where)
    ctx = Context(base_dir=base_dir, base_name=str(base_dir or "the working directory"))
    return read_dataset(name, section.entries(DATASET_KEYS), section, ctx)
