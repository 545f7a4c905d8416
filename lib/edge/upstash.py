"""The Redis edge: every call to Upstash leaves from here, bounded in time, never retried, behind one breaker.

    execute(["GET", key])          one command, one REST call (`POST /`)
    pipeline([[...], [...]])       several commands, one REST call (`/pipeline`); each answer in its place
    run(SCRIPT, keys, args)        a Script: EVALSHA (EVALSHA_RO when read-only); EVAL once if Upstash lost it

What a caller may catch (anything else is a bug and propagates to lib/web/http's last net, a 500):

    RedisError                base; never shown to a user as such
    ├── RedisUnavailable      no usable answer: unreachable, timed out (0.5 s), 5xx, not Upstash's
    │   │                     protocol (a command sent may or may not have run)
    │   ├── RedisRejected     refused before running anything: token refused (401), rate limit (429)
    │   │   └── RedisQuota    the plan's request quota is used up (daily or monthly): not an outage, not
    │   │                     "up" either; the breaker holds Redis off until the quota's window can have reset
    │   └── RedisSkipped      not even tried: the circuit breaker is open after a recent failure
    └── RedisCommandError     Upstash answered `{"error"}` for a command (wrong type, Lua error...)
        └── RedisFull         a write refused at the database's size limit (eviction off): reads still work

Only RedisUnavailable opens the breaker; a command error is an answer, so Redis is up. A quota answer
holds the breaker open until the next midnight UTC (daily quota) or for QUOTA_PROBE_S at a time
(monthly: one probe an hour until the plan is raised or the month turns), warning once per window.

Replicated reads (docs/cache-strategy.md): every paid Upstash database answers reads round-robin from
replicas that apply writes late. This edge keeps the highest `upstash-sync-token` Upstash returned to
this instance and sends it with every request, so Upstash serves each request from a node that has seen
every write this instance made (per-instance read-your-writes); what must see other instances' writes
runs as a script without `no-writes`, on the leader (lib/cache/entries).

Why our own small REST client on httpx rather than upstash-redis (docs/cache-strategy.md): the
library sets no timeout, retries every failure (writes included), raises for the whole pipeline
when one command fails, and offers no public way to change any of it. Upstash's REST protocol is
a JSON array in, `{"result"}` or `{"error"}` out. Libraries built on upstash-redis
(upstash-ratelimit) get one bounded `upstash_redis.Redis` from `client()` (lib/edge/upstash_sdk).
Outside Vercel with VALKEY_URL set, each round trip goes over TCP to Valkey instead (lib/edge/valkey).

The REST client and what it remembers (the sync token, the quota warned about, the upstash-redis
client over the same connections) are one `UpstashREST`, the process's built at first use
(lib/slot); a test or a benchmark installs its own with `with upstash.using(UpstashREST(http=...)):`.
The breaker stays one per process (`breaker`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from lib import config, context
from lib.edge import breaker as _breakers
from lib.edge.breaker import Breaker
from lib.errors import ConfigurationError
from lib.slot import Slot

if TYPE_CHECKING:  # imported at first use
    import httpx

    from lib.edge import upstash_sdk

# Seconds. A cache call that takes longer is worth less than going to the database.
CACHE_TIMEOUT = 0.5
CONNECT_TIMEOUT = 0.3
_CAPACITY = ("DB capacity quota exceeded", "OOM ")  # Upstash's words; plain Redis/Valkey's
# Upstash's answers when the plan's request quota is used up (troubleshooting pages).
DAILY_QUOTA = "ERR max daily request limit exceeded"
MONTHLY_QUOTA = "ERR max requests limit exceeded"
QUOTA_PROBE_S = 3600.0  # monthly quota: one probe an hour (the plan raised, or the month turned)
SYNC_TOKEN = "upstash-sync-token"
T = TypeVar("T")
log = logging.getLogger(__name__)


class RedisError(Exception):
    """Base of the failures of an Upstash call; never shown to a user as such."""


class RedisUnavailable(RedisError):
    """Upstash gave no usable answer: unreachable, too slow, refused the token, or not its protocol."""


class RedisRejected(RedisUnavailable):
    """Upstash refused the whole request before running it (HTTP 401, 403, 429...): nothing ran."""


class RedisQuota(RedisRejected):
    """Upstash refused the request: the plan's daily (`kind` "daily") or monthly ("monthly") request
    quota is used up. Nothing ran; the breaker holds Redis off until the quota can have reset."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class RedisSkipped(RedisUnavailable):
    """The call was not made: the circuit breaker is open after a recent failure."""


class RedisCommandError(RedisError):
    """Upstash answered `{"error": ...}` for a command (wrong type, Lua error, unknown script)."""


class RedisFull(RedisCommandError):
    """A write refused because the database is at its size limit (Upstash: eviction off by default)."""


