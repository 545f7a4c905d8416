"""lib/edge/paydunya: create and confirm over httpx (faked by respx), errors in the body, the IPN hash."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import httpx
import pytest
import respx

from lib import config
from lib.edge import paydunya
from lib.errors import ConfigurationError, PaymentProviderError

ROOT = "https://paydunya.test/sandbox-api/v1"
MASTER, PRIVATE, TOKEN = "master-secret-key", "test_private-secret", "token-secret"
ACTIONS = {"callback_url": "https://api.test/api/paydunya/ipn", "return_url": "https://api.test/r",
           "cancel_url": "https://api.test/c"}


@pytest.fixture(autouse=True)
def configured(monkeypatch):
    monkeypatch.setenv("PAYDUNYA_MASTER_KEY", MASTER)
    monkeypatch.setenv("PAYDUNYA_PRIVATE_KEY", PRIVATE)
    monkeypatch.setenv("PAYDUNYA_TOKEN", TOKEN)
    monkeypatch.setenv("PAYDUNYA_BASE_URL", ROOT)
    monkeypatch.delenv("PAYDUNYA_MODE", raising=False)


@pytest.fixture
def api():
    with respx.mock(assert_all_called=False) as router:
        yield router


def created(token="test_Ab3dE5gH7k"):
    return httpx.Response(200, json={"response_code": "00", "response_text": f"https://paydunya.test/checkout/{token}",
                                     "description": "Checkout Invoice Created", "token": token})


def test_create_sends_the_keys_and_the_invoice_and_returns_token_and_url(api):
    route = api.post(f"{ROOT}/checkout-invoice/create").mock(return_value=created())
    token, url = paydunya.create_invoice(50_000, "Loyer de novembre 2026", {"payment_id": 7}, ACTIONS)
    assert (token, url) == ("test_Ab3dE5gH7k", "https://paydunya.test/checkout/test_Ab3dE5gH7k")
    request = route.calls.last.request
    assert request.headers["PAYDUNYA-MASTER-KEY"] == MASTER
    assert request.headers["PAYDUNYA-PRIVATE-KEY"] == PRIVATE
    assert request.headers["PAYDUNYA-TOKEN"] == TOKEN
    assert json.loads(request.content) == {
        "invoice": {"total_amount": 50_000, "description": "Loyer de novembre 2026"},
        "store": {"name": "Dousell Immo"},
        "custom_data": {"payment_id": 7},
        "actions": ACTIONS,
    }


def test_live_mode_uses_the_live_root(api, monkeypatch):
    monkeypatch.delenv("PAYDUNYA_BASE_URL")
    monkeypatch.setenv("PAYDUNYA_MODE", "live")
    route = api.post(f"{config.PAYDUNYA_ROOTS['live']}/checkout-invoice/create").mock(return_value=created("abc"))
    assert paydunya.create_invoice(1, "x", {}, ACTIONS)[0] == "abc"
    assert route.called


FAILURES = [
    pytest.param(httpx.Response(200, json={"response_code": "1001", "response_text": "Invalid Masterkey Specified"}),
                 "response_code 1001: Invalid Masterkey Specified", id="error-in-body-with-http-200"),
    pytest.param(httpx.Response(502, text="<html>Bad Gateway</html>"), "http 502", id="http-502"),
    pytest.param(httpx.Response(200, text="<html>maintenance</html>"), "answer is not JSON", id="not-json"),
    pytest.param(httpx.Response(200, json=["00"]), "answer is not a JSON object", id="json-not-object"),
    pytest.param(httpx.Response(200, json={"response_code": "00", "response_text": "https://x/y"}),
                 "create answered no token", id="no-token"),
    pytest.param(httpx.Response(200, json={"response_code": "00", "response_text": "ok", "token": "t"}),
                 "create answered no checkout url", id="no-url"),
    pytest.param(httpx.ReadTimeout("slow"), "timeout: ReadTimeout", id="timeout"),
    pytest.param(httpx.ConnectTimeout("slow"), "timeout: ConnectTimeout", id="connect-timeout"),
    pytest.param(httpx.ConnectError("refused"), "transport: ConnectError", id="refused"),
]


@pytest.mark.parametrize("answer, reason", FAILURES)
def test_every_failure_is_a_payment_provider_error_with_a_log_safe_reason(api, answer, reason):
    route = api.post(f"{ROOT}/checkout-invoice/create")
    if isinstance(answer, Exception):
        route.mock(side_effect=answer)
    else:
        route.mock(return_value=answer)
    with pytest.raises(PaymentProviderError) as info:
        paydunya.create_invoice(50_000, "Loyer", {}, ACTIONS)
    assert info.value.reason == reason
    assert info.value.status == 502 and info.value.code == "payment_provider_error"
    for secret in (MASTER, PRIVATE, TOKEN):
        assert secret not in info.value.reason and secret not in str(info.value)
    assert route.call_count == 1  # never retried: a create that timed out may have made an invoice


def test_the_client_is_bounded_well_under_the_lock_ttl_and_shared():
    client = paydunya.http_client()
    assert client is paydunya.http_client()
    assert client.timeout.connect == 3.0 and client.timeout.read == 10.0
    assert paydunya.TOTAL_TIMEOUT < 30 / 2


def test_an_injected_client_is_used(api):
    api.post(f"{ROOT}/checkout-invoice/create").mock(return_value=created())
    with httpx.Client() as injected, paydunya.using(paydunya.PayDunyaClient(http=injected)):
        assert paydunya.http_client() is injected
        assert paydunya.create_invoice(1, "x", {}, ACTIONS)[0] == "test_Ab3dE5gH7k"


def test_a_missing_key_names_the_variable_and_sends_nothing(api, monkeypatch):
    monkeypatch.delenv("PAYDUNYA_PRIVATE_KEY")
    route = api.post(f"{ROOT}/checkout-invoice/create").mock(return_value=created())
    with pytest.raises(ConfigurationError) as info:
        paydunya.create_invoice(1, "x", {}, ACTIONS)
    assert info.value.variable == "PAYDUNYA_PRIVATE_KEY"
    assert not route.called


def confirmed(status="completed", amount=50_000, token="tok_1", **extra):
    body = {"response_code": "00", "response_text": "Transaction Found", "hash": "h",
            "invoice": {"token": token, "total_amount": amount, "description": "Loyer"},
            "custom_data": {"payment_id": 7}, "status": status, "mode": "test", **extra}
    return httpx.Response(200, json=body)


@pytest.mark.parametrize("amount, whole", [(50_000, 50_000), ("50000", 50_000), (50_000.0, 50_000),
                                           ("50000.00", 50_000), (49_999.5, None), ("abc", None), (True, None)])
def test_confirm_returns_the_status_and_the_amount_as_a_whole_number(api, amount, whole):
    api.get(f"{ROOT}/checkout-invoice/confirm/tok_1").mock(return_value=confirmed(amount=amount))
    verdict = paydunya.confirm("tok_1")
    assert verdict["status"] == "completed"
    assert verdict["total_amount"] == whole
    assert verdict["custom_data"] == {"payment_id": 7}


def test_confirm_escapes_the_token_in_the_path(api):
    route = api.get(url__regex=rf"{ROOT}/checkout-invoice/confirm/.*").mock(return_value=confirmed(token="a/../b?c"))
    paydunya.confirm("a/../b?c")
    assert route.calls.last.request.url.raw_path.endswith(b"/confirm/a%2F..%2Fb%3Fc")


@pytest.mark.parametrize("answer, reason", [
    (httpx.Response(200, json={"response_code": "1002", "response_text": "Invoice not found"}),
     "response_code 1002: Invoice not found"),
    (httpx.Response(200, json={"response_code": "00", "status": "completed", "invoice": {}}), "confirm answered no amount"),
    (confirmed(token="someone-else"), "confirm answered another invoice"),
])
def test_an_unusable_confirmation_is_a_provider_error(api, answer, reason):
    api.get(f"{ROOT}/checkout-invoice/confirm/tok_1").mock(return_value=answer)
    with pytest.raises(PaymentProviderError) as info:
        paydunya.confirm("tok_1")
    assert info.value.reason == reason


@pytest.mark.parametrize("status", ["refunded", "expired", "", None, 7])
def test_an_unknown_status_is_not_settled_and_logged_once_not_a_provider_error(api, caplog, monkeypatch, status):
    # The old answer, a 502, made every cron run fail on that invoice for ever.
    monkeypatch.setattr(paydunya, "_UNKNOWN_LOGGED", set())
    api.get(f"{ROOT}/checkout-invoice/confirm/tok_1").mock(return_value=confirmed(status=status))
    with caplog.at_level("WARNING", logger="lib.edge.paydunya"):
        verdicts = [paydunya.confirm("tok_1") for _ in range(3)]
    assert [v["status"] for v in verdicts] == ["pending"] * 3
    assert len([r for r in caplog.records if "unknown invoice status" in r.getMessage()]) == 1


def test_unknown_statuses_remembered_are_bounded(api, monkeypatch):
    monkeypatch.setattr(paydunya, "_UNKNOWN_LOGGED", set())
    for n in range(paydunya._UNKNOWN_LOGGED_MAX + 50):
        assert paydunya._status(f"word{n}") == "pending"
    assert len(paydunya._UNKNOWN_LOGGED) == paydunya._UNKNOWN_LOGGED_MAX


@pytest.mark.parametrize("where, raw, expected", [
    ("invoice", "2026-12-14 10:00:00", datetime(2026, 12, 14, 10, tzinfo=UTC)),      # PayDunya's shape: no zone, UTC
    ("top", "2026-12-14T10:00:00+00:00", datetime(2026, 12, 14, 10, tzinfo=UTC)),    # at the top level, ISO 8601
    ("invoice", "2026-12-14T11:00:00+01:00", datetime(2026, 12, 14, 10, tzinfo=UTC)),
    ("invoice", "demain", None),   # unreadable: the invoice lives the default 7 days
    ("invoice", "", None),
    ("invoice", 1765706400, None),  # not a string
    (None, None, None),             # not sent
])
def test_confirm_reads_paydunyas_expire_date_when_it_sends_one(api, where, raw, expected):
    answer = confirmed()
    body = json.loads(answer.content)
    if where == "invoice":
        body["invoice"]["expire_date"] = raw
    elif where == "top":
        body["expire_date"] = raw
    api.get(f"{ROOT}/checkout-invoice/confirm/tok_1").mock(return_value=httpx.Response(200, json=body))
    assert paydunya.confirm("tok_1")["expire_date"] == expected


def test_the_ipn_hash_is_sha512_of_the_master_key_compared_in_constant_time(monkeypatch):
    good = hashlib.sha512(MASTER.encode()).hexdigest()
    assert paydunya.check_ipn_hash(good)
    assert paydunya.check_ipn_hash(good.upper())  # hex digits, whatever their case
    for bad in (None, "", good[:-1], good + "0", hashlib.sha512(b"other").hexdigest(), "é" * 128, MASTER):
        assert not paydunya.check_ipn_hash(bad)
    calls = []
    real = paydunya.hmac.compare_digest
    monkeypatch.setattr(paydunya.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    paydunya.check_ipn_hash(good)
    assert calls == [1]
