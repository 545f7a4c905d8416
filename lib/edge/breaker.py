"""A circuit breaker: after a failure, skip the dependency for a growing interval; one probe decides to close.

    closed ──failure──▶ open for `base` s ──interval over──▶ half-open: one caller probes
    half-open ──success──▶ closed          half-open ──failure──▶ open for twice as long (≤ `cap`)

`hold(seconds, reason)` opens it for a known time instead (a used-up quota: until its window can have
reset); its probe then decides as above. `reason` says why it is open ("outage", "daily_quota",
"monthly_quota"), for /api/health and /api/metrics.

lib/edge/upstash holds the one breaker in front of Upstash, so an outage costs one timeout per warm
instance per interval, not one per request.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

State = Literal["closed", "open", "half-open"]

# Replaceable in tests: the clock that decides when an open breaker lets a probe through.
clock = time.monotonic


class Breaker:
    """Skips a dependency after a failure for a growing interval; one probe per interval decides to close."""

    def __init__(self, base: float = 1.0, cap: float = 30.0) -> None:
        self.base, self.cap = base, cap
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.state: State = "closed"
        self.interval = 0.0
        self.until = 0.0
        self.reason: str | None = None

    @property
    def closed(self) -> bool:
        """Calls go out: no failure since the last success."""
        return self.state == "closed"

    @property
    def probing(self) -> bool:
        """Half-open: one caller was let through to probe, and its answer is still to come."""
        return self.state == "half-open"

    def allow(self) -> bool:
        """True if a call may go out now: closed, or the one probe of a half-open breaker."""
        with self._lock:
            if self.state == "closed":
                return True
            if self.state == "open" and clock() >= self.until:
                self.state = "half-open"  # this caller probes; the others keep skipping
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.reset()

    def failure(self) -> None:
        with self._lock:
            # After a hold (interval 0) the back-off starts afresh at `base`.
            grown = min(self.cap, self.interval * 2)
            self.interval = self.base if self.state == "closed" or not self.interval else grown
            self.state = "open"
            self.until = clock() + self.interval
            self.reason = "outage"

    def hold(self, seconds: float, reason: str) -> float:
        """Open for `seconds` (a quota: until it can have reset), whatever the state; the next
        probe comes then, and a failure after it starts the outage back-off afresh. Returns when
        the hold ends (by `clock`)."""
        with self._lock:
            self.state = "open"
            self.interval = 0.0
            self.until = clock() + seconds
            self.reason = reason
            return self.until

    def seconds_left(self) -> float:
        """How long the breaker stays open (0 when closed or due for a probe)."""
        return max(0.0, self.until - clock()) if self.state == "open" else 0.0
