"""The REST half of the Supabase stand-in: PostgREST's wire behaviour, for the subset lib uses, over a real PostgreSQL.

Every request runs as PostgREST runs it: one transaction, ``set_config('role', ...)``,
``set_config('request.jwt.claims', ...)`` and the role's own settings (statement_timeout,
search_path), then one statement whose JSON is built by PostgreSQL itself (``json_agg``), so
values, RLS, grants, triggers and errors are the database's, not an imitation.

The subset (devstack/README.md lists it for readers):

- ``GET|HEAD /rest/v1/<table or view>``: ``select=*`` or ``col,alias:col``; filters
  ``eq neq gt gte lt lte like ilike match imatch in is isdistinct`` with ``not.``, several per
  column, ``or=(...)``/``and=(...)`` (nested too); ``order=col.desc.nullslast,...``; ``limit``,
  ``offset``; ``Prefer: count=exact|planned|estimated`` (planned: the planner's rows;
  estimated: exact up to max-rows, planned above) -> ``Content-Range`` and 200/206/416 as
  PostgREST; ``Accept: application/vnd.pgrst.object+json`` -> one object or 406.
- max-rows, as hosted Supabase sets it (1,000): no read and no function's result answers more
  rows, whatever ``limit`` says, and nothing tells the client but ``Content-Range``.
- ``POST`` insert (object or array, ``columns=``, ``Prefer: return=minimal|representation|
  headers-only``, ``missing=default``, ``resolution=merge-duplicates|ignore-duplicates`` with
  ``on_conflict=``), ``PATCH`` and ``DELETE`` with filters (a filter is required, as with
  Supabase's pg-safeupdate), ``Prefer: max-affected=n`` with ``handling=strict``.
- ``POST /rest/v1/rpc/<fn>`` with named JSON arguments (or one unnamed json/jsonb parameter);
  ``limit`` and ``offset`` on a set-returning function's result.

Anything else answers a PostgREST-style 400 naming what the stand-in does not support, never
a silently different result.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import psycopg
from psycopg import sql

__all__ = [
    "ApiError",
    "DatabaseUnreachable",
    "PoolExhausted",
    "Response",
    "RestEngine",
    "RestRequest",
    "SchemaCache",
    "SUPPORTED",
]

SCHEMA = "public"
JSON_CT = "application/json; charset=utf-8"
OBJECT_CT = "application/vnd.pgrst.object+json; charset=utf-8"
# Where PostgREST's own search_path starts (db-schemas + Supabase's db-extra-search-path).
SEARCH_PATH = "public, extensions"

SUPPORTED = "devstack/README.md lists the PostgREST subset the stand-in implements"

# A page past the end (`Prefer: count=exact`, offset above the count) is a 416 either way: with the
# PGRST103 body (PostgREST 12 and 14.2+), or, on 13.0.x, 14.0 and 14.1, with that body cut to the
# length of the empty page `[]`: `{"` (PostgREST#4455, fixed by #4518). Neither sends Proxy-Status.
# `RestEngine.past_the_end` picks one; DEVSTACK_POSTGREST_416 sets it for a whole stack.
PAST_THE_END = ("PGRST103", "truncated")

# Hosted Supabase's `max-rows` (Dashboard > API settings), applied by PostgREST to every read and
# every function's result, not to writes (src/PostgREST/Plan.hs, treeRestrictRange). PostgREST's own
# default is no limit; DEVSTACK_POSTGREST_MAX_ROWS sets it for a whole stack (`0`: no limit).
MAX_ROWS = 1000


# ---------------------------------------------------------------------------------------
# Responses and errors


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


class ApiError(Exception):
    """An error answered in PostgREST's shape: ``{"code", "message", "details", "hint"}``."""

    def __init__(self, status: int, code: str, message: str, details: Any = None, hint: Any = None,
                 headers: Sequence[tuple[str, str]] = ()):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint
        self.headers = list(headers)

    def payload(self) -> dict[str, Any]:
        return {"code": self.code, "details": self.details, "hint": self.hint, "message": self.message}

    def response(self) -> Response:
        headers = [("Content-Type", JSON_CT), ("Proxy-Status", f"PostgREST; error={self.code}"), *self.headers]
        if self.status == 401 and not any(k.lower() == "www-authenticate" for k, _ in self.headers):
            headers.append(("WWW-Authenticate", "Bearer"))
        return Response(self.status, json.dumps(self.payload(), ensure_ascii=False).encode(), headers)


def unsupported(what: str, code: str = "PGRST100") -> ApiError:
    """400 for a PostgREST feature outside the stand-in's subset (never a wrong answer instead)."""
    return ApiError(
        400, code, f"{what} is not supported by the devstack Supabase stand-in",
        details=SUPPORTED, hint="Use the supported subset, or try the query against a real Supabase project.",
    )


class DatabaseUnreachable(Exception):
    """The pool could not open a connection (PostgreSQL down, wrong DSN): PostgREST's PGRST000."""


class PoolExhausted(Exception):
    """Every pooled connection stayed busy past the acquire timeout: PostgREST's PGRST003."""


def parse_error(message: str, details: str | None = None) -> ApiError:
    return ApiError(400, "PGRST100", message, details=details)


def _pg_status(state: str, message: str, authed: bool) -> int:
    """PostgREST's mapping of a SQLSTATE to an HTTP status (src/PostgREST/Error.hs, mapSQLtoHTTP)."""
    exact = {
        "23503": 409, "23505": 409, "25006": 405, "P0001": 400, "42883": 404, "42P01": 404,
        "42P17": 500, "53400": 500, "57P01": 503,
    }
    if state in exact:
        return exact[state]
    if state == "21000":
        return 400 if message.endswith("requires a WHERE clause") else 500
    if state == "22023":
        return 401 if message.startswith("role") and message.endswith("does not exist") else 400
    if state == "42501":
        return 403 if authed else 401
    if state.startswith("PT") and state[2:].isdigit():
        return int(state[2:])
    prefixes = {
        "08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500, "38": 500, "39": 500,
        "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500, "57": 500, "58": 500, "F0": 500, "HV": 500,
        "P0": 500, "XX": 500,
    }
    return prefixes.get(state[:2], 400)


