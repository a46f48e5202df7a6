"""Writes a session's reports: every run in its own folder, the latest beside the report path.

`--slo-report llmslo-results/report.md` names the latest run's report; results.json,
requests.jsonl and the plots (`plots/`, with the `plots` extra) sit beside it. Each run also
keeps its own copy in `runs/<run id>/`, so a second session writing into the same folder replaces
the latest files but loses nothing. A session that finds the latest files written by another
session while it ran says so.

Writing never raises: each file is rendered and written on its own (a failure loses that file
alone, and says which), through a temporary file, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmslo import __version__
from pytest_llmslo.environment import RunInfo, collect_run_info
from pytest_llmslo.report import render_markdown, request_lines, results_json
from pytest_llmslo.report_plots import Plots, draw_plots

if TYPE_CHECKING:
    from pytest_llmslo.record_log import RequestLog
    from pytest_llmslo.result import ScenarioResult

RUNS_DIR = "runs"
RESULTS_NAME = "results.json"
REQUESTS_NAME = "requests.jsonl"


@dataclass
class Written:
    """What writing the reports did: the markdown (for the terminal) and what to tell."""

    markdown: str
    messages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # files lost or overwritten


@dataclass(frozen=True)
class RunFolder:
    """Where one session's reports go, and what the latest files were when it started."""

    report_path: Path
    run_id: str
    latest_at_start: str | None  # run id of the results.json beside report_path, if any

    @classmethod
    def start(cls, report_path: Path) -> RunFolder:
        """Called when the session starts: names the run and notes who wrote the latest files."""
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        return cls(report_path, f"{now}-{os.getpid()}", latest_run_id(report_path))

    @property
    def runs_dir(self) -> Path:
        return self.report_path.parent / RUNS_DIR


