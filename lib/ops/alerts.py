"""Alerts: each objective missed, or something broken, for a few minutes in a row; evaluated by the cron.

Every minute the cron (api/cron/reconcile) calls `run`: it reads the last LOOKBACK minutes' counters
and the alerts' state in one command, samples the gauges (Redis memory and keys, the outbox
backlog) and writes them with the state in one more. Each rule gives one condition (one condition,
one alert); `step` applies the conditions to the state, purely:

    quiet ──condition held HOLD evaluations in a row──▶ firing    (logged once as an error; POSTed)
    firing ──condition absent HOLD evaluations in a row──▶ quiet   (logged once as an error)

An evaluation counts once per minute, however often the cron is called. A condition that cannot be
known this minute (Redis unreachable, so its counters are not readable) leaves its alert as it is.
A firing alert is POSTed to ALERT_WEBHOOK_URL as `{"text": ...}` once when it fires (again next
minute if the POST failed), never twice for one alert within REPOST seconds (an alert that clears
and fires again within the hour is posted once the hour is over, if it still fires); a clear is
logged and leaves the page, it is not POSTed. While Redis is
unreachable the state lives in the cron's instance only (it cannot be written): a warm instance
keeps counting, a fresh one starts over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from lib import config, db, keys, metrics
from lib.cache import outbox as outbox_module
from lib.edge import upstash
from lib.errors import ConfigurationError, DousellError
from lib.ops import recorder, report, series
from lib.ops.report import OBJECTIVES

log = logging.getLogger(__name__)

HOLD = 3  # evaluations (minutes) in a row a condition must hold to fire, or be absent to clear
REPOST = 3600  # seconds: at most one POST per alert per hour
LOOKBACK = 5  # minutes of counters each evaluation looks at (the current one included)
MIN_SAMPLES = 5  # reads or requests below which a rate says nothing
ERROR_RATE = 0.05  # 5xx over requests
OUTBOX_LATE = 300  # seconds the oldest change may wait in the outbox before its backlog is an alert
# Upstash's "ERR max daily request limit exceeded" and "ERR max requests limit exceeded" (monthly)
QUOTA_MARKS = ("max daily request limit", "max requests limit")

Condition = tuple[bool, str] | None  # (holds, French message) or None: unknown this minute


@dataclass
class Signals:
    """What one evaluation knows: the lookback's summed counters (None: Redis unreachable), the
    gauges sampled now, and the figures read from elsewhere (None when they could not be read)."""

    totals: Mapping[str, int] | None
    gauges: dict[str, int] = field(default_factory=dict)  # sampled now: memory, maxmemory, keys, outbox
    memory_ratio: float | None = None
    redis_error: str | None = None
    outbox: Mapping[str, Any] | None = None
    quota: Mapping[str, str] | None = None  # lib/edge/upstash.quota_hold(): Redis held off by a used-up quota
    needs_review: int | None = None


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}".replace(".", ",") + " %"


def hit_rate(s: Signals) -> Condition:
    if s.totals is None:
        return None
    cache = report.summarize(s.totals, {}, None)["cache"]
    if cache["reads"] < MIN_SAMPLES:
        return False, ""
    return cache["hit_rate"] <= OBJECTIVES["hit_rate"], (
        f"Taux de succès du cache à {_pct(cache['hit_rate'])} sur {LOOKBACK} minutes (objectif : plus de 90 %).")


def latency(s: Signals) -> Condition:
    if s.totals is None:
        return None
    api = report.summarize(s.totals, {}, None)["latency"]["api"]
    if api["count"] < MIN_SAMPLES:
        return False, ""
    p50 = f"{api['p50_ms']:.1f}".replace(".", ",")
    return api["p50_ms"] >= OBJECTIVES["latency_p50_ms"], (
        f"Latence P50 de l'API à {'plus de ' if api['p50_above'] else ''}{p50} ms sur {LOOKBACK} minutes "
        "(objectif : moins de 10 ms).")


def locks(s: Signals) -> Condition:
    if s.totals is None:
        return None
    figures = report.summarize(s.totals, {}, None)["locks"]
    rate = figures["prevented_rate"]
    return rate is not None and rate < OBJECTIVES["double_operations_prevented"], (
        f"Verrous : {figures['expired']} expiré(s) pendant le travail de leur détenteur en {LOOKBACK} minutes "
        "(objectif : 100 % des opérations protégées).")


def memory(s: Signals) -> Condition:
    if s.memory_ratio is None:
        return None
    return s.memory_ratio >= OBJECTIVES["memory_alert_ratio"], (
        f"Mémoire Redis à {_pct(s.memory_ratio)} du maximum (alerte au-delà de 80 %).")


def redis(s: Signals) -> Condition:
    """Redis unusable: the cron cannot reach it, or requests were served while the breaker skipped it."""
    if s.redis_error is not None:
        return not _quota(s), "Redis injoignable : le site répond depuis la base de données."
    skipped = (s.totals or {}).get("breaker:open", 0)
    return skipped > 0, (f"Redis contourné pour {skipped} requête(s) en {LOOKBACK} minutes (disjoncteur ouvert) : "
                         "le site répond depuis la base de données.")


def quota(s: Signals) -> Condition:
    """Upstash's request quota used up: every call refused until its window can have reset."""
    return (_quota(s), "Quota de commandes Upstash atteint : le cache est contourné jusqu'à la fin de la période "
                       "du quota (le jour UTC pour le quota quotidien).")


