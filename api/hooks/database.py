"""POST /api/hooks/database: the database's webhook, signed; the changed rows' keys are invalidated, whoever wrote them.

One call per statement (supabase/migrations/20261207000010_security.sql): the body carries the statement's
first changed row, and the drain applies every row the outbox holds.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from lib import config, signature
from lib.cache import invalidation, outbox
from lib.web.http import Endpoint
from lib.web.request import Request

Table = Literal[invalidation.TABLES]  # type: ignore[valid-type]


class DatabaseChange(BaseModel):
    """The body a Supabase Database Webhook sends (supabase_functions.http_request); other fields ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["INSERT", "UPDATE", "DELETE"]
    table: Table
    schema_: Literal["public"] = Field(alias="schema")
    record: dict[str, Any] | None = Field(default=None, validate_default=True)
    old_record: dict[str, Any] | None = Field(default=None, validate_default=True)

    @field_validator("record", "old_record")
    @classmethod
    def present_for_its_type(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        needs = {"record": ("INSERT", "UPDATE"), "old_record": ("UPDATE", "DELETE")}[str(info.field_name)]
        if value is None and info.data.get("type") in needs:
            raise PydanticCustomError("missing", f"{info.field_name} is required for {info.data['type']}")
        return value


class handler(Endpoint):
    def post(self, req: Request) -> dict[str, Any]:
        # Over the raw bytes, before the body is parsed: the signature covers exactly what was sent.
        secret = config.require("DATABASE_WEBHOOK_SECRET")  # unset: 500 naming it, the hook never open
        signature.require_signature(req.header(signature.HEADER), req.body, secret, "database-webhook")
        change = req.body_as(DatabaseChange)
        return outbox.on_database_change(change.model_dump(by_alias=True))
