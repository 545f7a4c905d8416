"""GET /api/profile (cached 1 h) and PATCH /api/profile: the signed-in user's own profile."""

from typing import Any

from pydantic import Field

from lib.domain import account
from lib.web.http import Endpoint
from lib.web.models import Changes
from lib.web.request import Request


class ProfileChanges(Changes):
    full_name: str | None = Field(default=None, min_length=2, max_length=120)
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9 ]{7,20}$")


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        return {"profile": account.profile(req.user())}

    def patch(self, req: Request) -> dict[str, Any]:
        user = req.user()
        req.rate_limit(user)
        changes = req.body_as(ProfileChanges).model_dump(exclude_unset=True)
        return {"profile": account.update_profile(user, changes)}
