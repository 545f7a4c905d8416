"""lib/web/models: a body's id (a positive bigint, a JSON integer) and the PATCH base (something to change, no control characters)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lib.web.models import Changes, Id
from lib.web.request import MAX_ID


class Booking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    property_id: Id


class Rename(Changes):
    title: str | None = Field(default=None, max_length=20)
    note: str | None = None


@pytest.mark.parametrize("value", [1, 789, MAX_ID])
def test_an_id_is_any_positive_integer_postgres_bigint_holds(value: int) -> None:
    assert Booking.model_validate({"property_id": value}).property_id == value


@pytest.mark.parametrize(("value", "code"), [
    (0, "greater_than"),
    (-5, "greater_than"),
    (MAX_ID + 1, "less_than_equal"),  # past bigint: PostgREST would answer 400, not 404
    ("5", "int_type"),  # strict: a JSON string is not an id
    (5.0, "int_type"),
    (True, "int_type"),  # a JSON boolean is not 1
    (None, "int_type"),
])
def test_anything_else_is_refused_with_its_reason(value: object, code: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Booking.model_validate({"property_id": value})
    assert [e["type"] for e in refused.value.errors()] == [code]


def test_a_patch_with_nothing_to_change_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        Rename.model_validate({})
    assert refused.value.errors()[0]["type"] == "nothing_to_change"


def test_a_patch_that_sets_a_field_to_null_still_changes_something() -> None:
    assert Rename.model_validate({"note": None}).model_dump(exclude_unset=True) == {"note": None}


def test_an_unknown_field_is_refused_not_ignored() -> None:
    with pytest.raises(ValidationError) as refused:
        Rename.model_validate({"title": "Villa", "owner_id": "someone-else"})
    assert [e["type"] for e in refused.value.errors()] == ["extra_forbidden"]


def test_text_is_trimmed_before_its_length_is_checked() -> None:
    assert Rename.model_validate({"title": "  Villa à Ngor  "}).title == "Villa à Ngor"
    assert Rename.model_validate({"title": " " * 30 + "Villa"}).title == "Villa"


@pytest.mark.parametrize("text", ["Villa\x00", "Vil\x1bla", "\x07"])
def test_control_characters_are_refused(text: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Rename.model_validate({"title": text})
    assert refused.value.errors()[0]["type"] == "control_characters"


def test_newlines_and_tabs_are_text() -> None:
    assert Rename.model_validate({"note": "Ligne 1\n\tLigne 2"}).note == "Ligne 1\n\tLigne 2"
