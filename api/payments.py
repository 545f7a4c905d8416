"""POST /api/payments (the tenant starts paying a month's rent) and GET /api/payments?lease_id= (cached)."""

from pydantic import BaseModel, ConfigDict, Field

from lib import payments, writes
from lib.errors import PaymentInProgress
from lib.http import Endpoint, Reply

MAX_ID = 9_223_372_036_854_775_807


class PaymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_id: int = Field(gt=0, le=MAX_ID, strict=True)
    period: str | None = Field(default=None, pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")


class handler(Endpoint):
    def get(self, req):
        req.refuse_unknown_query({"lease_id"})
        lease_id = req.query_id("lease_id")
        return {"payments": payments.list_for(req.user(), lease_id)}

    def post(self, req):
        user = req.user()
        body = req.body_as(PaymentRequest)
        return writes.idempotent(
            req.header("Idempotency-Key"), user.id, "POST /api/payments", body.model_dump(), PaymentInProgress,
            lambda: answer(payments.start(user, body.lease_id, body.period)),
        )


def answer(started: payments.Started) -> Reply:
    """201 with a new payment, 200 with the pending one already there (the same body)."""
    return Reply({"payment": started.payment}, 201 if started.created else 200)
