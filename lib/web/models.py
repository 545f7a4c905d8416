"""Shared pydantic bases for request bodies (imported only by endpoints that take a body)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lib.web.request import MAX_ID

# An id in a JSON body: a JSON integer (strict: not "5", not 5.0) that PostgreSQL's bigint holds.
Id = Annotated[int, Field(gt=0, le=MAX_ID, strict=True)]


class Changes(BaseModel):
    """A PATCH body: unknown fields refused, text trimmed, and at least one field given."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def printable(cls, value: object) -> object:
        # Postgres refuses NUL in text (22P05); other control characters have no place in a name.
        if isinstance(value, str) and any(ord(c) < 32 and c not in "\n\t" for c in value):
            raise PydanticCustomError("control_characters", "control characters are not allowed")
        return value

    @model_validator(mode="after")
    def something_to_change(self) -> Changes:
        if not self.model_fields_set:
            raise PydanticCustomError("nothing_to_change", "nothing to change")
        return self
