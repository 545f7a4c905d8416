"""GET /api/visits/slots?property_id=: the property's free visit slots, from the cache (2 min)."""

from typing import Any

from lib.domain import visits
from lib.errors import InvalidFilter
from lib.web.http import Endpoint
from lib.web.request import Request


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        req.refuse_unknown_query({"property_id"}, InvalidFilter)
        property_id = req.query_id("property_id", InvalidFilter)
        return {"property_id": property_id, "slots": visits.free_slots(property_id)}