def _quota(s: Signals) -> bool:
    """The edge holds Redis off for a used-up quota (its calls are then skipped, not refused), or the
    cron's own call was just refused for it."""
    return s.quota is not None or (s.redis_error is not None and any(m in s.redis_error for m in QUOTA_MARKS))


def outbox(s: Signals) -> Condition:
    if s.outbox is None:
        return None
    waiting, oldest = int(s.outbox.get("pending") or 0), int(s.outbox.get("oldest_seconds") or 0)
    return waiting > 0 and oldest >= OUTBOX_LATE, (
        f"Invalidations en retard : {waiting} changement(s) en attente, le plus ancien depuis {oldest // 60} min.")


def needs_review(s: Signals) -> Condition:
    if s.needs_review is None:
        return None
    return s.needs_review > 0, f"{s.needs_review} paiement(s) à vérifier (statut needs_review)."


def errors(s: Signals) -> Condition:
    if s.totals is None:
        return None
    requests = report.summarize(s.totals, {}, None)["latency"]["api"]["count"]
    failed = s.totals.get("http:5xx", 0)
    if requests < MIN_SAMPLES:
        return False, ""
    return failed / requests >= ERROR_RATE, (
        f"Erreurs serveur : {_pct(failed / requests)} des requêtes en 5xx sur {LOOKBACK} minutes.")


RULES: dict[str, Callable[[Signals], Condition]] = {
    "hit_rate": hit_rate, "latency_p50": latency, "locks": locks, "redis_memory": memory, "redis": redis,
    "upstash_quota": quota, "outbox_backlog": outbox, "payments_needs_review": needs_review, "errors_5xx": errors,
}


@dataclass
class Event:
    """An alert that changed this evaluation: `fired` or `cleared`."""

    name: str
    kind: str
    message: str


def step(state: dict[str, Any], conditions: Mapping[str, Condition], minute: int) -> list[Event]:
    """Apply one minute's conditions to `state` (changed in place); the alerts that fired or cleared.
    A minute already evaluated changes nothing."""
    if state.get("_minute", -1) >= minute:
        return []
    state["_minute"] = minute
    events = []
    for name, condition in conditions.items():
        if condition is None:
            continue
        holds, message = condition
        entry = state.setdefault(name, {"firing": False, "streak": 0, "since": None, "posted": None, "message": ""})
        if holds:
            entry["message"] = message
        entry["streak"] = entry["streak"] + 1 if holds != entry["firing"] else 0
        if entry["streak"] == 1 and holds:
            entry["started"] = minute * 60  # when the condition began to hold: the alert's "since"
        if entry["streak"] >= HOLD:
            entry["firing"], entry["streak"] = holds, 0
            if holds:
                entry["since"] = entry.get("started", minute * 60)
            events.append(Event(name, "fired" if holds else "cleared", entry["message"]))
    return events


_state: dict[str, Any] = {}  # the last state this instance saw: used while Redis is unreachable


