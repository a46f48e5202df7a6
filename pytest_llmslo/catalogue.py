"""The metric registry: every metric an objective can name, declared once.

Objective validation (`slo.py`), the load summary (`metrics.py`), the telemetry lookups
(`telemetry/measures.py`), the report's tables and the metric tables of the README and
`docs/spec-reference.md` (`catalogue_docs.py`) all derive from `METRICS`. Adding a metric is one
entry here plus the function that measures it in the module its producer names; a test fails
until that function exists and the docs are regenerated.

Only the standard library and `units.py`: the plugin imports this to validate specs, and that
must stay cheap.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pytest_llmslo.units import CANONICAL_UNIT, UnitKind


class MetricKind(str, enum.Enum):
    """The shape of a metric's values."""

    # one value per request (or per chunk gap); an objective picks a statistic: ttft_p95
    DISTRIBUTION = "distribution"
    # one value per run: output_throughput
    SCALAR = "scalar"

    def __str__(self) -> str:
        return self.value


class Producer(str, enum.Enum):
    """Where a metric's value comes from; each names the code that measures it."""

    LOAD = "load summary"  # metrics.summarize over the request records
    TELEMETRY = "telemetry"  # memory of the server's process tree, sampled (telemetry/measures)
    SERVER_METRICS = "server /metrics"  # the server's Prometheus endpoint (telemetry/measures)
    SERVER_START = "server start"  # the launcher's readiness clock (servers/, Endpoint)
    CAPACITY = "capacity search"  # the steps of a scenario's `capacity:` search (capacity.py)
    CLIENT = "client health"  # the load client's own loop, CPU and concurrency (client_health.py)

    def __str__(self) -> str:
        return self.value


class IntervalMethod(str, enum.Enum):
    """How a gated value's confidence interval is drawn (`intervals.py`; docs: "Verdicts and
    intervals" in docs/spec-reference.md)."""

    # by the objective's statistic: a percentile (and the median) by order statistics, the mean
    # by Student's t; min, max and std as measured (no distribution-free interval bounds them)
    PER_STATISTIC = (
        "order statistic (percentiles), t (mean), each widened by t over rounds when it ran "
        "several; min, max, std as measured"
    )
    WILSON = "Wilson score interval"  # a proportion of the measured requests
    # t over equal time slices of the measured window (requests counted in the slice they end in)
    BATCH_MEANS = (
        "batch means over 10 time slices of the measured window; t over rounds when it ran several"
    )
    TREND = "ratio of the first and last thirds' median intervals (order statistic)"
    AS_MEASURED = "as measured"  # counts, peaks, gauges, the start time: one observation

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DocGroup:
    """Metrics the README describes in one row: they share where and how they are measured."""

    # markdown; `{per_request}` stands for the names that have a per-request form,
    # `{failure_categories}` for the categories of a failed request (records.ErrorCategory)
    text: str


@dataclass(frozen=True)
class Metric:
    """One metric: what it is called, what its values are, what it means, where it comes from."""

    name: str
    kind: MetricKind
    unit: UnitKind
    definition: str  # markdown, one paragraph: the text the docs and error messages show
    producer: Producer
    # per-request objectives (`request_slo`, goodput): what a bound on one request means;
    # empty: the metric has no per-request form
    per_request: str = ""
    # a /metrics gauge: its max or mean needs enough scrapes inside the measured window
    gauge: bool = False
    # the row's label in the report's latency table; empty: not a row there
    report_label: str = ""
    # about reasoning models: the report shows it only when a stream carried reasoning
    reasoning: bool = False
    group: DocGroup | None = None  # shares one README row with its neighbours
    # how a verdict's interval is drawn; None: by kind (a distribution per statistic, a scalar
    # as measured)
    interval: IntervalMethod | None = None

    @property
    def interval_method(self) -> IntervalMethod:
        if self.interval is not None:
            return self.interval
        if self.kind is MetricKind.DISTRIBUTION:
            return IntervalMethod.PER_STATISTIC
        return IntervalMethod.AS_MEASURED

    @property
    def canonical_unit(self) -> str:
        """The unit values are stored and compared in: s, tok/s, req/s, B, "" (ratio, count)."""
        return CANONICAL_UNIT[self.unit]

    @property
    def server_process(self) -> bool:
        """Measured on the server's own processes or its start: only for a server this run
        started (an external server's processes are not ours to see)."""
        return self.producer in (Producer.TELEMETRY, Producer.SERVER_START)


