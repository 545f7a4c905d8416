"""A stand-in for PayDunya's checkout API, for development and tests only (never deployed).

Run it:  ``python -m devstack.paydunya --port 8089``  (or ``serve_in_thread(port=0)`` in a test),
then point the API at it with ``PAYDUNYA_BASE_URL=http://127.0.0.1:8089/sandbox-api/v1``.
State lives in memory (one lock); nothing is persisted.

API (both roots ``/sandbox-api/v1/`` and ``/api/v1/``; invoices made under ``/api/v1`` report
``"mode": "live"``, the others ``"mode": "test"``; one invoice store serves both roots)
-----------------------------------------------------------------------------------------
Every call must carry ``PAYDUNYA-MASTER-KEY``, ``PAYDUNYA-PRIVATE-KEY`` and ``PAYDUNYA-TOKEN``
equal to the configured keys (defaults ``dev-paydunya-master-key``,
``test_private_dev-paydunya-private-key``, ``dev-paydunya-token``).

PayDunya reports business errors in the body (``response_code`` other than "00", its message
in ``response_text``); the stand-in answers them all with **HTTP 200**, so a client must look at
``response_code`` ("00" is the only success), never at the HTTP status alone:

- a bad or missing key header: ``{"response_code": "1001", "response_text": "Invalid Masterkey
  Specified"}`` (``Invalid PrivateKey Specified`` / ``Invalid Token Specified`` for the other
  two headers; checked in that order, PayDunya's own wording);
- create with a body that is not a JSON object, a ``total_amount`` that is not a positive number,
  or no ``store.name``: ``{"response_code": "1003", "response_text": "<what is wrong>"}``;
- confirm of an unknown token: ``{"response_code": "1002", "response_text": "Invoice not found"}``.

(1001 and its texts are what PayDunya answers; 1002 and 1003 are this stand-in's picks: rely on
"not 00", not on those two numbers.)

An unknown path under an API root answers HTTP 404 ``{"response_code": "404", ...}``.

``POST checkout-invoice/create`` with ``{"invoice": {"total_amount", "description", "items"?},
"store": {"name"}, "custom_data": {...}, "actions": {"cancel_url", "return_url",
"callback_url"}}`` answers::

    {"response_code": "00", "response_text": "http://127.0.0.1:8089/checkout/test_Ab3dE5gH7k",
     "description": "Checkout Invoice Created", "token": "test_Ab3dE5gH7k"}

``total_amount`` may be a JSON number or a numeric string; it is stored as a number (an int when
integral: ``"15000"`` and ``15000.0`` both become ``15000``).

``GET checkout-invoice/confirm/{token}`` answers::

    {"response_code": "00", "response_text": "Transaction Found",
     "hash": "<sha512 hex of the master key>",
     "invoice": {"token", "pal_is_on": "0", "total_amount", "total_amount_without_fees",
                 "description", "items", "taxes": {}},
     "store": {...}, "custom_data": {...}, "actions": {...},
     "mode": "test", "status": "pending|completed|cancelled|failed",
     "fail_reason": "" (the reason when failed),
     "customer": {"name", "phone", "email"}   (only when completed),
     "receipt_url": "<base>/checkout/receipt/<token>"   (only when completed)}

Checkout page and the IPN
-------------------------
``GET /checkout/<token>`` is a small French page (amount, description, buttons "Payer",
"Annuler", "Échec"), each a form POST to ``/checkout/<token>/complete|cancel|fail``. A test
does the same with one POST. The POST may carry (form fields or a JSON body) ``name``,
``phone``, ``email`` (the customer on completion), ``fail_reason`` (on fail), ``delay_ms`` (send
the IPN that late, in the background) and ``send_ipn=false`` (a lost IPN: nothing is sent), and ``fees`` (XOF the customer pays on top,
as with PayDunya's "fees on the customer" store setting: confirm and the IPN then carry
``total_amount`` = rent + fees and ``total_amount_without_fees`` = rent).

Only a pending invoice moves; an action on a final invoice answers 409 and sends nothing. The
move then sends the IPN, synchronously unless delayed: a POST,
``application/x-www-form-urlencoded``, to ``actions.callback_url``, with PayDunya's field names::

    data[response_code]=00            data[response_text]=Transaction Found
    data[hash]=<sha512 hex of the master key>
    data[invoice][token]  data[invoice][pal_is_on]=0  data[invoice][total_amount]
    data[invoice][total_amount_without_fees]           data[invoice][description]
    data[invoice][items][...]         (flattened, when items were given)
    data[custom_data][<k>]=<v>        (nested values flattened as data[custom_data][k][j])
    data[actions][cancel_url|return_url|callback_url]
    data[mode]=test                   data[status]=completed|cancelled|failed
    data[customer][name|phone|email]  data[receipt_url]        (when completed)
    data[fail_reason]                 (when failed)

It is sent with httpx (timeout ``ipn_timeout``, default 5 s, no proxy from the environment, no
redirects followed). Each attempt is recorded in the invoice's ``ipn_deliveries``:
``{"kind": "initial"|"resend", "status", "url", "delivered": <2xx>, "status_code", "body"
(first 4000 chars), "error", "elapsed_ms", "at"}``.

The POST answers ``Accept: application/json`` (or a JSON request body) with
``{"status", "token", "ipn": {"delivered", "status_code", "body", "error"}}`` (``{"scheduled": true,
"delay_ms"}`` when delayed, ``{"sent": false}`` when ``send_ipn=false``); anything else (a
browser) gets 303 to ``return_url`` (completed) or ``cancel_url`` (cancelled, failed).

Drill switches (``/__devstack/...``; allowed from loopback, or with the master key header)
--------------------------------------------------------------------------------------------
``GET  /__devstack/health``                 ``{"ok": true}``
``GET  /__devstack/mode``                   the current mode
``POST /__devstack/mode``                   ``{"mode": "normal"|"error"|"hang", "hang_seconds": 30,
                                           "error_status": 500}``:
                                           ``error``: every API call answers ``error_status``
                                           (500, 502, 503 or 504) with a small HTML page, as a
                                           proxy in front of a broken service would;
                                           ``hang``: every API call waits ``hang_seconds``
                                           (0-600) and then answers normally; the wait ends
                                           early when the mode changes or the server stops.
                                           Checkout pages and admin calls are never affected.
``POST /__devstack/invoices/<token>``       ``{"expire_date": "2026-12-14 10:00:00"|null, "status": "<any>"}``:
                                           ``expire_date``: confirm then carries
                                           ``invoice.expire_date`` (PayDunya's own field in the
                                           integrations that show it; it documents none), and the
                                           checkout refuses to pay it once past (409, as an
                                           expired invoice); ``null`` removes it. ``status``:
                                           confirm answers that word, known or not (PayDunya's
                                           SDK documents pending, completed, cancelled; an
                                           integration meeting another word must cope), and
                                           the checkout can still pay it. Answers the invoice.
``POST /__devstack/ipn/<token>/resend``     re-sends the last IPN byte for byte (a duplicate);
                                           optional ``{"delay_ms"}``; 409 while still pending
``GET  /__devstack/invoices``               ``{"invoices": [...]}`` with their ``ipn_deliveries``
``GET  /__devstack/invoices/<token>``       one invoice
``POST /__devstack/reset``                  forgets every invoice, back to normal mode
"""