def database_error(exc: psycopg.Error, role: str) -> ApiError:
    """A psycopg error as PostgREST would answer it."""
    state = exc.sqlstate
    diag = exc.diag
    if state is None:
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return ApiError(503, "PGRST001", "Database client error. Retrying the connection.", details=str(exc))
        # Refused by the driver before it reached PostgreSQL (a NUL byte in a value, say).
        return ApiError(400, "22021", str(exc))
    message = diag.message_primary or str(exc)
    if state == "PGRST":
        raised = _raise_pgrst(message, diag.message_detail)
        if raised is not None:
            return raised
    return ApiError(
        _pg_status(state, message, authed=role != "anon"), state, message,
        details=diag.message_detail, hint=diag.message_hint,
    )


def _raise_pgrst(message: str, detail: str | None) -> ApiError | None:
    """`raise sqlstate 'PGRST' using message = '{json}', detail = '{json}'`: full control of the answer."""
    try:
        body, spec = json.loads(message), json.loads(detail or "")
        status = int(spec["status"])
        headers = [(str(k), str(v)) for k, v in (spec.get("headers") or {}).items()]
        return ApiError(status, str(body["code"]), str(body["message"]), body.get("details"), body.get("hint"), headers)
    except (ValueError, KeyError, TypeError, AttributeError):
        return ApiError(500, "PGRST121", "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\" error",
                        details=f"Invalid JSON value for MESSAGE: '{message}'")


# ---------------------------------------------------------------------------------------
# Schema cache


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    pk: tuple[str, ...]


@dataclass(frozen=True)
class Param:
    name: str  # '' for an unnamed parameter
    type: str  # format_type(), straight from the catalog
    has_default: bool


@dataclass(frozen=True)
class Routine:
    name: str
    params: tuple[Param, ...]
    returns_set: bool
    returns: str  # 'void' | 'scalar' | 'composite'

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.params}

    @property
    def required(self) -> set[str]:
        return {p.name for p in self.params if not p.has_default}


_TABLES_SQL = """
select c.relname::text,
       coalesce(array_agg(a.attname::text order by a.attnum) filter (where a.attnum is not null), '{}')
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
where n.nspname = %s and c.relkind in ('r', 'v', 'm', 'f', 'p')
group by c.relname
"""

_PKS_SQL = """
select c.relname::text, array_agg(a.attname::text order by k.ord)
from pg_index i
join pg_class c on c.oid = i.indrelid
join pg_namespace n on n.oid = c.relnamespace
cross join lateral unnest(i.indkey::int2[]) with ordinality as k(attnum, ord)
join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
where n.nspname = %s and i.indisprimary
group by c.relname
"""

_ROUTINES_SQL = """
select p.proname::text,
       array(select format_type(t, null) from unnest(coalesce(p.proallargtypes::oid[], p.proargtypes::oid[]))
             with ordinality as u(t, o) order by o),
       p.proargmodes::text[],
       p.proargnames::text[],
       p.pronargdefaults,
       p.proretset,
       p.prorettype = 'void'::regtype,
       rt.typtype = 'c' or (p.prorettype = 'record'::regtype
                            and coalesce(p.proargmodes::text[] && array['o', 'b', 't'], false))
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type rt on rt.oid = p.prorettype
where n.nspname = %s and p.prokind = 'f' and p.prorettype <> 'trigger'::regtype
"""

# Per-role settings PostgREST re-applies after switching role (statement_timeout, search_path...).
_ROLE_SETTINGS_SQL = """
select r.rolname::text, s.setconfig
from pg_db_role_setting s
join pg_roles r on r.oid = s.setrole
where s.setdatabase in (0, (select oid from pg_database where datname = current_database()))
order by s.setdatabase
"""


@dataclass(frozen=True)
class SchemaCache:
    tables: Mapping[str, Table]
    routines: Mapping[str, tuple[Routine, ...]]
    role_settings: Mapping[str, tuple[tuple[str, str], ...]]

    @classmethod
    def load(cls, conn: psycopg.Connection, schema: str = SCHEMA) -> SchemaCache:
        pks = {name: tuple(cols) for name, cols in conn.execute(_PKS_SQL, (schema,)).fetchall()}
        tables = {
            name: Table(name, tuple(cols), pks.get(name, ()))
            for name, cols in conn.execute(_TABLES_SQL, (schema,)).fetchall()
        }
        routines: dict[str, list[Routine]] = {}
        for name, types, modes, names, ndefaults, retset, is_void, composite in conn.execute(
            _ROUTINES_SQL, (schema,)
        ).fetchall():
            inputs: list[tuple[str, str]] = []
            for i, type_name in enumerate(types):
                mode = modes[i] if modes else "i"
                if mode in ("i", "b", "v"):
                    arg = names[i] if names and i < len(names) and names[i] else ""
                    inputs.append((arg, type_name))
            first_default = len(inputs) - (ndefaults or 0)
            params = tuple(Param(n, t, i >= first_default) for i, (n, t) in enumerate(inputs))
            kind = "void" if is_void else "composite" if composite else "scalar"
            routines.setdefault(name, []).append(Routine(name, params, bool(retset), kind))
        settings: dict[str, dict[str, str]] = {}
        for role, config in conn.execute(_ROLE_SETTINGS_SQL).fetchall():
            for entry in config or []:
                key, _, value = entry.partition("=")
                settings.setdefault(role, {})[key] = value  # database-specific rows come last and win
        return cls(
            tables=tables,
            routines={k: tuple(v) for k, v in routines.items()},
            role_settings={role: tuple(values.items()) for role, values in settings.items()},
        )


# ---------------------------------------------------------------------------------------
# Parsing the query string (PostgREST's grammar, for the subset)


def qident(*names: str) -> str:
    """Quote identifiers with psycopg's sql.Identifier, with `%` doubled so psycopg's
    placeholder parser can never read a name as a parameter slot."""
    parts = []
    for name in names:
        if "\x00" in name:
            raise parse_error("identifiers cannot contain NUL bytes")
        parts.append(sql.Identifier(name).as_string().replace("%", "%%"))
    return ".".join(parts)


