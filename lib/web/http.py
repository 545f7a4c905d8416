"""The base of every `api/` handler: routing, error mapping, JSON answers and the request log.

A handler subclasses `Endpoint`, defines `get`/`post`/`patch`/... taking a `Request` (lib/web/request),
and returns a `Reply` (or a dict, answered 200). It raises `lib.errors` exceptions for the
unhappy paths; this module turns them into the contract's error shape in one place.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from lib import context
from lib.errors import BadRequest, DousellError, MethodNotAllowed, PayloadTooLarge, ValidationFailed
from lib.ops import recorder
from lib.web.request import Request, field_errors, is_validation_error

MAX_BODY_BYTES = 64 * 1024
HANDLED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass
class Reply:
    """What a handler answers: a JSON body, a status and extra headers."""

    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def _log(record: dict[str, Any]) -> None:
    try:
        sys.stderr.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed stderr must never fail a request


def _path_of(target: str) -> str | None:
    """The path of a request target; None when urlsplit refuses it (`http://[::1/`, an absolute form)."""
    try:
        return urlsplit(target).path
    except ValueError:
        return None


def _encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


class Endpoint(BaseHTTPRequestHandler):
    """Subclass, name it `handler`, define `get(self, req)` / `post(...)` / ... ."""

    # Set to the name of the `[id]` segment on dynamic routes (`api/properties/[id].py`).
    path_param: str | None = None
    server_version = "dousell"
    sys_version = ""

    @classmethod
    def allowed_methods(cls) -> list[str]:
        allowed = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if callable(getattr(cls, m.lower(), None))]
        if "GET" in allowed:
            allowed.insert(1, "HEAD")
        return allowed + ["OPTIONS"]

    # BaseHTTPRequestHandler looks up do_<METHOD>; all of them go through one dispatcher.
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default line carries the query string; we log our own JSON line."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Vercel's Fluid launcher serves `class Handler(BaseHandler, handler)`: its BaseHandler comes
        # first in the MRO, so its log_message (the request line, query string included, to stdout)
        # would shadow ours. This hook runs for that class too, after its body: ours is pinned back.
        super().__init_subclass__(**kwargs)
        cls.log_message = Endpoint.log_message  # type: ignore[method-assign]

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What http.server answers by itself (an unknown method, a bad request line, headers too
        large), in the contract's shape too: an unknown method is a 405 like any other."""
        if code == 501:
            err: DousellError = MethodNotAllowed(self.allowed_methods())
        else:
            err = BadRequest()
            err.status = code if 400 <= code < 500 else 400
        payload = _encode(err.to_body())
        self.close_connection = True
        # Logged before sending, as in _dispatch: the line exists once the client has its answer.
        _log({"level": "info", "method": self.command, "status": err.status, "code": err.code})
        try:
            self.send_response(err.status)
            for name, value in {**err.headers, "Content-Type": "application/json; charset=utf-8",
                                "Content-Length": str(len(payload)), "Cache-Control": "no-store",
                                "X-Content-Type-Options": "nosniff", "Server-Timing": "total;dur=0.0",
                                "Connection": "close"}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _dispatch(self, method: str) -> None:
        ctx = context.begin()
        target = _path_of(self.path)
        path = "-" if target is None else target  # an unreadable target is answered 400 below
        recording = recorder.begin_request(path)
        status, code, reason = 500, None, None
        try:
            reply = self._handle(method, readable=target is not None)
        except DousellError as exc:
            reply = Reply(exc.to_body(), exc.status, dict(exc.headers))
            code = exc.code
            reason = exc.reason  # e.g. why a token was refused; never the token
            if exc.status >= 500:
                self._log_exception(exc, path)
        except Exception as exc:  # noqa: BLE001 - the last net: a bug answers 500 in the contract's shape, logged
            err: DousellError
            if is_validation_error(exc):
                err = ValidationFailed(details=field_errors(exc))
            else:
                err = DousellError()
                self._log_exception(exc, path)
            reply = Reply(err.to_body(), err.status)
            code = err.code
        status = reply.status
        duration_ms = (time.perf_counter() - ctx.started) * 1000
        # Logged before sending, so the line exists once the client has its answer.
        record = {
            "level": "info" if status < 500 else "error",
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 2),
            "cache": ctx.cache_status,
        }
        if code:
            record["code"] = code
        if reason:
            record["reason"] = reason
        _log(record)
        # Before sending: a function may be frozen as soon as its answer is out.
        recorder.end_request(recording, method, recorder.route(path, self.path_param), duration_ms, status)
        try:
            self._send(method, reply, ctx)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left; nothing to answer

    def _handle(self, method: str, *, readable: bool) -> Reply:
        allowed = self.allowed_methods()
        if method == "OPTIONS":
            return Reply(None, 204, {"Allow": ", ".join(allowed)})
        if method not in allowed:
            raise MethodNotAllowed(allowed)
        if not readable:
            raise BadRequest("Adresse de la requête illisible.")
        req = self._parse(method)
        func = getattr(self, "get" if method == "HEAD" else method.lower())
        result = func(req)
        return result if isinstance(result, Reply) else Reply(result)

    def _parse(self, method: str) -> Request:
        parts = urlsplit(self.path)
        query: dict[str, str] = {}
        repeated: list[str] = []
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False, max_num_fields=100)
        except ValueError as exc:
            raise BadRequest("Trop de paramètres dans l'adresse.") from exc
        path_param = None
        if self.path_param:
            # Vercel passes `[id]` both as the last segment and as `?id=`; the path is the truth.
            segment = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
            path_param = segment or None
        for name, value in pairs:
            if self.path_param and name == self.path_param:
                path_param = path_param or value
                continue
            if name in query and name not in repeated:
                repeated.append(name)
            query[name] = value
        return Request(method, parts.path, query, self.headers, path_param, self._read_body(method), repeated)

    def _read_body(self, method: str) -> bytes:
        if method in ("GET", "HEAD", "DELETE"):
            return b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise BadRequest("Envoyez le corps avec un en-tête Content-Length.")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return b""
        raw = values[0].strip()
        # ASCII digits only: `²` passes str.isdigit() and int() then raises. Two headers: which
        # one a proxy believed is unknown, so neither is.
        if len(values) > 1 or not (raw.isascii() and raw.isdigit()):
            raise BadRequest("En-tête Content-Length invalide.")
        digits = raw.lstrip("0") or "0"
        if len(digits) > len(str(MAX_BODY_BYTES)) or int(digits) > MAX_BODY_BYTES:  # int() of 5,000 digits raises
            self.close_connection = True  # the unread body must not be taken for the next request
            raise PayloadTooLarge()
        length = int(digits)
        return self.rfile.read(length) if length else b""

    def _send(self, method: str, reply: Reply, ctx: context.RequestContext) -> None:
        payload = b"" if reply.status == 204 or reply.body is None else _encode(reply.body)
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        if payload:
            headers["Content-Type"] = "application/json; charset=utf-8"
        if ctx.cache_status:
            headers["X-Cache"] = ctx.cache_status
        timings = dict(ctx.timings_ms)
        timings["total"] = (time.perf_counter() - ctx.started) * 1000
        headers["Server-Timing"] = ", ".join(f"{name};dur={ms:.1f}" for name, ms in timings.items())
        headers.update(reply.headers)
        headers["Content-Length"] = str(len(payload))
        self.send_response(reply.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload and method != "HEAD":
            self.wfile.write(payload)

    @staticmethod
    def _log_exception(exc: BaseException, path: str) -> None:
        _log({
            "level": "error",
            "path": path,
            "exception": type(exc).__name__,
            "error": str(exc)[:500],
            "trace": traceback.format_exception(exc)[-3:] if not isinstance(exc, DousellError) else None,
        })
