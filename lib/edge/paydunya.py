"""PayDunya's checkout API over httpx: create an invoice, confirm one, check an IPN's hash.

    token, checkout_url = paydunya.create_invoice(50_000, "Loyer de novembre 2026", custom_data, actions)
    verdict = paydunya.confirm(token)        # {"status", "total_amount", "rent_amount", "expire_date", ...}
    paydunya.check_ipn_hash(form_hash)       # constant time, against SHA-512 of the master key

PayDunya reports business errors in the body with HTTP 200 (`response_code` other than "00");
a 5xx, a body that is not JSON, a timeout or a refused connection are all the same to the
caller: `PaymentProviderError` (502), whose `reason` attribute says why in words safe for a
log line (never a key, never the body). Nothing here retries: a create that timed out may
have made an invoice, and only the caller knows whether a second one is acceptable (it is
not: lib/domain/payments marks the row failed and the tenant starts again).

The client (`PayDunyaClient`) is created at first use and shared by the warm instance; a test
installs its own with `with paydunya.using(PayDunyaClient(http=...)):`. Its timeout (10 s total,
3 s to connect) stays well under the payment lock's 30 s TTL, so a slow PayDunya cannot outlive
the lock that guards the call.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lib import config, context
from lib.errors import PaymentProviderError
from lib.slot import Slot

if TYPE_CHECKING:  # imported at first use: a read endpoint never pays for it
    import httpx

TOTAL_TIMEOUT = 10.0
CONNECT_TIMEOUT = 3.0
STORE_NAME = "Dousell Immo"
STATUSES = ("pending", "completed", "cancelled", "failed")
# Unknown statuses already logged by this instance: each is logged once, not on every cron run.
# Bounded, so a PayDunya answering a new word on every call cannot grow it without end.
_UNKNOWN_LOGGED: set[str] = set()
_UNKNOWN_LOGGED_MAX = 100

log = logging.getLogger(__name__)

_lock = threading.Lock()  # guards _UNKNOWN_LOGGED


class PayDunyaClient:
    """PayDunya's checkout API as this process reaches it: one httpx client (`http` if given, a test's
    on a mock transport; else built at first use, bounded in time, no redirects followed). The keys and
    the base URL are read from lib/config at each call (a missing one is a ConfigurationError naming it)."""

    def __init__(self, http: httpx.Client | None = None) -> None:
        self._http = http
        self._owned = http is None  # built here, so closed here
        self._lock = threading.Lock()

    def http(self) -> httpx.Client:
        """The httpx client (TOTAL_TIMEOUT, CONNECT_TIMEOUT; no proxy surprises, no redirects)."""
        if self._http is None:
            with self._lock:
                if self._http is None:
                    import httpx

                    self._http = httpx.Client(
                        timeout=httpx.Timeout(TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT),
                        follow_redirects=False,
                    )
        return self._http

    def close(self) -> None:
        """Close the httpx client if this object built it (a test's own client is the test's to close)."""
        if self._owned and self._http is not None:
            self._http.close()


_clients: Slot[PayDunyaClient] = Slot(PayDunyaClient)


def using(client: PayDunyaClient) -> AbstractContextManager[PayDunyaClient]:
    """`with paydunya.using(PayDunyaClient(http=...)):` every PayDunya call of the process goes through
    `client` inside the block (tests); the default, built at first use, is back after it."""
    return _clients.using(client)


def current() -> PayDunyaClient:
    """The PayDunyaClient in use: a test's (`using`), else the process's, built at first use."""
    return _clients.get()


def http_client() -> httpx.Client:
    """The httpx client PayDunya is called with: the one of the PayDunyaClient in use."""
    return _clients.get().http()


def _failure(reason: str) -> PaymentProviderError:
    return PaymentProviderError(reason=reason)  # the reason is logged by lib.web.http beside the error code


def _headers(settings: config.PayDunya) -> dict[str, str]:
    return {
        "PAYDUNYA-MASTER-KEY": settings.master_key,
        "PAYDUNYA-PRIVATE-KEY": settings.private_key,
        "PAYDUNYA-TOKEN": settings.token,
        "Accept": "application/json",
    }


def _call(method: str, path: str, body: dict[str, Any] | None = None, *,
          timeout: float = TOTAL_TIMEOUT) -> dict[str, Any]:
    """One API call; the JSON body of a "00" answer, or PaymentProviderError."""
    import httpx

    settings = config.paydunya()
    url = f"{settings.base_url}/{path}"
    with context.timed("paydunya"):
        try:
            response = http_client().request(method, url, json=body, headers=_headers(settings),
                                              timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)))
        except httpx.TimeoutException as exc:
            raise _failure(f"timeout: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise _failure(f"transport: {type(exc).__name__}") from exc
    if not 200 <= response.status_code < 300:
        raise _failure(f"http {response.status_code}")
    try:
        data = response.json()
    except ValueError as exc:
        raise _failure("answer is not JSON") from exc
    if not isinstance(data, dict):
        raise _failure("answer is not a JSON object")
    code = data.get("response_code")
    if code != "00":
        # The code is PayDunya's (e.g. 1001 bad keys); its text names the key that is wrong,
        # never its value, and is cut short in case it carries something unexpected.
        text = str(data.get("response_text", ""))[:120]
        raise _failure(f"response_code {str(code)[:10]}: {text}")
    return data


def whole_amount(value: Any) -> int | None:
    """An amount as a whole number of XOF (`50000`, `50000.0`, `"50000"`), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or not value.is_integer():
            return None
        value = int(value)
    return value if isinstance(value, int) else None


