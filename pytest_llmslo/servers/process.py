"""Servers we launch as child processes: start, readiness, process tree, a stop leaving nothing."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, ClassVar

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.records import Endpoint
from pytest_llmslo.servers.base import (
    LOG_TAIL_LINES,
    BackendMissingError,
    PortInUseError,
    ServerStartError,
    api_key_from_env,
    connect_host,
    free_port,
    missing_modules,
    port_is_free,
    start_error,
    wait_ready,
)

_GONE_STATES = frozenset("ZXx")  # zombie or dead: no longer running, nothing left to stop


@dataclass(frozen=True)
class ProcessInfo:
    """One line of /proc/<pid>/stat, reduced to what identifies and relates a process."""

    pid: int
    ppid: int
    pgid: int
    state: str
    start_time: (
        int  # clock ticks after boot: with pid, tells a process from a later reuse of its pid
    )

    @property
    def running(self) -> bool:
        return self.state not in _GONE_STATES


def read_process(pid: int) -> ProcessInfo | None:
    """Read /proc/<pid>/stat; None when the process does not exist (any more)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = data[data.rindex(")") + 2 :].split()
    return ProcessInfo(
        pid=pid,
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        state=fields[0],
        start_time=int(fields[19]),
    )


def all_processes() -> list[ProcessInfo]:
    processes = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_process(int(entry))
            if info is not None:
                processes.append(info)
    return processes


def still_running(info: ProcessInfo) -> bool:
    now = read_process(info.pid)
    return now is not None and now.start_time == info.start_time and now.running


def process_tree(
    root: int, *, pgid: int | None = None, known: Iterable[ProcessInfo] = ()
) -> list[ProcessInfo]:
    """The running processes of a tree: `root`, its descendants, members of process group `pgid`,
    the `known` ones still running (same pid and start time) and their descendants.

    `known` matters once a parent has died: its children are re-parented to init and the
    ppid walk from the root no longer reaches a child that also left the group (setsid).
    """
    table = {p.pid: p for p in all_processes()}
    members: dict[int, ProcessInfo] = {}
    if root in table:
        members[root] = table[root]
    for info in known:
        now = table.get(info.pid)
        if now is not None and now.start_time == info.start_time:
            members[now.pid] = now
    if pgid is not None:
        for info in table.values():
            if info.pgid == pgid:
                members[info.pid] = info
    children: dict[int, list[ProcessInfo]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info)
    pending = list(members)
    while pending:
        for child in children.get(pending.pop(), []):
            if child.pid not in members:
                members[child.pid] = child
                pending.append(child.pid)
    return sorted((p for p in members.values() if p.running), key=lambda p: (p.pid != root, p.pid))


