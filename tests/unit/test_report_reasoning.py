"""Reasoning streams in report.md: time to the first answer token and the token split."""

from __future__ import annotations

import dataclasses

from pytest_llmslo.config import LoadConfig, ServerConfig
from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import RequestRecord
from pytest_llmslo.report import scenario_section
from pytest_llmslo.result import ScenarioResult
from pytest_llmslo.spec import Scenario


def record(i: int, *, reasoning: int) -> RequestRecord:
    # reasoning chunks at +0.1 and +0.2, the answer from +0.4 on when the request reasons
    first_answer = i + (0.4 if reasoning else 0.1)
    return RequestRecord(
        index=i,
        prompt_index=i,
        warmup=False,
        sent_at=float(i),
        end_at=i + 0.6,
        first_chunk_at=i + 0.05,
        first_content_at=i + 0.1,
        content_times=(i + 0.1, i + 0.2, i + 0.4, i + 0.6),
        first_answer_at=first_answer,
        input_tokens=8,
        output_tokens=12,
        reasoning_tokens=reasoning,
        token_source="usage",
    )


def section(records: list[RequestRecord]) -> str:
    scenario = Scenario(
        name="chat",
        servers=("svc",),
        dataset="lines",
        load=LoadConfig(requests=len(records)),
        objectives=(),
        request_slo=(),
        percentiles=(50.0,),
        line=1,
        server_loads={},
    )
    res = ScenarioResult(
        spec_path="spec.yaml",
        scenario=scenario,
        server=ServerConfig(name="svc", backend="external", base_url="http://h:1"),
        endpoint=None,
        summary=summarize(records, percentiles=(50,)),
        records=tuple(records),
        error=None,
    )
    return scenario_section(res)


def test_a_reasoning_stream_reports_its_answer_time_and_token_split() -> None:
    text = section([record(0, reasoning=8), record(1, reasoning=6)])
    assert "- tokens per request, mean: 7.0 reasoning, 5.0 answer (max 8 and 6)" in text
    row = next(line for line in text.splitlines() if line.startswith("| time to first answer"))
    assert row.startswith("| time to first answer token | 400.0 |")  # mean, 300 ms after TTFT
    assert text.index("| TTFT |") < text.index("| time to first answer token |")


def test_a_plain_stream_keeps_the_report_as_it_was() -> None:
    text = section([record(0, reasoning=0), record(1, reasoning=0)])
    assert "time to first answer token" not in text and "reasoning" not in text


def test_uncounted_reasoning_still_shows_the_answer_time() -> None:
    uncounted = [
        dataclasses.replace(
            record(i, reasoning=0), reasoning_tokens=None, extra={"reasoning_text": " hmm"}
        )
        for i in (0, 1)
    ]
    text = section(uncounted)
    assert "| time to first answer token |" in text
    assert "- tokens per request, mean: – reasoning, – answer" in text
    # records that carry no count and no reasoning text are not taken for reasoning
    silent = [dataclasses.replace(record(i, reasoning=0), reasoning_tokens=None) for i in (0, 1)]
    assert "time to first answer token" not in section(silent)
