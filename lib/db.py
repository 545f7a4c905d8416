"""PostgREST clients (anon, per-user, service role) on one shared httpx client, and the query boundary.

`postgrest` costs ~160 ms to import, so it is imported at first use: a cache hit never pays it.
Retries are off (GET retries sleep 1-2-4 s) and every call is bounded in time; a database
that cannot be reached becomes `DatabaseUnavailable` (503), never a hang or a 500.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from lib import config, context, metrics
from lib.errors import ConfigurationError, DatabaseUnavailable, Forbidden, InvalidToken, ValidationFailed

if TYPE_CHECKING:  # both cost an import a cache hit never pays (see above)
    import httpx
    from postgrest.exceptions import APIError

T = TypeVar("T")

# Seconds. Supabase from Paris answers in ~300 ms; 5 s means it is in trouble.
QUERY_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0

_lock = threading.Lock()
_http: httpx.Client | None = None
# The PostgREST clients stay `Any`: postgrest-py types every `.data` as a JSON union, so a typed client
# would need a row-decoding step at each of the ~40 queries in lib/domain.
_anon: Any = None
_service: Any = None


class DatabaseError(Exception):
    """PostgREST refused a query (constraint, RLS, an RPC's raised code); callers map `code`/`message`."""

    def __init__(self, code: str | None, message: str | None, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code or ""
        self.message = message or ""
        self.details = details


class PageOutOfRange(DatabaseError):
    """416: an offset past the counted rows. PostgREST 12 and 14.2+ say PGRST103; 13.0.x, 14.0 and
    14.1 send a truncated body (`{"`), which postgrest-py reports as code `416` (PostgREST#4455)."""


def http_client() -> httpx.Client:
    """The httpx client every PostgREST client shares (connection reuse across warm invocations)."""
    global _http
    if _http is None:
        with _lock:
            if _http is None:
                import httpx

                _http = httpx.Client(timeout=httpx.Timeout(QUERY_TIMEOUT, connect=CONNECT_TIMEOUT))
    return _http


def set_http_client(client: httpx.Client | None) -> None:
    """Inject the shared httpx client (tests); `None` resets every cached client."""
    global _http, _anon, _service
    with _lock:
        _http, _anon, _service = client, None, None


def _client(key: str, bearer: str) -> Any:
    from postgrest import SyncPostgrestClient

    return SyncPostgrestClient(
        f"{config.supabase_url()}/rest/v1",
        headers={
            "Accept": "application/json",
            "Content-Type": "application/json",
            "apikey": key,
            "Authorization": f"Bearer {bearer}",
        },
        http_client=http_client(),
        retry_enabled=False,
    )


def anon() -> Any:
    """Public reads; RLS applies as the `anon` role."""
    global _anon
    if _anon is None:
        key = config.supabase_anon_key()
        _anon = _client(key, key)
    return _anon


def service() -> Any:
    """Server-side writes (payments, IPN, bookings); bypasses RLS, so callers check ownership first."""
    global _service
    if _service is None:
        key = config.supabase_service_role_key()
        _service = _client(key, key)
    return _service


def as_user(token: str) -> Any:
    """A client carrying the user's own token, so RLS sees `auth.uid()`. New per request, never shared."""
    return _client(config.supabase_anon_key(), token)


def run(query: Callable[[], T]) -> T:
    """Run one PostgREST call, timed for `Server-Timing`, with its failures translated.

    `query` is a thunk (`lambda: db.anon().from_("properties").select("*").execute()`), so the
    client is built inside the boundary too.
    """
    import httpx
    from postgrest.exceptions import APIError

    with context.timed("db"):
        try:
            result = query()
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            metrics.count_query(ok=False)
            raise DatabaseUnavailable() from exc
        except APIError as exc:
            metrics.count_query(ok=False)
            raise _translate(exc) from exc
    metrics.count_query()
    return result


# PostgREST's codes for "the database is not there" (connection lost, timeout, pool exhausted)
# and Postgres's own for a shutdown, a cancelled statement, too many clients.
_UNAVAILABLE = {"PGRST000", "PGRST001", "PGRST002", "PGRST003", "57P01", "57014", "53300"}
_BAD_TOKEN = {"PGRST301", "PGRST302", "PGRST303"}
_REFUSED_VALUE = {"23502", "23514"}  # not null, check constraint
_PAST_THE_END = {"PGRST103", "416"}


def _translate(exc: APIError) -> Exception:
    code = exc.code or ""
    if code in _BAD_TOKEN:
        return InvalidToken()
    # A body that is not PostgREST JSON (a proxy's 502 page) arrives with the HTTP status as code.
    if code in _UNAVAILABLE or (code.isdigit() and code.startswith("5")):
        return DatabaseUnavailable()
    if code.startswith("22") or code in _REFUSED_VALUE:
        # A value the database will not store (a NUL byte, too long, out of range, a CHECK):
        # the client's input, never a 500. Callers validate first; this is the last net.
        return ValidationFailed("Une des valeurs envoyées n'est pas acceptée.",
                                details=[{"field": "body", "code": "refused_by_database", "message": "Valeur refusée."}])
    if code in _PAST_THE_END:
        return PageOutOfRange(code, exc.message, exc.details)
    if code == "42501":
        # A column or table without privilege (supabase/migrations grants owners only the columns
        # the API exposes): refused, not a bug of the request's shape.
        return Forbidden()
    return DatabaseError(code, exc.message, exc.details)


def probe(timeout: float = 1.0) -> bool:
    """True if PostgREST answers a trivial public query within `timeout` seconds."""
    import httpx

    try:
        key = config.supabase_anon_key()
        response = http_client().get(
            f"{config.supabase_url()}/rest/v1/properties",
            params={"select": "id", "limit": "1"},
            headers={"apikey": key, "Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout),
        )
    except (httpx.HTTPError, ConfigurationError):
        return False
    return response.status_code == 200