def _exists(info: ProcessInfo) -> bool:
    """Whether the process is still in /proc at all, zombies included."""
    now = read_process(info.pid)
    return now is not None and now.start_time == info.start_time


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_process(info: ProcessInfo, sig: signal.Signals) -> None:
    if still_running(info):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(info.pid, sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _Exited(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class ManagedServer:
    """Base of the backends we launch; a subclass says how to build the command line."""

    backend: ClassVar[str] = ""
    # what `start` polls, in order; all must answer 200 (a backend without /health leaves it out)
    readiness_paths: ClassVar[tuple[str, ...]] = ("/health", "/v1/models")
    has_metrics: ClassVar[bool] = False
    # the pip extra that installs the backend, named in BackendMissingError
    install_hint: ClassVar[str] = ""

    def __init__(self, config: ServerConfig, *, log_dir: Path) -> None:
        self.config = config
        self.log_dir = Path(log_dir)
        # modules that must be importable to run the backend; an instance attribute so a test
        # can name a missing one instead of uninstalling anything
        self.required_modules: tuple[str, ...] = ()
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._known: list[ProcessInfo] = []
        self._endpoint: Endpoint | None = None
        self._command: list[str] = []
        self._lock = threading.RLock()

    # --- what a backend provides -------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """os.environ + config.env (+ CUDA_VISIBLE_DEVICES from gpu_ids)."""
        env = dict(os.environ)
        # Python servers buffer their logs otherwise, and the log tail is what explains a failure
        env.setdefault("PYTHONUNBUFFERED", "1")
        if Path(self.config.model).is_dir() and "HF_HUB_OFFLINE" not in self.config.env:
            # a local model needs no hub, and a lookup would hang where there is no network
            env["HF_HUB_OFFLINE"] = "1"
        env.update(self.config.env)
        if self.config.gpu_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in self.config.gpu_ids)
        return env

    def version(self) -> str | None:
        return None

    def served_model(self, model_ids: list[str]) -> str:
        """The model name clients send: served_model_name, else what /v1/models lists."""
        if self.config.served_model_name:
            return self.config.served_model_name
        if model_ids:
            return model_ids[0]
        return self.config.model

    def check_backend(self) -> None:
        missing = missing_modules(self.required_modules)
        if missing:
            raise BackendMissingError(
                start_error(
                    self.config.name,
                    f"backend {self.backend!r} is not installed (cannot import "
                    f"{', '.join(repr(m) for m in missing)})",
                    hint=f"install it with: {self.install_hint}",
                )
            )

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    @property
    def command_line(self) -> list[str]:
        return list(self._command)

    def api_key(self) -> str | None:
        return api_key_from_env(self.config)

    def start(self) -> Endpoint:
        with self._lock:
            if self._endpoint is not None and self.is_alive():
                return self._endpoint
            self.stop()  # what is left of an earlier run that died
            self.check_backend()
            api_key = self.api_key()
            host = self.config.host
            port = self.config.port
            if port is None:
                port = free_port(host)
            elif not port_is_free(host, port):
                raise PortInUseError(
                    start_error(
                        self.config.name,
                        f"port {port} on {host} is already in use by another process",
                        hint="stop whatever listens there, choose another `port`, or leave "
                        "`port` unset to pick a free one",
                    )
                )
            self._command = self.command(port)
            env = self.environment()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self._new_log_path()
            self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed by stop)
            started = time.monotonic()
            try:
                self._proc = subprocess.Popen(
                    self._command,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                self._close_log()
                raise ServerStartError(
                    start_error(self.config.name, f"could not launch: {exc}", command=self._command)
                ) from exc
            _register(self)
            base_url = f"http://{connect_host(host)}:{port}"
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            try:
                model_ids = wait_ready(
                    base_url,
                    self.readiness_paths,
                    timeout=self.config.startup_timeout,
                    headers=headers,
                    check_alive=self._check_alive,
                )
            except _Exited as exc:
                self.stop()
                raise ServerStartError(
                    self._failure(f"{_describe_exit(exc.code)} before it was ready")
                ) from None
            except TimeoutError as exc:
                self.stop()
                raise ServerStartError(
                    self._failure(
                        f"not ready after {self.config.startup_timeout:g} s "
                        f"(last probe: {exc}); raise startup_timeout if it is only slow"
                    )
                ) from None
            except BaseException:
                self.stop()
                raise
            self._endpoint = Endpoint(
                base_url=base_url,
                model=self.served_model(model_ids),
                backend=self.backend,
                api_key=api_key,
                pid=self._proc.pid,
                startup_seconds=time.monotonic() - started,
                log_path=str(self.log_path),
                version=self.version(),
                has_metrics=self.has_metrics,
            )
            return self._endpoint

    def _failure(self, what: str) -> str:
        return start_error(
            self.config.name,
            what,
            command=self._command,
            log_tail=self.log_tail(),
            log_path=str(self.log_path) if self.log_path else None,
        )

    def _check_alive(self) -> None:
        if self._proc is not None:
            code = self._proc.poll()
            if code is not None:
                raise _Exited(code)

    def _new_log_path(self) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.config.name)
        path = self.log_dir / f"server-{safe}.log"
        n = 2
        while path.exists():
            path = self.log_dir / f"server-{safe}-{n}.log"
            n += 1
        return path

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pids(self) -> list[int]:
        with self._lock:
            if self._proc is None:
                return []
            tree = process_tree(self._proc.pid, pgid=self._proc.pid, known=self._known)
            self._remember(tree)
            return [p.pid for p in tree]

    def _remember(self, tree: Iterable[ProcessInfo]) -> None:
        known = {(p.pid, p.start_time): p for p in self._known}
        for p in tree:
            known.setdefault((p.pid, p.start_time), p)
        self._known = [p for p in known.values() if still_running(p)]

    def stop(self) -> None:
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            try:
                self._terminate(proc)
            finally:
                self._proc = None
                self._endpoint = None
                self._known = []
                self._close_log()
                _unregister(self)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        pgid = proc.pid  # start_new_session made the root the leader of its own group
        tree = process_tree(proc.pid, pgid=pgid, known=self._known)
        self._remember(tree)
        deadline = time.monotonic() + self.config.stop_timeout
        _signal_group(pgid, signal.SIGTERM)
        for info in tree:
            if info.pgid != pgid:  # left the group (setsid): the group signal misses it
                _signal_process(info, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline and process_tree(proc.pid, pgid=pgid, known=self._known):
            time.sleep(0.05)
        # whatever ignored SIGTERM, or was still winding down at the deadline
        for _ in range(3):
            rest = process_tree(proc.pid, pgid=pgid, known=self._known)
            if not rest:
                break
            self._remember(rest)
            _signal_group(pgid, signal.SIGKILL)
            for info in rest:
                _signal_process(info, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
            gone_by = time.monotonic() + 5.0
            while time.monotonic() < gone_by and process_tree(
                proc.pid, pgid=pgid, known=self._known
            ):
                time.sleep(0.02)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
        # dead children of the root are zombies until init reaps them; give it a moment, so a
        # caller reading /proc right after stop() finds nothing of the tree
        reaped_by = time.monotonic() + 2.0
        while time.monotonic() < reaped_by and any(_exists(p) for p in self._known + tree):
            time.sleep(0.02)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


# --- every live managed server, so none outlives the test process --------------------------

_live: dict[int, ManagedServer] = {}
_live_lock = threading.Lock()
_handled_signals: dict[int, Any] = {}


def _register(server: ManagedServer) -> None:
    with _live_lock:
        _live[id(server)] = server
    install_signal_handlers()


def _unregister(server: ManagedServer) -> None:
    with _live_lock:
        _live.pop(id(server), None)


def live_servers() -> list[ManagedServer]:
    with _live_lock:
        return list(_live.values())


def stop_all_servers() -> None:
    """Stop every managed server still running in this process (atexit, signal handlers)."""
    for server in live_servers():
        # one failed stop must not keep the others running
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(stop_all_servers)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all_servers()
    previous = _handled_signals.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        # die the way the signal would have killed us, so the exit status tells the parent
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install_signal_handlers(
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGHUP),
) -> None:
    """Stop managed servers when this process is told to terminate, then let the signal act.

    The default action of SIGTERM and SIGHUP ends the process without running atexit handlers,
    which would leave servers behind. Handlers set earlier are still called afterwards. Only the
    main thread may set handlers; elsewhere this does nothing. SIGINT needs none: it raises
    KeyboardInterrupt, and the interpreter then runs the atexit handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        current = signal.getsignal(sig)
        if current is _on_signal:
            continue
        _handled_signals[int(sig)] = current
        signal.signal(sig, _on_signal)