# statistics an objective on a distribution takes as a suffix: ttft_p95, itl_max
STATISTICS: Mapping[str, str] = MappingProxyType(
    {
        "mean": "arithmetic mean",
        "std": "standard deviation",
        "min": "smallest value",
        "max": "largest value",
        "median": "50th percentile",
        "pNN": "NNth percentile, 0 < NN <= 100, decimals allowed (p99.9)",
    }
)

_D, _S = MetricKind.DISTRIBUTION, MetricKind.SCALAR
_LOAD, _TELEMETRY = Producer.LOAD, Producer.TELEMETRY
_METRICS_EP, _START = Producer.SERVER_METRICS, Producer.SERVER_START

_TOKENS = DocGroup(
    "per request, from the server's `usage` (asked for with `stream_options.include_usage`, "
    "unless `load.include_usage: false`); where absent, estimated with the tokenizer (the "
    "model's, or the server's `tokenizer:`), labelled as estimates in report.md and "
    "results.json (`token_note`, `token_sources`)"
)
_REASONING = DocGroup(
    "per request, the output tokens spent reasoning (usage's "
    "`completion_tokens_details.reasoning_tokens`, else the reasoning text counted with the "
    "tokenizer; 0 when none was streamed) and the rest (`output_tokens - reasoning_tokens`: the "
    "answer with any markers and end token)"
)
_FAILURES = DocGroup(
    "failed / sent, and the count; failures are categorised: {failure_categories} "
    "(`response_too_large`: over `load.max_response_bytes`)"
)
_GOODPUT = DocGroup(
    "requests/s (and the fraction of sent requests) that succeeded and met every per-request "
    "objective (`request_slo`, or derived from the scenario's {per_request} bounds)"
)
_GPU = DocGroup(
    "GPU memory held by the server's whole process tree (vLLM's engine runs in a child), "
    "through NVML, else `nvidia-smi`, sampled at 10 Hz; a server on several GPUs (one worker "
    "each) is summed over them, except `gpu_memory_peak_per_gpu`, its most-loaded GPU; "
    "another process on the same GPU is not counted"
)
_SERVER_METRICS = DocGroup(
    "from vLLM's Prometheus `/metrics`, scraped during the measured load (warmup excluded) and "
    "as it ends; a gauge's max or mean needs at least 3 in-window scrapes, else it is \"not "
    'measurable"; servers without `/metrics` report "not served"; an external server\'s is '
    "asked for once at start (`metrics: auto`, the default), never (`false`) or required "
    "(`true`)"
)
_CAPACITY = DocGroup(
    "the answer of a capacity search (`capacity:` in a scenario): the highest `parallel` or "
    "`rate` at which every other objective of the scenario passed, decisively (an inconclusive "
    "step is not a pass); judged as measured"
)
_CLIENT = DocGroup(
    "the load client's own health over the measured phase (`client_health.py`): where it fell "
    "behind (a closed loop under 80% of `parallel` in flight, an open loop's median send 100 ms "
    "late, 95% of a core, or a loop late by 250 ms on one probe in ten), every other objective "
    "of the run is inconclusive with the reason, never a server failure; judged as measured"
)

