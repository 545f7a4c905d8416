"""Fixtures for tests/lib: the fake world of the write path (tests/world.py)."""

from tests.world import world  # noqa: F401  (a fixture: pytest finds it by name)
