"""GET /api/search: filters validated (422 invalid_filter), put in canonical form, cached by digest."""

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from lib.domain import properties
from lib.errors import InvalidFilter
from lib.web.http import Endpoint
from lib.web.request import Request


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    city: str | None = Field(default=None, max_length=60)
    type: properties.PropertyType | None = None
    min_price: int | None = Field(default=None, ge=0, le=1_000_000_000)
    max_price: int | None = Field(default=None, ge=0, le=1_000_000_000)
    bedrooms: int | None = Field(default=None, ge=0, le=50)
    q: str | None = Field(default=None, max_length=100)
    page: int = Field(default=1, ge=1)
    per_page: int = Field(default=20, ge=1, le=50)

    @model_validator(mode="before")
    @classmethod
    def empty_means_absent(cls, data: Any) -> Any:
        # HTML forms send `min_price=` for a field left blank.
        return {name: value for name, value in data.items() if value != ""} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def prices_in_order(self) -> Self:
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise PydanticCustomError("price_range", "min_price is above max_price")
        return self


def canonical(filters: SearchFilters) -> dict[str, Any]:
    """One spelling per search: empty values dropped, city and text normalised, defaults explicit."""
    values = filters.model_dump(exclude_none=True)
    values = {name: value for name, value in values.items() if value != ""}
    if "city" in values:
        values["city"] = properties.canonical_city(values["city"])
    if "q" in values:
        values["q"] = properties.clean_words(values["q"], field="q", max_length=100).casefold()
        if len(values["q"]) < properties.MIN_QUERY:
            # A trigram index needs three characters in a row: a shorter `q` would read every listing.
            raise InvalidFilter(details=[{"field": "q", "code": "too_short",
                                          "message": f"Au moins {properties.MIN_QUERY} caractères."}])
    return values


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        filters = canonical(req.query_as(SearchFilters, InvalidFilter))
        properties.refuse_too_deep(filters["page"], filters["per_page"])
        return properties.search(filters)