from __future__ import annotations

import argparse
import hashlib
import html
import ipaddress
import json
import math
import os
import secrets
import string
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import httpx

from devstack._server import serve_until_stopped

DEFAULT_MASTER_KEY = "dev-paydunya-master-key"
DEFAULT_PRIVATE_KEY = "test_private_dev-paydunya-private-key"
DEFAULT_TOKEN = "dev-paydunya-token"
DEFAULT_PORT = 8089

API_ROOTS = {"/sandbox-api/v1/": "test", "/api/v1/": "live"}
MODES = ("normal", "error", "hang")
ERROR_STATUSES = (500, 502, 503, 504)
MAX_HANG_SECONDS = 600.0
MAX_DELAY_MS = 600_000
FINAL_STATUSES = ("completed", "cancelled", "failed")
ACTIONS = {"complete": "completed", "cancel": "cancelled", "fail": "failed"}
DEFAULT_CUSTOMER = {"name": "Awa Diop", "phone": "+221770000000", "email": "awa.diop@example.sn"}
DEFAULT_FAIL_REASON = "Paiement refusé par l'opérateur (sandbox)"
BODY_KEEP = 4000

CODE_OK = "00"
CODE_BAD_CREDENTIALS = "1001"
CODE_NOT_FOUND = "1002"
CODE_INVALID_REQUEST = "1003"

__all__ = [
    "DEFAULT_MASTER_KEY",
    "DEFAULT_PRIVATE_KEY",
    "DEFAULT_TOKEN",
    "PaydunyaStandIn",
    "main",
    "make_server",
    "master_key_hash",
    "serve_in_thread",
]


def master_key_hash(master_key: str) -> str:
    """What PayDunya puts in ``hash`` / ``data[hash]``: SHA-512 hex of the master key."""
    return hashlib.sha512(master_key.encode("utf-8")).hexdigest()


