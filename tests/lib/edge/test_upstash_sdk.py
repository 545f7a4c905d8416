"""lib/edge/upstash_sdk: upstash-redis for libraries built on it, bounded in time and never retrying.

These fail loudly if the pinned upstash-redis stops matching what the adapter relies on.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
import respx
import upstash_redis

from lib.edge import upstash, upstash_sdk
from lib.edge.upstash_sdk import IncompatibleUpstashRedis
from tests.fakes import FakeUpstash
from tests.support import serve

URL = "https://upstash.test"


@pytest.fixture(autouse=True)
def upstash_env(monkeypatch):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", URL)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "test-token")


def test_the_pinned_library_still_keeps_its_http_client_where_the_adapter_replaces_it():
    sdk = upstash_redis.Redis(URL, "t", rest_retries=0)
    assert isinstance(sdk._http, upstash_redis.http.SyncHttpClient)
    assert isinstance(sdk._http._client, httpx.Client)
    assert sdk._http._client.timeout.read is None, "if it bounds itself now, the adapter may go"
    assert sdk._http._retries == 0


def test_the_shared_client_is_one_upstash_redis_on_lib_s_bounded_connections():
    sdk = upstash.client()
    assert isinstance(sdk, upstash_redis.Redis)
    assert upstash.client() is sdk
    assert sdk._http._client is upstash.http_client()
    assert sdk._http._client.timeout.read == upstash.CACHE_TIMEOUT


def test_an_installed_upstash_rest_brings_its_own_sdk_client_on_its_connections():
    default = upstash.client()
    with httpx.Client() as http, upstash.using(upstash.UpstashREST(http)):
        mine = upstash.client()
        assert mine is not default and mine._http._client is http
    assert upstash.client() is default


def test_it_speaks_to_upstash_like_any_upstash_redis_client():
    with respx.mock(assert_all_called=False) as router:
        FakeUpstash(router, URL)
        sdk = upstash.client()
        assert sdk.set("dousell:ratelimit:test", "1", ex=60) is True
        assert sdk.incr("dousell:ratelimit:test") == 2
        assert sdk.eval("return ARGV[1]", [], ["ok"]) == "ok"


class Hanging(BaseHTTPRequestHandler):
    release = threading.Event()
    requests = 0

    def do_POST(self):
        Hanging.requests += 1
        self.release.wait(10)

    def log_message(self, *args):
        pass


def test_a_hanging_upstash_costs_one_bounded_attempt_never_a_retry(monkeypatch):
    with serve(Hanging) as base:
        monkeypatch.setenv("UPSTASH_REDIS_REST_URL", base)
        start = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            upstash.client().incr("dousell:ratelimit:x")
        elapsed = time.monotonic() - start
        Hanging.release.set()
    assert elapsed < 3, f"took {elapsed:.1f}s while the server hung for 10s"
    assert Hanging.requests == 1, "an INCR that may have run is never sent twice"


class FutureTransport:
    """What a later upstash-redis might hold instead of `_http._client`."""

    def __init__(self):
        self.session = object()


@pytest.mark.parametrize("shape", [
    "no _http at all",
    "an _http of another kind",
])
def test_a_library_that_moved_its_client_is_refused_loudly(shape):
    sdk = upstash_redis.Redis(URL, "t", rest_retries=0)
    if shape == "no _http at all":
        del sdk._http
    else:
        sdk._http = FutureTransport()
    with pytest.raises(IncompatibleUpstashRedis, match="must be updated"):
        upstash_sdk.adapt(sdk, upstash.http_client())


def test_a_library_that_ignores_rest_retries_is_refused_loudly():
    sdk = upstash_redis.Redis(URL, "t", rest_retries=1)
    with pytest.raises(IncompatibleUpstashRedis, match="rest_retries"):
        upstash_sdk.adapt(sdk, upstash.http_client())


@pytest.mark.parametrize("exc, kind", [
    (upstash_redis.errors.UpstashError("WRONGTYPE"), "answer"),
    (httpx.ConnectTimeout("slow"), "outage"),
    (ValueError("Expecting value"), "outage"),  # a body that is not JSON (a proxy's page)
    (KeyError("result"), "outage"),  # JSON without Upstash's `result`
    (ZeroDivisionError(), None),  # not the client's: a bug, re-raised by lib/edge/upstash.sdk_call
])
def test_classify_says_what_a_failed_call_means(exc, kind):
    assert upstash_sdk.classify(exc) == kind
