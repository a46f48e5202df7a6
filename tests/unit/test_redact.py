"""Credentials hidden by name and scrubbed by value, wherever the plugin shows them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_llmslo.config import LoadConfig, ServerConfig
from pytest_llmslo.records import Endpoint
from pytest_llmslo.redact import (
    REDACTED,
    Secrets,
    collect_secrets,
    endpoint_secrets,
    is_secret_name,
    load_secrets,
    redact_command,
    redact_mapping,
    redact_url,
    scrub_file,
    server_secrets,
)

CANARY = "CANARY-s3cr3t-value"


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "Set-Cookie",
        "X-Api-Key",
        "api_key",
        "apiKey",
        "OPENAI_API_KEY",
        "HF_TOKEN",
        "access_token",
        "accessToken",
        "client_secret",
        "password",
        "db-passwd",
        "--api-key",
        "gateway-key",
    ],
)
def test_credential_names_are_recognised(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["max_tokens", "min_tokens", "tokenizer", "TOKENIZERS_PARALLELISM", "model", "Accept", "seed"],
)
def test_ordinary_names_are_left_alone(name: str) -> None:
    assert not is_secret_name(name)


def test_mapping_values_with_credential_names_are_hidden_at_any_depth() -> None:
    shown = redact_mapping(
        {
            "Authorization": f"Bearer {CANARY}",
            "X-Trace": "abc",
            "nested": {"password": CANARY, "keep": 1},
            "max_tokens": 64,
            "url": f"http://user:{CANARY}@host/x",
        }
    )
    assert shown == {
        "Authorization": REDACTED,
        "X-Trace": "abc",
        "nested": {"password": REDACTED, "keep": 1},
        "max_tokens": 64,
        "url": f"http://{REDACTED}@host/x",
    }


def test_url_user_info_and_credential_query_parameters_are_hidden() -> None:
    assert redact_url(f"https://bob:{CANARY}@gw.example:8443/v1") == (
        f"https://{REDACTED}@gw.example:8443/v1"
    )
    assert redact_url(f"http://h/v1?api_key={CANARY}&model=x") == (
        f"http://h/v1?api_key={REDACTED}&model=x"
    )
    assert redact_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


def test_command_line_credential_options_are_hidden_in_both_spellings() -> None:
    argv = [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--api-key",
        CANARY,
        f"--hf-token={CANARY}",
        "--max-num-batched-tokens",
        "8192",
        "--enable-auth-check",  # a bare flag: the next option is not its value
        "--port",
        "8000",
        f"HF_TOKEN={CANARY}",
    ]
    shown = redact_command(argv)
    assert CANARY not in " ".join(shown)
    assert shown[3:6] == ["--api-key", REDACTED, f"--hf-token={REDACTED}"]
    assert shown[6:11] == [
        "--max-num-batched-tokens",
        "8192",
        "--enable-auth-check",
        "--port",
        "8000",
    ]


def test_known_values_are_scrubbed_from_free_text() -> None:
    secrets = collect_secrets(
        mappings=[{"Authorization": f"Bearer {CANARY}-bearer", "Cookie": f"sid={CANARY}-cookie"}],
        commands=[["--api-key", f"{CANARY}-flag"]],
        urls=[f"http://u:{CANARY}-url@h"],
    )
    text = (
        f"vLLM non-default args: {{'api_key': '{CANARY}-flag'}}\n"
        f"token {CANARY}-bearer rejected; cookie {CANARY}-cookie; password {CANARY}-url\n"
    )
    scrubbed = secrets.scrub(text)
    assert CANARY not in scrubbed
    assert "vLLM non-default args" in scrubbed and scrubbed.count(REDACTED) == 4


def test_free_text_loses_url_user_info_and_authorization_values_without_known_values() -> None:
    text = f"GET https://u:{CANARY}@h/v1/models failed; Authorization: Bearer {CANARY}"
    assert CANARY not in Secrets().scrub(text)


def test_short_values_are_not_searched_for_in_free_text() -> None:
    secrets = collect_secrets(mappings=[{"HF_TOKEN": "1", "API_KEY": "true"}])
    assert secrets.scrub("1 passed, slo_passed true") == "1 passed, slo_passed true"


def test_server_secrets_cover_env_args_extra_args_url_and_the_key_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_KEY_VAR", f"{CANARY}-key")
    cfg = ServerConfig(
        name="s",
        backend="vllm",
        model="m",
        args={"api_key": f"{CANARY}-args", "max_model_len": 4096},
        extra_args=("--hf-token", f"{CANARY}-extra"),
        env={"HF_TOKEN": f"{CANARY}-env", "CUDA_VISIBLE_DEVICES": "0"},
        base_url=f"http://user:{CANARY}-url@host",
        api_key_env="GATEWAY_KEY_VAR",
    )
    assert server_secrets(cfg).values == {
        f"{CANARY}-key",
        f"{CANARY}-args",
        f"{CANARY}-extra",
        f"{CANARY}-env",
        f"{CANARY}-url",
    }


def test_load_and_endpoint_secrets() -> None:
    load = LoadConfig(
        headers={"X-Gateway-Key": f"{CANARY}-h", "Accept-Language": "en-GB"},
        extra_body={"password": f"{CANARY}-b", "top_k": 5},
    )
    assert load_secrets(load).values == {f"{CANARY}-h", f"{CANARY}-b"}
    endpoint = Endpoint("http://h:1", "m", "external", api_key=f"{CANARY}-k")
    assert endpoint_secrets(endpoint).values == {f"{CANARY}-k"}


def test_endpoint_repr_hides_the_key_and_url_user_info() -> None:
    endpoint = Endpoint(f"http://u:{CANARY}@h:1", "m", "external", api_key=CANARY)
    shown = repr(endpoint)
    assert CANARY not in shown
    assert "api_key='***'" in shown and "model='m'" in shown
    assert endpoint.api_key == CANARY  # only the display changes: requests still carry it


def test_scrub_file_rewrites_a_log_without_the_values(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(f"INFO args: --api-key {CANARY}\nINFO ready\n", encoding="utf-8")
    secrets = collect_secrets(values=[CANARY])
    assert scrub_file(log, secrets)
    assert log.read_text(encoding="utf-8") == f"INFO args: --api-key {REDACTED}\nINFO ready\n"
    assert not scrub_file(log, secrets)  # nothing left to change
    assert not scrub_file(tmp_path / "missing.log", secrets)  # never raises


def test_a_managed_servers_log_keeps_everything_but_its_credentials_once_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmslo.handtests import ServerFactory
    from pytest_llmslo.servers import process
    from pytest_llmslo.servers.vllm import VLLMServer

    def command(self: VLLMServer, port: int) -> list[str]:
        # prints its arguments, as vLLM does with its non-default ones, then serves
        code = (
            "import sys; print('args:', sys.argv[1:], flush=True); "
            "from pytest_llmslo.testing.timing_server import main; "
            f"main(['--port', '{port}'])"
        )
        return [sys.executable, "-c", code, *self.config.extra_args]

    monkeypatch.setattr(VLLMServer, "command", command)
    monkeypatch.setattr(process, "missing_modules", lambda modules: [])
    factory = ServerFactory(tmp_path)
    endpoint = factory(backend="vllm", model="m", extra_args=("--api-key", CANARY))
    assert endpoint.log_path is not None
    log = Path(endpoint.log_path)
    assert CANARY in log.read_text()  # the server wrote it while it ran
    factory.close()
    text = log.read_text()
    assert CANARY not in text and f"'--api-key', '{REDACTED}'" in text


def test_config_reprs_hide_credentials_a_traceback_would_show() -> None:
    server = ServerConfig(
        name="s",
        backend="external",
        base_url="http://user:canary-pass@host:8000",
        env={"HF_TOKEN": "canary-env"},
        extra_args=("--api-key", "canary-flag"),
    )
    load = LoadConfig(
        headers={"Authorization": "Bearer canary-header"},
        extra_body={"password": "canary-body"},
    )
    text = repr(server) + repr(load)
    assert "canary" not in text
    assert "HF_TOKEN" in text and "max_tokens=256" in text  # still a useful repr
