"""POST /api/payments (the tenant starts paying a month's rent) and GET /api/payments?lease_id= (cached)."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lib.domain import payments
from lib.errors import PaymentInProgress
from lib.web import idempotency
from lib.web.http import Endpoint, Reply
from lib.web.models import Id
from lib.web.request import Request


class PaymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_id: Id
    period: str | None = Field(default=None, pattern=payments.PERIOD_RE.pattern)


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        req.refuse_unknown_query({"lease_id"})
        lease_id = req.query_id("lease_id")
        return {"payments": payments.list_for(req.user(), lease_id)}

    def post(self, req: Request) -> Reply:
        user = req.user()
        req.rate_limit(user)
        body = req.body_as(PaymentRequest)
        return idempotency.idempotent(
            req.header("Idempotency-Key"), user.id, "POST /api/payments", body.model_dump(), PaymentInProgress,
            lambda: answer(payments.start(user, body.lease_id, body.period)),
        )


def answer(started: payments.Started) -> Reply:
    """201 with a new payment, 200 with the pending one already there (the same body)."""
    return Reply({"payment": started.payment}, 201 if started.created else 200)
