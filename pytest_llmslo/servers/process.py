"""Servers we launch as child processes: start, readiness, process tree, a stop leaving nothing.

Stopping needs only POSIX process groups (`os.killpg`), so it works on Linux and macOS; where
/proc exists (Linux) the process tree is also walked, which finds descendants that left the
group. A watchdog process (`watchdog.py`) kills a server whose plugin process died without
stopping it (SIGKILL, the OOM killer).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

from pytest_llmslo import interrupts
from pytest_llmslo.config import ServerConfig
from pytest_llmslo.records import Endpoint
from pytest_llmslo.redact import server_secrets
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
from pytest_llmslo.servers.watchdog import DISARM

_GONE_STATES = frozenset("ZXx")  # zombie or dead: no longer running, nothing left to stop
PROC = Path("/proc")  # absent on macOS: the tree walk then finds nothing, and groups do the work
_POLL_S = 0.05


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
        data = (PROC / str(pid) / "stat").read_text()
    except OSError:
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
    """Every process in /proc; empty where there is no /proc."""
    processes = []
    try:
        entries = os.listdir(PROC)
    except OSError:
        return []
    for entry in entries:
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


def _group_exists(pgid: int) -> bool:
    """Whether any process (a zombie too) is still in process group `pgid`; needs no /proc."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self._watchdog: _Watchdog | None = None
        self._lock = threading.RLock()
        self._known_lock = threading.Lock()  # _known is also updated by telemetry's thread

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
                self._proc = self._launch(env)
            except OSError as exc:
                self._close_log()
                raise ServerStartError(
                    start_error(
                        self.config.name,
                        f"could not launch: {exc}",
                        command=self._command,
                        secrets=server_secrets(self.config),
                    )
                ) from exc
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
            self.pids()  # remember the tree now: a stop finds even what later leaves the group
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

    def _launch(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        # a signal between the launch and the watchdog's start would leave a server nobody stops
        with interrupts.shielded():
            proc = subprocess.Popen(
                self._command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            self._proc = proc
            _register(self)
            self._watchdog = _Watchdog.start(proc.pid, self.config.stop_timeout)
        return proc

    def _failure(self, what: str) -> str:
        return start_error(
            self.config.name,
            what,
            command=self._command,
            log_tail=self.log_tail(),
            log_path=str(self.log_path) if self.log_path else None,
            secrets=server_secrets(self.config),
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
        # not under the start/stop lock: telemetry samples the tree while start() waits for
        # readiness, which is when a server's start-up memory peak happens
        proc = self._proc
        if proc is None:
            return []
        tree = process_tree(proc.pid, pgid=proc.pid, known=self._known)
        self._remember(tree)
        return [p.pid for p in tree]

    def _remember(self, tree: Iterable[ProcessInfo]) -> None:
        with self._known_lock:
            known = {(p.pid, p.start_time): p for p in self._known}
            for p in tree:
                known.setdefault((p.pid, p.start_time), p)
            self._known = [p for p in known.values() if still_running(p)]

    def stop(self) -> None:
        # shielded: a signal now is held until the stop is done (a second one makes it kill at
        # once), since a stop cut short would forget a server that is still running
        with interrupts.shielded(), self._lock:
            proc = self._proc
            if proc is None:
                return
            stopped = False
            try:
                self._terminate(proc)
                stopped = True
            finally:
                if self._watchdog is not None:
                    # a stop that failed half-way leaves the rest to the watchdog
                    self._watchdog.close(disarm=stopped)
                    self._watchdog = None
                self._proc = None
                self._endpoint = None
                self._known = []
                self._close_log()
                _unregister(self)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        pgid = proc.pid  # start_new_session made the root the leader of its own group
        # the group first: kill(2) is all it takes, on every POSIX system; the /proc walk
        # (Linux) then adds the descendants that left the group
        _signal_group(pgid, signal.SIGTERM)
        tree = process_tree(proc.pid, pgid=pgid, known=self._known)
        self._remember(tree)
        for info in tree:
            if info.pgid != pgid:  # left the group (setsid): the group signal misses it
                _signal_process(info, signal.SIGTERM)
        self._wait_gone(proc, pgid, self.config.stop_timeout, grace=True)
        # whatever ignored SIGTERM, was still winding down at the deadline, or was told twice
        for _ in range(3):
            rest = process_tree(proc.pid, pgid=pgid, known=self._known)
            if not rest and not self._remaining(proc, pgid):
                break
            self._remember(rest)
            _signal_group(pgid, signal.SIGKILL)
            for info in rest:
                _signal_process(info, signal.SIGKILL)
            self._wait_gone(proc, pgid, 5.0, grace=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
        # dead children of the root are zombies until init reaps them; give it a moment, so a
        # caller reading /proc right after stop() finds nothing of the tree
        reaped_by = time.monotonic() + 2.0
        while time.monotonic() < reaped_by and any(_exists(p) for p in self._known + tree):
            time.sleep(0.02)

    def _wait_gone(
        self, proc: subprocess.Popen[bytes], pgid: int, seconds: float, *, grace: bool
    ) -> None:
        """Poll until nothing of the tree runs, `seconds` pass, or (during the grace period) a
        second signal says not to wait: short polls, so that signal is seen at once."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self._remaining(proc, pgid):
            if grace and interrupts.urgent():
                return
            time.sleep(_POLL_S)

    def _remaining(self, proc: subprocess.Popen[bytes], pgid: int) -> bool:
        """Whether anything of the tree still runs: /proc where it exists (zombies left out),
        else the root and the process group."""
        root_running = proc.poll() is None  # reaps the root once it ended
        if PROC.is_dir():
            return bool(process_tree(proc.pid, pgid=pgid, known=self._known))
        return root_running or _group_exists(pgid)

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
# process group of every live server, for the signal handler: read there without a lock (it
# runs between two bytecodes of the main thread, which may hold _live_lock)
_groups: dict[int, int] = {}


def _register(server: ManagedServer) -> None:
    with _live_lock:
        _live[id(server)] = server
    if server._proc is not None:
        _groups[id(server)] = server._proc.pid
    # outside pytest too, SIGTERM and SIGHUP then unwind (KeyboardInterrupt) and atexit stops
    # the servers gracefully; their default action would leave that to the watchdog
    interrupts.install()


def _unregister(server: ManagedServer) -> None:
    with _live_lock:
        _live.pop(id(server), None)
    _groups.pop(id(server), None)


def live_servers() -> list[ManagedServer]:
    with _live_lock:
        return list(_live.values())


def stop_all_servers() -> None:
    """Stop every managed server still running in this process (session end, atexit)."""
    # a signal now is left for the caller: raised here, it would end the loop with servers left
    with interrupts.shielded(deliver=False):
        for server in live_servers():
            # one failed stop must not keep the others running
            with contextlib.suppress(Exception):
                server.stop()


atexit.register(stop_all_servers)


def kill_all_groups() -> None:
    """SIGKILL every live server's process group at once: the hard stop of a second signal.

    Safe in a signal handler: no lock, nothing but kill(2). The stop that the main path is
    running (or runs next) finds the groups gone and finishes with what left them.
    """
    for pgid in tuple(_groups.values()):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


interrupts.add_hard_stop(kill_all_groups)


class _Watchdog:
    """This side of a server's watchdog (`watchdog.py`): the pipe's write end and its process."""

    SCRIPT = Path(__file__).with_name("watchdog.py")

    def __init__(self, process: subprocess.Popen[bytes], fd: int) -> None:
        self.process = process
        self.fd = fd

    @classmethod
    def start(cls, pgid: int, grace: float) -> _Watchdog | None:
        """A watchdog for process group `pgid`, or None where it could not be started (the
        server then runs without one: stop() and atexit still stop it)."""
        read_end, write_end = os.pipe()  # neither end is inherited by anything else we start
        try:
            process = subprocess.Popen(
                # -I -S: the standard library alone, started in milliseconds
                [sys.executable, "-I", "-S", str(cls.SCRIPT), str(read_end), str(pgid), str(grace)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(read_end,),
                # out of the terminal's process group: Ctrl-C is for the plugin, not for it
                start_new_session=True,
            )
        except OSError:
            os.close(write_end)
            return None
        finally:
            os.close(read_end)
        return cls(process, write_end)

    def close(self, *, disarm: bool) -> None:
        """Let the watchdog go: disarmed, it exits at once; armed, it kills the tree first."""
        if disarm:
            with contextlib.suppress(OSError):  # it is gone already: nothing to tell
                os.write(self.fd, DISARM)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if disarm:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5.0)
