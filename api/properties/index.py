"""GET /api/properties[?city=]: published properties, newest first, from the cache."""

from lib import properties
from lib.errors import InvalidFilter
from lib.http import Endpoint


class handler(Endpoint):
    def get(self, req):
        req.refuse_unknown_query({"city"}, InvalidFilter)
        city = properties.canonical_city(req.query["city"]) if "city" in req.query else None
        rows = properties.list_public(city)
        return {"properties": rows, "count": len(rows)}