def run(post: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The cron's alerts job: evaluate, log, POST what fired, save. `post(url, body)` defaults to httpx."""
    global _state
    now = metrics.clock()
    minute = int(now) // 60
    signals, state = _gather(minute)
    if state is None or _state.get("_minute", -1) > state.get("_minute", -1):
        # Redis unreadable, or back after minutes this instance evaluated without saving: its memory
        # is the newer state (an alert fired during the outage is not fired, nor POSTed, twice).
        state = json.loads(json.dumps(_state))
    events = step(state, {name: rule(signals) for name, rule in RULES.items()}, minute)
    for event in events:
        log.error("alert %s %s: %s", event.name, event.kind, event.message)
    posted = 0
    for name, entry in state.items():
        # Each firing once (a POST that failed is tried again next minute), never twice within REPOST.
        if not isinstance(entry, dict) or not entry.get("firing"):
            continue
        last = entry.get("posted")
        if (last is None or last < entry["since"]) and (last is None or now - last >= REPOST):
            if _post(post, Event(name, "fired", entry["message"])):
                entry["posted"] = now
                posted += 1
    _state = state
    if signals.totals is not None:
        _save(state, signals)
    return {"firing": sorted(n for n, e in state.items() if isinstance(e, dict) and e.get("firing")),
            "fired": sum(e.kind == "fired" for e in events), "cleared": sum(e.kind == "cleared" for e in events),
            "posted": posted}


def _gather(minute: int) -> tuple[Signals, dict[str, Any] | None]:
    """The signals of this minute and the saved state (None if Redis could not be read)."""
    names = [keys.metrics_bucket("m", n) for n in range(minute - LOOKBACK + 1, minute + 1)]
    signals = Signals(totals=None)
    state: dict[str, Any] | None = None
    try:
        read, info, dbsize = upstash.pipeline([series.SERIES.command([*names, keys.alerts_state()], []),
                                               ["INFO", "memory"], ["DBSIZE"]])
        if isinstance(read, upstash.RedisError):
            raise read
        signals.totals = {str(read[0][i]): int(read[0][i + 1]) for i in range(0, len(read[0]) - 1, 2)}
        state = json.loads(read[1]) if isinstance(read[1], str) else {}
        fields = report.parse_info(info) if isinstance(info, str) else {}
        used, maximum = fields.get("used_memory", ""), fields.get("maxmemory", "")
        if used.isdigit() and maximum.isdigit() and int(maximum):
            signals.memory_ratio = int(used) / int(maximum)
            signals.gauges.update(memory=int(used), maxmemory=int(maximum))
        if isinstance(dbsize, int):
            signals.gauges["keys"] = dbsize
    except (upstash.RedisError, ConfigurationError) as exc:
        signals.redis_error = str(exc)
        signals.quota = upstash.quota_hold()
    except ValueError:  # a state that is not JSON: start over rather than fail the cron
        state = {}
    try:
        signals.outbox = outbox_module.backlog()  # the cron's other job drains it; here it is only counted
    except DousellError as exc:
        log.warning("alerts: the outbox backlog could not be read (%s)", exc.code)
    try:
        answer = db.run(lambda: db.service().from_("rental_payments").select("id", count="exact")
                        .eq("status", "needs_review").limit(1).execute())
        signals.needs_review = int(answer.count or 0)
    except DousellError as exc:
        log.warning("alerts: payments needing review could not be counted (%s)", exc.code)
    return signals, state


def _save(state: dict[str, Any], signals: Signals) -> None:
    """The state and this minute's gauges, in one REST call; a failure is logged (next minute retries)."""
    gauges = dict(signals.gauges)
    if signals.outbox is not None:
        gauges["outbox"] = int(signals.outbox.get("pending") or 0)
    try:
        upstash.pipeline([["SET", keys.alerts_state(), json.dumps(state, separators=(",", ":"))],
                          recorder.gauges_command(gauges)])
    except (upstash.RedisError, ConfigurationError) as exc:
        log.warning("alerts: the state could not be saved (%s)", exc)


def _post(post: Callable[[str, dict[str, Any]], None] | None, event: Event) -> bool:
    url = config.alert_webhook_url()
    if url is None:
        return False
    body = {"text": f"[Dousell Immo] Alerte {event.name} : {event.message}"}
    try:
        (post or _http_post)(url, body)
    except httpx.HTTPError as exc:  # a webhook down must not fail the cron; logged, tried again next minute
        log.warning("alerts: the webhook POST for %s failed (%s)", event.name, type(exc).__name__)
        return False
    return True


def _http_post(url: str, body: dict[str, Any]) -> None:
    httpx.post(url, json=body, timeout=5.0).raise_for_status()
