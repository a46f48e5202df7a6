"""Server launchers without a real backend: flags, ports, readiness, process trees, stopping."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.servers import (
    BackendMissingError,
    ExternalServer,
    HFServer,
    ManagedServer,
    PortInUseError,
    Server,
    ServerStartError,
    VLLMServer,
    args_to_flags,
    free_port,
    is_vllm_cpu_build,
    live_servers,
    make_server,
    process,
    process_tree,
    watchdog,
)
from pytest_llmslo.servers.external import normalize_base_url
from pytest_llmslo.servers.hf import resolve_device
from pytest_llmslo.servers.process import ProcessInfo, read_process, still_running

# A stand-in server process: answers /health and /v1/models, and leaves behind a child in its
# process group, a child that moved to its own session, and (optionally) one ignoring SIGTERM.
TREE_SCRIPT = textwrap.dedent(
    """
    import http.server, json, os, signal, subprocess, sys
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    sleeper = "import time; time.sleep(600)"
    subprocess.Popen([sys.executable, "-c", sleeper])
    subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(600)"])
    if mode == "stubborn":
        subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = {"object": "list", "data": [{"id": "dummy-model"}]}
            body = json.dumps(data).encode() if self.path == "/v1/models" else b"{}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    print("listening", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


class ScriptServer(ManagedServer):
    """A managed server whose process is a Python snippet instead of a real backend."""

    backend: ClassVar[str] = "dummy"

    def __init__(
        self, config: ServerConfig, *, log_dir: Path, script: str, argv: tuple[str, ...] = ()
    ) -> None:
        super().__init__(config, log_dir=log_dir)
        self.script = script
        self.argv = argv

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-c", self.script, str(port), *self.argv]


def dummy_config(**kw: object) -> ServerConfig:
    base: dict[str, object] = {"name": "dummy", "backend": "vllm", "model": "m"}
    base.update(kw)
    return ServerConfig(**base)  # type: ignore[arg-type]