def _command_error(message: str) -> RedisCommandError:
    if any(mark in message for mark in _CAPACITY):
        return RedisFull(message)
    return RedisCommandError(message)


class Script:
    """A Lua script flagged as Upstash needs: `allow-key-locking` (it touches only its KEYS, so
    Upstash locks those instead of the whole database) and, when it only reads, `no-writes` (sent
    as EVALSHA_RO: Upstash may run it on a replica, which may not have seen the latest writes).
    `leader`: a read that must see every write already acknowledged, by any instance, goes without
    `no-writes`, as EVALSHA: Upstash runs it on the leader (with `allow-oom`: a full database still
    answers it, as it answers GET). The flags are the first line of the
    text, so they are part of its SHA."""

    def __init__(self, body: str, *, writes: bool, leader: bool = False) -> None:
        # A read on the leader carries `allow-oom` (Valkey's: run even when the database is full), as
        # a plain read command would run: without it a full database would refuse the hit itself.
        flags = ("allow-key-locking" if writes else "allow-oom,allow-key-locking" if leader
                 else "no-writes,allow-key-locking")
        self.leader = leader and not writes
        self.text = f"#!lua flags={flags}\n{body.strip()}\n"
        self.sha = hashlib.sha1(self.text.encode("utf-8")).hexdigest()
        self.read_only = not (writes or leader)
        _SCRIPTS[self.sha] = self

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """The EVALSHA (or EVALSHA_RO) command, for `execute` or a `pipeline`."""
        return ["EVALSHA_RO" if self.read_only else "EVALSHA", self.sha, len(keys), *keys, *map(str, args)]


_SCRIPTS: dict[str, Script] = {}  # sha → Script: what a NOSCRIPT answer is resent as
_EVAL_FOR = {"EVALSHA": "EVAL", "EVALSHA_RO": "EVAL_RO"}


breaker = Breaker()  # Redis's health as this process sees it: one, whichever UpstashREST is in use


class UpstashREST:
    """Upstash's REST API as this instance talks to it: one bounded httpx client (`http` if given, a
    test's on a mock transport; else built at first use), the highest `upstash-sync-token` Upstash
    gave it (`sync`), and the quota window it last warned about. The URL and token are read from
    lib/config at each call (a missing one is a ConfigurationError naming it, not an outage). A new
    object is a new instance as Upstash sees it: no sync token, no warning given yet."""

    def __init__(self, http: httpx.Client | None = None) -> None:
        self._http = http
        self._owned = http is None  # built here, so closed here
        self._lock = threading.Lock()
        self.sync: str | None = None
        self.warned: tuple[str, float] | None = None  # (kind, the window's end)
        self._sdk: tuple[tuple[str, str], upstash_sdk.Redis] | None = None  # (URL and token, client)

    def http(self) -> httpx.Client:
        """The httpx client (CACHE_TIMEOUT, CONNECT_TIMEOUT; as many connections kept as open)."""
        if self._http is None:
            with self._lock:
                if self._http is None:
                    import httpx

                    # As many kept alive as open: httpcore 1.0.9 closes "surplus" idle connections by
                    # counting all of them, and can close one it has just handed to a waiting request
                    # (encode/httpcore#1110, #1000): `[Errno 9] Bad file descriptor` under a burst, read
                    # as an outage. With one origin and no surplus, it never closes a connection.
                    self._http = httpx.Client(
                        timeout=httpx.Timeout(CACHE_TIMEOUT, connect=CONNECT_TIMEOUT),
                        limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
        return self._http

    def sdk(self, settings: config.Upstash) -> upstash_sdk.Redis:
        """One `upstash_redis.Redis` for `settings` on this object's httpx client (same connections,
        same time bound), built at first use and again if the URL or token changed."""
        from lib.edge import upstash_sdk

        http, identity = self.http(), (settings.url, settings.token)
        with self._lock:
            if self._sdk is None or self._sdk[0] != identity:
                self._sdk = (identity, upstash_sdk.build(settings, http))
            return self._sdk[1]

    def keep_sync(self, token: str | None) -> None:
        """Remember `token` if it is newer than the one kept. Upstash documents the token as opaque, and
        upstash-redis keeps the last one it got; when both are numbers (the stand-in's are replication
        offsets) the higher is kept, so a lagging replica's answer does not take the instance back."""
        if not token:
            return
        with self._lock:
            if self.sync is None or not (token.isdigit() and self.sync.isdigit()) or int(token) > int(self.sync):
                self.sync = token

    def first_warning(self, kind: str, end: float) -> bool:
        """True once per quota window (`kind`, ending at `end` on the breaker's clock): in-flight requests
        meeting the same quota give one warning among them."""
        with self._lock:
            first = self.warned is None or self.warned[0] != kind or self.warned[1] <= _breakers.clock()
            if first:
                self.warned = (kind, end)
            return first

    def close(self) -> None:
        """Close the httpx client if this object built it (a test's own client is the test's to close)."""
        if self._owned and self._http is not None:
            self._http.close()


_clients: Slot[UpstashREST] = Slot(UpstashREST)


def using(rest: UpstashREST) -> AbstractContextManager[UpstashREST]:
    """`with upstash.using(UpstashREST(http=...)):` every REST call of the process goes through `rest`
    inside the block (tests, benchmarks); the default, built at first use, is back after it."""
    return _clients.using(rest)


def current() -> UpstashREST:
    """The UpstashREST in use: a test's (`using`), else the process's, built at first use."""
    return _clients.get()


def http_client() -> httpx.Client:
    """The httpx client of the UpstashREST in use (the SDK adapter shares it: lib/edge/upstash_sdk)."""
    return _clients.get().http()


def _quota(message: str) -> str | None:
    """"daily" or "monthly" if `message` is Upstash's answer to a used-up request quota."""
    if message.startswith(DAILY_QUOTA):
        return "daily"
    if message.startswith(MONTHLY_QUOTA):
        return "monthly"
    return None


def quota_hold() -> dict[str, str] | None:
    """While a used-up quota holds Redis off in this instance: {"quota": "daily" | "monthly", "until":
    when the next probe goes (UTC, ISO 8601)}; None otherwise. For /api/health and /api/metrics."""
    reason, left = breaker.reason, breaker.seconds_left()
    if reason not in ("daily_quota", "monthly_quota") or left <= 0:
        return None
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + left))
    return {"quota": reason.removesuffix("_quota"), "until": until}


