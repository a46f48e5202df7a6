"""Typed configuration of servers, datasets and load: what the YAML spec parses into.

These are the contracts between the spec parser and the modules that act on them; each module
validates nothing here again, ``spec.py`` does it once at the edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Backend = Literal["vllm", "hf", "external"]
ApiKind = Literal["chat", "completions"]
Arrival = Literal["poisson", "constant", "gamma"]
DatasetFormat = Literal["openqa", "longalpaca", "line_by_line", "sharegpt", "random", "jsonl"]


def _redacted_repr(config: object) -> str:
    """The dataclass repr with credentials hidden: configs appear in tracebacks (`pytest -l`)."""
    from pytest_llmslo import redact

    parts = []
    for f in fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if isinstance(value, Mapping):
            value = redact.redact_mapping(value)
        elif f.name == "extra_args":
            value = tuple(redact.redact_command(value))
        elif isinstance(value, str) and "://" in value:
            value = redact.redact_url(value)
        parts.append(f"{f.name}={value!r}")
    return f"{type(config).__name__}({', '.join(parts)})"


@dataclass(frozen=True)
class ServerConfig:
    name: str  # the key under `servers:` in the spec
    backend: Backend
    model: str = ""  # hub id or local directory; for external: the served model name ("" = ask)
    served_model_name: str | None = None  # name clients send; defaults to `model`
    # backend options as a mapping: vLLM flags without dashes (gpu_memory_utilization: 0.9 ->
    # --gpu-memory-utilization 0.9; true -> bare flag; false -> omitted), hf: device, dtype, ...
    args: dict[str, Any] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()  # appended verbatim to the command line
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 600.0  # seconds until /health and /v1/models answer
    gpu_ids: tuple[int, ...] | None = None  # -> CUDA_VISIBLE_DEVICES; None leaves it untouched
    device: str = "auto"  # auto | cpu | cuda (hf's --device; vLLM picks from its build)
    host: str = "127.0.0.1"
    port: int | None = None  # None picks a free port
    base_url: str | None = None  # external only
    api_key_env: str | None = None  # name of the env var that holds the API key
    stop_timeout: float = 20.0  # grace between SIGTERM and SIGKILL
    # skip (not fail) this server's scenarios when its backend package is not installed
    skip_if_missing: bool = False
    # counts tokens where the server sends no usage, and makes `random` prompts: a local
    # directory or a hub id; None: the model's own (for external: `model`, if a local directory)
    tokenizer: str | None = None
    # scrape GET /metrics during load: None asks the server once (auto), False never asks,
    # True requires it (a server that does not serve it fails to start)
    metrics: bool | None = None

    __repr__ = _redacted_repr


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    format: DatasetFormat
    path: str | None = None  # not used by `random`
    sample: int | None = None  # keep this many prompts (seeded shuffle); None keeps all
    seed: int = 0
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None
    input_tokens: int | None = None  # random: exact prompt length in tokens
    count: int | None = None  # random: how many prompts to make (default: sample or 100)
    # jsonl: the field that holds the prompt (a string) or the messages (a list)
    field: str | None = None


@dataclass(frozen=True)
class LoadConfig:
    api: ApiKind = "chat"
    stream: bool = True
    # ask for `usage` in the stream's last chunk; false counts tokens with the model's tokenizer
    # (where the server sends none unasked), as against a server that never sends usage
    include_usage: bool = True
    parallel: int | None = None  # closed loop: this many concurrent users
    rate: float | None = None  # open loop: requests per second
    arrival: Arrival = "poisson"
    burstiness: float = 1.0  # gamma shape; 1.0 is Poisson, < 1 burstier
    requests: int | None = None  # measured requests (warmup not included)
    duration: float | None = None  # seconds of measured load (alternative or cap to requests)
    warmup: int = 0  # requests sent first and excluded from every metric
    max_tokens: int | None = 256
    min_tokens: int | None = None  # sent to every backend but hf (transformers serve rejects it)
    ignore_eos: bool | None = None  # generate exactly max_tokens; as min_tokens
    temperature: float | None = None
    top_p: float | None = None
    seed: int = 0  # schedule, sampling of prompts and the request `seed` field
    request_seed: bool = False  # also send `seed` in each request body
    stop: tuple[str, ...] = ()
    extra_body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    connect_timeout: float = 10.0
    read_timeout: float = 300.0  # longest silence between two chunks
    total_timeout: float = 600.0  # whole request
    max_response_bytes: int = 64 * 2**20  # one response may hold this much, framing included
    # stop the run after this many requests in a row timed out (a hung server); None: never
    max_consecutive_timeouts: int | None = 3
    # stop the run once more measured requests failed than this: an int is a count, a float a
    # fraction of `requests`; None: never
    failure_budget: int | float | None = None

    __repr__ = _redacted_repr
