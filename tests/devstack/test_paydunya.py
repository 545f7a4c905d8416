"""The PayDunya stand-in, exercised over real HTTP (httpx) with a real callback receiver."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest

from devstack.paydunya import (
    DEFAULT_MASTER_KEY,
    DEFAULT_PRIVATE_KEY,
    DEFAULT_TOKEN,
    serve_in_thread,
)

MASTER = "tests-master-key"
PRIVATE = "test_private_tests-private-key"
TOKEN = "tests-token"
HASH = hashlib.sha512(MASTER.encode()).hexdigest()
KEYS = {"PAYDUNYA-MASTER-KEY": MASTER, "PAYDUNYA-PRIVATE-KEY": PRIVATE, "PAYDUNYA-TOKEN": TOKEN}
JSON = {"Accept": "application/json"}
REPO = Path(__file__).resolve().parents[2]


# -- a tiny callback target that records every request ---------------------------------------
class Receiver:
    def __init__(self):
        self.cond = threading.Condition()
        self.requests: list[dict] = []
        self.answer_status = 200
        self.answer_body = b'{"ok":true}'

    def record(self, path, headers, body):
        with self.cond:
            self.requests.append({"path": path, "headers": headers, "body": body,
                                  "at": time.monotonic()})
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 3.0) -> list[dict]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.requests) >= count, timeout)
            assert ok, f"expected {count} IPN(s) within {timeout}s, got {len(self.requests)}"
            return list(self.requests)

    def clear(self):
        with self.cond:
            self.requests.clear()
            self.answer_status = 200
            self.answer_body = b'{"ok":true}'


def _receiver_handler(receiver: Receiver):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            receiver.record(self.path, dict(self.headers), body)
            self.send_response(receiver.answer_status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(receiver.answer_body)))
            self.end_headers()
            self.wfile.write(receiver.answer_body)

    return Handler


@pytest.fixture(scope="module")
def receiver():
    rec = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _receiver_handler(rec))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/api/paydunya/ipn"
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def standin():
    server, thread = serve_in_thread(port=0, master_key=MASTER, private_key=PRIVATE,
                                     token=TOKEN, ipn_timeout=2.0)
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(2)


@pytest.fixture
def client(standin, receiver):
    with httpx.Client(base_url=standin.base, timeout=5.0) as c:
        c.post("/__devstack/reset").raise_for_status()
        receiver.clear()
        yield c


def _invoice(receiver, **over) -> dict:
    body = {
        "invoice": {"total_amount": 150000, "description": "Loyer mars 2025 — Appartement Almadies",
                    "items": {"item_0": {"name": "Loyer", "quantity": 1, "unit_price": 150000,
                                         "total_price": 150000}}},
        "store": {"name": "Dousell Immo"},
        "custom_data": {"lease_id": "42", "period": "2025-03", "payment_id": "7"},
        "actions": {"cancel_url": "https://app.example/cancel",
                    "return_url": "https://app.example/return",
                    "callback_url": receiver.url},
    }
    body.update(over)
    return body


def _create(client, receiver, **over) -> str:
    r = client.post("/sandbox-api/v1/checkout-invoice/create", json=_invoice(receiver, **over),
                    headers=KEYS)
    assert r.status_code == 200
    assert r.json()["response_code"] == "00", r.json()
    return r.json()["token"]


def _confirm(client, token, root="/sandbox-api/v1") -> dict:
    r = client.get(f"{root}/checkout-invoice/confirm/{token}", headers=KEYS)
    assert r.status_code == 200
    return r.json()


def _form(req) -> dict:
    return dict(parse_qsl(req["body"].decode(), keep_blank_values=True))


# -- create and confirm ---------------------------------------------------------------------------
def test_creating_an_invoice_answers_00_with_a_test_token_and_a_checkout_url_on_the_stand_in(
        client, receiver, standin):
    r = client.post("/sandbox-api/v1/checkout-invoice/create", json=_invoice(receiver),
                    headers=KEYS)
    body = r.json()
    assert r.status_code == 200
    assert body["response_code"] == "00"
    assert body["description"] == "Checkout Invoice Created"
    assert body["token"].startswith("test_") and len(body["token"]) == 15
    assert body["response_text"] == f"{standin.base}/checkout/{body['token']}"


def test_a_new_invoice_confirms_as_pending_with_its_amount_custom_data_and_the_master_key_hash(
        client, receiver):
    token = _create(client, receiver)
    body = _confirm(client, token)
    assert body["response_code"] == "00"
    assert body["status"] == "pending"
    assert body["hash"] == HASH
    assert body["mode"] == "test"
    assert body["invoice"]["token"] == token
    assert body["invoice"]["total_amount"] == 150000
    assert body["invoice"]["description"].startswith("Loyer mars 2025")
    assert body["custom_data"] == {"lease_id": "42", "period": "2025-03", "payment_id": "7"}
    assert body["actions"]["callback_url"] == receiver.url
    assert "customer" not in body and "receipt_url" not in body


def test_an_amount_given_as_a_numeric_string_is_stored_as_a_number(client, receiver):
    token = _create(client, receiver, invoice={"total_amount": "25000.0", "description": "x"})
    assert _confirm(client, token)["invoice"]["total_amount"] == 25000


def test_confirming_an_unknown_token_says_invoice_not_found(client):
    body = _confirm(client, "test_doesnotexist")
    assert body == {"response_code": "1002", "response_text": "Invoice not found"}


def test_the_live_root_serves_the_same_api_and_marks_invoices_live(client, receiver):
    r = client.post("/api/v1/checkout-invoice/create", json=_invoice(receiver), headers=KEYS)
    token = r.json()["token"]
    assert r.json()["response_code"] == "00" and not token.startswith("test_")
    assert _confirm(client, token, root="/api/v1")["mode"] == "live"


# -- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("header,text", [
    ("PAYDUNYA-MASTER-KEY", "Invalid Masterkey Specified"),  # PayDunya's own wording
    ("PAYDUNYA-PRIVATE-KEY", "Invalid PrivateKey Specified"),
    ("PAYDUNYA-TOKEN", "Invalid Token Specified"),
])
@pytest.mark.parametrize("how", ["missing", "wrong"])
def test_a_missing_or_wrong_key_header_is_refused_with_code_1001(client, receiver, header, text,
                                                                 how):
    headers = dict(KEYS)
    if how == "missing":
        del headers[header]
    else:
        headers[header] = headers[header] + "x"
    r = client.post("/sandbox-api/v1/checkout-invoice/create", json=_invoice(receiver),
                    headers=headers)
    assert r.status_code == 200
    assert r.json() == {"response_code": "1001", "response_text": text}
    r = client.get("/sandbox-api/v1/checkout-invoice/confirm/test_whatever", headers=headers)
    assert r.json()["response_code"] == "1001"
    assert client.get("/__devstack/invoices").json()["invoices"] == []


@pytest.mark.parametrize("change", [
    {"invoice": {"total_amount": 0, "description": "zéro"}},  # nothing to pay
    {"invoice": {"total_amount": -500, "description": "négatif"}},  # a refund is not an invoice
    {"invoice": {"total_amount": "abc", "description": "texte"}},  # not a number at all
    {"invoice": {"total_amount": True, "description": "booléen"}},  # JSON true is not 1 here
    {"invoice": {"description": "sans montant"}},  # amount missing
    {"store": {}},  # store.name missing
    {"store": {"name": "  "}},  # store.name blank
], ids=["zero", "negative", "text", "bool", "no-amount", "no-store-name", "blank-store-name"])
def test_an_invalid_create_body_is_refused_with_a_non_00_code_and_a_message(client, receiver,
                                                                            change):
    r = client.post("/sandbox-api/v1/checkout-invoice/create", json=_invoice(receiver, **change),
                    headers=KEYS)
    assert r.status_code == 200
    body = r.json()
    assert body["response_code"] == "1003" and body["response_text"]
    assert "token" not in body
    assert client.get("/__devstack/invoices").json()["invoices"] == []


def test_a_create_body_that_is_not_json_is_refused(client):
    r = client.post("/sandbox-api/v1/checkout-invoice/create", content=b"{not json",
                    headers={**KEYS, "Content-Type": "application/json"})
    assert r.json()["response_code"] == "1003"


# -- completing, cancelling, failing and the IPN -------------------------------------------------
def test_paying_an_invoice_completes_it_and_posts_exactly_one_form_encoded_ipn(client, receiver,
                                                                               standin):
    token = _create(client, receiver)
    r = client.post(f"/checkout/{token}/complete", headers=JSON)
    assert r.status_code == 200
    assert r.json()["status"] == "completed"
    assert r.json()["ipn"]["delivered"] is True and r.json()["ipn"]["status_code"] == 200

    confirmed = _confirm(client, token)
    assert confirmed["status"] == "completed"
    assert set(confirmed["customer"]) == {"name", "phone", "email"}
    assert confirmed["receipt_url"].startswith(standin.base)

    (ipn,) = receiver.wait_for(1)
    assert ipn["path"] == "/api/paydunya/ipn"
    assert ipn["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    form = _form(ipn)
    assert form["data[response_code]"] == "00"
    assert form["data[response_text]"]
    assert form["data[hash]"] == HASH
    assert form["data[invoice][token]"] == token
    assert form["data[invoice][total_amount]"] == "150000"
    assert form["data[invoice][description]"] == "Loyer mars 2025 — Appartement Almadies"
    assert form["data[custom_data][lease_id]"] == "42"
    assert form["data[custom_data][period]"] == "2025-03"
    assert form["data[custom_data][payment_id]"] == "7"
    assert form["data[actions][callback_url]"] == receiver.url
    assert form["data[actions][return_url]"] == "https://app.example/return"
    assert form["data[mode]"] == "test"
    assert form["data[status]"] == "completed"
    assert form["data[customer][name]"] == confirmed["customer"]["name"]
    assert form["data[customer][phone]"] == confirmed["customer"]["phone"]
    assert form["data[customer][email]"] == confirmed["customer"]["email"]
    assert form["data[receipt_url]"] == confirmed["receipt_url"]
    assert "data[fail_reason]" not in form
    assert len(receiver.requests) == 1


def test_the_customer_can_be_chosen_when_paying(client, receiver):
    token = _create(client, receiver)
    client.post(f"/checkout/{token}/complete", headers=JSON,
                data={"name": "Moussa Ndiaye", "phone": "+221781112233"})
    assert _confirm(client, token)["customer"]["name"] == "Moussa Ndiaye"
    form = _form(receiver.wait_for(1)[0])
    assert form["data[customer][phone]"] == "+221781112233"


def test_cancelling_an_invoice_marks_it_cancelled_and_posts_a_cancelled_ipn_without_customer(
        client, receiver):
    token = _create(client, receiver)
    r = client.post(f"/checkout/{token}/cancel", headers=JSON)
    assert r.json()["status"] == "cancelled" and r.json()["ipn"]["delivered"] is True
    confirmed = _confirm(client, token)
    assert confirmed["status"] == "cancelled" and "customer" not in confirmed
    form = _form(receiver.wait_for(1)[0])
    assert form["data[status]"] == "cancelled"
    assert form["data[hash]"] == HASH
    assert not any(k.startswith("data[customer]") for k in form)


def test_failing_an_invoice_marks_it_failed_with_a_reason_in_confirm_and_ipn(client, receiver):
    token = _create(client, receiver)
    r = client.post(f"/checkout/{token}/fail", headers=JSON,
                    json={"fail_reason": "Solde insuffisant"})
    assert r.json()["status"] == "failed"
    confirmed = _confirm(client, token)
    assert confirmed["status"] == "failed" and confirmed["fail_reason"] == "Solde insuffisant"
    form = _form(receiver.wait_for(1)[0])
    assert form["data[status]"] == "failed"
    assert form["data[fail_reason]"] == "Solde insuffisant"


@pytest.mark.parametrize("first,second", [
    ("complete", "cancel"),  # a paid invoice cannot be cancelled afterwards
    ("cancel", "complete"),  # a cancelled invoice cannot be paid afterwards
    ("fail", "fail"),  # the same action twice (a double click) is refused too
])
def test_a_second_action_on_a_final_invoice_is_refused_with_409_and_sends_no_ipn(
        client, receiver, first, second):
    token = _create(client, receiver)
    client.post(f"/checkout/{token}/{first}", headers=JSON)
    receiver.wait_for(1)
    r = client.post(f"/checkout/{token}/{second}", headers=JSON)
    assert r.status_code == 409
    assert r.json()["error"] == "conflict"
    page = client.post(f"/checkout/{token}/{second}")  # a browser gets a page
    assert page.status_code == 409 and "text/html" in page.headers["Content-Type"]
    assert len(receiver.requests) == 1
    assert _confirm(client, token)["status"] == {"complete": "completed", "cancel": "cancelled",
                                                 "fail": "failed"}[first]
    inv = client.get(f"/__devstack/invoices/{token}").json()
    assert len(inv["ipn_deliveries"]) == 1


def test_two_simultaneous_payments_of_one_invoice_complete_it_once_with_one_ipn(
        client, receiver, standin):
    token = _create(client, receiver)
    barrier = threading.Barrier(8)
    codes = []

    def pay():
        with httpx.Client(base_url=standin.base, timeout=5.0) as own:
            barrier.wait()
            codes.append(own.post(f"/checkout/{token}/complete", headers=JSON).status_code)

    payers = [threading.Thread(target=pay) for _ in range(8)]
    for t in payers:
        t.start()
    for t in payers:
        t.join(5)
    assert sorted(codes) == [200] + [409] * 7
    assert len(receiver.wait_for(1)) == 1


def test_an_action_on_an_unknown_invoice_answers_404(client):
    assert client.post("/checkout/test_nope/complete", headers=JSON).status_code == 404


def test_resending_an_ipn_posts_a_byte_identical_duplicate(client, receiver):
    token = _create(client, receiver)
    client.post(f"/checkout/{token}/complete", headers=JSON)
    r = client.post(f"/__devstack/ipn/{token}/resend")
    assert r.status_code == 200 and r.json()["ipn"]["delivered"] is True
    first, second = receiver.wait_for(2)
    assert second["body"] == first["body"]
    deliveries = client.get(f"/__devstack/invoices/{token}").json()["ipn_deliveries"]
    assert [d["kind"] for d in deliveries] == ["initial", "resend"]


def test_a_resend_with_delay_ms_arrives_late_but_arrives(client, receiver):
    token = _create(client, receiver)
    client.post(f"/checkout/{token}/complete", headers=JSON)
    asked = time.monotonic()
    r = client.post(f"/__devstack/ipn/{token}/resend", json={"delay_ms": 300})
    assert r.json()["ipn"] == {"scheduled": True, "delay_ms": 300}
    _, late = receiver.wait_for(2)
    assert late["at"] - asked >= 0.29


def test_a_payment_with_delay_ms_answers_at_once_and_sends_the_ipn_later(client, receiver):
    token = _create(client, receiver)
    asked = time.monotonic()
    r = client.post(f"/checkout/{token}/complete", headers=JSON, json={"delay_ms": 300})
    assert r.json()["ipn"] == {"scheduled": True, "delay_ms": 300}
    assert _confirm(client, token)["status"] == "completed"
    (ipn,) = receiver.wait_for(1)
    assert ipn["at"] - asked >= 0.29


def test_a_payment_with_send_ipn_false_completes_without_any_ipn(client, receiver):
    token = _create(client, receiver)
    r = client.post(f"/checkout/{token}/complete", headers=JSON, json={"send_ipn": False})
    assert r.json()["ipn"] == {"sent": False}
    assert _confirm(client, token)["status"] == "completed"
    assert client.get(f"/__devstack/invoices/{token}").json()["ipn_deliveries"] == []
    assert receiver.requests == []
    # ...and it can still be delivered later, as a drill
    assert client.post(f"/__devstack/ipn/{token}/resend").json()["ipn"]["delivered"] is True


def test_resending_for_a_pending_invoice_is_refused(client, receiver):
    token = _create(client, receiver)
    assert client.post(f"/__devstack/ipn/{token}/resend").status_code == 409
    assert client.post("/__devstack/ipn/test_nope/resend").status_code == 404


def test_the_callback_answer_is_recorded_in_the_invoice_history(client, receiver):
    receiver.answer_status = 500
    receiver.answer_body = b'{"error":"boom"}'
    token = _create(client, receiver)
    r = client.post(f"/checkout/{token}/complete", headers=JSON)
    assert r.json()["ipn"]["delivered"] is False and r.json()["ipn"]["status_code"] == 500
    (delivery,) = client.get("/__devstack/invoices").json()["invoices"][0]["ipn_deliveries"]
    assert delivery["status_code"] == 500 and delivery["body"] == '{"error":"boom"}'
    assert delivery["status"] == "completed" and delivery["url"] == receiver.url


def test_an_unreachable_callback_is_recorded_as_undelivered(client, receiver):
    token = _create(client, receiver, actions={"callback_url": "http://127.0.0.1:9/ipn"})
    r = client.post(f"/checkout/{token}/complete", headers=JSON)
    ipn = r.json()["ipn"]
    assert ipn["delivered"] is False and ipn["status_code"] is None and ipn["error"]
    assert _confirm(client, token)["status"] == "completed"


# -- the browser checkout page --------------------------------------------------------------------
def test_the_checkout_page_is_french_html_with_the_amount_and_three_buttons(client, receiver):
    token = _create(client, receiver)
    r = client.get(f"/checkout/{token}")
    assert r.status_code == 200 and "text/html" in r.headers["Content-Type"]
    page = r.text
    assert 'lang="fr"' in page and "150\u202f000 FCFA" in page and "Loyer mars 2025" in page
    for action, label in (("complete", "Payer"), ("cancel", "Annuler"), ("fail", "Échec")):
        assert f'action="/checkout/{token}/{action}"' in page and label in page
    assert client.get("/checkout/test_nope").status_code == 404


def test_a_browser_form_post_redirects_to_return_url_or_cancel_url(client, receiver):
    paid, cancelled = _create(client, receiver), _create(client, receiver)
    r = client.post(f"/checkout/{paid}/complete", headers={"Accept": "text/html"})
    assert r.status_code == 303 and r.headers["Location"] == "https://app.example/return"
    r = client.post(f"/checkout/{cancelled}/cancel", headers={"Accept": "text/html"})
    assert r.status_code == 303 and r.headers["Location"] == "https://app.example/cancel"
    receiver.wait_for(2)
    receipt = client.get(f"/checkout/receipt/{paid}")
    assert receipt.status_code == 200 and "Reçu" in receipt.text


# -- drill switches -------------------------------------------------------------------------------
def test_error_mode_makes_every_api_call_answer_5xx_until_normal_mode(client, receiver):
    token = _create(client, receiver)
    r = client.post("/__devstack/mode", json={"mode": "error"})
    assert r.json()["mode"] == "error"
    assert client.post("/sandbox-api/v1/checkout-invoice/create", json=_invoice(receiver),
                       headers=KEYS).status_code == 500
    assert client.get(f"/sandbox-api/v1/checkout-invoice/confirm/{token}",
                      headers=KEYS).status_code == 500
    client.post("/__devstack/mode", json={"mode": "error", "error_status": 503})
    assert client.get(f"/api/v1/checkout-invoice/confirm/{token}", headers=KEYS).status_code == 503
    assert client.get(f"/checkout/{token}").status_code == 200  # pages are not affected
    client.post("/__devstack/mode", json={"mode": "normal"})
    assert _confirm(client, token)["status"] == "pending"


def test_hang_mode_makes_a_half_second_client_time_out_and_normal_mode_restores_it(
        client, receiver, standin):
    token = _create(client, receiver)
    client.post("/__devstack/mode", json={"mode": "hang", "hang_seconds": 30}).raise_for_status()
    with httpx.Client(base_url=standin.base, timeout=0.5) as impatient:
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            impatient.get(f"/sandbox-api/v1/checkout-invoice/confirm/{token}", headers=KEYS)
        assert time.monotonic() - started < 3
        assert client.get("/__devstack/mode").json()["mode"] == "hang"  # admin still answers
        client.post("/__devstack/mode", json={"mode": "normal"}).raise_for_status()
        r = impatient.get(f"/sandbox-api/v1/checkout-invoice/confirm/{token}", headers=KEYS)
        assert r.json()["status"] == "pending"


def test_hang_mode_answers_normally_after_hang_seconds(client, receiver):
    token = _create(client, receiver)
    client.post("/__devstack/mode", json={"mode": "hang", "hang_seconds": 0.3})
    started = time.monotonic()
    assert _confirm(client, token)["status"] == "pending"
    assert time.monotonic() - started >= 0.29


def test_a_bad_mode_request_is_refused(client):
    assert client.post("/__devstack/mode", json={"mode": "sideways"}).status_code == 400
    assert client.post("/__devstack/mode", json={"mode": "hang",
                                                 "hang_seconds": 10_000}).status_code == 400
    assert client.post("/__devstack/mode", json={"mode": "error",
                                                 "error_status": 418}).status_code == 400
    assert client.get("/__devstack/mode").json()["mode"] == "normal"


def test_reset_forgets_every_invoice_and_restores_normal_mode(client, receiver):
    token = _create(client, receiver)
    client.post("/__devstack/mode", json={"mode": "error"})
    assert client.post("/__devstack/reset").json() == {"reset": True}
    assert client.get("/__devstack/invoices").json() == {"invoices": []}
    assert client.get("/__devstack/mode").json()["mode"] == "normal"
    assert _confirm(client, token)["response_code"] == "1002"


def test_shutdown_returns_promptly_while_a_request_hangs():
    server, thread = serve_in_thread(port=0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    httpx.post(f"{base}/__devstack/mode", json={"mode": "hang", "hang_seconds": 60})
    keys = {"PAYDUNYA-MASTER-KEY": DEFAULT_MASTER_KEY, "PAYDUNYA-PRIVATE-KEY": DEFAULT_PRIVATE_KEY,
            "PAYDUNYA-TOKEN": DEFAULT_TOKEN}
    outcome = {}

    def hanging_call():
        try:
            outcome["status"] = httpx.get(f"{base}/sandbox-api/v1/checkout-invoice/confirm/x",
                                          headers=keys, timeout=10).status_code
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=hanging_call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 3
    while server.state.hanging == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until the request is actually hanging inside the server
    started = time.monotonic()
    server.shutdown()
    server.server_close()
    thread.join(2)
    caller.join(3)
    assert time.monotonic() - started < 2
    assert not thread.is_alive() and not caller.is_alive()
    assert outcome  # the hanging call ended one way or another


def test_the_cli_serves_on_the_given_port_with_the_default_keys():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDUNYA_")}
    command = [sys.executable, "-m", "devstack.paydunya", "--port", "0"]
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        try:
            line = proc.stdout.readline()
            assert "listening on http://127.0.0.1:" in line, line
            base = line.split("listening on ")[1].split()[0]
            keys = {"PAYDUNYA-MASTER-KEY": DEFAULT_MASTER_KEY,
                    "PAYDUNYA-PRIVATE-KEY": DEFAULT_PRIVATE_KEY, "PAYDUNYA-TOKEN": DEFAULT_TOKEN}
            assert httpx.get(f"{base}/__devstack/health").json() == {"ok": True}
            r = httpx.get(f"{base}/sandbox-api/v1/checkout-invoice/confirm/x", headers=keys)
            assert r.json()["response_code"] == "1002"
        finally:
            proc.terminate()  # SIGTERM: the CLI stops cleanly and exits 0
            proc.wait(5)
    assert proc.returncode == 0


def test_fees_on_the_customer_raise_total_amount_and_keep_the_rent_as_total_amount_without_fees(client, receiver):
    token = _create(client, receiver)
    before = _confirm(client, token)["invoice"]
    assert (before["total_amount"], before["total_amount_without_fees"], before["pal_is_on"]) == (150000, 150000, "0")
    client.post(f"/checkout/{token}/complete", headers=JSON, json={"fees": 2250})
    invoice = _confirm(client, token)["invoice"]
    assert (invoice["total_amount"], invoice["total_amount_without_fees"]) == (152250, 150000)
    form = _form(receiver.wait_for(1)[0])
    assert (form["data[invoice][total_amount]"], form["data[invoice][total_amount_without_fees]"]) == ("152250", "150000")
    assert form["data[invoice][pal_is_on]"] == "0"


@pytest.mark.parametrize("fees", [-1, "beaucoup", 10_000_001])
def test_bad_fees_are_refused_and_the_invoice_stays_pending(client, receiver, fees):
    token = _create(client, receiver)
    assert client.post(f"/checkout/{token}/complete", headers=JSON, json={"fees": fees}).status_code == 400
    assert _confirm(client, token)["status"] == "pending"


# -- the invoice's life and statuses PayDunya does not document (drill switch) ---------------------
def test_an_invoice_can_be_given_an_expire_date_that_confirm_then_carries(client, receiver):
    token = _create(client, receiver)
    assert "expire_date" not in _confirm(client, token)["invoice"]  # PayDunya documents none
    r = client.post(f"/__devstack/invoices/{token}", json={"expire_date": "2030-01-01T11:00:00+01:00"})
    assert r.status_code == 200 and r.json()["expire_date"] == "2030-01-01 10:00:00"
    assert _confirm(client, token)["invoice"]["expire_date"] == "2030-01-01 10:00:00"
    client.post(f"/__devstack/invoices/{token}", json={"expire_date": None})
    assert "expire_date" not in _confirm(client, token)["invoice"]


def test_an_invoice_past_its_expire_date_cannot_be_paid(client, receiver):
    token = _create(client, receiver)
    client.post(f"/__devstack/invoices/{token}", json={"expire_date": "2020-01-01 00:00:00"})
    r = client.post(f"/checkout/{token}/complete", headers=JSON)
    assert r.status_code == 409 and r.json()["error"] == "expired"
    assert _confirm(client, token)["status"] == "pending"
    assert receiver.requests == []


def test_confirm_can_answer_a_status_paydunya_does_not_document_and_the_invoice_can_still_be_paid(client, receiver):
    token = _create(client, receiver)
    client.post(f"/__devstack/invoices/{token}", json={"status": "refunded"})
    assert _confirm(client, token)["status"] == "refunded"
    assert client.post(f"/checkout/{token}/complete", headers=JSON).json()["status"] == "completed"
    assert _confirm(client, token)["status"] == "completed"


@pytest.mark.parametrize("body", [{"expire_date": "demain"}, {"status": ""}, {"status": "x" * 41}, {"status": 7}])
def test_a_bad_shape_request_is_refused(client, receiver, body):
    token = _create(client, receiver)
    assert client.post(f"/__devstack/invoices/{token}", json=body).status_code == 400
    assert client.post("/__devstack/invoices/nope", json={"status": "refunded"}).status_code == 404
