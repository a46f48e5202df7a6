"""Typed configuration of servers, datasets and load: what a spec or a Python mapping becomes.

These are the contracts between the edge that reads configuration and the modules that act on
it. Each field that a spec may set declares itself here once, in its metadata (``spec_key``): its
kind (type, bounds, units, choices) and its line in docs/spec-reference.md. ``schema.py`` reads
a section of a spec or a Python mapping from that and checks every value once, at the edge; the
modules that use a config validate nothing again.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from pytest_llmslo.kinds import (
    MAX_PARALLEL,
    BaseUrl,
    ByteSize,
    Choice,
    DatasetPath,
    Device,
    Duration,
    EnvName,
    FailureBudget,
    Flag,
    GpuIds,
    Headers,
    Integer,
    JsonBody,
    JsonlField,
    LoadLevel,
    MetricsMode,
    ModelName,
    Number,
    Rate,
    RoundLimits,
    SearchResolution,
    ServerArgs,
    StringMap,
    Strings,
    Text,
    TokenizerName,
    WorkerCount,
    spec_key,
)

Backend = Literal["vllm", "hf", "external"]
ApiKind = Literal["chat", "completions"]
Arrival = Literal["poisson", "constant", "gamma"]
DatasetFormat = Literal["openqa", "longalpaca", "line_by_line", "sharegpt", "random", "jsonl"]

BACKENDS: tuple[str, ...] = typing.get_args(Backend)
FORMATS: tuple[str, ...] = typing.get_args(DatasetFormat)
ARRIVALS: tuple[str, ...] = typing.get_args(Arrival)
APIS: tuple[str, ...] = typing.get_args(ApiKind)


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
    backend: Backend = field(
        metadata=spec_key(
            Choice(BACKENDS, "backend"),
            "vLLM's OpenAI server, `transformers serve`, or a service already running",
        )
    )
    model: str = field(
        default="",
        metadata=spec_key(
            ModelName(),
            'hub id or local directory; for `external`, the served model name (`""` or '
            "absent: the first model `/v1/models` lists)",
            default="required for `vllm`, `hf`",
        ),
    )
    served_model_name: str | None = field(
        default=None, metadata=spec_key(Text(), "the name clients send", default="`model`")
    )
    args: dict[str, Any] = field(
        default_factory=dict,
        metadata=spec_key(
            ServerArgs(),
            "backend options; for vLLM, flags without dashes: `max_model_len: 4096` -> "
            "`--max-model-len 4096`, `true` -> bare flag, `false` -> omitted. Keys must not "
            "start with `-`",
        ),
    )
    extra_args: tuple[str, ...] = field(
        default=(),
        metadata=spec_key(
            Strings(), "appended verbatim to the command line (numbers are taken as text)"
        ),
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata=spec_key(
            StringMap(),
            "environment of the server process (numbers are taken as text; booleans must be "
            "quoted)",
        ),
    )
    startup_timeout: float = field(
        default=600.0,
        metadata=spec_key(
            Duration(),
            "how long the server may take until `/health` and `/v1/models` answer; for "
            "`external` (and with `--slo-server-url`), how long a server that accepts "
            "connections may take to answer `/v1/models` (a refused connection fails within 2 s)",
        ),
    )
    gpu_ids: tuple[int, ...] | None = field(
        default=None,
        metadata=spec_key(GpuIds(), "sets `CUDA_VISIBLE_DEVICES`", default="untouched"),
    )
    device: str = field(
        default="auto",
        metadata=spec_key(Device(), "`transformers serve --device`; vLLM picks from its build"),
    )
    host: str = field(
        default="127.0.0.1",
        metadata=spec_key(Text(), "interface the managed server listens on"),
    )
    port: int | None = field(
        default=None,
        metadata=spec_key(
            Integer(minimum=1, maximum=65535), "port of the managed server", default="a free port"
        ),
    )
    base_url: str | None = field(
        default=None,
        metadata=spec_key(
            BaseUrl(),
            "the service, without `/v1`",
            default="required for `external`, not allowed otherwise",
        ),
    )
    api_key_env: str | None = field(
        default=None,
        metadata=spec_key(
            EnvName(),
            "name of the environment variable that holds the API key (never the key itself)",
        ),
    )
    stop_timeout: float = field(
        default=20.0,
        metadata=spec_key(
            Duration(),
            "grace between SIGTERM and SIGKILL, when the plugin stops the server and when its "
            "watchdog does (pytest killed); a second Ctrl-C or SIGTERM skips it",
        ),
    )
    skip_if_missing: bool = field(
        default=False,
        metadata=spec_key(
            Flag(),
            "when the backend's package is not installed, skip this server's tests with the "
            "reason instead of failing them",
        ),
    )
    tokenizer: str | None = field(
        default=None,
        metadata=spec_key(
            TokenizerName(),
            "tokenizer that counts tokens the server does not report (no `usage`) and makes "
            "`format: random` prompts: a local directory with `tokenizer.json` (must exist; "
            "relative to the working directory), a hub id in the local Hugging Face cache "
            "(nothing is downloaded), or `builtin:tiny`. Default: `model` for `vllm` and `hf`; "
            "for `external`, `model` or the served name when either is a local directory, else "
            "none. A named tokenizer that cannot be loaded fails the server's scenarios. Counts "
            "it makes are labelled as estimates",
            default="the model's",
        ),
    )
    # None is `auto`: scrape when the server serves /metrics
    metrics: bool | None = field(
        default=None,
        metadata=spec_key(
            MetricsMode(),
            "scrape the server's Prometheus `GET /metrics` during load: `auto` scrapes vLLM, "
            "never `transformers serve`, and asks an `external` server once at start; `false` "
            "never requests it (server-metric objectives are then not measurable); `true` "
            "requires it: an `external` server that does not serve it fails to start (`hf` "
            "cannot take `true`)",
            default="`auto`",
        ),
    )

    __repr__ = _redacted_repr


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    format: DatasetFormat = field(
        metadata=spec_key(Choice(FORMATS, "format"), "how to read prompts")
    )
    path: str | None = field(
        default=None,
        metadata=spec_key(
            DatasetPath(tuple(f for f in FORMATS if f != "random")),
            "dataset file; relative paths are taken from the spec file's directory and must exist",
            default="required except for `random`; not allowed for `random`",
        ),
    )
    sample: int | None = field(
        default=None,
        metadata=spec_key(
            Integer(minimum=1), "keep this many prompts (seeded shuffle)", default="all"
        ),
    )
    seed: int = field(default=0, metadata=spec_key(Integer(), "seed of the sample"))
    min_prompt_tokens: int | None = field(
        default=None, metadata=spec_key(Integer(minimum=1), "drop shorter prompts")
    )
    max_prompt_tokens: int | None = field(
        default=None,
        metadata=spec_key(Integer(minimum=1), "drop longer prompts; not below `min_prompt_tokens`"),
    )
    input_tokens: int | None = field(
        default=None,
        metadata=spec_key(
            Integer(minimum=1), "exact prompt length in tokens", default="required for `random`"
        ),
    )
    count: int | None = field(
        default=None,
        metadata=spec_key(
            Integer(minimum=1),
            "`random`: how many prompts to make",
            default="`sample` or 100",
        ),
    )
    field: str | None = field(
        default=None,
        metadata=spec_key(
            JsonlField(),
            "`jsonl` only: the field holding the prompt (a string) or the messages (a list)",
        ),
    )


@dataclass(frozen=True)
class LoadConfig:
    api: ApiKind = field(
        default="chat",
        metadata=spec_key(Choice(APIS, "api"), "`/v1/chat/completions` or `/v1/completions`"),
    )
    stream: bool = field(
        default=True,
        metadata=spec_key(Flag(), "stream the answer (needed for TTFT, TPOT, ITL)"),
    )
    include_usage: bool = field(
        default=True,
        metadata=spec_key(
            Flag(),
            "ask for `usage` in the stream's last chunk (`stream_options.include_usage`); "
            "`false` counts tokens with the model's tokenizer instead, as against a server that "
            "sends none (vLLM then sends none; transformers serve 5.19 sends it anyway)",
        ),
    )
    parallel: int | None = field(
        default=None,
        metadata=spec_key(
            Integer(minimum=1, maximum=MAX_PARALLEL),
            "closed loop: this many concurrent users",
            type=f"integer 1-{MAX_PARALLEL:,}",
        ),
    )
    rate: float | None = field(
        default=None, metadata=spec_key(Rate(), "open loop: requests per second")
    )
    # 0: `auto`, as many as the load needs (workers.py)
    workers: int = field(
        default=1,
        metadata=spec_key(
            WorkerCount(),
            "client processes the load is spread over (`parallel`, `rate` and `requests` "
            "divided among them), with one merged set of records; `auto`: one per 256 streams "
            "or 200 req/s, at most the host's cores less one",
            default="`1`",
        ),
    )
    arrival: Arrival = field(
        default="poisson",
        metadata=spec_key(Choice(ARRIVALS, "arrival"), "open-loop arrival schedule"),
    )
    burstiness: float = field(
        default=1.0,
        metadata=spec_key(
            Number(positive=True), "gamma shape: 1 is Poisson, below 1 burstier", default="`1.0`"
        ),
    )
    requests: int | None = field(
        default=None,
        metadata=spec_key(Integer(minimum=1), "measured requests (warmup not included)"),
    )
    duration: float | None = field(
        default=None, metadata=spec_key(Duration(), "how long to measure")
    )
    warmup: int = field(
        default=0,
        metadata=spec_key(Integer(minimum=0), "requests sent first and excluded from every metric"),
    )
    max_tokens: int | None = field(
        default=256,
        metadata=spec_key(
            Integer(minimum=1, nullable=True),
            "output limit per request; `null` leaves it to the server",
        ),
    )
    min_tokens: int | None = field(
        default=None,
        metadata=spec_key(
            Integer(minimum=0),
            "sent to `vllm` and `external` servers (one that rejects it answers 4xx); not to "
            "`hf`, which rejects it (the report says so)",
        ),
    )
    ignore_eos: bool | None = field(
        default=None,
        metadata=spec_key(
            Flag(nullable=True), "generate exactly `max_tokens`; sent like `min_tokens`"
        ),
    )
    temperature: float | None = field(
        default=None,
        metadata=spec_key(Number(minimum=0), "sampling temperature", default="server's"),
    )
    top_p: float | None = field(
        default=None,
        metadata=spec_key(Number(positive=True, maximum=1), "nucleus sampling", default="server's"),
    )
    seed: int = field(
        default=0,
        metadata=spec_key(Integer(), "seed of the schedule, prompt order and request seeds"),
    )
    request_seed: bool = field(
        default=False, metadata=spec_key(Flag(), "also send `seed` in each request body")
    )
    stop: tuple[str, ...] = field(
        default=(), metadata=spec_key(Strings(one=True), "stop sequences")
    )
    extra_body: dict[str, Any] = field(
        default_factory=dict, metadata=spec_key(JsonBody(), "merged into every request body")
    )
    headers: dict[str, str] = field(
        default_factory=dict,
        metadata=spec_key(
            Headers(),
            "extra HTTP headers (credential-named ones are shown as `***` in every output); "
            "names are HTTP tokens (letters, digits, `-`, ...), values one line of Latin-1 "
            "text; `Host`, `Content-Length`, `Content-Type` and `Transfer-Encoding` are the "
            "client's own",
        ),
    )
    connect_timeout: float = field(
        default=10.0, metadata=spec_key(Duration(), "to open a connection")
    )
    read_timeout: float = field(
        default=300.0, metadata=spec_key(Duration(), "longest silence between two chunks")
    )
    total_timeout: float = field(default=600.0, metadata=spec_key(Duration(), "a whole request"))
    max_response_bytes: int = field(
        default=64 * 2**20,
        metadata=spec_key(
            ByteSize(),
            "the most one response may hold (headers and framing included); a larger one is "
            "cut off and fails as `response_too_large` (a `Content-Length` above it fails at "
            "once)",
            default="`64 MiB`",
        ),
    )
    max_consecutive_timeouts: int | None = field(
        default=3,
        metadata=spec_key(
            Integer(minimum=1, nullable=True),
            "stop the scenario after this many requests in a row timed out (a hung server that "
            "still accepts connections); `null` never stops for this",
        ),
    )
    # an int is a count of failed requests, a float a fraction of `requests` (a spec writes
    # it as a percentage)
    failure_budget: int | float | None = field(
        default=None,
        metadata=spec_key(
            FailureBudget(),
            "stop the scenario once more measured requests failed than this; a percentage "
            "needs `requests`",
            default="`null`",
        ),
    )

    __repr__ = _redacted_repr


InconclusivePolicy = Literal["fail", "pass", "rerun"]
INCONCLUSIVE_POLICIES: tuple[str, ...] = typing.get_args(InconclusivePolicy)
DEFAULT_CONFIDENCE = 0.95
# rounds a scenario may run under `inconclusive: rerun` when its spec sets no `rounds`
RERUN_ROUNDS = 5


@dataclass(frozen=True)
class VerdictsConfig:
    """How objectives are judged: the confidence of each value's interval, what an objective
    whose interval straddles its threshold (inconclusive) counts as, and how many rounds a
    scenario may run to decide."""

    confidence: float = field(
        default=DEFAULT_CONFIDENCE,
        metadata=spec_key(
            Number(minimum=0.5, maximum=0.999),
            "confidence level of the interval drawn around every gated value",
            default="`0.95`",
        ),
    )
    inconclusive: InconclusivePolicy = field(
        default="fail",
        metadata=spec_key(
            Choice(INCONCLUSIVE_POLICIES, "inconclusive policy"),
            "what an inconclusive objective counts as: `fail` (a failed test reading "
            "`INCONCLUSIVE`, the safe default before a release), `pass` (a passed test with "
            "an `SLOInconclusiveWarning`) or `rerun` (more rounds, up to `rounds`' max, "
            f"{RERUN_ROUNDS} when `rounds` is not set; then as `fail`)",
        ),
    )
    rounds: tuple[int, int] | None = field(
        default=None,
        metadata=spec_key(
            RoundLimits(),
            "rounds of the scenario's load on the same server: `min` always, then one more "
            "while some objective is inconclusive, up to `max`; the rounds' samples are pooled",
            default=f"`1` (`{{min: 1, max: {RERUN_ROUNDS}}}` under `inconclusive: rerun`)",
        ),
    )

    client_guard: bool = field(
        default=True,
        metadata=spec_key(
            Flag(),
            "judge the scenario's server objectives inconclusive when the load client fell "
            "behind (its event loop, CPU or arrival schedule; see Client health)",
            default="`true`",
        ),
    )

    def round_limits(self) -> tuple[int, int]:
        """(min, max) rounds: as set, or one round, or up to RERUN_ROUNDS under `rerun`."""
        if self.rounds is not None:
            return self.rounds
        return (1, RERUN_ROUNDS) if self.inconclusive == "rerun" else (1, 1)

    @property
    def inconclusive_passes(self) -> bool:
        """Whether an objective still inconclusive at the end counts as passed."""
        return self.inconclusive == "pass"


Vary = Literal["parallel", "rate"]
VARIES: tuple[str, ...] = typing.get_args(Vary)
DEFAULT_GROWTH = 2.0
# where bisection stops when the spec does not say: one user, or 10% of the rate
DEFAULT_RESOLUTION: dict[str, float] = {"parallel": 1.0, "rate": 0.10}


@dataclass(frozen=True)
class CapacityConfig:
    """A capacity search (`capacity:`): the scenario's load at rising `parallel` or `rate`,
    each step judged by the scenario's objectives, up to the highest load at which they hold."""

    vary: Vary = field(
        metadata=spec_key(
            Choice(VARIES, "load to vary"),
            "`parallel` (closed loop: concurrent users) or `rate` (open loop: requests per "
            "second); it replaces that key of the scenario's `load` at each step",
        )
    )
    start: float = field(metadata=spec_key(LoadLevel(), "the first load tried"))
    max: float = field(metadata=spec_key(LoadLevel(), "the highest load tried; not below `start`"))
    budget: float = field(
        metadata=spec_key(
            Duration(),
            "time the search may take (server start not included): no step starts after it, "
            "and a step's measured load is cut to what is left of it; a search it stops "
            "answers with the highest load proven so far, labelled budget-limited",
        )
    )
    growth: float = field(
        default=DEFAULT_GROWTH,
        metadata=spec_key(
            Number(positive=True),
            "factor between the loads of the upward probe (`start`, `start x growth`, ... "
            "`max`); above 1",
            type="number > 1",
        ),
    )
    resolution: float | None = field(
        default=None,
        metadata=spec_key(
            SearchResolution(),
            "bisection between the highest passing and the lowest failing load stops when "
            "they are this close: a number of users (`parallel`), or a share of the passing "
            "load (`rate`)",
            default="`1` (`parallel`), `10%` (`rate`)",
        ),
    )

    def __post_init__(self) -> None:
        if self.resolution is None:  # per `vary`: a whole user, or a tenth of the rate
            object.__setattr__(self, "resolution", DEFAULT_RESOLUTION[self.vary])

    @property
    def step(self) -> float:
        """The resolution, with its per-`vary` default applied."""
        return self.resolution if self.resolution is not None else DEFAULT_RESOLUTION[self.vary]
