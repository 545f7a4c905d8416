"""Per-request bookkeeping shared by lib and the HTTP layer: timings and cache status.

A handler runs one request at a time on its thread; the context lives in a ContextVar so
lib/cache/aside and lib/db can add their durations without being handed an object.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass
class RequestContext:
    started: float = field(default_factory=time.perf_counter)
    timings_ms: dict[str, float] = field(default_factory=dict)
    cache_status: str | None = None
    cache_polls: int = 0  # READ calls made waiting for another request's fill (lib/cache/aside)

    def add_time(self, name: str, ms: float) -> None:
        self.timings_ms[name] = self.timings_ms.get(name, 0.0) + ms


_current: ContextVar[RequestContext | None] = ContextVar("dousell_request", default=None)


def begin() -> RequestContext:
    ctx = RequestContext()
    _current.set(ctx)
    return ctx


def current() -> RequestContext | None:
    """This request's context (None outside a request); bench/ reads the cache status from it."""
    return _current.get()


def set_cache_status(status: str) -> None:
    """Record HIT | MISS | STALE | BYPASS for the `X-Cache` header and the request log."""
    ctx = _current.get()
    if ctx is not None:
        ctx.cache_status = status


def count_poll() -> None:
    """One more poll of a key another request is filling (the bench reads the count per request)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.cache_polls += 1


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Add the block's duration to the `Server-Timing` entry `name` (`cache`, `db`, ...)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        ctx = _current.get()
        if ctx is not None:
            ctx.add_time(name, (time.perf_counter() - start) * 1000)


# -- what one request asked of Upstash (recorded by lib/edge/upstash, observed by lib/ops/recorder) --


@dataclass
class Tally:
    """What one request asked of Upstash: the duration of each REST call (ms) and the commands sent."""

    calls_ms: list[float] = field(default_factory=list)
    commands: int = 0


_tally: ContextVar[Tally | None] = ContextVar("dousell_upstash_tally", default=None)


def start_tally() -> tuple[Tally, Token[Tally | None]]:
    """Count this context's Upstash calls from now on; `stop_tally(token)` ends it."""
    tally = Tally()
    return tally, _tally.set(tally)


def stop_tally(token: Token[Tally | None]) -> None:
    _tally.reset(token)


def record_call(start: float, commands: int) -> None:
    """One REST call begun at `start` (perf_counter) and its commands, in the context's tally, if any."""
    tally = _tally.get()
    if tally is not None:
        tally.calls_ms.append((time.perf_counter() - start) * 1000)
        tally.commands += commands
