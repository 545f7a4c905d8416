"""Fixtures for tests/api: lib on the real stand-ins (tests/standins.py), for the races run on the real database."""

from tests.standins import admin, configured, standin  # noqa: F401  (fixtures, by name)
from tests.world import on_standins  # noqa: F401  (a fixture)
