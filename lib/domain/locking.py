"""The one lock policy every write follows: the database is the fence, the Redis lock a courtesy.

`under_lock(name, busy, work)` runs a write's critical section; a third write flow simply calls it.
The mechanism (acquire, extend, release by token; the lock as a context manager) is lib/cache/locks;
this module says what a busy, missing or expired lock means to a write.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from lib.cache import locks
from lib.errors import DousellError

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCK_TTL = 30.0  # seconds; PayDunya's 10 s and the database's 5 s per call fit well inside


def under_lock(name: str, busy: type[DousellError], work: Callable[[], T], ttl: float = LOCK_TTL) -> T:
    """Run `work()` holding the Redis lock `name`; `busy()` is raised if someone else holds it.

    The policy of every write (a third write flow simply calls this):
    - busy after the lock's retry → `busy()` (409 "Paiement en cours", "Réservation en cours");
    - Redis down, slow, or skipped by the circuit breaker → `work()` runs without the lock and
      the database's constraints and RPCs decide alone;
    - the lock expired before we released it → logged (counted as `expired`), never an error:
      `work()` is done, and the database already fenced whatever ran meanwhile; Redis failing at
      the release → logged too, the lock expires by itself. `work()`'s own error propagates.
    """
    with contextlib.ExitStack() as held:  # the lock's `with`, entered only if it can be taken
        try:
            held.enter_context(locks.Lock(name, ttl, raise_on_release_error=False))
        except locks.LockBusy as exc:
            raise busy() from exc
        except locks.LockUnavailable as exc:
            log.warning("%s: relying on the database fence", exc)
        return work()