def _quota_hit(kind: str, message: str) -> RedisQuota:
    """Hold the breaker open for the quota's window; warn once per window (not once per request)."""
    if kind == "daily":
        now = time.time()
        seconds = 86400 - now % 86400  # Upstash's day is UTC's: the quota resets at midnight
    else:
        seconds = QUOTA_PROBE_S
    end = breaker.hold(seconds, f"{kind}_quota")
    first = _clients.get().first_warning(kind, end)  # in-flight requests meeting the same quota: one warning
    if first:
        log.warning("redis: Upstash's %s request quota is used up (%s); reads go to the database, Redis is "
                    "held off for %.0f s", kind, message[:120], seconds)
    return RedisQuota(f"Upstash's {kind} request quota is used up: {message[:120]}", kind)


def client() -> upstash_sdk.Redis:
    """One `upstash_redis.Redis` on the same URL, token, connections and time bound, never retrying:
    for libraries built on upstash-redis (upstash-ratelimit). It does not go through the breaker."""
    return _clients.get().sdk(config.upstash())


def sdk_call(call: Callable[[Any], T]) -> T:
    """`call(client())` behind the same breaker and errors as every other call: RedisSkipped while the
    breaker is open, RedisUnavailable (breaker opened) without a usable answer, RedisCommandError for
    Upstash's `{"error"}`. For libraries built on upstash-redis (lib/web/ratelimit)."""
    from lib.edge import upstash_sdk

    _gate(force=False)
    start = time.perf_counter()
    try:
        result = call(client())
    except Exception as exc:
        kind = upstash_sdk.classify(exc)
        if kind == "answer":
            if quota := _quota(str(exc)):
                raise _quota_hit(quota, str(exc)) from exc
            breaker.success()
            raise _command_error(str(exc)) from exc
        if kind == "outage":
            breaker.failure()
            raise RedisUnavailable(f"Upstash did not answer usably: {type(exc).__name__}") from exc
        raise
    finally:
        _record(start, 1)  # one REST call of one command: what the libraries built on upstash-redis send
    breaker.success()
    return result


def execute(command: Sequence[Any], *, force: bool = False) -> Any:
    """Run one command in one REST call. `force`: send it even while the breaker is open (a check
    that cannot wait, like whether a timed-out SET landed)."""
    answer = _call([list(command)], force=force, single=True)[0]
    if isinstance(answer, RedisCommandError):
        raise answer
    return answer


def pipeline(commands: Sequence[Sequence[Any]], *, force: bool = False) -> list[Any]:
    """Run several commands in one REST call (`/pipeline`, not atomic); answers in order. A command
    Upstash refused comes back as its RedisCommandError, in its place: it never fails the others."""
    return _call([list(c) for c in commands], force=force, single=False) if commands else []


def run(script: Script, keys: Sequence[str], args: Sequence[Any], *, force: bool = False) -> Any:
    """`script` on `keys` and `args`, in one REST call (two the first time after Upstash lost it)."""
    return execute(script.command(keys, args), force=force)


