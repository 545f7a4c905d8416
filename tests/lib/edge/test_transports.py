"""The edge's contract, run on both transports (as dogpile.cache runs one suite against every backend).

`rest`: Upstash REST, the stand-in's engine over a real Valkey (what Vercel speaks);
`tcp`: RESP over TCP to the same real Valkey (VALKEY_URL: the Dakar server). Every test here must
hold on both: whatever sits above the edge (cache, locks, rate limits, health) cannot tell them apart.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis as redis_py

from devstack.redis_server import RedisServer, free_port
from lib import context
from lib.edge import upstash
from lib.errors import RateLimited
from lib.web import ratelimit
from tests.support import UPSTASH_TOKEN

TRANSPORTS = ["rest", "tcp"]


def _reset() -> None:
    upstash.breaker.reset()  # the clients are the test's own (tests/conftest.py's own_clients)


def point(monkeypatch: pytest.MonkeyPatch, transport: str, *, rest_url: str, tcp_url: str) -> None:
    """lib's edge on `transport`, at these addresses."""
    monkeypatch.delenv("VERCEL", raising=False)
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", rest_url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", UPSTASH_TOKEN)
    if transport == "tcp":
        monkeypatch.setenv("VALKEY_URL", tcp_url)
    else:
        monkeypatch.delenv("VALKEY_URL", raising=False)
    _reset()


@pytest.fixture(params=TRANSPORTS)
def edge(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, upstash_url: str,
         valkey: RedisServer) -> Iterator[redis_py.Redis]:
    """The edge on one transport over an empty Valkey; yields a direct client to look behind it. On
    `tcp`, Upstash's URL leads nowhere: a call that still went over REST would fail."""
    rest_url = upstash_url if request.param == "rest" else f"http://127.0.0.1:{free_port()}"
    point(monkeypatch, request.param, rest_url=rest_url, tcp_url=valkey.url)
    with redis_py.Redis(host=valkey.host, port=valkey.port, decode_responses=True) as direct:
        direct.flushall()
        direct.script_flush()
        yield direct
    _reset()


