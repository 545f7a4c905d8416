"""The one instance of a client class a process uses: built at first use, swapped by a test with `using`.

    _clients = Slot(PostgREST)                  # a boundary module (lib/db): nothing is built at import
    _clients.get()                              # the instance in use: the default, built at the first call
    with db.using(PostgREST(http=mocked)):      # a test: its own instance, the previous one back afterwards

Each boundary module (lib/db, lib/auth, lib/edge/upstash, lib/edge/paydunya, lib/edge/valkey) holds its
client as an object of its own class in a Slot and exposes `using`; its module functions ask the Slot
at each call. The swap is process-wide, not per thread: a test's server threads see the test's instance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Slot[T]:
    """Where a module keeps its one client: `factory()` builds the default at the first `get()`."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._current: T | None = None

    def get(self) -> T:
        """The instance in use; the default is built on first call (one, whatever the threads asking)."""
        current = self._current
        if current is None:
            with self._lock:
                if self._current is None:
                    self._current = self._factory()
                current = self._current
        return current

    @contextmanager
    def using(self, instance: T) -> Iterator[T]:
        """`instance` in use inside the block, for every thread; what was in use before, back after
        (the default not yet built stays so). The caller owns `instance`: it is not closed here."""
        with self._lock:
            previous, self._current = self._current, instance
        try:
            yield instance
        finally:
            with self._lock:
                self._current = previous
