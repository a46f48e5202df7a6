"""Prometheus text-format parsing and the vLLM metric names a load window is summarized from."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Each tuple lists the current vLLM name first, then the names older releases used.
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
REQUESTS_RUNNING = ("vllm:num_requests_running",)
REQUESTS_WAITING = ("vllm:num_requests_waiting",)
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")
PROMPT_TOKENS = ("vllm:prompt_tokens_total", "vllm:prompt_tokens")
GENERATION_TOKENS = ("vllm:generation_tokens_total", "vllm:generation_tokens")


@dataclass(frozen=True)
class Sample:
    """One exposition line: a metric name, its labels and its value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


class PrometheusParseError(ValueError):
    """A line of a /metrics answer that is not Prometheus text format."""


def parse_samples(text: str) -> list[Sample]:
    """Parse Prometheus text exposition format (version 0.0.4) into samples.

    Comment and blank lines are skipped; a trailing timestamp is accepted and dropped.
    """
    samples: list[Sample] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            samples.append(_parse_line(line))
        except (ValueError, IndexError) as exc:
            raise PrometheusParseError(
                f"line {number} of the /metrics answer is not Prometheus text format ({exc}): "
                f"{line[:200]!r}"
            ) from None
    return samples


def parse_prometheus(text: str) -> dict[str, float]:
    """Parse Prometheus text into one value per metric name, summed over its label sets."""
    totals: dict[str, float] = {}
    for sample in parse_samples(text):
        totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def max_over_labels(samples: Sequence[Sample], names: Sequence[str]) -> float | None:
    """The largest value of the first name in ``names`` that is present, over its label sets.

    Used for ratios such as KV-cache usage, where a sum over engines would exceed 1.
    """
    for name in names:
        values = [s.value for s in samples if s.name == name and not math.isnan(s.value)]
        if values:
            return max(values)
    return None


def lookup(values: Mapping[str, float], names: Sequence[str]) -> float | None:
    """The value of the first name in ``names`` that is present, or None."""
    for name in names:
        if name in values:
            return values[name]
    return None


_LINE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>(?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?'
    r"\s+(?P<value>\S+)(?:\s+-?\d+)?"
)
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_UNESCAPE = re.compile(r"\\(.)")


def _parse_line(line: str) -> Sample:
    match = _LINE.fullmatch(line)
    if match is None:
        raise ValueError("expected `name{labels} value [timestamp]`")
    labels: tuple[tuple[str, str], ...] = ()
    if match["labels"]:
        text = match["labels"].strip()
        pairs = list(_LABEL.finditer(text))
        if sum(len(p[0]) for p in pairs) != len(text):
            raise ValueError("malformed labels")
        labels = tuple((p[1], _UNESCAPE.sub(_unescape, p[2])) for p in pairs)
    return Sample(name=match["name"], labels=labels, value=_parse_value(match["value"]))


def _unescape(match: re.Match[str]) -> str:
    return {"n": "\n"}.get(match[1], match[1])


def _parse_value(token: str) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "Inf": math.inf, "NaN": math.nan}
    if token in special:
        return special[token]
    return float(token)