def create_invoice(amount: int, description: str, custom_data: dict[str, Any],
                   actions: dict[str, str]) -> tuple[str, str]:
    """Create a checkout invoice; returns (token, checkout_url)."""
    body = {
        "invoice": {"total_amount": int(amount), "description": description},
        "store": {"name": STORE_NAME},
        "custom_data": custom_data,
        "actions": actions,
    }
    data = _call("POST", "checkout-invoice/create", body)
    token, url = data.get("token"), data.get("response_text")
    if not isinstance(token, str) or not token or len(token) > 200:
        raise _failure("create answered no token")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise _failure("create answered no checkout url")
    return token, url


def confirm(token: str, *, timeout: float = TOTAL_TIMEOUT) -> dict[str, Any]:
    """PayDunya's verdict on an invoice, checked: `{"status", "total_amount" (int or None when
    not a whole number), "rent_amount", "expire_date" (datetime or None), "token", "custom_data", "raw"}`.
    An unknown status is `pending` (not settled; see `_status`).

    `rent_amount` is what the rent must equal: `total_amount_without_fees` when PayDunya sends it
    (with the fees on the customer, `total_amount` includes them), else `total_amount`. None
    when the one it comes from is not a whole number. `timeout` bounds the call (seconds).
    """
    data = _call("GET", f"checkout-invoice/confirm/{quote(token, safe='')}", timeout=timeout)
    status = _status(data.get("status"))
    answered = data.get("invoice")
    invoice: dict[str, Any] = answered if isinstance(answered, dict) else {}
    if "total_amount" not in invoice:
        raise _failure("confirm answered no amount")
    answered_token = invoice.get("token")
    if answered_token is not None and answered_token != token:
        raise _failure("confirm answered another invoice")
    custom = data.get("custom_data")
    total = whole_amount(invoice.get("total_amount"))
    without_fees = invoice.get("total_amount_without_fees")
    return {
        "status": status,
        "total_amount": total,
        "rent_amount": total if without_fees in (None, "") else whole_amount(without_fees),
        "expire_date": expire_date(invoice.get("expire_date", data.get("expire_date"))),
        "token": token,
        "custom_data": custom if isinstance(custom, dict) else {},
        "raw": data,
    }


def _status(raw: Any) -> str:
    """PayDunya's status, or `pending` for one we do not know: PayDunya documents pending, completed
    and cancelled (failed shows up in integrations); anything else has not settled anything, and
    must neither pay rent nor fail every cron run with a 502. Logged once per word and instance."""
    if raw in STATUSES:
        return str(raw)
    word = str(raw)[:20]
    with _lock:
        first = word not in _UNKNOWN_LOGGED and len(_UNKNOWN_LOGGED) < _UNKNOWN_LOGGED_MAX
        if first:
            _UNKNOWN_LOGGED.add(word)
    if first:
        log.warning("PayDunya answered an unknown invoice status %r: taken as not settled (pending)", word)
    return "pending"


def expire_date(raw: Any) -> datetime | None:
    """PayDunya's `expire_date` (`2026-12-14 10:00:00`, ISO 8601 too) as an aware datetime; a time
    without zone is UTC (Dakar's offset all year). None when absent or unreadable: the invoice then
    lives the default 7 days (lib/domain/settle)."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 40:
        return None
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def expected_hash() -> str:
    """What PayDunya sends as `data[hash]`: SHA-512 hex of our master key."""
    return hashlib.sha512(config.paydunya().master_key.encode("utf-8")).hexdigest()


def check_ipn_hash(received: str | None) -> bool:
    """True if `received` is our master key's SHA-512 (compared in constant time)."""
    if not isinstance(received, str) or not received:
        return False
    expected = expected_hash()
    # compare_digest on bytes: a non-ASCII str would raise TypeError instead of answering.
    return hmac.compare_digest(received.strip().lower().encode("utf-8"), expected.encode("ascii"))