def latest_run_id(report_path: Path) -> str | None:
    """The run id recorded in the results.json beside `report_path`; None when there is none."""
    try:
        data = json.loads(report_path.with_name(RESULTS_NAME).read_text(encoding="utf-8"))
        run_id = data["run"]["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return run_id if isinstance(run_id, str) else None


def write_reports(
    results: Sequence[ScenarioResult],
    report_path: Path,
    step_summary: str | None,
    *,
    run: RunFolder | None = None,
    notices: Sequence[str] = (),
    baseline_copy: Path | None = None,
    request_log: RequestLog | None = None,
) -> Written:
    """Writes report.md, results.json, requests.jsonl (into the run's folder, then as the latest
    beside `report_path`), results.json once more to `baseline_copy` (--slo-save-baseline) and
    the GitHub job summary; never raises.

    `request_log`: the requests.jsonl the session wrote as requests finished (record_log.py);
    its folder is the run's, and the requests it does not hold are appended to it.
    """
    run = run or RunFolder.start(report_path)
    logged = request_log.path if request_log is not None else None
    run_dir, run_id = (logged.parent, logged.parent.name) if logged else claim_run_dir(run)
    info = _run_info(results)
    markdown_failed: list[str] = []
    written = Written("", warnings=[f"llmslo: {n}" for n in notices])
    plots = _plots(results)  # first: report.md links what was drawn
    written.warnings += plots.warnings

    def markdown() -> str:
        try:
            return render_markdown(results, info, notices, plots)
        except Exception as exc:  # the terminal and the other files still get their verdicts
            markdown_failed.append(f"{type(exc).__name__}: {exc}")
            raise

    files: list[tuple[str, Callable[[], str]]] = [
        (report_path.name, markdown),
        (
            RESULTS_NAME,
            lambda: json.dumps(
                results_json(results, info, run_id),
                indent=2,
                ensure_ascii=False,
                allow_nan=False,  # NaN and Infinity are not JSON: the tree holds null instead
            ),
        ),
    ]
    if logged is None:
        files.append(
            (REQUESTS_NAME, lambda: "".join(line + "\n" for line in request_lines(results)))
        )
    texts: dict[str, str] = {}
    for name, render in files:
        try:
            texts[name] = render()
        except Exception as exc:
            written.warnings.append(f"llmslo: could not render {name}: {type(exc).__name__}: {exc}")
    written.markdown = texts.get(report_path.name) or (
        f"(the markdown report could not be rendered: {'; '.join(markdown_failed)})"
    )

    files_of_run: dict[Path, str | bytes] = {run_dir / name: text for name, text in texts.items()}
    files_of_run.update({run_dir / name: png for name, png in plots.files.items()})
    requests_done = (
        request_log is None or logged is None or _finish_log(written, request_log, results)
    )
    if _write_all(written, files_of_run) and requests_done:
        written.messages.append(f"llmslo: this run's reports: {run_dir}")
    other = latest_run_id(report_path)
    if other is not None and other not in (run.latest_at_start, run_id):
        written.warnings.append(
            f"llmslo: another session (run {other}) wrote {report_path.parent} while this one "
            f"ran; the latest files there now hold this run ({run_id}), the other run's files "
            f"are in {run.runs_dir / other}"
        )
    latest: dict[Path, str | bytes] = {
        report_path.with_name(name): text for name, text in texts.items()
    }
    latest.update({report_path.parent / name: png for name, png in plots.files.items()})
    copied = logged is None or _copy_atomic(written, logged, report_path.with_name(REQUESTS_NAME))
    if _write_all(written, latest) and copied:
        beside = f"{RESULTS_NAME} and {REQUESTS_NAME}"
        if plots.files:
            beside = f"{RESULTS_NAME}, {REQUESTS_NAME} and {len(plots.files)} plots"
        written.messages.append(f"llmslo: wrote {report_path} (latest; {beside} beside it)")
    if baseline_copy is not None and RESULTS_NAME in texts:
        if _write_all(written, {baseline_copy: texts[RESULTS_NAME]}):
            written.messages.append(f"llmslo: saved the baseline: {baseline_copy}")
    elif baseline_copy is not None:
        written.warnings.append(f"llmslo: no baseline saved to {baseline_copy}: no results.json")
    if step_summary:
        try:
            with open(step_summary, "a", encoding="utf-8") as fh:
                fh.write(_without_images(written.markdown) + os.linesep)
            written.messages.append("llmslo: appended the report to $GITHUB_STEP_SUMMARY")
        except OSError as exc:
            written.warnings.append(f"llmslo: could not append to $GITHUB_STEP_SUMMARY: {exc}")
    return written


def _finish_log(written: Written, log: RequestLog, results: Sequence[ScenarioResult]) -> bool:
    """Append to the session's requests.jsonl the requests it does not hold yet (a run with no
    log, or a line that could not be written when it finished), then close it."""
    try:
        rest = request_lines(results)
    except Exception as exc:
        written.warnings.append(
            f"llmslo: could not render {REQUESTS_NAME}'s last lines: {type(exc).__name__}: {exc}"
        )
        rest = []
    log.write(rest)
    log.close()
    if log.error is not None:
        written.warnings.append(f"llmslo: {log.path} is incomplete: {log.error}")
        return False
    return True


def _copy_atomic(written: Written, source: Path, target: Path) -> bool:
    """A copy through a temporary file (the log may be gigabytes: never read into memory)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        written.warnings.append(f"llmslo: could not write {target}: {exc}")
        return False
    return True


def _plots(results: Sequence[ScenarioResult]) -> Plots:
    try:
        return draw_plots(results)
    except Exception as exc:  # plots are extra: the report goes on without them
        why = f"{type(exc).__name__}: {exc}"
        return Plots(notes=[f"no plots: {why}"], warnings=[f"llmslo: could not draw plots: {why}"])


def _write_all(written: Written, texts: Mapping[Path, str | bytes]) -> bool:
    ok = bool(texts)
    for path, text in texts.items():
        try:
            write_atomic(path, text)
        except OSError as exc:
            ok = False
            written.warnings.append(f"llmslo: could not write {path}: {exc}")
    return ok


_IMAGE = re.compile(r"!\[([^\]]*)\]\((plots/[^)\s]+)\)")


def _without_images(markdown: str) -> str:
    """The job summary has no folder beside it: a plot is named, not shown as a broken image."""
    return _IMAGE.sub(r"*\1: `\2` in the report folder*", markdown)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write through a temporary file in the same folder, so no reader sees half a file; text
    as UTF-8, bytes (a plot) as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if isinstance(text, bytes):
            with os.fdopen(fd, "wb") as binary:
                binary.write(text)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def claim_run_dir(run: RunFolder) -> tuple[Path, str]:
    """The run's own folder, created now; a suffix keeps two runs of one second and process
    (pytest run in-process twice) apart."""
    run_id, n = run.run_id, 2
    while True:
        path = run.runs_dir / run_id
        try:
            path.mkdir(parents=True)
            return path, run_id
        except FileExistsError:
            run_id = f"{run.run_id}-{n}"
            n += 1
        except OSError:
            return path, run_id  # its writes fail and say so; the latest files may still work


def _run_info(results: Sequence[ScenarioResult]) -> RunInfo:
    try:
        return collect_run_info(results, __version__)
    except Exception as exc:  # what the machine is must not cost the report
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return RunInfo(__version__, now, f"unknown ({type(exc).__name__}: {exc})", "", "")
