"""lib/upstash: a bounded, never-retried Upstash client whose failures are translated at the boundary."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
import respx

from lib import upstash
from lib.errors import ConfigurationError
from tests.support import serve

URL = "https://upstash.test"


@pytest.fixture(autouse=True)
def upstash_env(monkeypatch):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", URL)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "test-token")
    upstash.set_client(None)
    yield
    upstash.set_client(None)


def test_the_client_is_built_lazily_once_with_a_bounded_timeout_and_no_retry():
    first = upstash.client()
    assert upstash.client() is first
    timeout = first._http._client.timeout
    assert timeout.read == upstash.CACHE_TIMEOUT <= 0.5
    assert timeout.connect == upstash.CONNECT_TIMEOUT
    assert first._http._retries == 0


@respx.mock
def test_a_command_goes_out_as_one_json_array_with_the_bearer_token():
    route = respx.post(URL).mock(return_value=httpx.Response(200, json={"result": "T0s="}))  # "OK" base64
    upstash.execute(["SET", "dousell:k", "v", "NX", "PX", "30000"])
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer test-token"
    assert httpx.Response(200, content=request.content).json() == ["SET", "dousell:k", "v", "NX", "PX", "30000"]


@respx.mock
def test_a_pipeline_is_one_call():
    route = respx.post(f"{URL}/pipeline").mock(return_value=httpx.Response(200, json=[
        {"result": "dmFsdWU="}, {"result": 3},
    ]))
    assert upstash.pipeline([["GET", "k"], ["INCR", "n"]]) == ["value", 3]
    assert route.call_count == 1


@pytest.mark.parametrize("side_effect, expected", [
    (httpx.ReadTimeout("slow"), upstash.RedisUnavailable),  # Upstash too slow
    (httpx.ConnectError("refused"), upstash.RedisUnavailable),  # Upstash unreachable
    (httpx.Response(502, text="<html>Bad gateway</html>"), upstash.RedisUnavailable),  # not its protocol
    (httpx.Response(400, json={"error": "WRONGTYPE Operation against a key"}), upstash.RedisCommandError),
    (httpx.Response(401, json={"error": "Unauthorized"}), upstash.RedisCommandError),
])
@respx.mock
def test_failures_are_translated_and_a_write_is_never_sent_twice(side_effect, expected):
    route = respx.post(URL).mock(side_effect=[side_effect, httpx.Response(200, json={"result": 1})])
    with pytest.raises(expected):
        upstash.execute(["INCR", "dousell:counter"])
    assert route.call_count == 1


def test_a_missing_variable_is_a_configuration_error(monkeypatch):
    monkeypatch.delenv("UPSTASH_REDIS_REST_URL")
    with pytest.raises(ConfigurationError, match="UPSTASH_REDIS_REST_URL"):
        upstash.execute(["GET", "k"])


@respx.mock
def test_probe_says_up_on_pong_and_down_on_any_failure():
    route = respx.post(URL).mock(return_value=httpx.Response(200, json={"result": "UE9ORw=="}))  # "PONG"
    assert upstash.probe() is True
    route.mock(side_effect=httpx.ConnectError("down"))
    assert upstash.probe() is False


class Hanging(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_POST(self):
        self.release.wait(10)

    def log_message(self, *args):
        pass


def test_a_hanging_upstash_costs_one_bounded_timeout_not_a_hang(monkeypatch):
    with serve(Hanging) as base:
        monkeypatch.setenv("UPSTASH_REDIS_REST_URL", base)
        upstash.set_client(None)
        start = time.monotonic()
        with pytest.raises(upstash.RedisUnavailable):
            upstash.execute(["GET", "k"])
        elapsed = time.monotonic() - start
        Hanging.release.set()
    assert elapsed < 3, f"took {elapsed:.1f}s while the server hung for 10s"