METRICS: tuple[Metric, ...] = (
    # --- distributions, in report order -----------------------------------------------------
    Metric(
        "ttft",
        _D,
        UnitKind.TIME,
        "time to first token: request sent -> first chunk carrying non-empty generated text "
        "(content or reasoning)",
        _LOAD,
        per_request="this request's time to first token",
        report_label="TTFT",
    ),
    Metric(
        "ttfat",
        _D,
        UnitKind.TIME,
        "time to first answer token: request sent -> first chunk carrying answer text "
        "(`content`), after any reasoning (`reasoning_content` or `reasoning`); equals `ttft` "
        "for a stream without reasoning; a request that streamed reasoning only has none",
        _LOAD,
        per_request="this request's time to first answer token",
        report_label="time to first answer token",
        reasoning=True,
    ),
    Metric(
        "ttfc",
        _D,
        UnitKind.TIME,
        "time to first chunk: request sent -> first SSE event of any kind (a role-only chunk "
        "counts; `transformers serve` sends one)",
        _LOAD,
        report_label="time to first chunk",
    ),
    Metric(
        "tpot",
        _D,
        UnitKind.TIME,
        "time per output token: (e2e - ttft) / (output_tokens - 1), over requests with 2 or "
        "more output tokens",
        _LOAD,
        per_request="this request's time per output token",
        report_label="TPOT",
    ),
    Metric(
        "itl",
        _D,
        UnitKind.TIME,
        "inter-chunk latency: gaps between successive content-bearing chunks (per chunk: "
        "servers may coalesce tokens)",
        _LOAD,
        per_request="largest gap between two content-bearing chunks of this request",
        report_label="ITL (per chunk)",
    ),
    Metric(
        "e2e",
        _D,
        UnitKind.TIME,
        "end-to-end latency: request sent -> last byte of the response",
        _LOAD,
        per_request="this request's end-to-end latency",
        report_label="E2E latency",
    ),
    Metric(
        "dispatch_lag",
        _D,
        UnitKind.TIME,
        "open loop: actual send time minus the scheduled send time (a saturated client shows "
        "here, not as a server regression)",
        _LOAD,
    ),
    Metric("input_tokens", _D, UnitKind.COUNT, "prompt tokens per request", _LOAD, group=_TOKENS),
    Metric(
        "output_tokens", _D, UnitKind.COUNT, "generated tokens per request", _LOAD, group=_TOKENS
    ),
    Metric(
        "reasoning_tokens",
        _D,
        UnitKind.COUNT,
        "of the generated tokens, those spent reasoning: usage's "
        "`completion_tokens_details.reasoning_tokens`, else the reasoning text counted with the "
        "tokenizer; 0 when no reasoning was streamed",
        _LOAD,
        reasoning=True,
        group=_REASONING,
    ),
    Metric(
        "answer_tokens",
        _D,
        UnitKind.COUNT,
        "generated tokens that are not reasoning (`output_tokens - reasoning_tokens`: the answer "
        "with any reasoning markers and end token)",
        _LOAD,
        reasoning=True,
        group=_REASONING,
    ),
    # --- scalars ------------------------------------------------------------------------------
    Metric(
        "output_throughput",
        _S,
        UnitKind.TOKEN_RATE,
        "output tokens of successful requests / wall time of the measured window",
        _LOAD,
        interval=IntervalMethod.BATCH_MEANS,
    ),
    Metric(
        "total_token_throughput",
        _S,
        UnitKind.TOKEN_RATE,
        "input + output tokens of successful requests / wall time of the measured window",
        _LOAD,
        interval=IntervalMethod.BATCH_MEANS,
    ),
    Metric(
        "request_throughput",
        _S,
        UnitKind.REQUEST_RATE,
        "successful requests / wall time of the measured window",
        _LOAD,
        interval=IntervalMethod.BATCH_MEANS,
    ),
    Metric(
        "failure_rate",
        _S,
        UnitKind.RATIO,
        "failed requests / sent requests, warmup excluded",
        _LOAD,
        group=_FAILURES,
        interval=IntervalMethod.WILSON,
    ),
    Metric(
        "failures",
        _S,
        UnitKind.COUNT,
        "failed requests, warmup excluded",
        _LOAD,
        group=_FAILURES,
    ),
    Metric(
        "goodput",
        _S,
        UnitKind.REQUEST_RATE,
        "requests per second that succeeded and met every per-request objective",
        _LOAD,
        group=_GOODPUT,
        interval=IntervalMethod.BATCH_MEANS,
    ),
    Metric(
        "goodput_ratio",
        _S,
        UnitKind.RATIO,
        "fraction of measured requests that succeeded and met every per-request objective",
        _LOAD,
        group=_GOODPUT,
        interval=IntervalMethod.WILSON,
    ),
    Metric(
        "ttft_growth",
        _S,
        UnitKind.FACTOR,
        "median TTFT of the last third of the successful requests (by send time) over that of "
        "the first third: about 1x below the knee; a server past it (its queue growing for "
        "as long as the load lasts) shows a growing TTFT, and at 2x or more, decisively, the "
        "run is reported as saturated",
        _LOAD,
        interval=IntervalMethod.TREND,
    ),
    Metric(
        "startup_time",
        _S,
        UnitKind.TIME,
        "server start -> ready to serve (`/health` and `/v1/models` answer)",
        _START,
    ),
    Metric(
        "gpu_memory_peak",
        _S,
        UnitKind.MEMORY,
        "peak GPU memory of the server's process tree, whole run, summed over the GPUs it "
        "used (each GPU's peak)",
        _TELEMETRY,
        group=_GPU,
    ),
    Metric(
        "gpu_memory_startup_peak",
        _S,
        UnitKind.MEMORY,
        "peak GPU memory while the server started",
        _TELEMETRY,
        group=_GPU,
    ),
    Metric(
        "gpu_memory_load_peak",
        _S,
        UnitKind.MEMORY,
        "peak GPU memory during the measured load",
        _TELEMETRY,
        group=_GPU,
    ),
    Metric(
        "gpu_memory_steady",
        _S,
        UnitKind.MEMORY,
        "GPU memory once ready, before load",
        _TELEMETRY,
        group=_GPU,
    ),
    Metric(
        "gpu_memory_peak_per_gpu",
        _S,
        UnitKind.MEMORY,
        "peak GPU memory of the server's process tree on its most-loaded GPU, whole run: what "
        "must fit on one device when a server is spread over several (`tensor_parallel_size`, "
        "`data_parallel_size`)",
        _TELEMETRY,
        group=_GPU,
    ),
    Metric(
        "host_memory_peak",
        _S,
        UnitKind.MEMORY,
        "peak resident memory (RSS) of the server's process tree",
        _TELEMETRY,
    ),
    Metric(
        "kv_cache_usage_max",
        _S,
        UnitKind.RATIO,
        "largest KV-cache usage seen on `/metrics`",
        _METRICS_EP,
        gauge=True,
        group=_SERVER_METRICS,
    ),
    Metric(
        "kv_cache_usage_mean",
        _S,
        UnitKind.RATIO,
        "mean KV-cache usage seen on `/metrics`",
        _METRICS_EP,
        gauge=True,
        group=_SERVER_METRICS,
    ),
    Metric(
        "preemptions",
        _S,
        UnitKind.COUNT,
        "requests the server preempted during the load (`/metrics`)",
        _METRICS_EP,
        group=_SERVER_METRICS,
    ),
    Metric(
        "requests_running_max",
        _S,
        UnitKind.COUNT,
        "most requests running at once (`/metrics`)",
        _METRICS_EP,
        gauge=True,
        group=_SERVER_METRICS,
    ),
    Metric(
        "requests_waiting_max",
        _S,
        UnitKind.COUNT,
        "most requests queued at once (`/metrics`)",
        _METRICS_EP,
        gauge=True,
        group=_SERVER_METRICS,
    ),
    Metric(
        "max_parallel",
        _S,
        UnitKind.COUNT,
        "capacity search (`vary: parallel`): the highest number of concurrent users at which "
        "every other objective of the scenario passed",
        Producer.CAPACITY,
        group=_CAPACITY,
    ),
    Metric(
        "max_rate",
        _S,
        UnitKind.REQUEST_RATE,
        "capacity search (`vary: rate`): the highest request rate at which every other "
        "objective of the scenario passed",
        Producer.CAPACITY,
        group=_CAPACITY,
    ),
    # --- the client's own health --------------------------------------------------------------
    Metric(
        "client_loop_lag_p90",
        _S,
        UnitKind.TIME,
        "90th percentile of how late a 20 ms timer fired on the client's event loop (the loop "
        "that sends requests and stamps chunks) during the measured load",
        Producer.CLIENT,
        group=_CLIENT,
    ),
    Metric(
        "client_loop_lag_p99",
        _S,
        UnitKind.TIME,
        "99th percentile of that timer's lateness",
        Producer.CLIENT,
        group=_CLIENT,
    ),
    Metric(
        "client_loop_lag_max",
        _S,
        UnitKind.TIME,
        "the latest that timer fired: the client's longest stall",
        Producer.CLIENT,
        group=_CLIENT,
    ),
    Metric(
        "client_cpu",
        _S,
        UnitKind.RATIO,
        "CPU time of the client process (every thread; telemetry samples from a process of its "
        "own, not counted) per second of the measured load; 100% is one core, all the event "
        "loop can use",
        Producer.CLIENT,
        group=_CLIENT,
    ),
    Metric(
        "client_concurrency_ratio",
        _S,
        UnitKind.RATIO,
        "closed loop: requests in flight on average (their durations summed over the window) "
        "over `parallel`; below 100% by the client's time between a response and the next send",
        Producer.CLIENT,
        group=_CLIENT,
    ),
)