def probe() -> bool:
    """True if Upstash answers PING within the cache timeout (PING is not billed). Asked even while
    the breaker is open: /api/health reports Redis as it is, and a success closes the breaker."""
    try:
        answer: object = execute(["PING"], force=True)
        return answer == "PONG"
    except (RedisError, ConfigurationError):
        return False


def _call(commands: list[list[Any]], *, force: bool, single: bool) -> list[Any]:
    answers = _send(commands, force=force, single=single)
    lost = [i for i, (command, answer) in enumerate(zip(commands, answers, strict=True))
            if isinstance(answer, RedisCommandError) and str(answer).startswith("NOSCRIPT")
            and str(command[0]).upper() in _EVAL_FOR and command[1] in _SCRIPTS]
    if lost:  # Upstash does not know the script (flushed, or never sent): send its text once
        resent = [[_EVAL_FOR[str(command[0]).upper()], _SCRIPTS[command[1]].text, *command[2:]]
                  for command in (commands[i] for i in lost)]
        for i, answer in zip(lost, _send(resent, force=True, single=single), strict=True):
            answers[i] = answer
    return answers


def _send(commands: list[list[Any]], *, force: bool, single: bool) -> list[Any]:
    """One REST call: the answers, each a value or a RedisCommandError; raises RedisUnavailable."""
    _gate(force=force)
    if (tcp := config.valkey_url()) is not None:  # the Dakar server: RESP over TCP, this module's bookkeeping
        from lib.edge import valkey

        return valkey.send(tcp, commands, sys.modules[__name__])
    import httpx

    settings = config.upstash()  # ConfigurationError names the missing variable: not an outage
    rest = _clients.get()
    http = rest.http()
    body = json.dumps(commands[0] if single else commands, ensure_ascii=False, separators=(",", ":"))
    headers = {"Authorization": f"Bearer {settings.token}", "Content-Type": "application/json"}
    if rest.sync is not None:
        headers[SYNC_TOKEN] = rest.sync
    start = time.perf_counter()
    try:
        response = http.post(settings.url if single else f"{settings.url}/pipeline",
                             content=body.encode("utf-8"), headers=headers)
    except httpx.TransportError as exc:  # refused, reset, timed out, DNS...
        breaker.failure()
        raise RedisUnavailable(f"Upstash did not answer: {type(exc).__name__}: {exc}") from exc
    finally:
        _record(start, len(commands))
    answers = _answers(response, len(commands), single)
    rest.keep_sync(response.headers.get(SYNC_TOKEN))
    if quota := _quota(refusal := _refusal(response, answers)):
        raise _quota_hit(quota, refusal)
    if answers is None:
        breaker.failure()
        error = RedisRejected if 400 < response.status_code < 500 else RedisUnavailable
        raise error(f"Upstash answered HTTP {response.status_code}: {response.text[:200]!r}")
    breaker.success()
    if isinstance(answers, RedisCommandError):  # the whole request refused by Upstash
        raise answers
    return answers


def _refusal(response: Any, answers: list[Any] | RedisCommandError | None) -> str:
    """The message of Upstash's refusal of the whole request ('' if none): a quota answer comes as
    the request's one `{"error"}`, whatever the HTTP status."""
    if isinstance(answers, RedisCommandError):
        return str(answers)
    if isinstance(answers, list):
        return str(answers[0]) if len(answers) == 1 and isinstance(answers[0], RedisCommandError) else ""
    try:
        payload = response.json()
    except ValueError:
        return ""
    return payload["error"] if isinstance(payload, dict) and isinstance(payload.get("error"), str) else ""


def _gate(*, force: bool) -> None:
    """RedisSkipped while the breaker is open, unless `force`."""
    if not force and not breaker.allow():
        raise RedisSkipped("Upstash skipped: the circuit breaker is open after a recent failure")


def _record(start: float, commands: int) -> None:
    """One REST call begun at `start` (perf_counter) and its commands, in the request's tally (lib/context)."""
    context.record_call(start, commands)


def _answers(response: Any, expected: int, single: bool) -> list[Any] | RedisCommandError | None:
    """Upstash's answers in order; a RedisCommandError if it refused the whole request; None if the
    response is not Upstash's protocol (an outage, a proxy's page, a refused token, a rate limit)."""
    if response.status_code not in (200, 400):
        return None
    try:
        payload = response.json()
    except ValueError:
        return None
    if single:
        payload = [payload]
    elif isinstance(payload, dict) and isinstance(payload.get("error"), str) and response.status_code == 400:
        return _command_error(payload["error"])
    if not isinstance(payload, list) or len(payload) != expected:
        return None
    out: list[Any] = []
    for entry in payload:
        if isinstance(entry, dict) and "result" in entry:
            out.append(entry["result"])
        elif isinstance(entry, dict) and isinstance(entry.get("error"), str):
            out.append(_command_error(entry["error"]))
        else:
            return None
    return out
