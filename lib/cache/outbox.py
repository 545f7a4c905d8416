"""The invalidation outbox: the API's writes carry a change id, and the drain claims, applies and deletes.

The database records every change to a row the API shows in `private.invalidation_outbox`,
in the change's own transaction (supabase/migrations/20261202000020). Draining it:

    claim_invalidations RPC       the oldest unclaimed rows, held 30 s (service role)
    tags of each row              invalidation.change_tags(table, old_record, record, owner_ids)
    minus what the API applied    the marker its own write left (dousell:meta:applied:{id})
    aside.invalidate(tags)        one Upstash call; Redis down → release the rows, stop
    complete_invalidations RPC    the applied rows are deleted

Bumping a tag twice is harmless (a new random version), so a row applied twice (a drainer
that died between bump and delete, a webhook racing the API's own bump) costs a miss, never
a stale read. Rows are never dropped unapplied: the worst case is a delay until the next
drain (webhook, cron every minute, or the first read after a Redis outage).

The API's own writes send `X-Dousell-Change: <id>` (one id per write): the trigger records it,
and the API bumps the tags itself before it answers (Principle 2) and marks the id applied in
the same Upstash call. The drain then bumps only the tags of that row the API did not (an
owner's dashboard it did not know, a concurrent change), instead of throwing away entries
refilled since.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lib import db, keys
from lib.cache import aside, invalidation, refill
from lib.edge import upstash
from lib.edge.upstash import RedisError
from lib.errors import DatabaseUnavailable, DousellError, ServiceUnavailable

log = logging.getLogger(__name__)

Q = TypeVar("Q")

CHANGE_HEADER = "X-Dousell-Change"  # PostgREST hands it to the trigger as request.headers->>'x-dousell-change'
BATCH = 200
HOLD_SECONDS = 30  # a claim outlives any drain call (bounded by the function's 30 s)


class Writes:
    """The change ids of one request's writes, so its own invalidation can mark them applied.

        writes = outbox.Writes()
        rows = db.run(lambda: writes.stamp(client.from_("profiles").update(changes).eq("id", uid)).execute())
        writes.applied(invalidation.change_tags("profiles", None, rows[0]))
    """

    def __init__(self) -> None:
        self.ids: list[str] = []

    def stamp(self, query: Q) -> Q:
        """`query` (a postgrest-py builder) with a fresh change id header; each write its own id, so a
        marker only ever covers writes that had returned before the bump that set it."""
        change = secrets.token_hex(16)
        self.ids.append(change)
        query.request.headers[CHANGE_HEADER] = change  # type: ignore[attr-defined]
        return query

    def applied(self, tags: Iterable[str], *, refills: Sequence[refill.Refill] = (),
                seen: dict[str, str | None] | None = None) -> bool:
        """Bump `tags` and mark these writes applied; `refills` / `seen`: what the writer fills
        as it bumps (lib/cache/refill.invalidate). False if Redis could not be told (the outbox keeps
        the changes: they are applied by the next drain)."""
        return refill.invalidate(sorted(set(tags)), changes=self.ids, refills=refills, seen=seen)

    def rpc(self, client: Any, function: str, params: dict[str, Any],
            errors: Mapping[str, Callable[[], DousellError]]) -> Any:
        """The database function `function(params)` through `client` (the caller says which role:
        SECURITY.md lists every `db.service()`), stamped; an error it raises by name (`raise
        exception 'slot_taken'`) becomes the one `errors` maps it to, any other propagates (503 if
        the database is away, 500 otherwise)."""
        try:
            return db.run(lambda: self.stamp(client.rpc(function, params)).execute()).data
        except db.DatabaseError as exc:
            error = errors.get(exc.message)
            if error is None:
                raise
            raise error() from exc


@dataclass
class Drained:
    """What one drain did."""

    applied: int = 0  # outbox rows whose tags are bumped and which are deleted
    already: int = 0  # of those, rows the API's own write had fully applied (nothing left to bump)
    deferred: int = 0  # rows handed back because Redis refused the bump
    tags: set[str] = field(default_factory=set)  # tags bumped
    more: bool = False  # the budget ran out with rows still claimable

    def body(self) -> dict[str, Any]:
        return {"applied": self.applied, "already_applied": self.already, "deferred": self.deferred,
                "invalidated": sorted(self.tags), "more": self.more}


class CacheUnreachable(ServiceUnavailable):
    """Redis refused the bump: the changes stay in the outbox for the next drain."""

    message = ("Le cache est injoignable : l'invalidation reste en file d'attente "
               "et sera appliquée dès son retour.")


def drain(*, batches: int = 5, batch: int = BATCH, seconds: float = 20.0, force: bool = False) -> Drained:
    """Apply up to `batches` × `batch` outbox rows, oldest first, within about `seconds`. Raises
    DatabaseUnavailable (or another DousellError) when the outbox cannot be read; Redis down is
    `deferred`, not an error. `force`: talk to Redis while the breaker is half-open (the probe)."""
    done = Drained()
    deadline = time.monotonic() + seconds
    for _ in range(batches):
        if time.monotonic() > deadline:
            break
        rows = _rpc("claim_invalidations", {"p_limit": batch, "p_hold_seconds": HOLD_SECONDS}) or []
        if not rows:
            return done
        ids = [row["id"] for row in rows]
        tags, already = _still_to_bump(rows, force)
        if tags and not aside.invalidate(sorted(tags), force=force):
            _release(ids)
            done.deferred += len(rows)
            return done
        _complete(ids)
        done.applied += len(rows)
        done.already += already
        done.tags |= tags
        if len(rows) < batch:
            return done
    done.more = True
    return done


def backlog() -> dict[str, Any]:
    """`{"pending", "oldest_seconds"}`: what waits in the outbox."""
    waiting: dict[str, Any] = _rpc("invalidation_backlog", {})
    return waiting


def on_database_change(change: dict[str, Any]) -> dict[str, Any]:
    """POST /api/hooks/database: the webhook says a row changed; its outbox row is committed
    (pg_net sends after commit), so draining now applies it, and anything older still waiting.

    The outbox unreadable: the change's own tags are bumped from the body (without the owners
    the trigger adds; the cron drains the full row later). Redis refusing: 503, nothing lost.
    """
    try:
        done = drain(batches=2, seconds=10.0)
    except DatabaseUnavailable:
        tags = sorted(row_tags(change))
        if not aside.invalidate(tags):
            raise CacheUnreachable() from None
        return {"invalidated": tags, "applied": 0, "already_applied": 0, "deferred": 0, "outbox": "unreachable"}
    if done.deferred:
        log.warning("outbox: %d changes deferred, Redis refused the bump", done.deferred)
        raise CacheUnreachable()
    return done.body()


def reconcile() -> dict[str, Any]:
    """The cron's job (every minute): drain whatever waits (lost webhooks, a Redis outage), then
    say what is left. Counts only: the tags can be thousands after an outage."""
    done = drain(batches=20)
    body = {**done.body(), "invalidated": len(done.tags), **backlog()}
    if done.deferred:
        raise CacheUnreachable(details=body)  # logged by the cron (lib/ops/cron), never sent
    return body


def row_tags(row: dict[str, Any]) -> set[str]:
    """The tags of one outbox row (or one webhook body: same `table`, `record`, `old_record`)."""
    table = str(row.get("table_name") or row.get("table") or "")
    if table not in invalidation.TABLES:
        log.warning("outbox row for unknown table %r: every public list and search invalidated", table)
    return set(invalidation.change_tags(table, row.get("old_record"), row.get("record"), row.get("owner_ids") or ()))


def _still_to_bump(rows: list[dict[str, Any]], force: bool = False) -> tuple[set[str], int]:
    """The union of the rows' tags, minus, row by row, what the API's own write already bumped."""
    changes = sorted({row["change_id"] for row in rows if row.get("change_id")})
    applied = _applied(changes, force)
    tags: set[str] = set()
    already = 0
    for row in rows:
        left = row_tags(row) - applied.get(row.get("change_id") or "", set())
        already += not left
        tags |= left
    return tags, already


def _applied(changes: list[str], force: bool = False) -> dict[str, set[str]]:
    """The tags each change id was marked applied with; {} when Redis cannot say (everything is
    then bumped again, which is only a few misses)."""
    if not changes:
        return {}
    try:
        found = upstash.execute(["MGET", *map(keys.applied_change, changes)], force=force)
    except RedisError as exc:
        log.warning("outbox: applied markers unreadable (%s); bumping every tag", exc)
        return {}
    out: dict[str, set[str]] = {}
    for change, raw in zip(changes, found or [], strict=False):
        if raw:
            try:
                out[change] = set(json.loads(raw))
            except (ValueError, TypeError):
                continue
    return out


def _rpc(name: str, params: dict[str, Any]) -> Any:
    client = db.service()
    return db.run(lambda: client.rpc(name, params).execute()).data


def _complete(ids: list[int]) -> None:
    try:
        _rpc("complete_invalidations", {"p_ids": ids})
    except DousellError as exc:
        # Applied but not deleted: the claim runs out and the next drain bumps them again (harmless).
        log.warning("outbox: %d applied rows not deleted (%s); they will be applied again", len(ids), exc.code)


def _release(ids: list[int]) -> None:
    try:
        _rpc("release_invalidations", {"p_ids": ids})
    except DousellError as exc:
        log.warning("outbox: %d rows not released (%s); claimable again in %d s", len(ids), exc.code, HOLD_SECONDS)


def drain_after_outage() -> bool:
    """The recovery hook (lib/cache/aside): one batch before the probing read trusts an entry. False only
    if Redis failed again; an unreachable database leaves the outbox to the cron."""
    try:
        done = drain(batches=1, force=True)
    except DousellError as exc:
        log.warning("outbox: not drained after the Redis outage (%s); the cron will", exc.code)
        return True
    return done.deferred == 0


aside.on_recovery(drain_after_outage)