BY_NAME: Mapping[str, Metric] = MappingProxyType({m.name: m for m in METRICS})


def select(
    *,
    kind: MetricKind | None = None,
    producer: Producer | None = None,
    unit: UnitKind | None = None,
) -> Iterator[Metric]:
    """The declared metrics that match every given filter, in declaration order."""
    for metric in METRICS:
        if kind is not None and metric.kind is not kind:
            continue
        if producer is not None and metric.producer is not producer:
            continue
        if unit is not None and metric.unit is not unit:
            continue
        yield metric


def names(
    *,
    kind: MetricKind | None = None,
    producer: Producer | None = None,
    unit: UnitKind | None = None,
) -> tuple[str, ...]:
    """Names of `select(...)`, in declaration order."""
    return tuple(m.name for m in select(kind=kind, producer=producer, unit=unit))


def _check(metrics: tuple[Metric, ...]) -> None:
    # a mistake here would surface as a confusing spec error far away: fail on import instead
    seen: set[str] = set()
    groups: list[DocGroup] = []  # every group met so far
    previous: DocGroup | None = None
    for metric in metrics:
        if metric.name in seen:
            raise ValueError(f"metric {metric.name!r} is declared twice")
        seen.add(metric.name)
        group = metric.group
        if group is not None and group is not previous:
            if any(g is group for g in groups):
                raise ValueError(f"metric {metric.name!r}: a README group's metrics are neighbours")
            groups.append(group)
        previous = group
        if metric.per_request and metric.kind is not MetricKind.DISTRIBUTION:
            raise ValueError(f"metric {metric.name!r}: only a distribution has a per-request form")
        if metric.gauge and metric.producer is not Producer.SERVER_METRICS:
            raise ValueError(f"metric {metric.name!r}: only a /metrics series is a gauge")
        if metric.interval is IntervalMethod.PER_STATISTIC and metric.kind is not _D:
            raise ValueError(f"metric {metric.name!r}: only a distribution has statistics")
        if metric.report_label and metric.unit is not UnitKind.TIME:
            raise ValueError(f"metric {metric.name!r}: the report's latency table holds times")


_check(METRICS)