@pytest.fixture(params=TRANSPORTS)
def nowhere(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The edge on one transport, pointed at a port where nothing listens."""
    port = free_port()
    point(monkeypatch, request.param, rest_url=f"http://127.0.0.1:{port}", tcp_url=f"redis://127.0.0.1:{port}/0")
    yield request.param
    _reset()


# -- answers ------------------------------------------------------------------------------------


def test_answers_are_what_the_server_sent_whatever_the_transport(edge):
    assert upstash.execute(["SET", "k", "été"]) == "OK"
    assert upstash.execute(["GET", "k"]) == "été"
    assert upstash.execute(["GET", "missing"]) is None
    assert upstash.execute(["INCR", "n"]) == 1
    assert upstash.execute(["EXPIRE", "n", 60]) == 1
    assert upstash.execute(["HSET", "h", "a", "1", "b", "2"]) == 2
    assert upstash.execute(["HGETALL", "h"]) == ["a", "1", "b", "2"]
    assert upstash.execute(["MGET", "k", "missing"]) == ["été", None]
    assert upstash.execute(["SET", "k", "x", "NX"]) is None
    assert upstash.execute(["PING"]) == "PONG"


def test_a_pipeline_is_answered_in_order_and_a_refused_command_fails_alone(edge):
    edge.set("s", "x")
    answers = upstash.pipeline([["SET", "a", "1"], ["LPUSH", "s", "y"], ["GET", "a"]])
    assert answers[0] == "OK" and answers[2] == "1"
    assert isinstance(answers[1], upstash.RedisCommandError) and "WRONGTYPE" in str(answers[1])
    assert upstash.pipeline([]) == []
    assert upstash.breaker.state == "closed"


def test_a_refused_command_raises_a_command_error_and_redis_stays_up(edge):
    edge.set("s", "x")
    with pytest.raises(upstash.RedisCommandError, match="WRONGTYPE"):
        upstash.execute(["LPUSH", "s", "y"])
    assert upstash.breaker.state == "closed"


def test_a_write_refused_at_the_memory_limit_is_redis_full_and_reads_still_work(edge):
    edge.set("kept", "x")
    edge.config_set("maxmemory", "1")
    try:
        with pytest.raises(upstash.RedisFull):
            upstash.execute(["SET", "k", "v"])
        assert upstash.execute(["GET", "kept"]) == "x"
    finally:
        edge.config_set("maxmemory", "0")
    assert upstash.breaker.state == "closed"


# -- scripts ------------------------------------------------------------------------------------

ECHO = upstash.Script("return {KEYS[1], ARGV[1]}", writes=False)
STORE = upstash.Script("return redis.call('SET', KEYS[1], ARGV[1])", writes=True)
COUNT = upstash.Script("return redis.call('INCR', KEYS[1])", writes=True)


def test_scripts_run_read_only_or_writing(edge):
    assert upstash.run(ECHO, ["k"], [1]) == ["k", "1"]
    assert upstash.run(STORE, ["k"], ["b"]) == "OK"
    assert edge.get("k") == "b"


def test_scripts_the_server_lost_are_sent_again_as_text_once_even_inside_a_pipeline(edge):
    edge.set("kept", "x")
    upstash.run(ECHO, ["warm"], [0])
    edge.script_flush()  # the server lost its scripts (restarted, flushed)
    answers = upstash.pipeline([["GET", "kept"], ECHO.command(["a"], [1]), STORE.command(["b"], [2])])
    assert answers == ["x", ["a", "1"], "OK"]
    assert upstash.run(ECHO, ["a"], [2]) == ["a", "2"]


def test_a_script_error_is_a_command_error_not_an_outage(edge):
    edge.set("k", "not a number")
    with pytest.raises(upstash.RedisCommandError, match="not an integer"):
        upstash.run(COUNT, ["k"], [])
    assert upstash.breaker.state == "closed"


# -- what a request asked of Redis ----------------------------------------------------------------


def test_a_tally_counts_round_trips_and_commands_of_its_context_only(edge):
    upstash.execute(["PING"])
    tally, token = context.start_tally()
    try:
        upstash.execute(["SET", "a", "1"])
        upstash.pipeline([["GET", "a"], ["GET", "b"]])
    finally:
        context.stop_tally(token)
    upstash.execute(["PING"])
    assert tally.commands == 3 and len(tally.calls_ms) == 2
    assert all(ms >= 0 for ms in tally.calls_ms)


# -- failures ----------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_outage_then_skipped_until_the_breaker_lets_a_probe_through(nowhere):
    with pytest.raises(upstash.RedisUnavailable) as first:
        upstash.execute(["GET", "k"])
    assert not isinstance(first.value, upstash.RedisSkipped)
    assert upstash.breaker.state == "open"
    with pytest.raises(upstash.RedisSkipped):
        upstash.execute(["GET", "k"])
    assert upstash.probe() is False
    tally, token = context.start_tally()
    try:
        with pytest.raises(upstash.RedisUnavailable):
            upstash.execute(["GET", "k"], force=True)
    finally:
        context.stop_tally(token)
    assert tally.commands == 1 and len(tally.calls_ms) == 1, "a failed call is tallied too"


class Silent:
    """A TCP server that accepts connections and never answers (a hung Redis, a black-holed proxy)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_silent_server_costs_one_bounded_timeout_not_a_hang(monkeypatch, transport):
    silent = Silent()
    try:
        point(monkeypatch, transport, rest_url=f"http://127.0.0.1:{silent.port}",
              tcp_url=f"redis://127.0.0.1:{silent.port}/0")
        start = time.monotonic()
        with pytest.raises(upstash.RedisUnavailable):
            upstash.execute(["GET", "k"])
        elapsed = time.monotonic() - start
    finally:
        silent.close()
        _reset()
    assert elapsed < 3, f"took {elapsed:.1f}s against a server that never answers"


def test_probe_says_up_and_closes_the_breaker(edge):
    upstash.breaker.failure()
    assert upstash.probe() is True
    assert upstash.breaker.state == "closed"


# -- libraries built on upstash-redis ----------------------------------------------------------------


def test_the_rate_limit_counts_in_one_sliding_window_on_either_transport(edge, monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_WRITES_PER_MINUTE", "3")
    for _ in range(3):
        ratelimit.hit("write", "user-1")
    with pytest.raises(RateLimited) as refused:
        ratelimit.hit("write", "user-1")
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
    ratelimit.hit("write", "user-2")  # another identifier, its own window
    assert any(key.startswith("dousell:ratelimit:write:user-1:") for key in edge.keys("*"))


def test_the_rate_limit_fails_open_when_redis_is_unreachable(nowhere, monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_WRITES_PER_MINUTE", "1")
    for _ in range(3):
        ratelimit.hit("write", "user-1")  # no error: the request goes on
