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
    CapacityConfig,
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
CAPACITY_KEYS: tuple[str, ...] = tuple(keys_of(CapacityConfig))


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


def read_load(entries: Mapping[str, Value], site: Site, *, varied: str | None = None) -> LoadConfig:
    """A load section (defaults and overrides already merged into ``entries``); ``varied``:
    the key a capacity search sets at each step (`parallel`, `rate`), which may be left out."""
    kw = _read_keys(LoadConfig, entries, Context())
    if isinstance(kw.get("failure_budget"), float) and kw.get("requests") is None:
        raise entries["failure_budget"].error(
            "a percentage budget is a share of 'requests', and this load sets only 'duration'",
            fix="Give a count of failed requests instead, e.g. failure_budget: 10.",
        )
    if kw.get("parallel") is None and kw.get("rate") is None and varied is None:
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


def read_capacity(entries: Mapping[str, Value], site: Site) -> CapacityConfig:
    """A capacity section: `vary` first (what `start`, `max` and `resolution` mean depends on
    it), then the rest, then the checks across keys."""
    keys = keys_of(CapacityConfig)
    for required in ("vary", "start", "max", "budget"):
        if required not in entries:
            raise site.error(
                f"missing required key '{required}'",
                choices=CAPACITY_KEYS,
                choices_label="Capacity keys",
                fix="Write e.g. capacity: {vary: parallel, start: 1, max: 64, budget: 10 min}.",
            )
    vary = keys["vary"].kind.read(entries["vary"], Context())
    ctx = Context(section={"vary": vary})
    kw = _read_keys(CapacityConfig, {k: v for k, v in entries.items() if k != "vary"}, ctx)
    if kw["start"] > kw["max"]:
        raise entries["start"].error(
            f"start ({kw['start']:g}) is above max ({kw['max']:g})",
            fix="The search probes upward from start to max: make start the lower one.",
        )
    if "growth" in kw and kw["growth"] <= 1:
        raise entries["growth"].error(
            f"growth must be above 1, got {kw['growth']:g}",
            fix="Write e.g. growth: 2 (each probe doubles the load).",
        )
    return CapacityConfig(vary=vary, **kw)


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


def verdicts_config(
    verdicts: Mapping[str, Any], where: str = "run_workload(verdicts=...)"
) -> VerdictsConfig:
    """A VerdictsConfig (``confidence``, ``inconclusive``, ``rounds``) from a mapping, checked
    as a spec's ``verdicts:`` is."""
    section = PyValue(verdicts, where=where)
    return read_verdicts(section.entries(VERDICTS_KEYS))


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
