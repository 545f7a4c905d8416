"""lib/edge/upstash, the Redis edge: bounded, never retried, one breaker, scripts with their flags, errors translated.

Upstash is the real stand-in's engine over a real Valkey (tests/fakes.py), or an exact answer
faked with respx where a test needs one Upstash never gives on demand (a timeout, a 502 page).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
import respx

import lib
from lib import context, keys
from lib.cache import aside
from lib.edge import breaker as breaker_module
from lib.edge import upstash
from lib.errors import ConfigurationError
from lib.web.http import Endpoint
from tests.fakes import FakeUpstash
from tests.support import serve

URL = "https://upstash.test"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def upstash_env(monkeypatch):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", URL)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "test-token")
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    upstash.breaker.reset()
    yield
    upstash.breaker.reset()


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(breaker_module, "clock", fake)
    return fake


@pytest.fixture
def router():
    with respx.mock(assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def redis(router):
    return FakeUpstash(router, URL)


def sent(route) -> list:
    return [json.loads(call.request.content) for call in route.calls]


# -- the client --------------------------------------------------------------------------------


def test_the_http_client_is_built_lazily_once_with_a_bounded_timeout():
    first = upstash.http_client()
    assert upstash.http_client() is first
    assert first.timeout.read == upstash.CACHE_TIMEOUT <= 0.5
    assert first.timeout.connect == upstash.CONNECT_TIMEOUT


def test_a_command_goes_out_as_one_json_array_with_the_bearer_token(router):
    route = router.post(URL).mock(return_value=httpx.Response(200, json={"result": "OK"}))
    assert upstash.execute(["SET", "dousell:k", "v", "NX", "PX", 30000]) == "OK"
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer test-token"
    assert json.loads(request.content) == ["SET", "dousell:k", "v", "NX", "PX", 30000]


def test_values_come_back_as_upstash_stored_them(redis):
    assert upstash.execute(["SET", "k", "villa à Saly: 1 200 000 XOF"]) == "OK"
    assert upstash.execute(["GET", "k"]) == "villa à Saly: 1 200 000 XOF"
    assert upstash.execute(["GET", "missing"]) is None
    assert upstash.execute(["INCR", "n"]) == 1
    assert upstash.execute(["HMGET", "nothing", "a", "b"]) == [None, None]


def test_a_pipeline_is_one_call_and_a_refused_command_never_fails_the_others(redis):
    redis.redis.set("k", "v")
    ok, refused, size = upstash.pipeline([["GET", "k"], ["HGET", "k", "f"], ["DBSIZE"]])
    assert ok == "v" and size == 1
    assert isinstance(refused, upstash.RedisCommandError) and "WRONGTYPE" in str(refused)
    assert len(redis.calls) == 1 and redis.calls[0][0] == "PIPELINE"


def test_an_empty_pipeline_costs_nothing(redis):
    assert upstash.pipeline([]) == []
    assert redis.calls == []


# -- errors: what becomes a Redis error, what opens the breaker --------------------------------


@pytest.mark.parametrize("answer, error, opens", [
    (httpx.ReadTimeout("slow"), upstash.RedisUnavailable, True),  # Upstash too slow
    (httpx.ConnectError("refused"), upstash.RedisUnavailable, True),  # unreachable
    (httpx.RemoteProtocolError("reset"), upstash.RedisUnavailable, True),  # the connection broke
    (httpx.Response(502, text="<html>Bad gateway</html>"), upstash.RedisUnavailable, True),  # not its protocol
    (httpx.Response(200, text="<html>captive portal</html>"), upstash.RedisUnavailable, True),
    (httpx.Response(200, json={"something": "else"}), upstash.RedisUnavailable, True),
    (httpx.Response(401, json={"error": "Unauthorized"}), upstash.RedisRejected, True),  # token refused
    (httpx.Response(429, json={"error": "Too many requests"}), upstash.RedisRejected, True),  # rate limited
    (httpx.Response(400, json={"error": "ERR max requests limit exceeded"}), upstash.RedisQuota, True),
    (httpx.Response(429, json={"error": "ERR max daily request limit exceeded. Limit: 10000, Usage: 10000."}),
     upstash.RedisQuota, True),
    (httpx.Response(400, json={"error": "WRONGTYPE Operation against a key"}), upstash.RedisCommandError, False),
    (httpx.Response(400, json={"error": "ERR DB capacity quota exceeded. Threshold: 268435456 bytes, "
                                        "Usage: 268979370 bytes"}), upstash.RedisFull, False),
])
def test_only_transport_failures_and_upstash_answers_are_redis_errors(router, answer, error, opens):
    route = router.post(URL).mock(side_effect=[answer, httpx.Response(200, json={"result": 1})])
    with pytest.raises(error) as caught:
        upstash.execute(["INCR", "dousell:counter"])
    assert type(caught.value) is error
    assert route.call_count == 1, "a write is never sent twice"
    assert upstash.breaker.state == ("open" if opens else "closed")


def test_a_missing_variable_is_a_configuration_error_not_an_outage(monkeypatch):
    monkeypatch.delenv("UPSTASH_REDIS_REST_URL")
    with pytest.raises(ConfigurationError, match="UPSTASH_REDIS_REST_URL"):
        upstash.execute(["GET", "k"])
    assert upstash.breaker.state == "closed"


@pytest.mark.parametrize("bug", [
    AttributeError("'NoneType' object has no attribute 'json'"),  # say, after a library upgrade
    TypeError("unsupported operand type(s)"),
    KeyError("result"),
])
def test_a_bug_in_the_edge_propagates_as_itself_and_is_not_taken_for_an_outage(router, monkeypatch, bug):
    router.post(URL).mock(return_value=httpx.Response(200, json={"result": "x"}))

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(upstash, "_answers", broken)
    with pytest.raises(type(bug)):
        upstash.execute(["GET", "k"])
    assert upstash.breaker.state == "closed"


class Cached(Endpoint):
    """GET /t/{id}: a cached read, as /api/properties/{id} does it."""

    path_param = "id"

    def get(self, req):
        return {"property": aside.fetch(keys.property_detail(req.path_id()), lambda: {"id": 1})}


def test_a_bug_below_the_cache_answers_500_with_its_log_line_instead_of_bypassing(redis, router, monkeypatch,
                                                                                   capfd):
    router.route(host="127.0.0.1").pass_through()
    real = upstash._answers

    def upgraded_library(response, expected, single):  # a new version returns something else
        answers = real(response, expected, single)
        return None if answers is None else answers[0].attr

    monkeypatch.setattr(upstash, "_answers", upgraded_library)
    with serve(Cached) as base:
        response = httpx.get(f"{base}/t/1", timeout=10)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "x-cache" not in response.headers, "not a BYPASS: the site does not silently run uncached"
    log = capfd.readouterr().err
    assert '"exception":"AttributeError"' in log and '"status":500' in log
    assert upstash.breaker.state == "closed"


# -- the breaker -------------------------------------------------------------------------------


def test_after_a_failure_redis_is_skipped_without_a_call_until_one_probe_is_due(router, clock):
    route = router.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(upstash.RedisUnavailable):
        upstash.execute(["GET", "k"])
    for _ in range(5):
        with pytest.raises(upstash.RedisSkipped):
            upstash.execute(["GET", "k"])
    assert route.call_count == 1
    clock.now += 1.0  # the interval is over: one probe goes out
    route.mock(return_value=httpx.Response(200, json={"result": "v"}))
    assert upstash.execute(["GET", "k"]) == "v"
    assert upstash.breaker.state == "closed"


def test_a_forced_call_goes_out_while_the_breaker_is_open_and_its_answer_closes_it(router):
    route = router.post(URL).mock(return_value=httpx.Response(200, json={"result": "v"}))
    upstash.breaker.failure()
    with pytest.raises(upstash.RedisSkipped):
        upstash.execute(["GET", "k"])
    assert upstash.execute(["GET", "k"], force=True) == "v"
    assert route.call_count == 1 and upstash.breaker.state == "closed"


def test_a_probe_answers_even_while_the_breaker_is_open_and_ping_is_not_billed(redis):
    upstash.breaker.failure()
    assert upstash.probe() is True
    assert redis.stats.billed == 0, "PING is not billed by Upstash"


@respx.mock
def test_probe_says_down_on_any_failure():
    respx.post(URL).mock(side_effect=httpx.ConnectError("down"))
    assert upstash.probe() is False


# -- scripts -----------------------------------------------------------------------------------

ECHO = upstash.Script("return {KEYS[1], ARGV[1]}", writes=False)
STORE = upstash.Script("return redis.call('SET', KEYS[1], ARGV[1])", writes=True)


def test_a_read_only_script_goes_out_as_evalsha_ro_and_a_writing_one_as_evalsha(redis):
    upstash.run(ECHO, ["k"], ["a"])
    upstash.run(STORE, ["k"], ["b"])
    assert [call[0] for call in redis.calls] == ["EVALSHA_RO", "EVAL_RO", "EVALSHA", "EVAL"]
    redis.calls.clear()
    assert upstash.run(ECHO, ["k"], [1]) == ["k", "1"]
    assert redis.calls == [["EVALSHA_RO", ECHO.sha, 1, "k", "1"]]
    assert redis.redis.get("k") == b"b"


def test_scripts_upstash_lost_are_sent_again_as_text_once_even_inside_a_pipeline(redis):
    redis.redis.set("kept", "x")
    upstash.run(ECHO, ["warm"], [0])
    redis.redis.script_flush()  # Upstash lost its scripts
    redis.calls.clear()
    answers = upstash.pipeline([["GET", "kept"], ECHO.command(["a"], [1]), STORE.command(["b"], [2])])
    assert answers == ["x", ["a", "1"], "OK"]
    assert [c[0] for c in redis.calls[0][1]] == ["GET", "EVALSHA_RO", "EVALSHA"]
    assert [c[0] for c in redis.calls[1][1]] == ["EVAL_RO", "EVAL"], "only the lost scripts are resent"


def test_every_script_locks_only_its_keys_and_the_read_only_ones_say_so(redis):
    """Each script of lib carries `allow-key-locking` (Upstash then locks its KEYS, not the whole
    database), and `no-writes` exactly when it calls no write command, by Valkey's own command table,
    unless it must run on the leader."""
    for module in pkgutil.iter_modules(lib.__path__):
        importlib.import_module(f"lib.{module.name}")
    assert len(upstash._SCRIPTS) >= 8
    table = redis.redis.command()  # Valkey's command table: each command's flags
    for script in upstash._SCRIPTS.values():
        first = script.text.splitlines()[0]
        assert "allow-key-locking" in first, script.text
        called = set(re.findall(r"redis\.p?call\('([A-Z]+)'", script.text))
        writes = {name for name in called if "write" in table[name.lower()]["flags"]}
        # A read that must see every acknowledged write runs on the leader: no `no-writes` (lib/cache/entries.READ).
        assert (script.read_only or script.leader) == (not writes), (called, script.text)
        assert ("no-writes" in first) == script.read_only


def test_a_script_that_touches_a_key_outside_keys_is_refused_as_upstash_refuses_it(redis):
    sneaky = upstash.Script("return redis.call('GET', 'dousell:elsewhere')", writes=False)
    with pytest.raises(upstash.RedisCommandError, match="Dynamic keys are not allowed"):
        upstash.run(sneaky, ["dousell:declared"], [])
    assert upstash.breaker.state == "closed"


# -- time ---------------------------------------------------------------------------------------


class Hanging(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_POST(self):
        self.release.wait(10)

    def log_message(self, *args):
        pass


def test_a_hanging_upstash_costs_one_bounded_timeout_not_a_hang(monkeypatch):
    with serve(Hanging) as base:
        monkeypatch.setenv("UPSTASH_REDIS_REST_URL", base)
        start = time.monotonic()
        with pytest.raises(upstash.RedisUnavailable):
            upstash.execute(["GET", "k"])
        elapsed = time.monotonic() - start
        Hanging.release.set()
    assert elapsed < 3, f"took {elapsed:.1f}s while the server hung for 10s"


def test_durations_are_tallied_even_for_a_call_that_failed(router):
    router.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    context.begin()
    tally, token = context.start_tally()
    try:
        with pytest.raises(upstash.RedisUnavailable):
            upstash.execute(["GET", "k"])
    finally:
        context.stop_tally(token)
    assert len(tally.calls_ms) == 1 and tally.commands == 1


# -- replicated reads: the sync token -----------------------------------------------------------


def test_the_last_sync_token_goes_out_with_every_request_and_never_goes_back(router):
    tokens = iter(["120", "90", "130"])
    route = router.post(URL).mock(side_effect=lambda request: httpx.Response(
        200, json={"result": "OK"}, headers={"upstash-sync-token": next(tokens, "130")}))
    for _ in range(4):
        upstash.execute(["GET", "k"])
    sent_tokens = [call.request.headers.get("upstash-sync-token") for call in route.calls]
    assert sent_tokens == [None, "120", "120", "130"], "a replica's older token does not replace a newer one"
    with upstash.using(upstash.UpstashREST()):  # another instance (or a cold start): a client of its own, no token
        upstash.execute(["GET", "k"])
    assert route.calls.last.request.headers.get("upstash-sync-token") is None


def test_a_sync_token_of_another_format_replaces_the_kept_one_as_upstash_redis_does(router):
    tokens = iter(["120", "opaque-b"])
    route = router.post(URL).mock(side_effect=lambda request: httpx.Response(
        200, json={"result": 1}, headers={"upstash-sync-token": next(tokens, "opaque-c")}))
    for _ in range(3):
        upstash.execute(["GET", "k"])
    assert [call.request.headers.get("upstash-sync-token") for call in route.calls] == [None, "120", "opaque-b"]


# -- quotas: neither an outage nor "up" ---------------------------------------------------------


DAILY = "ERR max daily request limit exceeded. Limit: 10000, Usage: 10000."


def test_a_daily_quota_holds_redis_off_until_midnight_utc_and_warns_once(router, clock, monkeypatch, caplog):
    monkeypatch.setattr(upstash.time, "time", lambda: 1_765_000_000.0 + 3600)  # 01:00 past a midnight UTC
    route = router.post(URL).mock(return_value=httpx.Response(400, json={"error": DAILY}))
    with caplog.at_level("WARNING", logger="lib.edge.upstash"):
        with pytest.raises(upstash.RedisQuota) as caught:
            upstash.execute(["GET", "k"])
        for _ in range(5):
            with pytest.raises(upstash.RedisSkipped):
                upstash.execute(["GET", "k"])
    assert caught.value.kind == "daily"
    assert route.call_count == 1, "held off: no round trip per read"
    assert (upstash.breaker.state, upstash.breaker.reason) == ("open", "daily_quota")
    midnight = 86400 - (1_765_000_000 + 3600) % 86400
    assert upstash.breaker.seconds_left() == pytest.approx(midnight)
    assert len([r for r in caplog.records if "quota" in r.getMessage()]) == 1
    clock.now += midnight - 1
    with pytest.raises(upstash.RedisSkipped):
        upstash.execute(["GET", "k"])
    clock.now += 1  # the next day: one probe; still refused (the plan's day is not over for Upstash)
    with caplog.at_level("WARNING", logger="lib.edge.upstash"):
        with pytest.raises(upstash.RedisQuota):
            upstash.execute(["GET", "k"])
    assert route.call_count == 2
    assert len([r for r in caplog.records if "quota" in r.getMessage()]) == 2, "one warning per window"


def test_in_flight_requests_meeting_the_same_quota_warn_once(router, clock, caplog):
    router.post(URL).mock(return_value=httpx.Response(400, json={"error": DAILY}))
    with caplog.at_level("WARNING", logger="lib.edge.upstash"):
        for _ in range(3):  # each forced past the breaker, as calls already in flight are
            with pytest.raises(upstash.RedisQuota):
                upstash.execute(["GET", "k"], force=True)
    assert len([r for r in caplog.records if "quota" in r.getMessage()]) == 1


def test_a_monthly_quota_probes_once_an_hour_and_a_success_closes_the_breaker(router, clock):
    route = router.post(URL).mock(side_effect=[
        httpx.Response(400, json={"error": "ERR max requests limit exceeded. Limit: 500000, Usage: 500000."}),
        httpx.Response(200, json={"result": "v"})])
    with pytest.raises(upstash.RedisQuota):
        upstash.execute(["GET", "k"])
    assert (upstash.breaker.reason, upstash.breaker.seconds_left()) == ("monthly_quota", upstash.QUOTA_PROBE_S)
    clock.now += upstash.QUOTA_PROBE_S
    assert upstash.execute(["GET", "k"]) == "v"  # the plan was raised: closed again
    assert (upstash.breaker.state, upstash.breaker.reason, route.call_count) == ("closed", None, 2)


def test_the_stand_ins_daily_quota_reads_as_a_quota_through_a_pipeline_too(redis):
    redis.engine.daily_requests = 0
    try:
        with pytest.raises(upstash.RedisQuota):
            upstash.pipeline([["GET", "a"], ["GET", "b"]])
    finally:
        redis.engine.daily_requests = None


def test_a_read_during_a_quota_hold_is_answered_by_the_database(redis, clock):
    redis.engine.daily_requests = 0
    try:
        context.begin()
        assert aside.get_or_load("dousell:k", lambda: {"from": "db"}, 60) == {"from": "db"}
        assert aside.get_or_load("dousell:k", lambda: {"from": "db"}, 60) == {"from": "db"}
        assert context.current().cache_status == "BYPASS"
        assert redis.stats.quota_refusals == 1, "the second read did not even ask"
    finally:
        redis.engine.daily_requests = None
