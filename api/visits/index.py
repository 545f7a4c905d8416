"""GET /api/visits lists the user's visits (cached 1 min); POST /api/visits books a free slot.

Booking: a lock per slot, the database as the fence, a per-user cap."""

from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError

from lib.domain import visits
from lib.errors import BookingInProgress
from lib.web import idempotency
from lib.web.http import Endpoint, Reply
from lib.web.models import Id
from lib.web.request import Request


class VisitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    property_id: Id
    starts_at: AwareDatetime

    @field_validator("starts_at", mode="before")
    @classmethod
    def iso_text(cls, value: Any) -> str:
        if not isinstance(value, str):  # a bare number would be read as a Unix time
            raise PydanticCustomError("datetime_type", "an ISO 8601 date-time string is expected")
        return value

    @field_validator("starts_at", mode="after")
    @classmethod
    def in_utc(cls, value: datetime) -> datetime:
        # `0001-01-01T00:00+01:00` is valid ISO 8601 but its UTC instant is year 0: Python cannot hold it.
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise PydanticCustomError("datetime_out_of_range", "the instant is outside years 1 to 9999") from None


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        req.refuse_unknown_query(set())
        return {"visits": visits.list_for(req.user())}

    def post(self, req: Request) -> Reply:
        user = req.user()
        req.rate_limit(user)
        body = req.body_as(VisitRequest)
        request = {"property_id": body.property_id, "starts_at": body.starts_at.isoformat()}
        return idempotency.idempotent(
            req.header("Idempotency-Key"), user.id, "POST /api/visits", request, BookingInProgress,
            lambda: Reply({"visit": visits.book(user, body.property_id, body.starts_at)}, 201),
        )