def wait_for_tree(server: ManagedServer, size: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = server.pids()
        if len(pids) >= size or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def snapshot(pids: list[int]) -> list[ProcessInfo]:
    return [info for pid in pids if (info := read_process(pid)) is not None]


def assert_all_gone(tree: list[ProcessInfo]) -> None:
    alive = [p.pid for p in tree if still_running(p)]
    assert alive == [], f"processes still running after stop: {alive}"


# --- flags and defaults ------------------------------------------------------------------------


def test_args_to_flags_maps_values_by_type() -> None:
    flags = args_to_flags(
        {
            "gpu_memory_utilization": 0.9,
            "max_model_len": 32768,
            "enforce_eager": True,
            "disable_log_stats": False,
            "quantization": None,
            "allowed_origins": ["a", "b"],
            "hf_overrides": {"rope_theta": 1000000.0},
            "--already-dashed": "x",
        }
    )
    assert flags == [
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "32768",
        "--enforce-eager",
        "--allowed-origins",
        "a",
        "b",
        "--hf-overrides",
        '{"rope_theta":1000000.0}',
        "--already-dashed",
        "x",
    ]


def test_vllm_command_line(tmp_path: Path) -> None:
    config = dummy_config(
        model="/models/qwen",
        served_model_name="qwen",
        args={"max_model_len": 4096, "enforce_eager": True},
        extra_args=("--seed", "1"),
    )
    server = VLLMServer(config, log_dir=tmp_path)
    server._cpu_build = False
    cmd = server.command(8123)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[3:] == [
        "--model",
        "/models/qwen",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--served-model-name",
        "qwen",
        "--max-model-len",
        "4096",
        "--enforce-eager",
        "--seed",
        "1",
    ]
    assert "VLLM_CPU_KVCACHE_SPACE" not in server.environment() or (
        "VLLM_CPU_KVCACHE_SPACE" in os.environ
    )


def test_vllm_cpu_build_gets_memory_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    server = VLLMServer(dummy_config(), log_dir=tmp_path)
    server._cpu_build = True
    cmd = server.command(1)
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.3"
    assert server.environment()["VLLM_CPU_KVCACHE_SPACE"] == "1"


@pytest.mark.parametrize(
    ("args", "extra_args"),
    [({"gpu_memory_utilization": 0.5}, ()), ({}, ("--gpu-memory-utilization=0.5",))],
)
def test_vllm_cpu_defaults_yield_to_the_user(
    tmp_path: Path, args: dict[str, object], extra_args: tuple[str, ...]
) -> None:
    config = dummy_config(args=args, extra_args=extra_args, env={"VLLM_CPU_KVCACHE_SPACE": "4"})
    server = VLLMServer(config, log_dir=tmp_path)
    server._cpu_build = True
    cmd = server.command(1)
    assert sum(part.startswith("--gpu-memory-utilization") for part in cmd) == 1
    assert "0.3" not in cmd
    assert server.environment()["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_cpu_build_detected_in_this_environment() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed here")
    assert is_vllm_cpu_build()


def test_environment_merges_config_env_and_gpu_ids(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    config = dummy_config(model=str(model), env={"FOO": "bar"}, gpu_ids=(2, 3))
    env = VLLMServer(config, log_dir=tmp_path).environment()
    assert env["FOO"] == "bar"
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["HF_HUB_OFFLINE"] == "1"  # a local model directory needs no hub
    assert env["PATH"] == os.environ["PATH"]


def test_hf_command_line(tmp_path: Path) -> None:
    config = dummy_config(
        backend="hf", model="/m", device="cpu", args={"continuous_batching": True}
    )
    server = make_server(config, log_dir=tmp_path)
    assert isinstance(server, HFServer)
    cmd = server.command(9000)
    assert cmd[1:] == [
        "-m",
        "transformers.cli.transformers",
        "serve",
        "/m",
        "--host",
        "127.0.0.1",
        "--port",
        "9000",
        "--device",
        "cpu",
        "--continuous-batching",
    ]
    assert server.served_model(["something-else"]) == "/m"
    assert server.readiness_paths == ("/health",)


def test_hf_device_auto_is_cpu_without_nvidia_gpu() -> None:
    expected = "cuda" if os.path.exists("/dev/nvidia0") else resolve_device("auto")
    assert resolve_device("auto") == expected
    assert resolve_device("cuda:1") == "cuda:1"


def test_hf_rejects_a_renamed_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="served_model_name"):
        make_server(dummy_config(backend="hf", served_model_name="other"), log_dir=tmp_path)


def test_make_server_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(make_server(dummy_config(), log_dir=tmp_path), VLLMServer)
    external = make_server(
        dummy_config(backend="external", base_url="http://x:1/v1"), log_dir=tmp_path
    )
    assert isinstance(external, ExternalServer)
    for server in (VLLMServer(dummy_config(), log_dir=tmp_path), external):
        assert isinstance(server, Server)


# --- ports -------------------------------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    port = free_port("127.0.0.1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_busy_port_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = ScriptServer(dummy_config(port=port), log_dir=tmp_path, script=TREE_SCRIPT)
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
    assert server.pids() == []
    assert not list(tmp_path.iterdir()), "nothing should have been launched"


# --- readiness and failures -----------------------------------------------------------------


def test_process_that_exits_during_start_fails_fast_with_log_tail(tmp_path: Path) -> None:
    script = "import sys; print('error: unknown flag --frobnicate'); sys.exit(3)"
    server = ScriptServer(
        dummy_config(name="crashy", startup_timeout=60), log_dir=tmp_path, script=script
    )
    with pytest.raises(ServerStartError) as info:
        server.start()
    message = str(info.value)
    assert "server 'crashy'" in message
    # the exit ended the start, not the 60 s startup_timeout ("not ready after 60 s"); how soon
    # it is noticed is measured by bench/timing_accuracy.py
    assert "exited with code 3 before it was ready" in message
    assert "not ready after" not in message
    assert "error: unknown flag --frobnicate" in message
    assert f"command: {sys.executable} -c" in message
    assert not server.is_alive()
    assert server not in live_servers()
    assert (tmp_path / "server-crashy.log").exists()


def test_server_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    script = "import time; print('loading forever', flush=True); time.sleep(600)"
    server = ScriptServer(dummy_config(startup_timeout=1.0), log_dir=tmp_path, script=script)
    with pytest.raises(ServerStartError, match=r"not ready after 1 s") as info:
        server.start()
    assert "loading forever" in str(info.value)
    assert server.pids() == []


def test_missing_backend_package(tmp_path: Path) -> None:
    for cls, extra in ((VLLMServer, "pytest-llmslo[vllm]"), (HFServer, "pytest-llmslo[hf]")):
        server = cls(dummy_config(backend=cls.backend), log_dir=tmp_path)
        server.required_modules = ("llmslo_no_such_backend_module",)
        with pytest.raises(BackendMissingError) as info:
            server.start()
        assert "llmslo_no_such_backend_module" in str(info.value)
        assert extra in str(info.value)
        assert isinstance(info.value, ServerStartError)


# --- process tree and stop ------------------------------------------------------------------


def test_process_tree_and_group_stop_leave_nothing(tmp_path: Path) -> None:
    server = ScriptServer(dummy_config(stop_timeout=5), log_dir=tmp_path, script=TREE_SCRIPT)
    try:
        endpoint = server.start()
        assert endpoint.model == "dummy-model"
        assert endpoint.pid is not None and endpoint.startup_seconds is not None
        assert endpoint.log_path == str(tmp_path / "server-dummy.log")
        pids = wait_for_tree(server, 3)
        assert len(pids) == 3 and pids[0] == endpoint.pid
        tree = snapshot(pids)
        deadline = time.monotonic() + 10  # on a busy host the child is seen before its setsid()
        while {p.pgid for p in tree} == {endpoint.pid} and time.monotonic() < deadline:
            time.sleep(0.05)
            tree = snapshot(pids)
        assert {p.pgid for p in tree} != {endpoint.pid}, "the setsid child left the group"
        assert server.is_alive()
    finally:
        server.stop()
    assert_all_gone(tree)
    assert server.pids() == [] and server.endpoint is None and not server.is_alive()
    server.stop()  # idempotent


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    server = ScriptServer(
        dummy_config(stop_timeout=0.5), log_dir=tmp_path, script=TREE_SCRIPT, argv=("stubborn",)
    )
    try:
        server.start()
        tree = snapshot(wait_for_tree(server, 4))
        assert len(tree) == 4
    finally:
        server.stop()
    # the root and one child ignore SIGTERM: all gone means the SIGKILL after stop_timeout came
    # (how long the stop took is measured by bench/timing_accuracy.py)
    assert_all_gone(tree)


def test_pids_keep_track_of_orphaned_descendants(tmp_path: Path) -> None:
    server = ScriptServer(dummy_config(), log_dir=tmp_path, script=TREE_SCRIPT)
    try:
        endpoint = server.start()
        tree = snapshot(wait_for_tree(server, 3))
        assert endpoint.pid is not None
        # the root dies on its own: its children are re-parented, the setsid one is outside
        # the group, and only the remembered tree still finds it
        os.kill(endpoint.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while server.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = server.pids()
        assert len(remaining) == 2
        assert endpoint.pid not in remaining
    finally:
        server.stop()
    assert_all_gone(tree)


def test_the_process_tree_is_readable_while_the_server_is_still_starting(tmp_path: Path) -> None:
    # telemetry reads pids() from its own thread during start(): a start-up memory peak is only
    # seen if that read does not wait for the server to become ready
    slow = "import time; time.sleep(3)\n" + TREE_SCRIPT
    server = ScriptServer(dummy_config(startup_timeout=30.0), log_dir=tmp_path, script=slow)
    starter = threading.Thread(target=server.start)
    starter.start()
    try:
        deadline = time.monotonic() + 10
        pids: list[int] = []
        while not pids and time.monotonic() < deadline:
            pids = server.pids()
            time.sleep(0.02)
        assert pids, "no process of the starting server was seen"
        assert starter.is_alive(), "pids() waited for the start to finish"
    finally:
        starter.join()
        server.stop()


def test_process_tree_of_this_process() -> None:
    tree = process_tree(os.getpid())
    assert tree[0].pid == os.getpid()
    assert process_tree(2**22 + 12345) == []


# A process that starts a TREE_SCRIPT server, prints the server's pids, then sleeps ("sleep"),
# stops the server ("stop"), or signals itself twice while holding every lock of process.py
# ("locks"): the way a pytest process would, without pytest's start-up time.
PARENT_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    from pytest_llmslo import interrupts
    from pytest_llmslo.config import ServerConfig
    from pytest_llmslo.servers import process

    script, log_dir, mode, stop_timeout, then = sys.argv[1:6]

    class ScriptServer(process.ManagedServer):
        backend = "dummy"
        def command(self, port):
            return [sys.executable, "-c", script, str(port), mode]

    config = ServerConfig(name="child", backend="vllm", model="m", stop_timeout=float(stop_timeout))
    server = ScriptServer(config, log_dir=Path(log_dir))
    server.start()
    while len(server.pids()) < (4 if mode == "stubborn" else 3):
        time.sleep(0.05)
    print(json.dumps(server.pids()), flush=True)
    if then == "sleep":
        time.sleep(600)
    elif then == "stop":
        print("stopping", flush=True)
        try:
            server.stop()
        except interrupts.Interrupted as exc:
            print(json.dumps({"interrupted": exc.signal_name}), flush=True)
    elif then == "locks":
        with interrupts.shielded(deliver=False), process._live_lock, server._lock:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10):
                time.sleep(0.01)  # the handler runs between two of these bytecodes
        print(json.dumps({"received": interrupts.received(), "alive": server.is_alive()}))
    """
)


class ParentRun:
    """PARENT_SCRIPT running; on exit, kills whatever a failing test left behind."""

    def __init__(
        self, tmp_path: Path, *, mode: str = "", stop_timeout: float = 5, then: str
    ) -> None:
        argv = [TREE_SCRIPT, str(tmp_path), mode, str(stop_timeout), then]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PARENT_SCRIPT, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.tree: list[ProcessInfo] = []

    def __enter__(self) -> ParentRun:
        return self

    def server_tree(self) -> list[ProcessInfo]:
        """The server's processes, and the parent's other children (its watchdog)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else ""
        self.tree = snapshot(json.loads(line))
        # by pid: a process seen twice may differ in state (running, sleeping) between reads
        seen = {p.pid for p in self.tree}
        self.tree += [p for p in process_tree(self.proc.pid)[1:] if p.pid not in seen]
        return self.tree

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        for info in self.tree:
            if still_running(info):
                os.kill(info.pid, signal.SIGKILL)


def wait_all_gone(tree: list[ProcessInfo], within: float) -> None:
    deadline = time.monotonic() + within
    while any(still_running(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_all_gone(tree)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signalled_parent_stops_its_servers(tmp_path: Path, sig: signal.Signals) -> None:
    with ParentRun(tmp_path, then="sleep") as run:
        tree = run.server_tree()
        assert len(tree) == 4  # root, child, setsid child, watchdog
        run.proc.send_signal(sig)
        run.proc.wait(timeout=30)
    assert run.proc.returncode != 0
    # stopped by the parent on its way out, not left to the watchdog
    assert_all_gone(tree)


@pytest.mark.parametrize("mode", ["", "stubborn"])
def test_a_killed_parent_takes_its_servers_with_it(tmp_path: Path, mode: str) -> None:
    """SIGKILL (or the OOM killer) runs no handler: the watchdog stops the tree, setsid
    children and processes that ignore SIGTERM included, and then goes itself."""
    with ParentRun(tmp_path, mode=mode, stop_timeout=1, then="sleep") as run:
        tree = run.server_tree()
        assert len(tree) == (5 if mode else 4)
        run.proc.kill()
        run.proc.wait(timeout=30)
        wait_all_gone(tree, within=30)


def test_a_second_signal_while_a_server_stops_kills_it_at_once(tmp_path: Path) -> None:
    """The stop goes on through the first signal, and a second one skips the grace period (600
    s here): the stop finishes, and the signal is raised after it."""
    with ParentRun(tmp_path, mode="stubborn", stop_timeout=600, then="stop") as run:
        tree = run.server_tree()
        assert run.line() == "stopping"
        # SIGTERM sent: only the root and its child that ignore it are left
        deadline = time.monotonic() + 30
        while sum(still_running(p) for p in tree) > 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # (the third is the watchdog)
        run.proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        assert run.proc.poll() is None, "the first signal did not cut the stop short"
        run.proc.send_signal(signal.SIGINT)
        out, err = run.proc.communicate(timeout=60)
    assert run.proc.returncode == 0, err
    assert json.loads(out) == {"interrupted": "SIGINT"}
    assert "Traceback" not in err
    wait_all_gone(tree, within=10)  # the watchdog leaves once it is told the stop is done


def test_the_signal_handler_takes_no_lock_the_main_thread_may_hold(tmp_path: Path) -> None:
    """Two signals while the main thread holds every lock of process.py: the handler returns
    (it used to stop servers itself, taking those locks: a deadlock) and kills the group."""
    with ParentRun(tmp_path, then="locks") as run:
        tree = run.server_tree()
        out, err = run.proc.communicate(timeout=30)
    assert run.proc.returncode == 0, err
    assert json.loads(out) == {"received": 2, "alive": False}
    assert_all_gone(tree)


@pytest.mark.parametrize("disarm", [False, True])
def test_the_watchdog_kills_the_group_unless_told_the_stop_was_done(disarm: bool) -> None:
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        read_end, write_end = os.pipe()
        if disarm:
            os.write(write_end, watchdog.DISARM)
        os.close(write_end)  # what the kernel does when the plugin's process dies
        try:
            killed = watchdog.watch(read_end, sleeper.pid, grace=30.0)
        finally:
            os.close(read_end)
        assert killed is not disarm
        assert (sleeper.poll() is None) is disarm
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stopped_server_lets_its_watchdog_go(tmp_path: Path) -> None:
    server = ScriptServer(dummy_config(), log_dir=tmp_path, script=TREE_SCRIPT)
    try:
        server.start()
        assert server._watchdog is not None
        guard = server._watchdog.process
        assert guard.poll() is None
    finally:
        server.stop()
    assert guard.poll() == 0 and server._watchdog is None


def test_stop_needs_no_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc does not exist (macOS), the process group is still signalled and waited for;
    only a descendant that left the group is out of reach."""
    server = ScriptServer(dummy_config(stop_timeout=5), log_dir=tmp_path, script=TREE_SCRIPT)
    tree: list[ProcessInfo] = []
    try:
        endpoint = server.start()
        tree = snapshot(wait_for_tree(server, 3))
        with monkeypatch.context() as patched:
            patched.setattr(process, "PROC", tmp_path / "no-proc")
            assert process_tree(os.getpid()) == []
            server.stop()
        in_group = [p for p in tree if p.pgid == endpoint.pid]
        assert len(in_group) == 2
        assert_all_gone(in_group)
    finally:
        server.stop()
        for info in tree:
            if still_running(info):
                os.kill(info.pid, signal.SIGKILL)


# --- external servers -----------------------------------------------------------------------


class _OpenAIStub(BaseHTTPRequestHandler):
    api_key = "sekret"
    metrics = True

    def do_GET(self) -> None:
        if self.path == "/metrics" and self.metrics:
            self._send(200, b"# TYPE requests counter\nrequests 1\n", "text/plain")
        elif self.path != "/v1/models":
            self._send(404, b"{}")
        elif self.headers.get("Authorization") != f"Bearer {self.api_key}":
            self._send(401, b'{"error": "bad key"}')
        else:
            body = {"object": "list", "data": [{"id": "served-a"}, {"id": "served-b"}]}
            self._send(200, json.dumps(body).encode())

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def openai_stub() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIStub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def external_config(base_url: str, **kw: object) -> ServerConfig:
    base: dict[str, object] = {
        "name": "remote",
        "backend": "external",
        "base_url": base_url,
        "api_key_env": "LLMSLO_TEST_KEY",
        "startup_timeout": 2.0,
    }
    base.update(kw)
    return ServerConfig(**base)  # type: ignore[arg-type]


def test_normalize_base_url() -> None:
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000"
    assert normalize_base_url("http://h:8000/v1") == "http://h:8000"
    assert normalize_base_url("https://h/api/") == "https://h/api"


def test_external_server_ready(openai_stub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSLO_TEST_KEY", "sekret")
    server = ExternalServer(external_config(openai_stub + "/v1/"))
    endpoint = server.start()
    assert endpoint.base_url == openai_stub
    assert endpoint.model == "served-a"
    assert endpoint.api_key == "sekret"
    assert endpoint.backend == "external" and endpoint.pid is None
    assert endpoint.has_metrics
    assert server.is_alive() and server.pids() == [] and server.log_tail() == ""
    server.stop()
    assert server.endpoint is None

    named = ExternalServer(external_config(openai_stub, model="served-b")).start()
    assert named.model == "served-b"


def test_external_server_wrong_key(openai_stub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSLO_TEST_KEY", "wrong")
    server = ExternalServer(external_config(openai_stub, startup_timeout=0.5))
    with pytest.raises(ServerStartError, match="HTTP 401"):
        server.start()


def test_external_server_missing_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSLO_TEST_KEY", raising=False)
    with pytest.raises(ServerStartError, match="'LLMSLO_TEST_KEY', which is not set"):
        ExternalServer(external_config("http://127.0.0.1:1")).start()


def test_external_server_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSLO_TEST_KEY", "k")
    port = free_port()
    # nothing listens: the start fails on the refused connections, not after startup_timeout
    server = ExternalServer(external_config(f"http://127.0.0.1:{port}", startup_timeout=30))
    with pytest.raises(ServerStartError) as excinfo:
        server.start()
    message = str(excinfo.value)
    assert f"nothing accepts connections at http://127.0.0.1:{port}" in message
    assert "must be running before the tests start" in message


def test_external_server_needs_a_url() -> None:
    with pytest.raises(ValueError, match="needs `base_url`"):
        ExternalServer(ServerConfig(name="x", backend="external"))
    with pytest.raises(ValueError, match="must start with http"):
        ExternalServer(ServerConfig(name="x", backend="external", base_url="localhost:8000"))
