"""GET /api/properties[?city=&page=&per_page=]: one page of the published properties, newest first, from the cache."""

from typing import Any

from lib.domain import properties
from lib.errors import InvalidFilter
from lib.web.http import Endpoint
from lib.web.request import QueryInt, Request

# Read by hand, not by a pydantic model: the hottest read path does not pay for pydantic's import.
QUERY: dict[str, type[str] | QueryInt] = {
    "city": str,
    "page": QueryInt(1, ge=1),
    "per_page": QueryInt(properties.LIST_PER_PAGE, ge=1, le=properties.MAX_PER_PAGE),
}


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        query = req.query_fields(QUERY, InvalidFilter)
        properties.refuse_too_deep(query["page"], query["per_page"])
        city = properties.canonical_city(query["city"]) if query["city"] is not None else None
        return properties.list_public(city, query["page"], query["per_page"])
