"""pytest hooks, options and fixtures of pytest-llmslo; the work itself lives in other modules."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmslo import __version__, interrupts
from pytest_llmslo.collect import (
    OPEN_SESSION_KEY,
    XDIST_REFUSAL,
    SLOItem,
    SpecFile,
    junit_properties,
    opened_session,
    slo_session,
)
from pytest_llmslo.redact import redact_url

# Only what every pytest run needs is imported here: the engine (numpy, httpx, yaml) is imported
# when a spec is collected or an llmslo_* fixture is used, so having the plugin installed costs a
# plain test run nothing.
if TYPE_CHECKING:
    from pytest_llmslo.baseline import Baseline
    from pytest_llmslo.handtests import LoadRun, ServerFactory
    from pytest_llmslo.report_writer import RunFolder, Written
    from pytest_llmslo.session import SloSession

SETTINGS_KEY: pytest.StashKey[Settings] = pytest.StashKey()
_LAST_USE_KEY = pytest.StashKey[dict[tuple[str, str], int]]()
_RESTORE_SIGNALS_KEY = pytest.StashKey[Callable[[], None]]()
_WRITTEN_KEY: pytest.StashKey[Written] = pytest.StashKey()
_HELD_SIGNAL_KEY = pytest.StashKey[str]()
_RUN_KEY: pytest.StashKey[RunFolder] = pytest.StashKey()

# flag, ini name, env var, help: every flag has an ini twin and an env var, resolved CLI > env > ini
_OPTIONS = [
    ("--slo", "slo_paths", "LLMSLO_SPECS", "SLO spec file or directory to run (repeatable)."),
    (
        "--slo-report",
        "slo_report",
        "LLMSLO_REPORT",
        "Markdown report path; results.json and requests.jsonl are written beside it. "
        "Default: llmslo-results/report.md.",
    ),
    (
        "--slo-server-url",
        "slo_server_url",
        "LLMSLO_SERVER_URL",
        "Run the specs against this already running OpenAI-compatible server "
        "instead of starting one.",
    ),
    (
        "--slo-api-key-env",
        "slo_api_key_env",
        "LLMSLO_API_KEY_ENV",
        "Name of the environment variable holding the API key for --slo-server-url.",
    ),
    (
        "--slo-max-requests",
        "slo_max_requests",
        "LLMSLO_MAX_REQUESTS",
        "Cap every scenario's measured request count (quick runs).",
    ),
    (
        "--slo-confidence",
        "slo_confidence",
        "LLMSLO_CONFIDENCE",
        "Confidence level of every gated value's interval, e.g. 0.95; overrides the "
        "specs' verdicts.confidence.",
    ),
    (
        "--slo-inconclusive",
        "slo_inconclusive",
        "LLMSLO_INCONCLUSIVE",
        "What an inconclusive objective counts as: fail (default), pass (with a warning) or "
        "rerun (more rounds on the same server until decisive, then fail); overrides the "
        "specs' verdicts.inconclusive.",
    ),
    (
        "--slo-baseline",
        "slo_baseline",
        "LLMSLO_BASELINE",
        "results.json of an earlier run (or its run folder) that relative objectives (such as "
        "'<= baseline + 20 ms') are compared with.",
    ),
    (
        "--slo-save-baseline",
        "slo_save_baseline",
        "LLMSLO_SAVE_BASELINE",
        "Also write this run's results.json here (a file, or a folder to hold results.json), "
        "to compare later runs with.",
    ),
    (
        "--slo-baseline-allow-mismatch",
        "slo_baseline_allow_mismatch",
        "LLMSLO_BASELINE_ALLOW_MISMATCH",
        "Compare with a baseline that ran on other hardware or another model (refused "
        "otherwise); the differences are reported.",
    ),
    (
        "--slo-progress",
        "slo_progress",
        "LLMSLO_PROGRESS",
        "Progress of server starts and loads: live (one line rewritten in place), lines (one "
        "line per server start and per scenario when it ends), off, or auto (default: live on "
        "a terminal, lines with -q or when the output is not a terminal).",
    ),
]
# on/off options: a bare flag on the command line, true/false in the ini file and environment
_SWITCHES = ("--slo-baseline-allow-mismatch",)
_TRUE = ("1", "true", "yes", "on")


class Settings:
    """Resolved option values and where each came from (shown in the report header)."""

    def __init__(self, config: pytest.Config) -> None:
        self.source: dict[str, str] = {}
        self.specs = [Path(p) for p in self._list(config, 0)]
        self.report = Path(self._one(config, 1) or "llmslo-results/report.md")
        self.server_url = self._one(config, 2)
        if self.server_url is not None:
            from pytest_llmslo.spec import http_url_problem

            problem = http_url_problem(self.server_url)
            if problem is not None:
                raise pytest.UsageError(
                    f"pytest-llmslo: {self.source['slo_server_url']}: {problem}; give the "
                    "server's base URL, e.g. http://host:8000 (without /v1)"
                )
        self.api_key_env = self._one(config, 3)
        raw = self._one(config, 4)
        self.max_requests = (
            _positive_int(raw, self.source.get("slo_max_requests", "")) if raw else None
        )
        raw = self._one(config, 5)
        self.confidence = _confidence(raw, self.source.get("slo_confidence", "")) if raw else None
        raw = self._one(config, 6)
        self.inconclusive = _policy(raw, self.source.get("slo_inconclusive", "")) if raw else None
        self._baseline_options(config)

    def _baseline_options(self, config: pytest.Config) -> None:
        # read now: a wrong baseline path fails at start-up, before any server starts
        raw = self._one(config, _index("--slo-baseline"))
        self.baseline_path = Path(raw) if raw else None
        self.baseline: Baseline | None = None
        if self.baseline_path is not None:
            from pytest_llmslo.baseline import BaselineError, load_baseline

            try:
                self.baseline = load_baseline(self.baseline_path)
            except BaselineError as exc:
                where = self.source["slo_baseline"]
                raise pytest.UsageError(f"pytest-llmslo: {where}: {exc}") from None
        raw = self._one(config, _index("--slo-save-baseline"))
        self.save_baseline = _save_target(Path(raw), self.source) if raw else None
        raw = self._one(config, _index("--slo-baseline-allow-mismatch"))
        self.allow_mismatch = raw is not None and raw.strip().lower() in _TRUE
        raw = self._one(config, _index("--slo-progress"))
        self.progress = _progress_mode(raw, self.source.get("slo_progress", "")) if raw else "auto"

    def _one(self, config: pytest.Config, i: int) -> str | None:
        flag, ini, env, _ = _OPTIONS[i]
        cli = config.getoption(flag)
        if cli:
            self.source[ini] = flag
            return str(cli)
        if os.environ.get(env):
            self.source[ini] = f"${env}"
            return os.environ[env]
        value = config.getini(ini)
        if value:
            self.source[ini] = f"ini {ini}"
            return str(value)
        return None

    def _list(self, config: pytest.Config, i: int) -> list[str]:
        flag, ini, env, _ = _OPTIONS[i]
        if config.getoption(flag):
            self.source[ini] = flag
            return list(config.getoption(flag))
        if os.environ.get(env):
            self.source[ini] = f"${env}"
            return os.environ[env].split(os.pathsep)
        value = config.getini(ini)
        if value:
            self.source[ini] = f"ini {ini}"
        return list(value or [])


def _index(flag: str) -> int:
    return next(i for i, option in enumerate(_OPTIONS) if option[0] == flag)


def _save_target(path: Path, source: dict[str, str]) -> Path:
    """The file --slo-save-baseline writes: `path`, or results.json in it when it is a folder
    (an existing one, or a name without a .json suffix)."""
    target = path / "results.json" if path.is_dir() or path.suffix != ".json" else path
    blocker = next((p for p in (target, *target.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None and blocker != target:
        raise pytest.UsageError(
            f"pytest-llmslo: {source['slo_save_baseline']} {path}: {blocker} is a file, so "
            f"{target} cannot be written; name a folder or a .json file"
        )
    return target


def _positive_int(raw: str, where: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise pytest.UsageError(
            f"pytest-llmslo: {where or '--slo-max-requests'}: expected a positive integer, "
            f"got {raw!r}"
        )
    return value


def _confidence(raw: str, where: str) -> float:
    text = raw.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if not 0.5 <= value <= 0.999:
        raise pytest.UsageError(
            f"pytest-llmslo: {where}: expected a confidence level between 0.5 and 0.999 (or "
            f"50% to 99.9%), got {raw!r}; e.g. 0.95"
        )
    return value


def _policy(raw: str, where: str) -> str:
    from pytest_llmslo.config import INCONCLUSIVE_POLICIES

    if raw.strip() not in INCONCLUSIVE_POLICIES:
        raise pytest.UsageError(
            f"pytest-llmslo: {where}: expected one of {', '.join(INCONCLUSIVE_POLICIES)}, got "
            f"{raw!r}"
        )
    return raw.strip()


def _progress_mode(raw: str, where: str) -> str:
    from pytest_llmslo.progress import PROGRESS_MODES

    if raw.strip() not in PROGRESS_MODES:
        raise pytest.UsageError(
            f"pytest-llmslo: {where}: expected one of {', '.join(PROGRESS_MODES)}, got {raw!r}"
        )
    return raw.strip()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmslo", "LLM inference-service SLO testing (pytest-llmslo)")
    for flag, ini, env, text in _OPTIONS:
        kw: dict[str, Any] = {"action": "append", "default": []} if flag == "--slo" else {}
        if flag in _SWITCHES:
            kw = {"action": "store_true", "default": False}
        group.addoption(flag, dest=ini, help=f"{text} Env: {env}. Ini: {ini}.", **kw)
        if flag == "--slo":
            parser.addini(ini, help=text, type="paths")
        elif flag in _SWITCHES:
            parser.addini(ini, help=text, type="bool", default=False)
        else:
            parser.addini(ini, help=text, type="string")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slo(**objectives): objectives that assert_slo checks when given none"
    )
    settings = Settings(config)
    config.stash[SETTINGS_KEY] = settings
    if settings.specs:
        _check_spec_paths(settings)
        # `pytest --slo x.yaml` runs the spec alone unless test paths are also given; specs from
        # the ini file or the environment join what pytest would collect, never replace it
        if (
            settings.source.get("slo_paths") == "--slo"
            and config.args_source != pytest.Config.ArgsSource.ARGS
        ):
            config.args = []
        invoked = config.invocation_params.dir
        config.args.extend(
            str(p) for p in settings.specs if not _selected_within(p, config.args, invoked)
        )
    _check_xdist(config)
    config.stash[OPEN_SESSION_KEY] = lambda: _open_session(config, settings)
    # SIGINT, SIGTERM (CI cancelling a job), SIGHUP: stop, keep what was measured, write the
    # reports; a second signal kills the servers at once (interrupts.py)
    interrupts.reset()
    config.stash[_RESTORE_SIGNALS_KEY] = interrupts.install()


def _open_session(config: pytest.Config, settings: Settings) -> SloSession:
    """The session that runs specs and keeps hand-written runs, opened on first use."""
    from pytest_llmslo.progress_terminal import terminal_progress
    from pytest_llmslo.record_log import RequestLog
    from pytest_llmslo.report_writer import REQUESTS_NAME, RunFolder, claim_run_dir
    from pytest_llmslo.session import SloSession

    # named now, before this session writes anything: what the latest report files were tells,
    # at the end, whether another session wrote into the same folder meanwhile
    run = config.stash[_RUN_KEY] = RunFolder.start(settings.report)
    return SloSession(
        settings.report.parent,
        server_url=settings.server_url,
        api_key_env=settings.api_key_env,
        request_limit=settings.max_requests,
        confidence=settings.confidence,
        inconclusive=settings.inconclusive,
        baseline=settings.baseline,
        allow_mismatch=settings.allow_mismatch,
        recording_baseline=settings.save_baseline is not None and settings.baseline is None,
        progress=terminal_progress(config, settings.progress),
        # each request is written to the run's folder as it finishes: a long run stays small,
        # and a session killed midway leaves every finished request on disk
        request_log=RequestLog(lambda: claim_run_dir(run)[0], REQUESTS_NAME),
    )


SPEC_SUFFIXES = (".yaml", ".yml")


def _check_spec_paths(settings: Settings) -> None:
    """A spec path that can yield no spec is a usage error saying why, not "no tests ran"."""
    source = settings.source.get("slo_paths", "--slo")
    for path in settings.specs:
        if "::" in str(path):
            raise pytest.UsageError(
                f"pytest-llmslo: {source} {path}: {source} takes a spec file or directory; to "
                f"run one test, give its id as a test path: pytest '{path}'"
            )
    missing = [str(p) for p in settings.specs if not p.exists()]
    if missing:
        raise pytest.UsageError(
            f"pytest-llmslo: {source} path not found: {', '.join(missing)} "
            f"(relative to {Path.cwd()})"
        )
    for path in settings.specs:
        if path.is_file() and path.suffix not in SPEC_SUFFIXES:
            raise pytest.UsageError(
                f"pytest-llmslo: {source} {path}: not a spec: spec files are YAML files ending "
                "in .yaml or .yml"
            )
        if path.is_dir() and not any(p.suffix in SPEC_SUFFIXES for p in path.rglob("*")):
            raise pytest.UsageError(
                f"pytest-llmslo: {source} {path}: the directory holds no spec (no .yaml or .yml "
                "file under it)"
            )


def _selected_within(spec: Path, args: list[str], invoked: Path) -> bool:
    """Whether a test path already selects something inside ``spec`` (the file or directory):
    adding the whole of it would override a selection such as ``x.yaml::scenario``."""
    target = (invoked / spec).resolve()
    for arg in args:
        named = (invoked / arg.split("::")[0]).resolve()
        if named == target or target in named.parents:
            return True
    return False


def _check_xdist(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None) and config.stash[SETTINGS_KEY].specs:
        raise pytest.UsageError(XDIST_REFUSAL)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = opened_session(config)
    if session is not None:
        with interrupts.shielded(deliver=False):  # pytest is ending anyway: no traceback now
            session.close()
    restore = config.stash.get(_RESTORE_SIGNALS_KEY, None)
    if restore is not None:
        restore()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SpecFile | None:
    if file_path.suffix not in SPEC_SUFFIXES:
        return None
    settings: Settings = parent.config.stash[SETTINGS_KEY]
    wanted = (
        file_path.name.endswith((".slo.yaml", ".slo.yml"))
        # named as a test path: an id copied from the output runs as it is
        or parent.session.isinitpath(file_path)
        or any(file_path == p.resolve() or p.resolve() in file_path.parents for p in settings.specs)
    )
    return SpecFile.from_parent(parent, path=file_path) if wanted else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    # keep each server's items together so one server is stopped before the next one starts:
    # two large models need not share a GPU
    order: dict[tuple[str, str], int] = {}
    for item in items:
        if isinstance(item, SLOItem):
            order.setdefault(item.server_key, len(order))
    if order:
        positions = {id(item): i for i, item in enumerate(items)}
        items.sort(
            key=lambda it: (
                (order[it.server_key], positions[id(it)])
                if isinstance(it, SLOItem)
                else (-1, positions[id(it)])
            )
        )


def pytest_collection_finish(session: pytest.Session) -> None:
    last: dict[tuple[str, str], int] = {}
    for i, item in enumerate(session.items):
        if isinstance(item, SLOItem):
            last[item.server_key] = i
    session.config.stash[_LAST_USE_KEY] = last


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if not isinstance(item, SLOItem):
        return
    last = item.config.stash.get(_LAST_USE_KEY, {})
    index = item.session.items.index(item) if item.session.items else -1
    if last.get(item.server_key, index) <= index:
        slo_session(item.config).stop_server(*item.server_key)


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings: Settings = config.stash[SETTINGS_KEY]
    if not settings.specs and not settings.server_url:
        return [f"llmslo: {__version__}"]
    parts = [f"llmslo: {__version__}", f"report={settings.report}"]
    if settings.specs:
        parts.append("specs=" + ",".join(str(p) for p in settings.specs))
    if settings.server_url:
        parts.append(f"server_url={redact_url(settings.server_url)}")
    if settings.max_requests:
        parts.append(f"max_requests={settings.max_requests}")
    if settings.confidence is not None:
        parts.append(f"confidence={settings.confidence:g}")
    if settings.inconclusive is not None:
        parts.append(f"inconclusive={settings.inconclusive}")
    if settings.baseline_path is not None:
        parts.append(f"baseline={settings.baseline_path}")
    if settings.save_baseline is not None:
        parts.append(f"save_baseline={settings.save_baseline}")
    if settings.allow_mismatch:
        parts.append("baseline_allow_mismatch=true")
    if "slo_progress" in settings.source:
        parts.append(f"progress={settings.progress}")
    sources = ", ".join(f"{k} from {v}" for k, v in sorted(settings.source.items()))
    return [" ".join(parts)] + ([f"llmslo settings: {sources}"] if sources else [])


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    slo = opened_session(session.config)
    if slo is None:  # no spec ran and no llmslo_* fixture was used: nothing to report
        return
    # reports first, so a slow stop cannot lose them; shielded, so a signal now (a second
    # Ctrl-C, CI's SIGTERM) cuts neither short: it is held, and a second one kills at once
    with interrupts.shielded(deliver=False):
        try:
            if slo.results:
                from pytest_llmslo.report_writer import write_reports

                settings: Settings = session.config.stash[SETTINGS_KEY]
                written = write_reports(
                    list(slo.results.values()),
                    settings.report,
                    os.environ.get("GITHUB_STEP_SUMMARY"),
                    run=session.config.stash.get(_RUN_KEY, None),
                    notices=slo.notices,
                    baseline_copy=settings.save_baseline,
                    request_log=slo.request_log,
                )
                session.config.stash[_WRITTEN_KEY] = written
        finally:
            slo.close()
    held = interrupts.take_pending()
    if held is not None:
        session.config.stash[_HELD_SIGNAL_KEY] = held
        session.exitstatus = pytest.ExitCode.INTERRUPTED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    held = config.stash.get(_HELD_SIGNAL_KEY, None)
    if held is not None:
        terminalreporter.write_line(
            f"llmslo: {held} arrived while the run was finishing: reports written, servers "
            "stopped, exit status 'interrupted'"
        )
    written = config.stash.get(_WRITTEN_KEY, None)
    if written is None:
        return
    terminalreporter.write_sep("=", "llmslo report")
    terminalreporter.write_line(written.markdown)
    for line in written.messages:
        terminalreporter.write_line(line)
    for line in written.warnings:  # a lost or overwritten file, a log folder moved
        terminalreporter.write_line(f"WARNING {line}", yellow=True, bold=True)


# --- fixtures for hand-written tests -------------------------------------------------------------


@pytest.fixture(scope="session")
def llmslo_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Starts servers on demand (`factory(backend=..., model=..., args=...)` -> Endpoint);
    a server with the same settings is reused; all are stopped at session end. Telemetry
    watches each from before its start, so `llmslo_run` measures its memory objectives."""
    from pytest_llmslo.handtests import ServerFactory

    factory = ServerFactory(tmp_path_factory.mktemp("llmslo-servers"))
    try:
        yield factory
    finally:
        with interrupts.shielded():  # a signal now is raised once every server is stopped
            factory.close()


