"""Building blocks for hand-written SLO tests and scripts: start a server, run a workload, check."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pytest_llmslo.config import DatasetConfig, LoadConfig, ServerConfig
from pytest_llmslo.datasets import load_prompts
from pytest_llmslo.load import LoadResult, run_load
from pytest_llmslo.metrics import DEFAULT_PERCENTILES, RequestObjective, Summary, summarize
from pytest_llmslo.models import resolve_model
from pytest_llmslo.records import Endpoint, Prompt, RequestRecord
from pytest_llmslo.redact import scrub_file, server_secrets
from pytest_llmslo.servers import Server, make_server
from pytest_llmslo.slo import (
    Measurement,
    Verdict,
    evaluate,
    parse_objective,
    parse_request_objective,
)
from pytest_llmslo.tokens import load_tokenizer


@dataclass(frozen=True)
class LoadRun:
    """What `run_workload` returns: every record and the summary of the measured ones."""

    records: list[RequestRecord]
    summary: Summary
    result: LoadResult

    def measure(self, metric: str) -> Measurement:
        try:
            value, n, reason = self.summary.value(metric)
        except KeyError:
            return Measurement(float("nan"), None, f"{metric} is not measured by a load run")
        return Measurement(value, n, reason)


def run_workload(
    endpoint: Endpoint,
    prompts: Sequence[Prompt] | Sequence[str] | DatasetConfig,
    load: LoadConfig | Mapping[str, Any] | None = None,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    request_slo: Mapping[str, str] | None = None,
    tokenizer_model: str | None = None,
) -> LoadRun:
    """Runs a workload against an endpoint without pytest: prompts may be strings, Prompt objects
    or a DatasetConfig; `load` a LoadConfig or a mapping of its fields (default: 1 user,
    10 requests).
    """
    tokenizer = load_tokenizer(tokenizer_model or endpoint.model)
    if isinstance(prompts, DatasetConfig):
        prompt_list = load_prompts(prompts, tokenizer=tokenizer)
    else:
        prompt_list = [
            p if isinstance(p, Prompt) else Prompt(index=i, text=str(p))
            for i, p in enumerate(prompts)
        ]
    config = _load_config(load)
    result = run_load(
        endpoint, prompt_list, config, count_tokens=tokenizer.count if tokenizer else None
    )
    objectives = [parse_request_objective(k, v) for k, v in (request_slo or {}).items()]
    summary = summarize(
        result.records,
        window=(result.window_start, result.window_end),
        percentiles=percentiles,
        request_objectives=[RequestObjective(o.metric, o.op, o.threshold) for o in objectives],
    )
    return LoadRun(result.records, summary, result)


def _load_config(load: LoadConfig | Mapping[str, Any] | None) -> LoadConfig:
    if isinstance(load, LoadConfig):
        return load
    values = dict(load or {})
    known = {f.name for f in fields(LoadConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown load settings {unknown}; valid: {', '.join(sorted(known))}")
    values.setdefault("parallel", 1 if "rate" not in values else None)
    values.setdefault("requests", 10 if "duration" not in values else None)
    return LoadConfig(**values)


def check_slo(run: LoadRun, objectives: Mapping[str, str]) -> list[Verdict]:
    return evaluate([parse_objective(k, v) for k, v in objectives.items()], run.measure)


def assert_slo(run: LoadRun, objectives: Mapping[str, str]) -> None:
    """Raises AssertionError naming every missed objective, with the same detail as a spec run."""
    missed = [v for v in check_slo(run, objectives) if not v.passed]
    if missed:
        lines = [v.describe() for v in missed]
        errors = run.summary.failures_by_category
        if errors:
            lines.append("errors: " + ", ".join(f"{k} x{n}" for k, n in errors.items()))
            lines += [f"  {k}: {run.summary.error_examples.get(k, '')}" for k in errors]
        raise AssertionError("\n".join(lines))


class ServerFactory:
    """Starts servers by settings and reuses one already started with the same settings."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._servers: dict[str, Server] = {}

    def __call__(self, backend: str = "vllm", model: str = "", **settings: Any) -> Endpoint:
        key = json.dumps(
            {"backend": backend, "model": model, **settings}, sort_keys=True, default=str
        )
        server = self._servers.get(key)
        if server is None or not server.is_alive():
            name = settings.pop("name", f"{backend}-{len(self._servers)}")
            config = resolve_model(
                ServerConfig(name=name, backend=backend, model=model, **settings)  # type: ignore[arg-type]
            )
            server = make_server(config, log_dir=self.log_dir)
            self._servers[key] = server
            server.start()
        endpoint = server.endpoint
        assert endpoint is not None
        return endpoint

    def close(self) -> None:
        while self._servers:
            _, server = self._servers.popitem()
            server.stop()
            # a server's log holds its arguments (an API key among them): keep the rest only
            log_path = getattr(server, "log_path", None)
            if log_path is not None:
                scrub_file(log_path, server_secrets(server.config))
