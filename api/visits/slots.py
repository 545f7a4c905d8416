"""GET /api/visits/slots?property_id=: the property's free visit slots, from the cache (2 min)."""

from lib import visits
from lib.errors import InvalidFilter
from lib.http import Endpoint


class handler(Endpoint):
    def get(self, req):
        req.refuse_unknown_query({"property_id"}, InvalidFilter)
        property_id = req.query_id("property_id", InvalidFilter)
        return {"property_id": property_id, "slots": visits.free_slots(property_id)}
