"""A circuit breaker: after a failure, skip the dependency for a growing interval; one probe decides to close.

    closed ──failure──▶ open for `base` s ──interval over──▶ half-open: one caller probes
    half-open ──success──▶ closed          half-open ──failure──▶ open for twice as long (≤ `cap`)

lib/edge/upstash holds the one breaker in front of Upstash, so an outage costs one timeout per warm
instance per interval, not one per request.
"""

from __future__ import annotations

import threading
import time

# Replaceable in tests: the clock that decides when an open breaker lets a probe through.
clock = time.monotonic


class Breaker:
    """Skips a dependency after a failure for a growing interval; one probe per interval decides to close."""

    def __init__(self, base: float = 1.0, cap: float = 30.0) -> None:
        self.base, self.cap = base, cap
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.state = "closed"
        self.interval = 0.0
        self.until = 0.0

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
            self.interval = self.base if self.state == "closed" else min(self.cap, self.interval * 2)
            self.state = "open"
            self.until = clock() + self.interval