def _expire_now() -> str:
    """Now in expire_date's shape, so the two compare as strings."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _new_token(mode: str) -> str:
    alphabet = string.ascii_letters + string.digits
    body = "".join(secrets.choice(alphabet) for _ in range(10))
    return f"test_{body}" if mode == "test" else body


def _positive_amount(value: object) -> int | float | None:
    """The amount as int/float if it is a positive finite number (or numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer():
            value = int(value)
    return value if value > 0 else None


def _form_value(value) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _flatten(prefix: str, value, out: list) -> None:
    """PHP-style form fields: {"a": {"b": 1}} under "data" → ("data[a][b]", "1")."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}[{k}]", v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, out)
    else:
        out.append((prefix, _form_value(value)))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


class PaydunyaStandIn:
    """The in-memory state: invoices, drill mode, the keys. Thread-safe (one lock)."""

    def __init__(self, *, master_key: str, private_key: str, token: str, public_base: str,
                 ipn_timeout: float = 5.0) -> None:
        self.master_key = master_key
        self.private_key = private_key
        self.token = token
        self.public_base = public_base.rstrip("/")
        self.ipn_timeout = ipn_timeout
        self.hash = master_key_hash(master_key)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified on mode change and on stop
        self.stopping = threading.Event()
        self.invoices: dict[str, dict] = {}
        self.mode = "normal"
        self.hang_seconds = 30.0
        self.error_status = 500
        self.hanging = 0  # API requests waiting in hang mode right now
        self._ipn_client: httpx.Client | None = None

    # -- drill mode ---------------------------------------------------------------------
    def mode_info(self) -> dict:
        with self.lock:
            return {"mode": self.mode, "hang_seconds": self.hang_seconds,
                    "error_status": self.error_status}

    def set_mode(self, mode: str, hang_seconds=None, error_status=None) -> dict:
        with self.changed:
            self.mode = mode
            if hang_seconds is not None:
                self.hang_seconds = float(hang_seconds)
            if error_status is not None:
                self.error_status = int(error_status)
            self.changed.notify_all()
        return self.mode_info()

    def reset(self) -> None:
        with self.changed:
            self.invoices.clear()
            self.mode = "normal"
            self.hang_seconds = 30.0
            self.error_status = 500
            self.changed.notify_all()

    def stop(self) -> None:
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()

    def close(self) -> None:
        self.stop()
        with self.lock:
            client, self._ipn_client = self._ipn_client, None
        if client is not None:
            client.close()

    def _client(self) -> httpx.Client:
        # One client for every IPN (building one costs ~30 ms: its TLS context).
        with self.lock:
            if self._ipn_client is None:
                self._ipn_client = httpx.Client(timeout=self.ipn_timeout, trust_env=False,
                                                follow_redirects=False)
            return self._ipn_client

    def hang(self) -> None:
        """Wait while in hang mode: up to hang_seconds, less if the mode changes or we stop."""
        with self.changed:
            if self.mode != "hang":
                return
            deadline = time.monotonic() + self.hang_seconds
            self.hanging += 1
            try:
                while self.mode == "hang" and not self.stopping.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self.changed.wait(left)
            finally:
                self.hanging -= 1

    # -- invoices -------------------------------------------------------------------------
    def create(self, body, mode: str) -> dict:
        if not isinstance(body, dict):
            return {"response_code": CODE_INVALID_REQUEST,
                    "response_text": "Request body must be a JSON object"}
        invoice = body.get("invoice")
        if not isinstance(invoice, dict):
            return {"response_code": CODE_INVALID_REQUEST,
                    "response_text": "invoice is required"}
        amount = _positive_amount(invoice.get("total_amount"))
        if amount is None:
            return {"response_code": CODE_INVALID_REQUEST,
                    "response_text": "invoice.total_amount must be a positive number"}
        store = body.get("store")
        name = store.get("name") if isinstance(store, dict) else None
        if not isinstance(name, str) or not name.strip():
            return {"response_code": CODE_INVALID_REQUEST,
                    "response_text": "store.name is required"}
        custom_data = body.get("custom_data") or {}
        actions = body.get("actions") or {}
        if not isinstance(custom_data, dict) or not isinstance(actions, dict):
            return {"response_code": CODE_INVALID_REQUEST,
                    "response_text": "custom_data and actions must be objects"}
        description = invoice.get("description")
        record = {
            "token": None,
            "mode": mode,
            "status": "pending",
            "total_amount": amount,
            "description": "" if description is None else str(description),
            "items": invoice.get("items") if invoice.get("items") is not None else {},
            "store": store,
            "custom_data": custom_data,
            "actions": actions,
            "customer": None,
            "fail_reason": "",
            "fees": 0,  # paid by the customer on top of the invoice (set when paid with ``fees``)
            "expire_date": None,  # "YYYY-MM-DD HH:MM:SS" (UTC) once set by the drill switch
            "status_override": None,  # the word confirm answers instead of ``status`` (drill switch)
            "created_at": _now(),
            "updated_at": None,
            "last_ipn": None,  # the exact form body of the last IPN built, for resends
            "ipn_deliveries": [],
        }
        with self.lock:
            token = _new_token(mode)
            while token in self.invoices:
                token = _new_token(mode)
            record["token"] = token
            self.invoices[token] = record
        return {"response_code": CODE_OK, "response_text": f"{self.public_base}/checkout/{token}",
                "description": "Checkout Invoice Created", "token": token}

    def _receipt_url(self, token: str) -> str:
        return f"{self.public_base}/checkout/receipt/{token}"

    def _confirm_payload(self, inv: dict) -> dict:
        out = {
            "response_code": CODE_OK,
            "response_text": "Transaction Found",
            "hash": self.hash,
            "invoice": {"token": inv["token"], "pal_is_on": "0",
                        "total_amount": inv["total_amount"] + inv["fees"],
                        "total_amount_without_fees": inv["total_amount"],
                        "description": inv["description"], "items": inv["items"], "taxes": {}},
            "store": inv["store"],
            "custom_data": inv["custom_data"],
            "actions": inv["actions"],
            "mode": inv["mode"],
            "status": inv["status_override"] or inv["status"],
            "fail_reason": inv["fail_reason"],
        }
        if inv["expire_date"] is not None:
            out["invoice"]["expire_date"] = inv["expire_date"]
        if inv["status"] == "completed":
            out["customer"] = dict(inv["customer"] or {})
            out["receipt_url"] = self._receipt_url(inv["token"])
        return out

    def confirm(self, token: str) -> dict:
        with self.lock:
            inv = self.invoices.get(token)
            if inv is None:
                return {"response_code": CODE_NOT_FOUND, "response_text": "Invoice not found"}
            return json.loads(json.dumps(self._confirm_payload(inv)))

    def get(self, token: str) -> dict | None:
        with self.lock:
            inv = self.invoices.get(token)
            return None if inv is None else self._public(inv)

    def list(self) -> list:
        with self.lock:
            return [self._public(inv) for inv in self.invoices.values()]

    def _public(self, inv: dict) -> dict:
        out = {k: v for k, v in inv.items() if k != "last_ipn"}
        out["checkout_url"] = f"{self.public_base}/checkout/{inv['token']}"
        out["last_ipn_body"] = inv["last_ipn"]
        return json.loads(json.dumps(out))

    def _ipn_fields(self, inv: dict) -> list:
        fields = [
            ("data[response_code]", CODE_OK),
            ("data[response_text]", "Transaction Found"),
            ("data[hash]", self.hash),
            ("data[invoice][token]", inv["token"]),
            ("data[invoice][pal_is_on]", "0"),
            ("data[invoice][total_amount]", _form_value(inv["total_amount"] + inv["fees"])),
            ("data[invoice][total_amount_without_fees]", _form_value(inv["total_amount"])),
            ("data[invoice][description]", inv["description"]),
        ]
        if inv["items"]:
            _flatten("data[invoice][items]", inv["items"], fields)
        _flatten("data[custom_data]", inv["custom_data"], fields)
        _flatten("data[actions]", inv["actions"], fields)
        fields.append(("data[mode]", inv["mode"]))
        fields.append(("data[status]", inv["status"]))
        if inv["status"] == "completed":
            _flatten("data[customer]", inv["customer"] or {}, fields)
            fields.append(("data[receipt_url]", self._receipt_url(inv["token"])))
        if inv["status"] == "failed":
            fields.append(("data[fail_reason]", inv["fail_reason"]))
        return fields

    def finish(self, token: str, status: str, *, customer: dict | None = None,
               fail_reason: str | None = None, fees: int = 0) -> tuple[str, dict | None]:
        """Move a pending invoice to a final status. Returns (outcome, invoice snapshot):
        outcome is "ok", "not_found" or "conflict"."""
        with self.lock:
            inv = self.invoices.get(token)
            if inv is None:
                return "not_found", None
            if inv["status"] != "pending":
                return "conflict", self._public(inv)
            if inv["expire_date"] is not None and inv["expire_date"] <= _expire_now():
                return "expired", self._public(inv)
            inv["status"] = status
            inv["status_override"] = None
            inv["updated_at"] = _now()
            if status == "completed":
                inv["fees"] = fees
                merged = dict(DEFAULT_CUSTOMER)
                merged.update({k: v for k, v in (customer or {}).items() if v})
                inv["customer"] = merged
            if status == "failed":
                inv["fail_reason"] = fail_reason or DEFAULT_FAIL_REASON
            inv["last_ipn"] = urlencode(self._ipn_fields(inv))
            return "ok", self._public(inv)

    def shape(self, token: str, params: dict) -> tuple[str, dict | None]:
        """The drill switch: set an invoice's ``expire_date`` and/or the status confirm answers.
        Returns (outcome, invoice): "ok", "not_found" or "bad_request" (with a message)."""
        with self.lock:
            inv = self.invoices.get(token)
            if inv is None:
                return "not_found", None
            if "expire_date" in params:
                raw = params["expire_date"]
                if raw is not None:
                    try:
                        when = datetime.fromisoformat(str(raw))
                    except ValueError:
                        return "bad_request", {"message": "expire_date must be a date and time"}
                    when = when.astimezone(UTC) if when.tzinfo else when
                    raw = when.strftime("%Y-%m-%d %H:%M:%S")
                inv["expire_date"] = raw
            if "status" in params:
                word = params["status"]
                if not isinstance(word, str) or not 0 < len(word) <= 40:
                    return "bad_request", {"message": "status must be a word of 1 to 40 characters"}
                inv["status_override"] = None if word == inv["status"] else word
            return "ok", self._public(inv)

    def can_resend(self, token: str) -> str:
        """"ok", "not_found", or "no_ipn" (still pending: nothing was ever sent)."""
        with self.lock:
            inv = self.invoices.get(token)
            if inv is None:
                return "not_found"
            return "no_ipn" if inv["last_ipn"] is None else "ok"

    # -- IPN delivery ------------------------------------------------------------------------
    def send_ipn(self, token: str, kind: str) -> dict:
        """Send the invoice's last IPN body now; record and return the attempt."""
        with self.lock:
            inv = self.invoices.get(token)
            if inv is None or inv["last_ipn"] is None:
                return {"delivered": False, "status_code": None, "body": None,
                        "error": "invoice gone (reset?)"}
            url = inv["actions"].get("callback_url")
            body = inv["last_ipn"]
            status = inv["status"]
        attempt = {"kind": kind, "status": status, "url": url, "delivered": False,
                   "status_code": None, "body": None, "error": None, "elapsed_ms": None,
                   "at": _now()}
        if not url:
            attempt["error"] = "no actions.callback_url"
        else:
            started = time.monotonic()
            try:
                r = self._client().post(url, content=body.encode("utf-8"), headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "User-Agent": "PayDunya-Devstack/1.0"})
                attempt["status_code"] = r.status_code
                attempt["body"] = r.text[:BODY_KEEP]
                attempt["delivered"] = 200 <= r.status_code < 300
            except httpx.HTTPError as exc:
                attempt["error"] = f"{type(exc).__name__}: {exc}"
            attempt["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
        with self.lock:
            inv = self.invoices.get(token)
            if inv is not None:
                inv["ipn_deliveries"].append(attempt)
        return {k: attempt[k] for k in ("delivered", "status_code", "body", "error")}

    def send_ipn_later(self, token: str, kind: str, delay_ms: int) -> None:
        def run() -> None:
            if self.stopping.wait(delay_ms / 1000):
                return
            self.send_ipn(token, kind)

        threading.Thread(target=run, name=f"paydunya-ipn-{token}", daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PayDunyaDevstack/1.0"
    # Headers and body go out in two writes: with Nagle on, the client's delayed ACK adds 40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            sys.stderr.write(f"paydunya-devstack {self.address_string()} - {format % args}\n")

    # -- plumbing ---------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, content_type: str, headers=None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True  # the client gave up (e.g. it timed out in hang mode)

    def _json(self, status: int, payload) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _html(self, status: int, page: str) -> None:
        self._send(status, page.encode("utf-8"), "text/html; charset=utf-8")

    def _wants_json(self) -> bool:
        accept = (self.headers.get("Accept") or "").lower()
        ctype = (self.headers.get("Content-Type") or "").lower()
        return "application/json" in accept or ctype.startswith("application/json")

    def _parse_json(self, raw: bytes) -> object:
        try:
            return json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (UnicodeDecodeError, ValueError):
            return _INVALID

    def _params(self, raw: bytes) -> dict:
        """A JSON object body or a form body, as a dict (the checkout and admin POSTs)."""
        ctype = (self.headers.get("Content-Type") or "").lower()
        if ctype.startswith("application/json") or raw.lstrip().startswith(b"{"):
            data = self._parse_json(raw)
            return data if isinstance(data, dict) else {}
        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))

    # -- dispatch ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        raw = self._read_body() if method == "POST" else b""
        path = unquote(urlsplit(self.path).path)
        for root, mode in API_ROOTS.items():
            if path.startswith(root):
                return self._api(method, path[len(root):].strip("/"), mode, raw)
        if path.startswith("/checkout/"):
            return self._checkout(method, path[len("/checkout/"):].strip("/").split("/"), raw)
        if path.startswith("/__devstack/"):
            return self._admin(method, path[len("/__devstack/"):].strip("/").split("/"), raw)
        if path in ("/", ""):
            return self._html(200, _page("PayDunya (stand-in)",
                                         "<p>Stand-in local de PayDunya. API : "
                                         "<code>/sandbox-api/v1/</code>.</p>"))
        return self._json(404, {"response_code": "404", "response_text": "Not Found"})

    # -- the PayDunya API --------------------------------------------------------------------
    def _api(self, method: str, sub: str, mode: str, raw: bytes) -> None:
        state = self.server.state
        state.hang()
        info = state.mode_info()
        if info["mode"] == "error":
            status = info["error_status"]
            reason = self.responses.get(status, ("Error",))[0]
            return self._html(status, f"<html><head><title>{status} {reason}</title></head>"
                                      f"<body><h1>{status} {reason}</h1></body></html>")
        checks = (("PAYDUNYA-MASTER-KEY", state.master_key, "Invalid Masterkey Specified"),
                  ("PAYDUNYA-PRIVATE-KEY", state.private_key, "Invalid PrivateKey Specified"),
                  ("PAYDUNYA-TOKEN", state.token, "Invalid Token Specified"))
        for header, expected, text in checks:
            got = self.headers.get(header)
            if got is None or not secrets.compare_digest(got.encode(), expected.encode()):
                return self._json(200, {"response_code": CODE_BAD_CREDENTIALS,
                                        "response_text": text})
        if sub == "checkout-invoice/create" and method == "POST":
            body = self._parse_json(raw)
            return self._json(200, state.create(None if body is _INVALID else body, mode))
        if sub.startswith("checkout-invoice/confirm/") and method == "GET":
            return self._json(200, state.confirm(sub[len("checkout-invoice/confirm/"):]))
        return self._json(404, {"response_code": "404", "response_text": "Not Found"})

    # -- the checkout page -------------------------------------------------------------------
    def _checkout(self, method: str, parts: list, raw: bytes) -> None:
        state = self.server.state
        if method == "GET" and len(parts) == 2 and parts[0] == "receipt":
            inv = state.get(parts[1])
            if inv is None or inv["status"] != "completed":
                return self._html(404, _page("Reçu introuvable", "<p>Reçu introuvable.</p>"))
            return self._html(200, _receipt_page(inv))
        if method == "GET" and len(parts) == 1:
            inv = state.get(parts[0])
            if inv is None:
                return self._html(404, _page("Facture introuvable",
                                             "<p>Cette facture n'existe pas.</p>"))
            return self._html(200, _checkout_page(inv))
        if method == "POST" and len(parts) == 2 and parts[1] in ACTIONS:
            return self._act(parts[0], ACTIONS[parts[1]], self._params(raw))
        return self._json(404, {"error": "not_found"})

    def _act(self, token: str, status: str, params: dict) -> None:
        state = self.server.state
        wants_json = self._wants_json()
        delay_ms = _int_or_none(params.get("delay_ms"))
        if delay_ms is not None and not 0 <= delay_ms <= MAX_DELAY_MS:
            return self._json(400, {"error": f"delay_ms must be within 0..{MAX_DELAY_MS}"})
        customer = params.get("customer") if isinstance(params.get("customer"), dict) else {
            k: params.get(k) for k in ("name", "phone", "email")}
        fees = _int_or_none(params.get("fees"))
        if params.get("fees") not in (None, "") and (fees is None or not 0 <= fees <= 10_000_000):
            return self._json(400, {"error": "fees must be a whole number of XOF within 0..10000000"})
        outcome, inv = state.finish(token, status, customer=customer,
                                    fail_reason=params.get("fail_reason"), fees=fees or 0)
        if outcome == "not_found":
            if wants_json:
                return self._json(404, {"error": "not_found", "message": "Invoice not found"})
            return self._html(404, _page("Facture introuvable",
                                         "<p>Cette facture n'existe pas.</p>"))
        if outcome == "expired":
            if wants_json:
                return self._json(409, {"error": "expired", "status": inv["status"],
                                        "message": f"Invoice expired at {inv['expire_date']}"})
            return self._html(409, _page("Facture expirée", "<p>Cette facture a expiré.</p>"))
        if outcome == "conflict":
            if wants_json:
                return self._json(409, {"error": "conflict", "status": inv["status"],
                                        "message": f"Invoice already {inv['status']}"})
            done = html.escape(inv["status"])
            return self._html(409, _page("Facture déjà traitée",
                                         f"<p>Cette facture est déjà « {done} ».</p>"))
        if not _truthy(params.get("send_ipn", True)):
            ipn = {"sent": False}
        elif delay_ms:
            state.send_ipn_later(token, "initial", delay_ms)
            ipn = {"scheduled": True, "delay_ms": delay_ms}
        else:
            ipn = state.send_ipn(token, "initial")
        if wants_json:
            return self._json(200, {"status": status, "token": token, "ipn": ipn})
        actions = inv["actions"]
        target = actions.get("return_url") if status == "completed" else actions.get("cancel_url")
        if target:
            return self._send(303, b"", "text/plain; charset=utf-8", {"Location": target})
        return self._html(200, _page("Terminé", f"<p>Facture {html.escape(token)} : "
                                                f"{html.escape(status)}.</p>"))

    # -- drill switches ----------------------------------------------------------------------
    def _admin(self, method: str, parts: list, raw: bytes) -> None:
        state = self.server.state
        key = self.headers.get("PAYDUNYA-MASTER-KEY")
        key_ok = key is not None and secrets.compare_digest(key.encode(), state.master_key.encode())
        if not (_is_loopback(self.client_address[0]) or key_ok):
            return self._json(403, {"error": "forbidden",
                                    "message": "loopback only, or send PAYDUNYA-MASTER-KEY"})
        params = self._params(raw) if method == "POST" else {}
        if parts == ["health"] and method == "GET":
            return self._json(200, {"ok": True})
        if parts == ["mode"] and method == "GET":
            return self._json(200, state.mode_info())
        if parts == ["mode"] and method == "POST":
            mode = params.get("mode")
            if mode not in MODES:
                return self._json(400, {"error": "bad_request",
                                        "message": f"mode must be one of {', '.join(MODES)}"})
            hang = params.get("hang_seconds")
            if hang is not None:
                try:
                    hang = float(hang)
                except (TypeError, ValueError):
                    hang = -1.0
                if not 0 <= hang <= MAX_HANG_SECONDS:
                    return self._json(400, {"error": "bad_request", "message":
                                            f"hang_seconds must be within 0..{MAX_HANG_SECONDS:g}"})
            err = _int_or_none(params.get("error_status"))
            if params.get("error_status") is not None and err not in ERROR_STATUSES:
                return self._json(400, {"error": "bad_request", "message":
                                        f"error_status must be one of {ERROR_STATUSES}"})
            return self._json(200, state.set_mode(mode, hang, err))
        if parts == ["reset"] and method == "POST":
            state.reset()
            return self._json(200, {"reset": True})
        if parts == ["invoices"] and method == "GET":
            return self._json(200, {"invoices": state.list()})
        if len(parts) == 2 and parts[0] == "invoices" and method == "GET":
            inv = state.get(parts[1])
            if inv is None:
                return self._json(404, {"error": "not_found"})
            return self._json(200, inv)
        if len(parts) == 2 and parts[0] == "invoices" and method == "POST":
            outcome, inv = state.shape(parts[1], params)
            if outcome == "not_found":
                return self._json(404, {"error": "not_found"})
            if outcome == "bad_request":
                return self._json(400, {"error": "bad_request", **(inv or {})})
            return self._json(200, inv)
        if len(parts) == 3 and parts[0] == "ipn" and parts[2] == "resend" and method == "POST":
            token = parts[1]
            delay_ms = _int_or_none(params.get("delay_ms"))
            if delay_ms is not None and not 0 <= delay_ms <= MAX_DELAY_MS:
                return self._json(400, {"error": "bad_request",
                                        "message": f"delay_ms must be within 0..{MAX_DELAY_MS}"})
            outcome = state.can_resend(token)
            if outcome == "not_found":
                return self._json(404, {"error": "not_found"})
            if outcome == "no_ipn":
                return self._json(409, {"error": "conflict",
                                        "message": "no IPN yet: the invoice is still pending"})
            if delay_ms:
                state.send_ipn_later(token, "resend", delay_ms)
                ipn = {"scheduled": True, "delay_ms": delay_ms}
            else:
                ipn = state.send_ipn(token, "resend")
            inv = state.get(token)
            return self._json(200, {"status": inv["status"] if inv else None, "token": token,
                                    "ipn": ipn})
        return self._json(404, {"error": "not_found"})


