"""lib/web/ratelimit: upstash-ratelimit's sliding window over the edge's client, 429 with Retry-After, failing open.

Upstash is tests.fakes.FakeUpstash: the stand-in's engine (Upstash's script flags and billing)
over a real Valkey, reached through upstash-redis as in production.
"""

from __future__ import annotations

import httpx
import pytest
import respx

from lib import keys
from lib.edge import upstash
from lib.errors import ConfigurationError, RateLimited
from lib.web import ratelimit
from tests.fakes import FakeUpstash
from tests.world import AWA, FATOU, UPSTASH, env, reset_breaker


@pytest.fixture
def redis(monkeypatch):
    env(monkeypatch)
    for name in ("RATE_LIMIT_WRITES_PER_MINUTE", "RATE_LIMIT_BAD_IPN_PER_MINUTE",
                 "RATE_LIMIT_WRITES_PER_ADDRESS_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    ratelimit._limiters.clear()
    with respx.mock(assert_all_called=False) as router:
        fake = FakeUpstash(router, UPSTASH)
        fake.router = router  # to replace its answers (respx replaces a route of the same pattern)
        yield fake
    reset_breaker()


def writes(n: int, who: str = FATOU) -> list[RateLimited | None]:
    out: list[RateLimited | None] = []
    for _ in range(n):
        try:
            ratelimit.for_writes("POST", who)
            out.append(None)
        except RateLimited as exc:
            out.append(exc)
    return out


def test_thirty_writes_a_minute_pass_and_the_next_is_429_with_retry_after(redis):
    answers = writes(31)
    assert answers[:30] == [None] * 30
    refused = answers[30]
    assert (refused.status, refused.code) == (429, "rate_limited")
    assert 1 <= refused.retry_after <= 60
    assert refused.headers == {"Retry-After": str(refused.retry_after)}
    assert refused.to_body()["error"]["details"] == {"retry_after": refused.retry_after}
    assert f"{refused.retry_after} s" in refused.message


def test_reads_are_never_counted(redis):
    for _ in range(40):
        ratelimit.for_writes("GET", FATOU)
    assert redis.calls == []


def test_each_user_has_their_own_allowance(redis):
    writes(31, FATOU)
    assert writes(1, AWA) == [None]


def test_the_counters_live_under_the_namespaced_ratelimit_prefix_with_the_identifier_escaped(redis, monkeypatch):
    monkeypatch.setenv("CACHE_NAMESPACE", "staging")
    ratelimit.hit("write", "evil:*{id}")
    stored = [k.decode() for k in redis.redis.keys("*")]
    assert len(stored) == 1
    assert stored[0].startswith("staging:ratelimit:write:evil%3A%2A%7Bid%7D:")


def test_a_limited_request_costs_one_billed_command_in_a_key_locked_script(redis):
    before = redis.stats.as_dict()
    writes(31)
    after = redis.stats.as_dict()
    assert after["billed"] - before["billed"] == 31
    assert after["scripts_global_lock"] == before["scripts_global_lock"]
    assert after["scripts_key_locked"] - before["scripts_key_locked"] == 31


def test_redis_down_the_request_goes_on_and_the_breaker_spares_the_next_ones(redis):
    redis.down = httpx.ConnectTimeout("slow")
    assert writes(3) == [None] * 3
    assert upstash.breaker.state == "open"
    assert redis.calls == []  # the fake raised before recording: one attempt, then skipped


def test_an_answer_that_is_not_upstashs_fails_open_and_opens_the_breaker(redis):
    redis.router.post(UPSTASH).mock(return_value=httpx.Response(502, text="<html>Bad gateway</html>"))
    assert writes(1) == [None]
    assert upstash.breaker.state == "open"


def test_upstash_refusing_the_command_fails_open_without_opening_the_breaker(redis):
    redis.router.post(UPSTASH).mock(return_value=httpx.Response(401, json={"error": "WRONGPASS invalid token"}))
    assert writes(2) == [None, None]
    assert upstash.breaker.state == "closed"


def test_an_operator_sets_the_allowance_and_a_bad_value_names_the_variable(redis, monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_WRITES_PER_MINUTE", "5")
    assert [a is None for a in writes(6)] == [True] * 5 + [False]
    monkeypatch.setenv("RATE_LIMIT_WRITES_PER_MINUTE", "lots")
    with pytest.raises(ConfigurationError) as info:
        writes(1)
    assert info.value.variable == "RATE_LIMIT_WRITES_PER_MINUTE"


def test_refused_ipns_are_limited_per_address(redis):
    for _ in range(10):
        ratelimit.hit("ipn", "203.0.113.7")
    with pytest.raises(RateLimited):
        ratelimit.hit("ipn", "203.0.113.7")
    ratelimit.hit("ipn", "198.51.100.1")  # another address still gets through
    assert keys.ratelimit_prefix("ipn") == "dousell:ratelimit:ipn"


@pytest.mark.parametrize("headers, address", [
    ({"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),  # what Vercel sets
    ({"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}, "203.0.113.7"),  # the first entry is the client
    ({"X-Real-IP": "198.51.100.1"}, "198.51.100.1"),
    ({}, "unknown"),
])
def test_the_client_address_is_the_first_forwarded_for_entry(headers, address):
    assert ratelimit.client_ip(headers) == address


def writes_from(address: str, users: list[str], each: int) -> list[RateLimited | None]:
    out: list[RateLimited | None] = []
    for who in users:
        for _ in range(each):
            try:
                ratelimit.for_writes("POST", who, address)
                out.append(None)
            except RateLimited as exc:
                out.append(exc)
    return out


def test_many_accounts_from_one_address_are_cut_at_the_address_limit(redis):
    # The attack: accounts are free, so one person opens five and writes 30 a minute with each.
    users = [f"account-{n}" for n in range(5)]
    answers = writes_from("197.159.1.2", users, 30)
    assert answers[:120] == [None] * 120
    assert all(isinstance(a, RateLimited) for a in answers[120:]) and len(answers) == 150
    assert writes_from("41.82.7.9", ["account-9"], 1) == [None]  # another address is not limited by it


def test_the_address_limit_is_set_by_its_own_variable(redis, monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_WRITES_PER_ADDRESS_PER_MINUTE", "3")
    answers = writes_from("197.159.1.2", ["a", "b"], 2)
    assert answers[:3] == [None] * 3 and isinstance(answers[3], RateLimited)


def test_an_unknown_address_is_not_one_bucket_for_everybody(redis, monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_WRITES_PER_ADDRESS_PER_MINUTE", "3")
    assert writes_from(ratelimit.UNKNOWN_ADDRESS, ["a", "b", "c"], 2) == [None] * 6
    assert not [k for k in redis.redis.keys("*") if b"write_address" in k]