_QUOTED = r'"(?:[^"\\]|\\.)*"'
_UNQUOTED = r"[\w$]+(?:[ -](?!>)[\w$]+)*"
_IDENT = rf"(?:{_QUOTED}|{_UNQUOTED})"
_SELECT_ITEM = re.compile(rf"(?:(?P<alias>{_IDENT}):(?!:))?(?P<col>{_IDENT})", re.S)
_ORDER_TERM = re.compile(rf"(?P<col>{_IDENT})(?:\.(?P<dir>asc|desc))?(?:\.(?P<nulls>nullsfirst|nullslast))?", re.S)
_COLUMN = re.compile(_IDENT, re.S)
_OPERATION = re.compile(r"(?P<not>not\.)?(?P<op>[a-z]+)(?P<mod>\([^)]*\))?\.(?P<val>.*)", re.S)
_LOGIC_ITEM = re.compile(r"(?P<not>not\.)?(?P<op>or|and)\((?P<body>.*)\)", re.S)

OPERATORS = {
    "eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=",
    "like": "LIKE", "ilike": "ILIKE", "match": "~", "imatch": "~*", "isdistinct": "IS DISTINCT FROM",
}
UNSUPPORTED_OPERATORS = {"fts", "plfts", "phfts", "wfts", "cs", "cd", "ov", "sl", "sr", "nxl", "nxr", "adj"}
IS_VALUES = {"null": "IS NULL", "not_null": "IS NOT NULL", "true": "IS TRUE", "false": "IS FALSE", "unknown": "IS UNKNOWN"}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.S)
    return text


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside double quotes and parentheses (PostgREST's list syntax)."""
    parts: list[str] = []
    depth, quoted, escaped, start = 0, False, False, 0
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
            if depth < 0:
                raise parse_error(f'"failed to parse logic tree ({text})"', "unbalanced parentheses")
        elif not quoted and depth == 0 and ch == sep:
            parts.append(text[start:i])
            start = i + 1
    if quoted or depth:
        raise parse_error(f'"failed to parse ({text})"', "unbalanced quotes or parentheses")
    parts.append(text[start:])
    return parts


def _diagnose(item: str, where: str) -> ApiError:
    """Name the PostgREST feature an unparsable item uses, or a plain parse error."""
    if item.lstrip().startswith("..."):
        return unsupported(f"Spread embedding in {where} ({item})")
    if "->" in item:
        return unsupported(f"JSON paths in {where} ({item})")
    if "::" in item:
        return unsupported(f"Casts in {where} ({item})")
    if "(" in item or "!" in item:
        return unsupported(f"Embedded resources or aggregates in {where} ({item})")
    return parse_error(f'"failed to parse {where} ({item})"')


@dataclass(frozen=True)
class SelectItem:
    column: str
    alias: str | None = None


def parse_select(raw: str | None) -> list[SelectItem] | None:
    """The columns to answer; None means `*`. An item `*` among columns stands for all of them."""
    if raw is None or raw.strip() == "":
        return None
    items: list[SelectItem] = []
    for part in split_top(raw):
        text = part.strip()
        if text == "*":
            items.append(SelectItem("*"))
            continue
        match = _SELECT_ITEM.fullmatch(text)
        if match is None:
            raise _diagnose(text, "select parameter")
        alias = _unquote(match["alias"]) if match["alias"] else None
        items.append(SelectItem(_unquote(match["col"]), alias))
    return None if items == [SelectItem("*")] else items


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: str | list[str]
    negate: bool = False


@dataclass(frozen=True)
class Logic:
    op: str  # 'or' | 'and'
    items: tuple[Condition | Logic, ...]
    negate: bool = False


def _parse_in_list(value: str, context: str) -> list[str]:
    if not (value.startswith("(") and value.endswith(")")):
        raise parse_error(f'"failed to parse filter ({context})"', "in. takes a list: in.(a,b,c)")
    inner = value[1:-1]
    if inner.strip() == "":
        return []
    return [_unquote(v) for v in split_top(inner)]


def parse_operation(column: str, text: str, *, in_logic: bool) -> Condition:
    """`[not.]op.value` of a filter on `column`."""
    match = _OPERATION.fullmatch(text)
    if match is None:
        raise parse_error(f'"failed to parse filter ({text})"', "expected [not.]operator.value")
    op, mod, value = match["op"], match["mod"], match["val"]
    negate = bool(match["not"])
    if op in UNSUPPORTED_OPERATORS:
        raise unsupported(f"The {op} operator ({column}={text})")
    if mod is not None:
        raise unsupported(f"Operator modifiers such as {op}{mod} ({column}={text})")
    if op == "in":
        return Condition(column, "in", _parse_in_list(value, text), negate)
    if op == "is":
        word = value.lower()
        if word not in IS_VALUES:
            raise parse_error(f'"failed to parse filter ({text})"', "is. takes null, not_null, true, false or unknown")
        return Condition(column, "is", word, negate)
    if op not in OPERATORS:
        raise parse_error(f'"failed to parse filter ({text})"', f"unknown operator {op!r}")
    if in_logic:
        value = _unquote(value)  # inside or=(...), "a,b" quotes a value that holds commas
    return Condition(column, op, value, negate)


def parse_column(text: str, where: str) -> str:
    if _COLUMN.fullmatch(text) is None:
        if "." in text and "->" not in text and "(" not in text:
            raise unsupported(f"Filters on embedded resources ({text})")
        raise _diagnose(text, where)
    return _unquote(text)


def parse_logic(op: str, body: str, negate: bool) -> Logic:
    if not (body.startswith("(") and body.endswith(")")):
        raise parse_error(f'"failed to parse logic tree ({body})"', "expected (filter,filter,...)")
    items: list[Condition | Logic] = []
    for part in split_top(body[1:-1]):
        text = part.strip()
        nested = _LOGIC_ITEM.fullmatch(text)
        if nested is not None:
            items.append(parse_logic(nested["op"], f"({nested['body']})", bool(nested["not"])))
            continue
        col_match = re.match(_IDENT, text, re.S)
        if col_match is None or text[col_match.end():col_match.end() + 1] != ".":
            raise parse_error(f'"failed to parse logic tree ({body})"', f"cannot read the filter {text!r}")
        column = _unquote(col_match.group(0))
        items.append(parse_operation(column, text[col_match.end() + 1:], in_logic=True))
    return Logic(op, tuple(items), negate)


@dataclass(frozen=True)
class OrderTerm:
    column: str
    desc: bool | None
    nulls: str | None  # 'first' | 'last' | None


def parse_order(raw: str) -> list[OrderTerm]:
    terms: list[OrderTerm] = []
    for part in split_top(raw):
        text = part.strip()
        match = _ORDER_TERM.fullmatch(text)
        if match is None:
            raise _diagnose(text, "order")
        desc = None if match["dir"] is None else match["dir"] == "desc"
        nulls = None if match["nulls"] is None else match["nulls"][5:]
        terms.append(OrderTerm(_unquote(match["col"]), desc, nulls))
    return terms


def _non_negative(raw: str, name: str) -> int:
    if not raw.isdigit():
        raise parse_error(f'"failed to parse {name} parameter ({raw})"', "expected a non-negative integer")
    return int(raw)


@dataclass
class QueryParams:
    select: list[SelectItem] | None = None
    filters: list[Condition | Logic] = field(default_factory=list)
    order: list[OrderTerm] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None
    columns: list[str] | None = None
    on_conflict: list[str] | None = None
    present: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, query: str) -> QueryParams:
        params = cls()
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "apikey":  # the gateway's own parameter, never PostgREST's
                continue
            params.present.add(key)
            if key == "select":
                params.select = parse_select(value)
            elif key == "order":
                params.order = parse_order(value)
            elif key == "limit":
                params.limit = _non_negative(value, "limit")
            elif key == "offset":
                params.offset = _non_negative(value, "offset")
            elif key == "columns":
                params.columns = [parse_column(c.strip(), "columns") for c in split_top(value)]
            elif key == "on_conflict":
                params.on_conflict = [parse_column(c.strip(), "on_conflict") for c in split_top(value)]
            elif key in ("or", "and", "not.or", "not.and"):
                params.filters.append(parse_logic(key.removeprefix("not."), value, key.startswith("not.")))
            elif key.endswith((".or", ".and", ".order", ".limit", ".offset", ".select")):
                raise unsupported(f"Parameters of embedded resources ({key})")
            else:
                params.filters.append(parse_operation(parse_column(key, "filter"), value, in_logic=False))
        return params