_INVALID = object()


def _int_or_none(value: object) -> int | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _amount_fr(amount) -> str:
    text = f"{amount:,.0f}" if float(amount).is_integer() else f"{amount:,.2f}"
    return text.replace(",", "\u202f") + " FCFA"


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}"
        ".amount{font-size:2rem;font-weight:700}form{display:inline-block;margin:.3rem}"
        "button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}"
        ".note{color:#666;font-size:.85rem}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _checkout_page(inv: dict) -> str:
    token = html.escape(inv["token"])
    store = inv["store"].get("name", "") if isinstance(inv["store"], dict) else ""
    body = (f"<p>{html.escape(str(store))}</p>"
            f"<p class=\"amount\">{_amount_fr(inv['total_amount'])}</p>"
            f"<p>{html.escape(inv['description'])}</p>")
    if inv["status"] == "pending":
        for action, label in (("complete", "Payer"), ("cancel", "Annuler"), ("fail", "Échec")):
            body += (f"<form method=\"post\" action=\"/checkout/{token}/{action}\">"
                     f"<button type=\"submit\">{label}</button></form>")
    else:
        body += f"<p><strong>Statut : {html.escape(inv['status'])}</strong></p>"
    body += (f"<p class=\"note\">Bac à sable local (stand-in de PayDunya) — facture {token}. "
             "Aucun argent ne circule.</p>")
    return _page("Paiement PayDunya (test)", body)


