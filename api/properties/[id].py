"""GET /api/properties/{id} (cached) and PATCH by its owner (invalidates every key that shows it)."""

from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from lib.domain import properties
from lib.web.http import Endpoint
from lib.web.models import Changes
from lib.web.request import Request


class PropertyChanges(Changes):
    title: str | None = Field(default=None, min_length=3, max_length=200)
    description: str | None = Field(default=None, max_length=5000)
    city: str | None = Field(default=None, min_length=1, max_length=60)
    district: str | None = Field(default=None, max_length=80)
    type: properties.PropertyType | None = None
    price: int | None = Field(default=None, gt=0, le=1_000_000_000, strict=True)
    bedrooms: int | None = Field(default=None, ge=0, le=50, strict=True)
    status: Literal["draft", "published", "archived"] | None = None

    @field_validator("title", "description", "city", "type", "price", "bedrooms", "status", mode="before")
    @classmethod
    def not_null(cls, value: Any) -> Any:
        if value is None:
            raise PydanticCustomError("not_nullable", "this field cannot be null")
        return value


class handler(Endpoint):
    path_param = "id"

    def get(self, req: Request) -> dict[str, Any]:
        return {"property": properties.get_public(req.path_id())}

    def patch(self, req: Request) -> dict[str, Any]:
        property_id = req.path_id()
        user = req.user()
        req.rate_limit(user)
        changes = req.body_as(PropertyChanges).model_dump(exclude_unset=True)
        return {"property": properties.update(user, property_id, changes)}
