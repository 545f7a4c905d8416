"""GET /api/profile (cached 1 h) and PATCH /api/profile: the signed-in user's own profile."""

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from lib import account
from lib.http import Endpoint


class ProfileChanges(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    full_name: str | None = Field(default=None, min_length=2, max_length=120)
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9 ]{7,20}$")

    @model_validator(mode="after")
    def something_to_change(self):
        if not self.model_fields_set:
            raise PydanticCustomError("nothing_to_change", "nothing to change")
        return self


class handler(Endpoint):
    def get(self, req):
        return {"profile": account.profile(req.user())}

    def patch(self, req):
        user = req.user()
        changes = req.body_as(ProfileChanges).model_dump(exclude_unset=True)
        return {"profile": account.update_profile(user, changes)}
