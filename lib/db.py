"""PostgREST clients (anon, per-user, service role) on one shared httpx client, and the query boundary.

`postgrest` costs ~160 ms to import, so it is imported at first use: a cache hit never pays it.
Retries are off (GET retries sleep 1-2-4 s) and every call is bounded in time; a database
that cannot be reached becomes `DatabaseUnavailable` (503), never a hang or a 500.

The clients live in one `PostgREST` object, the process's built at first use (lib/slot); a test
installs its own with `with db.using(db.PostgREST(http=...)):` instead of patching this module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from lib import config, context, metrics
from lib.errors import ConfigurationError, DatabaseUnavailable, Forbidden, InvalidToken, ValidationFailed
from lib.slot import Slot

if TYPE_CHECKING:  # both cost an import a cache hit never pays (see above)
    import httpx
    from postgrest.exceptions import APIError

T = TypeVar("T")

# Seconds. Supabase from Paris answers in ~300 ms; 5 s means it is in trouble.
QUERY_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0


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


class PostgREST:
    """The PostgREST clients of the configured Supabase project (anon, service role, per user) on one
    bounded httpx client: `http` if given (a test's, on a mock transport), else built at first use.
    The URL and keys are read from lib/config when a client is first needed, so a missing variable is
    a ConfigurationError naming it at the first request that needs it; the anon and service-role
    clients are then kept (connection reuse across warm invocations)."""

    def __init__(self, http: httpx.Client | None = None, *, timeout: float | None = None) -> None:
        self._http = http
        self._owned = http is None  # built here, so closed here
        self._timeout = timeout
        self._lock = threading.Lock()
        # `Any`: postgrest-py types every `.data` as a JSON union, so a typed client would need a
        # row-decoding step at each of the ~40 queries in lib/domain.
        self._anon: Any = None
        self._service: Any = None

    def http(self) -> httpx.Client:
        """The httpx client every PostgREST client of this object shares (QUERY_TIMEOUT, CONNECT_TIMEOUT)."""
        if self._http is None:
            with self._lock:
                if self._http is None:
                    import httpx

                    self._http = httpx.Client(timeout=httpx.Timeout(self._timeout or QUERY_TIMEOUT,
                                                                    connect=CONNECT_TIMEOUT))
        return self._http

    def _client(self, key: str, bearer: str) -> Any:
        from postgrest import SyncPostgrestClient

        return SyncPostgrestClient(
            f"{config.supabase_url()}/rest/v1",
            headers={
                "Accept": "application/json",
                "Content-Type": "application/json",
                "apikey": key,
                "Authorization": f"Bearer {bearer}",
            },
            http_client=self.http(),
            retry_enabled=False,
        )

    def anon(self) -> Any:
        """Public reads; RLS applies as the `anon` role."""
        if self._anon is None:
            key = config.supabase_anon_key()
            self._anon = self._client(key, key)
        return self._anon

    def service(self) -> Any:
        """Server-side writes (payments, IPN, bookings); bypasses RLS, so callers check ownership first."""
        if self._service is None:
            key = config.supabase_service_role_key()
            self._service = self._client(key, key)
        return self._service

    def as_user(self, token: str) -> Any:
        """A client carrying the user's own token, so RLS sees `auth.uid()`. New per request, never shared."""
        return self._client(config.supabase_anon_key(), token)

    def close(self) -> None:
        """Close the httpx client if this object built it (a test's own client is the test's to close)."""
        if self._owned and self._http is not None:
            self._http.close()


_clients: Slot[PostgREST] = Slot(PostgREST)


def using(clients: PostgREST) -> AbstractContextManager[PostgREST]:
    """`with db.using(PostgREST(http=...)):` every query of the process goes through `clients` inside
    the block (tests); the default, built from the environment at first use, is back after it."""
    return _clients.using(clients)


def current() -> PostgREST:
    """The PostgREST clients in use: a test's (`using`), else the process's, built at first use."""
    return _clients.get()


def http_client() -> httpx.Client:
    """The httpx client every PostgREST client shares (connection reuse across warm invocations)."""
    return _clients.get().http()


def anon() -> Any:
    """Public reads; RLS applies as the `anon` role."""
    return _clients.get().anon()


def service() -> Any:
    """Server-side writes (payments, IPN, bookings); bypasses RLS, so callers check ownership first."""
    return _clients.get().service()


def as_user(token: str) -> Any:
    """A client carrying the user's own token, so RLS sees `auth.uid()`. New per request, never shared."""
    return _clients.get().as_user(token)


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
