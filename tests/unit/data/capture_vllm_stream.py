"""Capture the exact bytes vLLM streams back, for the decoder's tests (run by hand, rarely).

Starts vLLM (the CPU build here) on the tiny model, sends it the requests the load engine
sends (same body and headers: ``load.request_body``, ``http_client.build_request``) over a plain
socket, and writes each whole HTTP response, head and chunked framing included, as it came:

    python tests/unit/data/capture_vllm_stream.py   # writes vllm_chat_stream.http and
                                                    # vllm_completions_stream.http here

tests/unit/test_decode.py checks that these streams are read by the bulk decoder; re-capture
when vLLM changes what it sends and see whether they still are.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pytest_llmslo.config import LoadConfig, ServerConfig  # noqa: E402
from pytest_llmslo.http_client import build_request, parse_base_url  # noqa: E402
from pytest_llmslo.load import request_body, request_headers  # noqa: E402
from pytest_llmslo.records import Endpoint, Prompt  # noqa: E402
from pytest_llmslo.servers import make_server  # noqa: E402
from pytest_llmslo.testing.tiny_model import build_tiny_model  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPT = Prompt(index=0, text="What is the capital of France?")


def capture(endpoint: Endpoint, config: LoadConfig) -> bytes:
    """One whole response, as the server sent it, to the request the engine would send."""
    origin = parse_base_url(endpoint.base_url)
    path = "/v1/chat/completions" if config.api == "chat" else "/v1/completions"
    body = json.dumps(request_body(endpoint, PROMPT, config), ensure_ascii=False).encode()
    payload = build_request(origin, "POST", path, body, request_headers(endpoint, config))
    received = b""
    with socket.create_connection((origin.host, origin.port), timeout=60) as sock:
        sock.sendall(payload)
        while not received.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(65536)
            if not data:
                break
            received += data
    return received


def main() -> int:
    model = build_tiny_model()
    config = ServerConfig(
        name="vllm-capture",
        backend="vllm",
        model=str(model),
        args={"enforce_eager": True, "max_model_len": 8192},
        startup_timeout=600.0,
    )
    with tempfile.TemporaryDirectory() as logs:
        server = make_server(config, log_dir=Path(logs))
        server.start()
        try:
            endpoint = server.endpoint
            assert endpoint is not None
            load = LoadConfig(max_tokens=12, ignore_eos=True, temperature=0.0, request_seed=True)
            for api in ("chat", "completions"):
                raw = capture(endpoint, replace(load, api=api))
                out = HERE / f"vllm_{api}_stream.http"
                out.write_bytes(raw)
                print(f"{out}: {len(raw)} bytes (vLLM {endpoint.version})")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