# ---------------------------------------------------------------------------------------
# SQL


class _Sql:
    """A query under construction: text (identifiers pre-quoted) and its parameters, in order."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def condition(self, node: Condition | Logic, col: Callable[[str], str]) -> str:
        if isinstance(node, Logic):
            joiner = " OR " if node.op == "or" else " AND "
            inner = joiner.join(self.condition(item, col) for item in node.items) or (
                "FALSE" if node.op == "or" else "TRUE"
            )
            text = f"({inner})"
        else:
            ref = col(node.column)
            if node.op == "is":
                text = f"{ref} {IS_VALUES[str(node.value)]}"
            elif node.op == "in":
                values = list(node.value)
                if not values:
                    text = "FALSE"
                else:
                    # Unknown-typed parameters (psycopg's default for str), as PostgREST sends
                    # them: PostgreSQL converts each to the column's type, or says 22P02.
                    self.params.extend(values)
                    text = f"{ref} IN ({', '.join(['%s'] * len(values))})"
            else:
                value = str(node.value)
                if node.op in ("like", "ilike"):
                    value = value.replace("*", "%")
                self.params.append(value)
                text = f"{ref} {OPERATORS[node.op]} %s"
        return f"NOT ({text})" if node.negate else text

    def where(self, filters: Sequence[Condition | Logic], col: Callable[[str], str]) -> str:
        if not filters:
            return ""
        return " WHERE " + " AND ".join(self.condition(f, col) for f in filters)


def _projection(select: list[SelectItem] | None, qualifier: str) -> str:
    if select is None:
        return f"{qualifier}.*"
    return ", ".join(
        f"{qualifier}.*" if item == SelectItem("*")
        else f"{qualifier}.{qident(item.column)}" + (f" AS {qident(item.alias)}" if item.alias else "")
        for item in select
    )


def _order_by(order: list[OrderTerm], col: Callable[[str], str]) -> str:
    if not order:
        return ""
    terms = []
    for term in order:
        text = col(term.column)
        if term.desc is not None:
            text += " DESC" if term.desc else " ASC"
        if term.nulls is not None:
            text += f" NULLS {term.nulls.upper()}"
        terms.append(text)
    return " ORDER BY " + ", ".join(terms)


_AGGREGATE = (
    "count(*), coalesce(json_agg(pgrst_t), '[]')::text, coalesce((json_agg(pgrst_t) -> 0)::text, 'null')"
)


# ---------------------------------------------------------------------------------------
# Requests


@dataclass
class RestRequest:
    method: str
    path: str  # after /rest/v1, e.g. "/properties" or "/rpc/available_slots"
    query: str
    headers: Mapping[str, str]  # case-insensitive .get (http.client.HTTPMessage)
    body: bytes
    role: str
    claims: Mapping[str, Any]


@dataclass(frozen=True)
class Preferences:
    return_: str | None = None
    count: str | None = None  # exact | planned | estimated
    resolution: str | None = None
    missing_default: bool = False
    strict: bool = False
    max_affected: int | None = None
    applied: tuple[str, ...] = ()

    @classmethod
    def parse(cls, values: Sequence[str]) -> Preferences:
        items = [p.strip() for v in values for p in v.split(",") if p.strip()]
        prefs: dict[str, Any] = {}
        applied: list[str] = []
        invalid: list[str] = []
        strict = "handling=strict" in items
        for item in items:
            key, _, value = item.partition("=")
            if key == "return" and value in ("minimal", "representation", "headers-only"):
                prefs["return_"] = value
            elif key == "count" and value in ("exact", "planned", "estimated"):
                prefs["count"] = value
            elif key == "resolution" and value in ("merge-duplicates", "ignore-duplicates"):
                prefs["resolution"] = value
            elif key == "missing" and value == "default":
                prefs["missing_default"] = True
            elif key == "handling" and value in ("strict", "lenient"):
                pass
            elif key == "max-affected" and value.isdigit():
                prefs["max_affected"] = int(value)
            elif key in ("tx", "timezone", "params"):
                # Supabase refuses tx overrides; timezone and params=single-object are outside the subset.
                if strict or key != "tx":
                    raise unsupported(f"The Prefer header {item!r}")
                continue
            else:
                invalid.append(item)
                continue
            applied.append(item)
        if strict and invalid:
            raise ApiError(400, "PGRST122", "Invalid preferences given with handling=strict",
                           details="Invalid preferences: " + ", ".join(invalid))
        return cls(strict=strict, applied=tuple(applied), **prefs)


def header_values(headers: Any, name: str) -> list[str]:
    """Every value of a repeatable header (an http.client.HTTPMessage, or a plain mapping)."""
    if hasattr(headers, "get_all"):
        return list(headers.get_all(name) or [])
    value = headers.get(name)
    return [] if value is None else [value]


def _accept(headers: Mapping[str, str]) -> str:
    """'json' or 'object' from the Accept header, or 406 PGRST107 as PostgREST."""
    raw = headers.get("Accept") or "*/*"
    offered = [m.strip() for m in raw.split(",") if m.strip()]
    for media in offered:
        base, _, params = media.partition(";")
        base = base.strip().lower()
        extra = [p.strip() for p in params.split(";")
                 if p.strip() and not p.strip().lower().startswith(("q=", "charset="))]
        if base in ("application/json", "*/*", "application/*", "application/vnd.pgrst.array+json",
                    "application/vnd.pgrst.object+json"):
            if extra:
                raise unsupported(f"The media type parameters of {media!r} (e.g. nulls=stripped)")
            return "object" if base == "application/vnd.pgrst.object+json" else "json"
    raise ApiError(406, "PGRST107", "None of these media types are available: " + ", ".join(offered))


def _header_settings(headers: Any) -> list[tuple[str, str]]:
    """`request.headers` (names lower-cased) and `request.cookies`, as PostgREST sets them: the Cookie
    header goes to the second only (PostgREST src/library/PostgREST/ApiRequest.hs, Query/PreQuery.hs)."""
    named = {k.lower(): v for k, v in headers.items() if k.lower() != "cookie"}
    cookies = {}
    for part in (headers.get("Cookie") or "").split(";"):
        name, eq, value = part.strip().partition("=")
        if name and eq:
            cookies[name] = value
    return [("request.headers", json.dumps(named)), ("request.cookies", json.dumps(cookies))]


class RestEngine:
    """Answers /rest/v1 requests: parse, build one statement, run it in a transaction as the request's role."""

    def __init__(self, connection: Callable[[], AbstractContextManager[psycopg.Connection]],
                 admin_connection: Callable[[], AbstractContextManager[psycopg.Connection]],
                 *, schema: str = SCHEMA, on_query: Callable[[str, str], None] | None = None,
                 on_rows: Callable[[int, bool], None] | None = None):
        """`connection`: lends a connection for a request (PostgREST's pool); `admin_connection`:
        one that reads the catalog; `on_query(kind, name)` is told of every request that goes to
        the database, kind ``table`` or ``rpc``, and `on_rows(rows, at_max_rows)` of how many rows
        each read or function answered, and whether max-rows bounded it (the stand-in's stats)."""
        self._connection = connection
        self._admin_connection = admin_connection
        self._on_query = on_query
        self._on_rows = on_rows
        self.schema = schema
        self._cache: SchemaCache | None = None
        self._cache_lock = threading.Lock()
        self.past_the_end = os.environ.get("DEVSTACK_POSTGREST_416") or PAST_THE_END[0]
        if self.past_the_end not in PAST_THE_END:
            raise ValueError(f"DEVSTACK_POSTGREST_416 must be one of {', '.join(PAST_THE_END)}")
        raw = os.environ.get("DEVSTACK_POSTGREST_MAX_ROWS", "").strip()
        if raw and not raw.isdigit():
            raise ValueError("DEVSTACK_POSTGREST_MAX_ROWS must be a whole number (0: no limit)")
        #: PostgREST's db-max-rows; None for no limit. Tests lower it to meet it with a few rows.
        self.max_rows: int | None = (int(raw) or None) if raw else MAX_ROWS

    # -- schema cache ------------------------------------------------------------------

    def schema_cache(self, *, reload: bool = False) -> SchemaCache:
        cache = self._cache
        if cache is not None and not reload:
            return cache
        with self._cache_lock:
            if self._cache is None or reload:
                with self._admin_connection() as conn:
                    self._cache = SchemaCache.load(conn, self.schema)
            return self._cache

    def _table(self, name: str) -> Table:
        table = self.schema_cache().tables.get(name)
        if table is None:  # created since the last look? (PostgREST reloads on NOTIFY; we on a miss)
            table = self.schema_cache(reload=True).tables.get(name)
        if table is None:
            close = difflib.get_close_matches(name, list(self.schema_cache().tables), n=1, cutoff=0.75)
            raise ApiError(
                404, "PGRST205", f"Could not find the table '{self.schema}.{name}' in the schema cache",
                hint=f"Perhaps you meant the table '{self.schema}.{close[0]}'" if close else None,
            )
        return table

    # -- entry point -------------------------------------------------------------------

    def handle(self, request: RestRequest) -> Response:
        try:
            return self._handle(request)
        except ApiError as exc:
            return exc.response()
        except psycopg.Error as exc:  # reading the schema cache
            return database_error(exc, request.role).response()
        except DatabaseUnreachable as exc:
            return ApiError(503, "PGRST000", "Database connection error. Retrying the connection.",
                            details=str(exc)).response()
        except PoolExhausted:
            return ApiError(504, "PGRST003", "Timed out acquiring connection from connection pool.").response()

    def _handle(self, request: RestRequest) -> Response:
        segments = [unquote(s) for s in request.path.strip("/").split("/")] if request.path.strip("/") else []
        if not segments:
            raise unsupported("The OpenAPI root (GET /rest/v1/)", code="PGRST127")
        profile = request.headers.get("Accept-Profile" if request.method in ("GET", "HEAD") else "Content-Profile")
        if profile is not None and profile != self.schema:
            raise ApiError(406, "PGRST106", f"Invalid schema: {profile}",
                           hint=f"Only the following schemas are exposed: {self.schema}")
        if request.headers.get("Range") is not None and request.method in ("GET", "HEAD"):
            raise unsupported("The Range header (use limit and offset)", code="PGRST127")
        media = _accept(request.headers)
        prefer = Preferences.parse(header_values(request.headers, "Prefer"))
        if segments[0] == "rpc" and len(segments) == 2:
            if request.method != "POST":
                if request.method in ("GET", "HEAD"):
                    raise unsupported(f"{request.method} on /rpc (call functions with POST)", code="PGRST127")
                raise ApiError(405, "PGRST101", f"Cannot use the {request.method} method on RPC")
            return self._call(request, segments[1], media, prefer)
        if len(segments) != 1:
            raise ApiError(404, "PGRST125", "Invalid path specified in request URL")
        table = self._table(segments[0])
        params = QueryParams.parse(request.query)
        if request.method in ("GET", "HEAD"):
            return self._read(request, table, params, media, prefer)
        if request.method == "POST":
            return self._insert(request, table, params, media, prefer)
        if request.method in ("PATCH", "DELETE"):
            return self._mutate(request, table, params, media, prefer)
        if request.method == "PUT":
            raise unsupported("PUT (single-row upsert by primary key)", code="PGRST127")
        raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {request.method}")

    # -- transaction -------------------------------------------------------------------

    def _run(self, request: RestRequest, target: tuple[str, str],
             work: Callable[[psycopg.Connection], Response]) -> Response:
        """`work` in one transaction as the request's role; `target` is (``table``|``rpc``, name)."""
        cache = self.schema_cache()
        if self._on_query is not None:
            self._on_query(*target)
        settings = [("search_path", SEARCH_PATH), ("role", request.role),
                    ("request.jwt.claims", json.dumps(dict(request.claims), separators=(",", ":"))),
                    ("request.method", request.method), ("request.path", request.path),
                    *_header_settings(request.headers)]
        settings += list(cache.role_settings.get(request.role, ()))
        statement = "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(settings))
        try:
            with self._connection() as conn:
                try:
                    with conn.transaction():
                        conn.execute(statement, [v for pair in settings for v in pair])
                        return work(conn)
                except _Rollback as rollback:
                    return rollback.error.response()
        except psycopg.Error as exc:
            raise database_error(exc, request.role) from exc

    # -- read --------------------------------------------------------------------------

    def _read(self, request: RestRequest, table: Table, params: QueryParams, media: str,
              prefer: Preferences) -> Response:
        if params.columns is not None or params.on_conflict is not None:
            raise parse_error('"columns" and "on_conflict" apply to inserts only')
        qi = qident(self.schema, table.name)

        def col(name: str) -> str:
            return f"{qi}.{qident(name)}"

        q = _Sql()
        total = "NULL::bigint"
        if prefer.count in ("exact", "estimated"):
            # PostgREST's count CTE; for `estimated` it stops one row past max-rows (Statements.hs).
            source = f"SELECT 1 FROM {qi}{q.where(params.filters, col)}"
            if prefer.count == "estimated" and self.max_rows is not None:
                source += f" LIMIT {self.max_rows + 1}"
            total = f"(SELECT count(*) FROM ({source}) pgrst_source_count)"
        limit = self._limit(params.limit)
        inner = f"SELECT {_projection(params.select, qi)} FROM {qi}{q.where(params.filters, col)}"
        inner += _order_by(params.order, col)
        if limit is not None:
            inner += f" LIMIT {limit}"
        if params.offset is not None:
            inner += f" OFFSET {params.offset}"
        statement = f"SELECT {total}, {_AGGREGATE} FROM ({inner}) pgrst_t"
        planned = _Sql()
        explain = f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {qi}{planned.where(params.filters, col)}"

        def work(conn: psycopg.Connection) -> Response:
            row = conn.execute(statement, q.params).fetchone()
            assert row is not None
            counted = row[0]
            if prefer.count == "planned" or (prefer.count == "estimated" and (
                    self.max_rows is None or counted > self.max_rows)):
                # The planner's rows for the count query, run after the main one (MainTx.hs); for
                # `estimated`, only past max-rows, and never below what was counted.
                plan = conn.execute(explain, planned.params).fetchone()[0]  # type: ignore[index]
                rows = int(plan[0]["Plan"]["Plan Rows"])
                row = (rows if prefer.count == "planned" else max(counted, rows), *row[1:])
            self._rows(row[1], limit)
            return self._read_response(request, row, params.offset or 0, media, prefer)

        return self._run(request, ("table", table.name), work)

    def _limit(self, requested: int | None) -> int | None:
        """The LIMIT to run: what the request asked, bounded by max-rows (RangeQuery.restrictRange)."""
        if self.max_rows is None:
            return requested
        return self.max_rows if requested is None else min(requested, self.max_rows)

    def _rows(self, answered: int, limit: int | None) -> None:
        if self._on_rows is not None:
            self._on_rows(answered, self.max_rows is not None and limit == self.max_rows
                          and answered == self.max_rows)

    def _read_response(self, request: RestRequest, row: tuple[Any, ...], offset: int, media: str,
                       prefer: Preferences, *, single: bool = False) -> Response:
        """A read's or a function's answer: `row` is (total or None, rows on the page, the page's
        JSON, its first row's JSON); `single` answers the first row alone (a function that returns
        one value) with the content type the request asked for."""
        total, page_total, body, first = row
        if media == "object" and page_total != 1:
            raise _singular(page_total)
        lower, upper = offset, offset + page_total - 1
        status = 200
        payload = (first if media == "object" or single else body).encode()
        if total is not None:
            if lower > total:
                # Answered as a read (no Proxy-Status), its body swapped for the error, as PostgREST does.
                status, error = 416, ApiError(416, "PGRST103", "Requested range not satisfiable", details=(
                    f"An offset of {lower} was requested, but there are only {total} rows."))
                whole = json.dumps(error.payload(), separators=(",", ":")).encode()
                payload = whole[:len(payload)] if self.past_the_end == "truncated" else whole
            elif 1 + upper - lower < total:
                status = 206
        headers = [("Content-Range", _content_range(lower, upper, total)),
                   ("Content-Type", OBJECT_CT if media == "object" else JSON_CT)]
        if prefer.applied:
            headers.append(("Preference-Applied", ", ".join(prefer.applied)))
        return Response(status, b"" if request.method == "HEAD" else payload, headers)

    # -- writes ------------------------------------------------------------------------

    @staticmethod
    def _json_body(request: RestRequest) -> Any:
        try:
            return json.loads(request.body or b"")
        except ValueError:
            raise ApiError(400, "PGRST102", "Empty or invalid json") from None

    def _check_columns(self, table: Table, names: Sequence[str]) -> None:
        for name in names:
            if name not in table.columns:
                raise ApiError(400, "PGRST204",
                               f"Could not find the '{name}' column of '{table.name}' in the schema cache")

    def _insert(self, request: RestRequest, table: Table, params: QueryParams, media: str,
                prefer: Preferences) -> Response:
        if params.filters or params.order or params.limit is not None or params.offset is not None:
            raise unsupported("Filters, order, limit or offset on an insert")
        body = self._json_body(request)
        rows = body if isinstance(body, list) else [body]
        if not all(isinstance(r, dict) for r in rows):
            raise ApiError(400, "PGRST102", "Empty or invalid json")
        if params.columns is not None:
            columns = params.columns
        else:
            columns = list(rows[0]) if rows else []
            if any(set(r) != set(columns) for r in rows):
                raise ApiError(400, "PGRST102", "All object keys must match")
        self._check_columns(table, columns)
        target: list[str] = []
        if prefer.resolution is not None:
            target = params.on_conflict or list(table.pk)  # no key at all: a plain insert, as PostgREST
        self._check_columns(table, params.on_conflict or [])
        qi = qident(self.schema, table.name)
        representation = prefer.return_ == "representation"

        def statement(cols: Sequence[str]) -> str:
            names = ", ".join(qident(c) for c in cols)
            text = (f"INSERT INTO {qi}({names}) SELECT {names} " if cols else f"INSERT INTO {qi} SELECT ")
            text += f"FROM json_populate_recordset(NULL::{qi}, %s::json) pgrst_body"
            if target:
                updates = ", ".join(f"{qident(c)} = EXCLUDED.{qident(c)}" for c in cols)
                merge = prefer.resolution == "merge-duplicates" and updates
                text += f" ON CONFLICT ({', '.join(qident(c) for c in target)}) "
                text += f"DO UPDATE SET {updates}" if merge else "DO NOTHING"
            if representation:
                text = (f"WITH pgrst_source AS ({text} RETURNING {qi}.*) SELECT {_AGGREGATE} FROM "
                        f"(SELECT {_projection(params.select, 'pgrst_source')} FROM pgrst_source) pgrst_t")
            return text

        # Missing keys are NULL (PostgREST's default) unless Prefer: missing=default, which
        # inserts each row with its own keys so that absent columns take their defaults.
        if prefer.missing_default and params.columns is not None:
            batches = [([c for c in columns if c in r], [r]) for r in rows]
        else:
            batches = [(columns, rows)]

        def work(conn: psycopg.Connection) -> Response:
            count, items, first = 0, [], "null"
            for cols, batch in batches:
                cur = conn.execute(statement(cols), [json.dumps(batch)])
                if representation:
                    n, body_json, first_json = cur.fetchone()  # type: ignore[misc]
                    if n:
                        items.append(body_json.strip()[1:-1])  # json_agg's text, brackets off
                        first = first_json if count == 0 else first
                    count += n
                else:
                    count += max(cur.rowcount, 0)
            body_text = "[" + ", ".join(items) + "]"
            return self._write_response(201, count, body_text, first, media, prefer, range_from_zero=False)

        return self._run(request, ("table", table.name), work)

    def _mutate(self, request: RestRequest, table: Table, params: QueryParams, media: str,
                prefer: Preferences) -> Response:
        verb = "UPDATE" if request.method == "PATCH" else "DELETE"
        if params.order or params.limit is not None or params.offset is not None:
            raise unsupported(f"order, limit or offset on {request.method}")
        if params.columns is not None or params.on_conflict is not None:
            raise parse_error('"columns" and "on_conflict" apply to inserts only')
        if not params.filters:
            # Supabase loads pg-safeupdate: a whole-table UPDATE/DELETE is refused, like this.
            raise ApiError(400, "21000", f"{verb} requires a WHERE clause")
        qi = qident(self.schema, table.name)

        def col(name: str) -> str:
            return f"{qi}.{qident(name)}"

        q = _Sql()
        if verb == "UPDATE":
            body = self._json_body(request)
            if not isinstance(body, dict):
                raise ApiError(400, "PGRST102", "Empty or invalid json")
            self._check_columns(table, list(body))
            if not body:  # PostgREST: an empty patch changes nothing
                return self._write_response(200 if prefer.return_ == "representation" else 204, 0, "[]", "null",
                                            media, prefer, range_from_zero=True)
            q.params.append(json.dumps(body))
            sets = ", ".join(f"{qident(c)} = pgrst_body.{qident(c)}" for c in body)
            text = (f"UPDATE {qi} SET {sets} FROM (SELECT * FROM json_populate_record(NULL::{qi}, %s::json)) "
                    f"pgrst_body{q.where(params.filters, col)}")
        else:
            text = f"DELETE FROM {qi}{q.where(params.filters, col)}"
        representation = prefer.return_ == "representation"
        if representation:
            text = (f"WITH pgrst_source AS ({text} RETURNING {qi}.*) SELECT {_AGGREGATE} FROM "
                    f"(SELECT {_projection(params.select, 'pgrst_source')} FROM pgrst_source) pgrst_t")

        def work(conn: psycopg.Connection) -> Response:
            cur = conn.execute(text, q.params)
            if representation:
                count, body_json, first = cur.fetchone()  # type: ignore[misc]
            else:
                count, body_json, first = max(cur.rowcount, 0), "[]", "null"
            if prefer.strict and prefer.max_affected is not None and count > prefer.max_affected:
                raise _Rollback(ApiError(400, "PGRST124", "Query result exceeds max-affected preference constraint",
                                         details=f"The query affects {count} rows"))
            status = 200 if representation else 204
            return self._write_response(status, count, body_json, first, media, prefer,
                                        range_from_zero=verb == "UPDATE")

        return self._run(request, ("table", table.name), work)

    @staticmethod
    def _write_response(status: int, count: int, body_json: str, first_json: str, media: str,
                        prefer: Preferences, *, range_from_zero: bool) -> Response:
        """PostgREST's answer to a write: 201 (insert) or 200 with the rows, or no body (201/204)."""
        if media == "object" and count != 1:
            raise _Rollback(_singular(count))
        total = count if prefer.count else None
        content_range = _content_range(0, count - 1, total) if range_from_zero else _content_range(1, 0, total)
        headers = [("Content-Range", content_range)]
        if prefer.applied:
            headers.append(("Preference-Applied", ", ".join(prefer.applied)))
        if prefer.return_ != "representation":
            return Response(status, b"", headers)
        headers.append(("Content-Type", OBJECT_CT if media == "object" else JSON_CT))
        return Response(status, (first_json if media == "object" else body_json).encode(), headers)

    # -- rpc ---------------------------------------------------------------------------

    def _routine(self, name: str, args: Mapping[str, Any]) -> tuple[Routine, bool]:
        """The function `name` whose parameters fit `args`, and whether the body is its single json argument."""
        for reload in (False, True):
            candidates = self.schema_cache(reload=reload).routines.get(name, ())
            keys = set(args)
            fits = [r for r in candidates if keys <= r.names and r.required <= keys and "" not in r.names]
            if len(fits) > 1:
                raise ApiError(300, "PGRST203", "Could not choose the best candidate function between: "
                               + ", ".join(f"{self.schema}.{name}({', '.join(p.name + ' => ' + p.type for p in r.params)})"
                                           for r in fits),
                               hint="Try renaming the parameters or the function itself in the database so "
                                    "function overloading can be resolved")
            if fits:
                return fits[0], False
            single = [r for r in candidates
                      if len(r.params) == 1 and r.params[0].name == "" and r.params[0].type in ("json", "jsonb")]
            if single:
                return single[0], True
        keys_sorted = sorted(args)
        shown = f"({', '.join(keys_sorted)})" if keys_sorted else " without parameters"
        detail = (f" with parameter{'s' if len(keys_sorted) > 1 else ''} {', '.join(keys_sorted)}"
                  if keys_sorted else " without parameters")
        close = difflib.get_close_matches(name, list(self.schema_cache().routines), n=1, cutoff=0.75)
        raise ApiError(
            404, "PGRST202", f"Could not find the function {self.schema}.{name}{shown} in the schema cache",
            details=f"Searched for the function {self.schema}.{name}{detail} or with a single unnamed "
                    "json/jsonb parameter, but no matches were found in the schema cache.",
            hint=f"Perhaps you meant to call the function {self.schema}.{close[0]}" if close else None,
        )

    def _call(self, request: RestRequest, name: str, media: str, prefer: Preferences) -> Response:
        params = QueryParams.parse(request.query)
        if params.present - {"limit", "offset"}:
            raise unsupported("Query parameters on /rpc other than limit and offset (select, filters, order on a "
                              "function's result)")
        if request.body.strip():
            args = self._json_body(request)
        else:
            args = {}
        if not isinstance(args, dict):
            raise unsupported("Calling a function with a JSON array body")
        routine, whole_body = self._routine(name, args)
        fn = qident(self.schema, routine.name)
        values: list[Any] = []
        if whole_body:
            call = f"{fn}(%s::{routine.params[0].type})"
            source = ""
            values.append(json.dumps(args))
        elif args:
            given = [p for p in routine.params if p.name in args]
            record = ", ".join(f"{qident(p.name)} {p.type.replace('%', '%%')}" for p in given)
            source = f"json_to_record(%s::json) AS pgrst_args({record}), "
            values.append(json.dumps(args))
            call = f"{fn}({', '.join(f'{qident(p.name)} := pgrst_args.{qident(p.name)}' for p in given)})"
        else:
            source, call = "", f"{fn}()"
        if routine.returns == "void":
            def run_void(conn: psycopg.Connection) -> Response:
                conn.execute(f"SELECT count(*) FROM {source}{call} pgrst_call", values)
                return Response(204, b"", [])

            return self._run(request, ("rpc", routine.name), run_void)
        if routine.returns == "scalar":
            produced, item = f"SELECT pgrst_call.pgrst_scalar FROM {source}{call} pgrst_call(pgrst_scalar)", \
                "pgrst_t.pgrst_scalar"
        else:
            produced, item = f"SELECT pgrst_call.* FROM {source}{call} pgrst_call", "pgrst_t"
        # A set's result is paged like a read's, max-rows included; a single value is one row.
        limit = self._limit(params.limit) if routine.returns_set else params.limit
        page = "SELECT * FROM pgrst_source"
        if limit is not None:
            page += f" LIMIT {limit}"
        if params.offset is not None:
            page += f" OFFSET {params.offset}"
        total = "(SELECT count(*) FROM pgrst_source)" if prefer.count else "NULL::bigint"
        statement = (f"WITH pgrst_source AS ({produced}) SELECT {total}, count(*), "
                     f"coalesce(json_agg({item}), '[]')::text, coalesce((json_agg({item}) -> 0)::text, 'null') "
                     f"FROM ({page}) pgrst_t")

        def work(conn: psycopg.Connection) -> Response:
            row = conn.execute(statement, values).fetchone()
            assert row is not None
            if media == "object" and routine.returns_set and row[1] != 1:
                raise _Rollback(_singular(row[1]))
            if routine.returns_set:
                self._rows(row[1], limit)
            return self._read_response(request, row, params.offset or 0, media, prefer,
                                       single=not routine.returns_set)

        return self._run(request, ("rpc", routine.name), work)


class _Rollback(Exception):
    """Raised inside a transaction to undo it and answer `error` (PostgREST rolls back on 406/PGRST124)."""

    def __init__(self, error: ApiError):
        super().__init__(error.message)
        self.error = error


def _singular(count: int) -> ApiError:
    return ApiError(406, "PGRST116", "Cannot coerce the result to a single JSON object",
                    details=f"The result contains {count} rows")


def _content_range(lower: int, upper: int, total: int | None) -> str:
    """PostgREST's Content-Range: `0-9/42`, `*/0`, `0-9/*`."""
    shown = f"{lower}-{upper}" if total != 0 and lower <= upper else "*"
    return f"{shown}/{'*' if total is None else total}"