def _receipt_page(inv: dict) -> str:
    customer = inv.get("customer") or {}
    return _page("Reçu de paiement (test)",
                 f"<p class=\"amount\">{_amount_fr(inv['total_amount'])}</p>"
                 f"<p>{html.escape(inv['description'])}</p>"
                 f"<p>Payé par {html.escape(str(customer.get('name', '')))}</p>"
                 f"<p class=\"note\">Facture {html.escape(inv['token'])}</p>")


class _Server(ThreadingHTTPServer):
    # A burst of 100 clients overflows the default listen backlog of 5: dropped connects look
    # like an outage to lib (0.3 s connect timeout), so accept a burst as a cloud service would.
    request_queue_size = 128
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    state: PaydunyaStandIn
    verbose: bool = False

    def shutdown(self) -> None:
        self.state.stop()  # release hanging requests and pending delayed IPNs first
        super().shutdown()

    def server_close(self) -> None:
        self.state.close()
        super().server_close()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)) or self.state.stopping.is_set():
            return
        super().handle_error(request, client_address)


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                master_key: str = DEFAULT_MASTER_KEY, private_key: str = DEFAULT_PRIVATE_KEY,
                token: str = DEFAULT_TOKEN, public_base: str | None = None,
                ipn_timeout: float = 5.0, verbose: bool = False) -> ThreadingHTTPServer:
    """Bind the stand-in (port 0 picks a free port) without serving yet. Its state is
    ``server.state`` (a PaydunyaStandIn); ``public_base`` defaults to ``http://<host>:<port>``
    of the bound socket (127.0.0.1 when bound to all interfaces)."""
    server = _Server((host, port), _Handler, bind_and_activate=True)
    if public_base is None:
        bound_host, bound_port = server.server_address[:2]
        if bound_host in ("0.0.0.0", "::", ""):
            bound_host = "127.0.0.1"
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        public_base = f"http://{bound_host}:{bound_port}"
    server.state = PaydunyaStandIn(master_key=master_key, private_key=private_key, token=token,
                                   public_base=public_base, ipn_timeout=ipn_timeout)
    server.verbose = verbose
    return server


