"""A request as a handler sees it: query, `[id]`, JSON body, each validated into the contract's 400 or 422.

`Request.body_as(Model)` and `Request.query_as(Model)` turn pydantic's errors into a 422 that lists
each bad field with a French message; what cannot be read at all (not JSON, nested past the
recursion limit, NaN, lone surrogates) is a 400 `malformed_json`. A read path reads its query
without pydantic (a cold start pays for its import): `Request.query_fields`, `query_id`,
`refuse_unknown_query`. lib/web/http builds a Request per call.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from lib.errors import AnonymousNotAllowed, MalformedJSON, NotFound, ValidationFailed

if TYPE_CHECKING:  # pydantic is imported by the endpoints that take a body, never on the hot path
    from pydantic import BaseModel
    from pydantic_core import ValidationError

    from lib.auth import User

M = TypeVar("M", bound="BaseModel")

# An id in a path or a query string: a positive integer of at most 18 digits (openapi.json), so
# always within PostgreSQL's bigint. An id in a JSON body may be any positive bigint: MAX_ID
# (lib/web/models.Id).
ID_DIGITS = 18
MAX_ID = 2**63 - 1

# What pydantic's lax mode trims around a string before reading an int from it (Rust's `str::trim`,
# Unicode White_Space); Python's str.strip() would also take U+001C-U+001F, which pydantic refuses.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
               "\u2028\u2029\u202f\u205f\u3000"
_INT_DIGITS = 4_300  # pydantic's bound on the digits of an int, CPython's default int_max_str_digits
_JSON_INT = re.compile(r"-?(0|[1-9][0-9]*)")  # [0-9], not \d: `٣` and `５` are no integers here
_LEADING_DIGITS = re.compile(r"-?([1-9][0-9]*)")

# French messages for pydantic's error types; the type itself is kept as the detail's code.
_FIELD_MESSAGES = {
    "missing": "Champ obligatoire.",
    "extra_forbidden": "Champ inconnu.",
    "int_type": "Doit être un nombre entier.",
    "int_parsing": "Doit être un nombre entier.",
    "int_from_float": "Doit être un nombre entier.",
    "float_parsing": "Doit être un nombre.",
    "bool_parsing": "Doit être vrai ou faux.",
    "string_type": "Doit être une chaîne de caractères.",
    "string_too_short": "Texte trop court.",
    "string_too_long": "Texte trop long.",
    "string_pattern_mismatch": "Format invalide.",
    "greater_than": "Valeur trop petite.",
    "greater_than_equal": "Valeur trop petite.",
    "less_than": "Valeur trop grande.",
    "less_than_equal": "Valeur trop grande.",
    "literal_error": "Valeur non autorisée.",
    "enum": "Valeur non autorisée.",
    "datetime_parsing": "Date et heure invalides (format ISO 8601 attendu).",
    "datetime_type": "Date et heure invalides (format ISO 8601 attendu).",
    "timezone_aware": "La date doit préciser son fuseau horaire.",
    "datetime_out_of_range": "Date hors des limites acceptées.",
    "model_type": "Doit être un objet JSON.",
    "dict_type": "Doit être un objet JSON.",
    "not_nullable": "Ce champ ne peut pas être vide.",
    "nothing_to_change": "Aucun champ à modifier.",
    "unknown_parameter": "Paramètre inconnu.",
    "control_characters": "Caractères de contrôle interdits.",
}


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """One `{"field", "code", "message"}` per problem of a pydantic ValidationError."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in err.get("loc", ()) if part != "__root__") or "body"
        kind = err.get("type", "value_error")
        details.append({"field": loc, "code": kind, "message": _FIELD_MESSAGES.get(kind, "Valeur invalide.")})
    return details


def is_validation_error(exc: BaseException) -> TypeGuard[ValidationError]:
    # Checked by module so the hot path never imports pydantic just to catch its error.
    pydantic_core = sys.modules.get("pydantic_core")
    return pydantic_core is not None and isinstance(exc, pydantic_core.ValidationError)


