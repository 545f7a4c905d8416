"""lib/errors: the tree its docstring draws is the tree the code has, each error with its own code, status and French message."""

from __future__ import annotations

import re

import pytest

from lib import errors
from lib.errors import ConfigurationError, DousellError, InvalidToken, MethodNotAllowed

ERRORS = [DousellError, *sorted({cls for cls in vars(errors).values()
                                 if isinstance(cls, type) and issubclass(cls, DousellError) and cls is not DousellError},
                                key=lambda cls: cls.__name__)]
DRAWN = re.compile(r"^ {4}[│ ]*(?:[├└]── )?(?P<name>\w+) +(?:\((?P<base_status>\d+) (?P<base_code>\w+)\)|"
                   r"(?P<status>\d+) (?P<code>\w+))$", re.MULTILINE)


def drawn() -> dict[str, tuple[int, str]]:
    return {m["name"]: (int(m["status"] or m["base_status"]), m["code"] or m["base_code"])
            for m in DRAWN.finditer(errors.__doc__ or "")}


def test_the_docstring_draws_every_error_with_its_status_and_code() -> None:
    assert drawn() == {cls.__name__: (cls.status, cls.code) for cls in ERRORS}


def test_the_drawing_nests_each_error_under_its_base() -> None:
    depth = {m["name"]: len(m.group(0)) - len(m.group(0).lstrip(" │├└─")) for m in DRAWN.finditer(errors.__doc__ or "")}
    for cls in ERRORS[1:]:
        base = cls.__mro__[1]
        assert depth[cls.__name__] == depth[base.__name__] + 4, f"{cls.__name__} is drawn under {base.__name__}"


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_has_a_stable_code_a_status_and_a_french_sentence(cls: type[DousellError]) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code)
    assert 400 <= cls.status <= 599
    assert cls.message[0].isupper() and cls.message.rstrip().endswith((".", "!"))
    assert cls.__doc__, "one line saying when it is raised"


def test_no_two_errors_share_a_code() -> None:
    codes = [cls.code for cls in ERRORS]
    assert sorted(c for c in codes if codes.count(c) > 1) == []


def test_the_body_is_the_contracts_shape_and_details_only_when_given() -> None:
    assert errors.NotFound().to_body() == {"error": {"code": "not_found", "message": "Ressource introuvable."}}
    body = errors.ValidationFailed(details=[{"field": "period"}]).to_body()
    assert body["error"]["details"] == [{"field": "period"}]


def test_the_reason_is_for_logs_and_never_reaches_the_body() -> None:
    error = InvalidToken(reason="expired")
    assert error.reason == "expired"
    assert "expired" not in str(error.to_body())
    assert InvalidToken().reason is None, "declared on the base: every error has one"


def test_a_message_given_replaces_the_default_for_that_error_only() -> None:
    assert errors.NotFound("Profil introuvable.").message == "Profil introuvable."
    assert errors.NotFound().message == "Ressource introuvable."


def test_method_not_allowed_says_what_is_allowed_in_details_and_the_allow_header() -> None:
    error = MethodNotAllowed(["GET", "HEAD", "OPTIONS"])
    assert error.details == {"allowed": ["GET", "HEAD", "OPTIONS"]}
    assert error.headers == {"Allow": "GET, HEAD, OPTIONS"}


def test_a_configuration_error_names_the_variable_never_its_value() -> None:
    error = ConfigurationError("PAYDUNYA_MASTER_KEY", "or the sandbox keys")
    assert error.to_body()["error"]["details"] == {"variable": "PAYDUNYA_MASTER_KEY"}
    assert str(error) == "missing environment variable PAYDUNYA_MASTER_KEY (or the sandbox keys)"
