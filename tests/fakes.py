"""Network-boundary fakes: Upstash's REST protocol answered by fakeredis (with Lua), through respx."""

from __future__ import annotations

import base64
import json
from typing import Any

import fakeredis
import httpx
import respx
from redis import exceptions as redis_exceptions


def _encode(value: Any) -> Any:
    # Upstash with `Upstash-Encoding: base64`: bulk strings base64, the simple string OK as is.
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    if value is True:
        return "OK"
    return value


class FakeUpstash:
    """Routes `url`, `url/pipeline` and `url/multi-exec` to a fakeredis server; counts the calls."""

    def __init__(self, router: respx.Router, url: str):
        self.redis = fakeredis.FakeRedis()
        self.down: Exception | None = None  # set to an httpx error to simulate an outage
        self.calls: list[list[Any]] = []
        # The specific paths first: respx matches routes in order.
        router.post(f"{url}/pipeline").mock(side_effect=self._pipeline)
        router.post(f"{url}/multi-exec").mock(side_effect=self._pipeline)
        router.post(url).mock(side_effect=self._single)

    def _run(self, command: list[Any]) -> dict[str, Any]:
        try:
            result = self.redis.execute_command(*command)
        except redis_exceptions.NoScriptError as exc:  # redis-py drops the code Upstash keeps
            return {"error": f"NOSCRIPT {exc}"}
        except Exception as exc:  # a Redis error is an `{"error"}` answer, as Upstash gives
            return {"error": str(exc)}
        if isinstance(result, str):
            result = result.encode()
        return {"result": _encode(result)}

    def _single(self, request: httpx.Request) -> httpx.Response:
        if self.down is not None:
            raise self.down
        command = json.loads(request.content)
        self.calls.append(command)
        body = self._run(command)
        return httpx.Response(400 if "error" in body else 200, json=body)

    def _pipeline(self, request: httpx.Request) -> httpx.Response:
        if self.down is not None:
            raise self.down
        commands = json.loads(request.content)
        self.calls.append(["PIPELINE", commands])
        return httpx.Response(200, json=[self._run(command) for command in commands])
