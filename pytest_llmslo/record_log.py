"""requests.jsonl as requests finish: each on disk within a second, only its slim form in memory.

An hour at 100 req/s is 360,000 requests; with every chunk time and answer text held until the
end, the client would pass a gigabyte before writing a line, and a crash would lose them all. So
a session writes each finished request to its run folder's requests.jsonl as it completes
(`RequestLog`), and a run keeps in memory only the slim record (records.RequestRecord.slim: no
chunk times, no text) plus its chunk gaps in a fixed-size histogram (gap_histogram.py), from
which the ITL statistics come.

One invariant ties the two: a record is slim if and only if its line is in the file. A record
whose line could not be written (a full disk) stays whole in memory, and the report writer
writes it with the reports at the end, as it does for runs that had no log (hand-written ones).
A record whose token counts are still to be made with the tokenizer (a server that sends no
usage: counting needs the text, and runs after the measured window so that a slow tokenizer
cannot skew the timing) is held whole until `settle`, then written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from pytest_llmslo.gap_histogram import GapHistogram
from pytest_llmslo.load import needs_counting
from pytest_llmslo.metrics import itl
from pytest_llmslo.records import RequestRecord
from pytest_llmslo.redact import Secrets
from pytest_llmslo.report import request_line

FLUSH_S = 1.0  # a finished request reaches the file within this (and at once on close)


class RequestLog:
    """One session's requests.jsonl, appended from any thread as requests finish.

    `folder` is called on the first write, to claim the run's folder: a session that runs no
    load leaves no folder behind. A write that fails is recorded in `error` and reported by
    the writer; the caller keeps that record whole.
    """

    def __init__(self, folder: Callable[[], Path], name: str = "requests.jsonl") -> None:
        self._folder = folder
        self._name = name
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._flushed_at = 0.0
        self.path: Path | None = None
        self.lines = 0
        self.error: str | None = None

    def write(self, lines: Iterable[str]) -> bool:
        """Append `lines` (each without its newline); False when they could not be written."""
        text = "".join(line + "\n" for line in lines)
        with self._lock:
            try:
                handle = self._open()
                handle.write(text)
                now = time.monotonic()
                if now - self._flushed_at >= FLUSH_S:
                    handle.flush()
                    self._flushed_at = now
            except (OSError, ValueError) as exc:
                self.error = self.error or f"{type(exc).__name__}: {exc}"
                return False
            self.lines += text.count("\n")
            return True

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as exc:
                    self.error = self.error or f"{type(exc).__name__}: {exc}"
                self._file = None

    def _open(self) -> IO[str]:
        if self._file is None:
            if self.path is None:
                self.path = self._folder() / self._name
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- held open
        return self._file


class RecordSink:
    """What one round of a scenario run keeps of its finished requests: each line goes to the
    log, the slim record to the run, its chunk gaps (measured, successful requests) to `itl`.

    `keep` is load.run_load's hook; `settle` takes the run's records after the engine counted
    the missing tokens, and writes those that waited for it.
    """

    def __init__(
        self,
        log: RequestLog,
        secrets: Secrets,
        fields: Mapping[str, Any],
        *,
        round_number: int,
        counting: bool,
    ) -> None:
        self.log = log
        self.secrets = secrets
        self.fields = dict(fields)
        self.round = round_number
        self.counting = counting  # a tokenizer will count what the server did not send
        self.itl = GapHistogram()
        self._held: set[int] = set()

    def keep(self, record: RequestRecord) -> RequestRecord:
        record = replace(record, round=self.round) if record.round != self.round else record
        if self.counting and needs_counting(record):
            self._held.add(record.index)
            return record
        return self._write(record)

    def settle(self, records: Sequence[RequestRecord]) -> list[RequestRecord]:
        """`records` with every held one written out and slim."""
        out = []
        for record in records:
            if record.index in self._held:
                self._held.discard(record.index)
                record = self._write(replace(record, round=self.round))
            out.append(record)
        return out

    def _write(self, record: RequestRecord) -> RequestRecord:
        if record.ok and not record.warmup:
            self.itl.add(itl(record))
        written = self.log.write([request_line(record, self.secrets, self.fields)])
        return record.slim() if written else record