@dataclass
class Request:
    """A parsed request, as a handler sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: Message  # http.server's headers: case-insensitive get()
    path_param: str | None
    body: bytes
    repeated: list[str] = field(default_factory=list)
    _user: User | None = field(default=None, init=False, repr=False)  # verified once per request
    _rate_limited: bool = field(default=False, init=False, repr=False)  # counted once per request

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value.strip() if isinstance(value, str) else None

    def path_id(self) -> int:
        """The `[id]` segment as a positive integer; anything else is a 404, not a crash."""
        found = _positive_id(self.path_param or "")
        if found is None:
            raise NotFound()
        return found

    def json(self) -> Any:
        """The body as JSON (400 `malformed_json` otherwise, also for what Python reads but JSON is not)."""
        if not self.body.strip():
            raise MalformedJSON("Le corps de la requête est vide : un objet JSON est attendu.")
        try:
            data = json.loads(self.body, parse_constant=_refuse_number, parse_float=_finite_float)
            # A lone surrogate (`"\ud800"`) parses, then fails whoever encodes it (httpx, Redis, the
            # log): refused here, where the client can be told.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except RecursionError as exc:  # `[[[[...`: C's json recursion guard, not a bug of ours
            raise MalformedJSON("Le corps de la requête est trop imbriqué.") from exc
        except ValueError as exc:  # JSONDecodeError, UnicodeError, too many digits for int()
            raise MalformedJSON() from exc
        return data

    def body_as(self, model: type[M]) -> M:
        """The JSON body validated by a pydantic model (422 with each bad field otherwise)."""
        data = self.json()
        if not isinstance(data, dict):
            raise MalformedJSON("Le corps de la requête doit être un objet JSON.")
        return self._validate(model, data, ValidationFailed)

    def refuse_unknown_query(self, allowed: set[str], error: type[ValidationFailed] = ValidationFailed) -> None:
        """A light check for endpoints whose query needs no model: unknown or repeated names are a 422."""
        bad = sorted(set(self.query) - allowed)
        details = [{"field": name, "code": "unknown_parameter", "message": _FIELD_MESSAGES["unknown_parameter"]}
                   for name in bad]
        details += [{"field": name, "code": "repeated", "message": "Paramètre répété."} for name in self.repeated]
        if details:
            raise error(details=details)

    def query_id(self, name: str, error: type[ValidationFailed] = ValidationFailed) -> int:
        """A required query parameter holding an id (a positive integer), or a 422 naming it."""
        found = _positive_id(self.query.get(name, ""))
        if found is None:
            raise error(details=[{"field": name, "code": "int_parsing",
                                  "message": "Identifiant attendu (nombre entier positif)."}])
        return found

    def query_fields(self, fields: Mapping[str, type[str] | QueryInt],
                     error: type[ValidationFailed] = ValidationFailed) -> dict[str, Any]:
        """The query read by hand, as `query_as` would with a model of `extra="forbid",
        str_strip_whitespace=True` whose fields are `str | None = None` (`str`) or bounded ints with
        a default (`QueryInt`): every name of `fields` in the result, the same 422 (pydantic's codes,
        the fields in their order, then the unknown names in the query's order), no pydantic."""
        if self.repeated:
            raise error(details=[
                {"field": name, "code": "repeated", "message": "Paramètre répété."} for name in self.repeated
            ])
        values: dict[str, Any] = {}
        details = []
        for name, kind in fields.items():
            raw = self.query.get(name)
            if isinstance(kind, QueryInt):
                value, code = (kind.default, None) if raw is None else kind.read(raw)
                if code is not None:
                    details.append({"field": name, "code": code, "message": _FIELD_MESSAGES.get(code, "Valeur invalide.")})
                values[name] = value
            else:
                values[name] = None if raw is None else raw.strip(_WHITE_SPACE)
        # pydantic's field for a name it cannot print (`?=1`): field_errors's fallback, kept as clients saw it.
        details += [{"field": name if name not in ("", "__root__") else "body", "code": "extra_forbidden",
                     "message": _FIELD_MESSAGES["extra_forbidden"]} for name in self.query if name not in fields]
        if details:
            raise error(details=details)
        return values

    def query_as(self, model: type[M], error: type[ValidationFailed] = ValidationFailed) -> M:
        """The query string validated by a pydantic model; a repeated parameter is refused."""
        if self.repeated:
            raise error(details=[
                {"field": name, "code": "repeated", "message": "Paramètre répété."} for name in self.repeated
            ])
        return self._validate(model, self.query, error)

    @staticmethod
    def _validate(model: type[M], data: dict[str, Any], error: type[ValidationFailed]) -> M:
        try:
            return model.model_validate(data)
        except Exception as exc:
            if is_validation_error(exc):
                raise error(details=field_errors(exc)) from exc
            raise

    def user(self) -> User:
        """The signed-in user (401 without a valid Supabase token; the token is verified once per
        request). On a write: 403 `anonymous_not_allowed` for an anonymous sign-in (free, unlimited
        accounts would void every per-account limit). Only reads: the write limits are counted by
        `rate_limit`, the write handler's next step."""
        from lib.auth import authenticate  # only signed-in endpoints pay for JWT imports
        from lib.web.ratelimit import WRITE_METHODS

        if self._user is None:
            self._user = authenticate(self.header("Authorization"))
        if self.method in WRITE_METHODS and self._user.is_anonymous:
            raise AnonymousNotAllowed()
        return self._user

    def rate_limit(self, user: User) -> None:
        """Count this write against `user`'s and the client address's rate limits (429 past either,
        lib/web/ratelimit): every write handler calls it right after `user()`, before reading the
        body or writing anything (tests/test_house_rules.py checks it). Counted once per request: a
        second call counts nothing; a read (GET) is never counted."""
        from lib.web import ratelimit  # only signed-in endpoints pay for the limiter's imports

        if self._rate_limited or self.method not in ratelimit.WRITE_METHODS:
            return
        self._rate_limited = True
        ratelimit.for_writes(self.method, user.id, ratelimit.client_ip(self.headers))


@dataclass(frozen=True)
class QueryInt:
    """An int query parameter for `Request.query_fields`: `default` when absent, else read as
    pydantic's lax mode reads a string (`Field(ge=..., le=...)`)."""

    default: int
    ge: int | None = None
    le: int | None = None

    def read(self, raw: str) -> tuple[int | None, str | None]:
        """(the value, None) or (None, the error's code, pydantic's)."""
        if (digits := _LEADING_DIGITS.match(raw)) and len(digits[1]) > _INT_DIGITS:
            return None, "int_parsing_size"
        value = _lax_int(raw)
        if value is None:
            return None, "int_parsing"
        if self.ge is not None and value < self.ge:
            return None, "greater_than_equal"
        if self.le is not None and value > self.le:
            return None, "less_than_equal"
        return value, None


def _lax_int(raw: str) -> int | None:
    """`raw` read as pydantic (2.14, lax mode) reads an int from a string, or None: a JSON integer, or
    once cleaned: trimmed, one `+` dropped, leading zeros dropped (`007`, `0_7`), a `.0…` fraction
    dropped (`5.00`), and single underscores between digits (`1_000`). ASCII digits only."""
    if (number := _json_int(raw)) is not None:
        return number
    text = raw.strip(_WHITE_SPACE)
    if text.startswith("+"):
        if text.startswith("+-"):
            return None
        text = text[1:]
    negative = text.startswith("-")
    if negative:
        if text.startswith(("--", "-+")):
            return None
        text = text[1:]
    stripped = _strip_leading_zeros(text)
    if stripped is None:
        return None
    whole, dot, fraction = stripped.partition(".")
    if dot and fraction and not fraction.strip("0"):
        stripped = whole
    if "_" in stripped and not stripped.startswith("_") and not stripped.endswith("_") and "__" not in stripped:
        stripped = stripped.replace("_", "")
    return _json_int("-" + stripped if negative else stripped)


def _json_int(text: str) -> int | None:
    number = _JSON_INT.fullmatch(text)
    return int(text) if number and len(number[1]) <= _INT_DIGITS else None


def _strip_leading_zeros(text: str) -> str | None:
    """pydantic's: `0_07` → `7`, `00.0` → `0.0`, `000` → `0`, `0-5` → `-5` (sic); None unless a digit or `-` leads."""
    if not text or text[0] not in "0123456789-":
        return None
    if text[0] != "0":
        return text
    for i, char in enumerate(text[1:], 1):
        if char in "123456789-":
            return text[i:]
        if char == ".":
            return text[i - 1:]
        if char not in "0_":
            return None
    return text[-1]


def _positive_id(raw: str) -> int | None:
    """`raw` as an id of a path or query (ASCII digits only: `²` passes str.isdigit()), or None."""
    if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= ID_DIGITS):
        return None
    return int(raw) or None


def _refuse_number(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity: Python's extension, not the RFC's


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999
        raise ValueError("number out of range")
    return number
