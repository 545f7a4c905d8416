"""Fixtures for tests/lib: the fake world of the write path (tests/world.py), lib on the real stand-ins (tests/standins.py)."""

from tests.standins import admin, configured, signed_in, standin  # noqa: F401  (fixtures, by name)
from tests.world import world  # noqa: F401  (a fixture: pytest finds it by name)