def serve_in_thread(host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                    **kwargs) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """make_server(...) and serve it from a daemon thread. Returns (server, thread); stop with
    ``server.shutdown(); server.server_close()``."""
    server = make_server(host, port, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="paydunya-devstack", daemon=True)
    thread.start()
    return server, thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.paydunya",
                                     description="Local stand-in for PayDunya's sandbox API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--public-base", default=os.environ.get("PAYDUNYA_STANDIN_PUBLIC_BASE"),
                        help="base of checkout/receipt URLs (default: http://<host>:<port>)")
    parser.add_argument("--master-key", default=os.environ.get("PAYDUNYA_MASTER_KEY")
                        or DEFAULT_MASTER_KEY)
    parser.add_argument("--private-key", default=os.environ.get("PAYDUNYA_PRIVATE_KEY")
                        or DEFAULT_PRIVATE_KEY)
    parser.add_argument("--token", default=os.environ.get("PAYDUNYA_TOKEN") or DEFAULT_TOKEN)
    parser.add_argument("--ipn-timeout", type=float, default=5.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    server = make_server(args.host, args.port, master_key=args.master_key,
                         private_key=args.private_key, token=args.token,
                         public_base=args.public_base, ipn_timeout=args.ipn_timeout,
                         verbose=args.verbose)

    host, port = server.server_address[:2]
    print(f"paydunya stand-in listening on http://{host}:{port} "
          f"(API root {server.state.public_base}/sandbox-api/v1)", flush=True)
    return serve_until_stopped(server)


if __name__ == "__main__":
    sys.exit(main())
