"""pytest hooks, options and fixtures of pytest-llmslo; the work itself lives in other modules."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from pytest_llmslo import __version__
from pytest_llmslo.collect import SLOItem, SpecFile
from pytest_llmslo.handtests import LoadRun, ServerFactory, assert_slo, run_workload
from pytest_llmslo.report import write_reports
from pytest_llmslo.session import SloSession

SESSION_KEY = pytest.StashKey[SloSession]()
SETTINGS_KEY = pytest.StashKey["Settings"]()
_LAST_USE_KEY = pytest.StashKey[dict[tuple[str, str], int]]()
_SIGTERM_KEY = pytest.StashKey[Any]()

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
]


class Settings:
    """Resolved option values and where each came from (shown in the report header)."""

    def __init__(self, config: pytest.Config) -> None:
        self.source: dict[str, str] = {}
        self.specs = [Path(p) for p in self._list(config, 0)]
        self.report = Path(self._one(config, 1) or "llmslo-results/report.md")
        self.server_url = self._one(config, 2)
        self.api_key_env = self._one(config, 3)
        raw = self._one(config, 4)
        self.max_requests = (
            _positive_int(raw, self.source.get("slo_max_requests", "")) if raw else None
        )

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


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmslo", "LLM inference-service SLO testing (pytest-llmslo)")
    for flag, ini, env, text in _OPTIONS:
        kw: dict[str, Any] = {"action": "append", "default": []} if flag == "--slo" else {}
        group.addoption(flag, dest=ini, help=f"{text} Env: {env}. Ini: {ini}.", **kw)
        if flag == "--slo":
            parser.addini(ini, help=text, type="paths")
        else:
            parser.addini(ini, help=text, type="string")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slo(**objectives): objectives that assert_slo checks when given none"
    )
    settings = Settings(config)
    config.stash[SETTINGS_KEY] = settings
    if settings.specs:
        missing = [str(p) for p in settings.specs if not p.exists()]
        if missing:
            raise pytest.UsageError(
                f"pytest-llmslo: --slo path not found: {', '.join(missing)} "
                f"(relative to {Path.cwd()})"
            )
        # `pytest --slo x.yaml` runs the spec alone unless test paths are also given
        if config.args_source != pytest.Config.ArgsSource.ARGS:
            config.args = []
        config.args.extend(str(p) for p in settings.specs)
    _check_xdist(config)
    config.stash[SESSION_KEY] = SloSession(
        settings.report.parent,
        server_url=settings.server_url,
        api_key_env=settings.api_key_env,
        request_limit=settings.max_requests,
    )
    config.stash[_SIGTERM_KEY] = _sigterm_as_interrupt()


XDIST_REFUSAL = (
    "pytest-llmslo: SLO specs cannot run under pytest-xdist: every worker would start its own "
    "copy of each server, and concurrent load from other workers would distort the measurements. "
    "Run the specs in a separate pytest invocation without -n (e.g. 'pytest --slo SPEC -p "
    "no:xdist'), and your other tests with -n."
)


def _check_xdist(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None) and config.stash[SETTINGS_KEY].specs:
        raise pytest.UsageError(XDIST_REFUSAL)


def _sigterm_as_interrupt() -> Any:
    """CI runners stop jobs with SIGTERM: turn it into KeyboardInterrupt so servers are stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded pytest): leave signals alone
        return None


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
    previous = config.stash.get(_SIGTERM_KEY, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SpecFile | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    settings: Settings = parent.config.stash[SETTINGS_KEY]
    wanted = file_path.name.endswith((".slo.yaml", ".slo.yml")) or any(
        file_path == p.resolve() or p.resolve() in file_path.parents for p in settings.specs
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
        item.config.stash[SESSION_KEY].stop_server(*item.server_key)


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings: Settings = config.stash[SETTINGS_KEY]
    if not settings.specs and not settings.server_url:
        return [f"llmslo: {__version__}"]
    parts = [f"llmslo: {__version__}", f"report={settings.report}"]
    if settings.specs:
        parts.append("specs=" + ",".join(str(p) for p in settings.specs))
    if settings.server_url:
        parts.append(f"server_url={settings.server_url}")
    if settings.max_requests:
        parts.append(f"max_requests={settings.max_requests}")
    sources = ", ".join(f"{k} from {v}" for k, v in sorted(settings.source.items()))
    return [" ".join(parts)] + ([f"llmslo settings: {sources}"] if sources else [])


def pytest_sessionfinish(session: pytest.Session) -> None:
    slo = session.config.stash.get(SESSION_KEY, None)
    if slo is None:
        return
    slo.close()
    if slo.results:
        settings: Settings = session.config.stash[SETTINGS_KEY]
        written = write_reports(
            list(slo.results.values()), settings.report, os.environ.get("GITHUB_STEP_SUMMARY")
        )
        session.config.stash[_WRITTEN_KEY] = written


_WRITTEN_KEY = pytest.StashKey[Any]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    written = config.stash.get(_WRITTEN_KEY, None)
    if written is None:
        return
    terminalreporter.write_sep("=", "llmslo report")
    terminalreporter.write_line(written.markdown)
    for line in written.messages:
        terminalreporter.write_line(line)


# --- fixtures for hand-written tests -------------------------------------------------------------


@pytest.fixture(scope="session")
def llmslo_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Starts servers on demand (`factory(backend=..., model=..., args=...)` -> Endpoint);
    a server with the same settings is reused; all are stopped at session end."""
    factory = ServerFactory(tmp_path_factory.mktemp("llmslo-servers"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def llmslo_run() -> Callable[..., LoadRun]:
    """`llmslo_run(endpoint, prompts_or_dataset, load)` -> LoadRun(records, summary)."""
    return run_workload


@pytest.fixture
def llmslo_assert(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`llmslo_assert(run, objectives=None)`: objectives default to the test's `slo` marker."""
    marker = request.node.get_closest_marker("slo")
    default: Mapping[str, str] = dict(marker.kwargs) if marker else {}

    def check(run: LoadRun, objectives: Mapping[str, str] | None = None) -> None:
        chosen = objectives if objectives is not None else default
        if not chosen:
            raise pytest.UsageError(
                "llmslo_assert: no objectives: pass them or mark the test "
                '@pytest.mark.slo(ttft_p95="<= 500 ms", ...)'
            )
        assert_slo(run, chosen)

    return check
