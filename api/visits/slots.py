"""GET /api/visits/slots?property_id=: the property's free visit slots, from the cache (2 min)."""

from lib import visits
from lib.errors import InvalidFilter
from lib.http import Endpoint


class handler(Endpoint):
    def get(self, req):
        req.refuse_unknown_query({"property_id"}, InvalidFilter)
        raw = req.query.get("property_id", "")
        if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 18 and int(raw) > 0):
            raise InvalidFilter(details=[{"field": "property_id", "code": "int_parsing",
                                          "message": "Identifiant de bien attendu (nombre entier positif)."}])
        property_id = int(raw)
        return {"property_id": property_id, "slots": visits.free_slots(property_id)}
