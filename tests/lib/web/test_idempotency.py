"""lib/web/idempotency.idempotent: a retried write with the same `Idempotency-Key` gets the first answer.

Upstash is the real stand-in's engine over a real Valkey (tests/fakes.py), reached through respx.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest

from lib import keys
from lib.errors import PaymentInProgress, PaymentProviderError, ValidationFailed
from lib.web import idempotency
from lib.web.http import Reply
from tests.fakes import fake_upstash

MOUSSA = "33333333-3333-4333-8333-333333333333"
FATOU = "44444444-4444-4444-8444-444444444444"


@pytest.fixture
def redis(monkeypatch):
    with fake_upstash(monkeypatch) as fake:
        yield fake


class Runs:
    def __init__(self, reply: Reply | Exception):
        self.reply, self.count = reply, 0

    def __call__(self) -> Reply:
        self.count += 1
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def idem(key, run, request=None, who=MOUSSA, scope="POST /api/payments"):
    return idempotency.idempotent(key, who, scope, request if request is not None else {"lease_id": 123},
                                   PaymentInProgress, run)


def test_a_retried_request_with_the_same_key_gets_the_first_answer(redis):
    run = Runs(Reply({"payment": {"id": 1}}, 201))
    first = idem("k-1", run)
    again = idem("k-1", run)
    assert run.count == 1
    assert (again.status, again.body) == (201, {"payment": {"id": 1}})
    assert again.headers == {"Idempotent-Replayed": "true"} and first.headers == {}


def test_the_record_is_kept_24_hours_under_a_hash_of_the_key(redis):
    idem("my key:*", Runs(Reply({"ok": True}, 201)))
    name = f"dousell:meta:idem:{MOUSSA}:{hashlib.sha256(b'my key:*').hexdigest()}"
    assert keys.idempotency(MOUSSA, "my key:*") == name
    assert 86_000 < redis.redis.ttl(name) <= 86_400
    assert b"my key" not in b"".join(redis.redis.keys())


def test_the_same_key_with_another_body_is_422_idempotency_key_reused(redis):
    idem("k-1", Runs(Reply({"ok": True}, 201)))
    with pytest.raises(ValidationFailed) as info:
        idem("k-1", Runs(Reply({"ok": True}, 201)), request={"lease_id": 124})
    assert (info.value.status, info.value.code) == (422, "idempotency_key_reused")


def test_the_same_key_on_another_endpoint_is_reused_too(redis):
    idem("k-1", Runs(Reply({"ok": True}, 201)))
    with pytest.raises(ValidationFailed):
        idem("k-1", Runs(Reply({}, 201)), scope="POST /api/visits")


def test_keys_are_per_user(redis):
    run = Runs(Reply({"ok": True}, 201))
    idem("k-1", run)
    idem("k-1", run, who=FATOU)
    assert run.count == 2


@pytest.mark.parametrize("key, ok", [("", False), ("x" * 201, False), ("x" * 200, True), ("é", True)])
def test_the_key_is_one_to_200_characters(redis, key, ok):
    if ok:
        assert idem(key, Runs(Reply({}, 201))).status == 201
    else:
        with pytest.raises(ValidationFailed) as info:
            idem(key, Runs(Reply({}, 201)))
        assert info.value.details[0]["field"] == "Idempotency-Key"


def test_an_error_is_not_stored_the_retry_runs_again(redis):
    failing = Runs(PaymentProviderError())
    with pytest.raises(PaymentProviderError):
        idem("k-1", failing)
    ok = Runs(Reply({"ok": True}, 201))
    assert idem("k-1", ok).status == 201 and ok.count == 1


def test_a_non_2xx_reply_is_not_stored_either(redis):
    idem("k-1", Runs(Reply({"x": 1}, 409)))
    run = Runs(Reply({"ok": True}, 201))
    idem("k-1", run)
    assert run.count == 1


def test_the_same_request_still_in_flight_is_busy(redis):
    inner = {}

    def run():
        with pytest.raises(PaymentInProgress):
            idem("k-1", Runs(Reply({}, 201)))
        with pytest.raises(ValidationFailed):
            idem("k-1", Runs(Reply({}, 201)), request={"lease_id": 9})
        inner["checked"] = True
        return Reply({"ok": True}, 201)

    assert idem("k-1", run).status == 201 and inner["checked"]


def test_without_a_key_nothing_touches_redis(redis):
    assert idem(None, Runs(Reply({}, 201))).status == 201
    assert redis.calls == []


def test_redis_down_the_request_runs_every_time(redis):
    redis.down = httpx.ConnectError("down")
    run = Runs(Reply({"ok": True}, 201))
    idem("k-1", run)
    idem("k-1", run)
    assert run.count == 2


def test_redis_failing_after_the_claim_still_answers(redis):
    def run():
        redis.down = httpx.ConnectError("down")
        return Reply({"ok": True}, 201)

    assert idem("k-1", run).status == 201