# the (source, scenario, server) keys of the runs a hand-written test made, in order
_TEST_RUNS_KEY = pytest.StashKey[list[tuple[str, str, str]]]()


@pytest.fixture
def llmslo_run(
    request: pytest.FixtureRequest, llmslo_server_factory: ServerFactory
) -> Iterator[Callable[..., LoadRun]]:
    """`llmslo_run(endpoint, prompts_or_dataset, load, **options)` -> LoadRun (`run_workload`'s
    options). The run is judged against the test's `slo` marker and appears in report.md,
    results.json and the test's JUnit properties, as a spec scenario does."""
    from pytest_llmslo.handtests import LoadRun, as_verdicts_config, workload_result

    marker = request.node.get_closest_marker("slo")
    session = slo_session(request.config)
    keys = request.node.stash.setdefault(_TEST_RUNS_KEY, [])

    def run(*args: Any, **kwargs: Any) -> LoadRun:
        kwargs.setdefault("objectives", dict(marker.kwargs) if marker else None)
        kwargs.setdefault("servers", llmslo_server_factory)
        name = request.node.name if not keys else f"{request.node.name}-{len(keys) + 1}"
        kwargs.setdefault("name", name)
        # the session's --slo-confidence / --slo-inconclusive hold before the run, so that
        # `rerun` can run its rounds
        kwargs["verdicts"] = session.verdicts_for(as_verdicts_config(kwargs.get("verdicts")))
        # a signal stops the load (its records kept, the run reported), then ends the session
        # like a Ctrl-C anywhere else, instead of letting the test go on with half a run
        with interrupts.shielded():
            result = session.rejudged(workload_result(*args, source=request.node.nodeid, **kwargs))
            session.add_result(result)
            keys.append(result.key)
        return LoadRun.of(result)

    yield run
    # JUnit takes the properties a test has at its teardown: the runs as last judged
    for key in keys:
        final = session.results.get(key)
        if final is not None:
            metrics = [v.objective.metric for v in final.verdicts]
            request.node.user_properties.extend(junit_properties(final, metrics))


@pytest.fixture
def llmslo_assert(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`llmslo_assert(run, objectives=None)`: objectives default to the test's `slo` marker,
    else to those the run was given."""
    from pytest_llmslo.handtests import assert_slo, judge

    marker = request.node.get_closest_marker("slo")
    default: Mapping[str, str] = dict(marker.kwargs) if marker else {}

    def check(run: LoadRun, objectives: Mapping[str, str] | None = None) -> None:
        chosen = objectives if objectives is not None else default
        if not chosen and not run.result.scenario.objectives:
            raise pytest.UsageError(
                "llmslo_assert: no objectives: pass them or mark the test "
                '@pytest.mark.slo(ttft_p95="<= 500 ms", ...)'
            )
        result = judge(run, chosen or None)
        # the reports show what the test asserted
        if result.key in request.node.stash.get(_TEST_RUNS_KEY, []):
            slo_session(request.config).add_result(result)
        assert_slo(result)

    return check
