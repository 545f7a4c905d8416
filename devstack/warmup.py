"""Build and wake every function of `vercel dev` before the stack says "ready".

`vercel dev` builds a Python function at its first request (a uv install, ~10 s) and, while it
builds, parks every request for it: a burst of first requests then waits past @vercel/fun's
5 s process-pool timeout and gets 502 "ResourceRequest timed out". So `make dev` sends one
request to each function first, two functions at a time, and waits for each answer. The request
is the cheapest one that makes the function import what its real requests import (a signed-in
GET, or a body the function refuses before it writes anything), so the first real request
after "ready" finds a built function and a warm process.

    warmed = warm(api_url, token)    # [(route, method, status, seconds), ...] or WarmupFailed
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
API = REPO / "api"
PARALLEL = 2  # builds are CPU-bound (uv, bytecode): more than the cores only queues them
TIMEOUT = 240.0  # one function's first build under load, with room


class WarmupFailed(RuntimeError):
    """A function did not answer its first request in time, or answered something not ours."""


@dataclass(frozen=True)
class Function:
    """One `api/` file as `vercel dev` serves it."""

    path: Path
    route: str  # a concrete URL path: `[id]` segments filled with 1
    methods: tuple[str, ...]

    @property
    def method(self) -> str:
        """GET when it has one; otherwise its first write method (answered 4xx: nothing is written)."""
        return "GET" if "GET" in self.methods else next(m for m in self.methods if m not in ("HEAD", "OPTIONS"))


def _route(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "index":
        parts.pop()
    return "/" + "/".join("1" if part.startswith("[") else part for part in parts)


def _methods(path: Path) -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location(f"_warmup_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # lib imports nothing with side effects
    return tuple(module.handler.allowed_methods())


def functions() -> list[Function]:
    """Every function of `api/` (files starting with `_` are not functions, as on Vercel)."""
    found = sorted(p for p in API.rglob("*.py") if not p.name.startswith("_"))
    return [Function(p, _route(p), _methods(p)) for p in found]


def _answer(client: httpx.Client, fn: Function, token: str | None) -> tuple[str, str, int, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = None if fn.method == "GET" else {}
    started = time.monotonic()
    try:
        response = client.request(fn.method, fn.route, headers=headers, json=body)
    except httpx.HTTPError as exc:
        raise WarmupFailed(f"{fn.method} {fn.route}: no answer ({type(exc).__name__}: {exc})") from exc
    seconds = time.monotonic() - started
    if not response.headers.get("content-type", "").startswith("application/json"):
        # vercel dev's own 502 page or a build error: the function never ran.
        raise WarmupFailed(f"{fn.method} {fn.route}: HTTP {response.status_code} from vercel dev, "
                           f"not the function: {response.text[:300]}")
    return fn.route, fn.method, response.status_code, seconds


def _by_build_folder(found: list[Function]) -> list[list[Function]]:
    """Functions grouped by file name: @vercel/python builds each in `.vercel/cache/<name>_py`,
    so api/properties/index.py and api/visits/index.py share a folder and must not build at once."""
    groups: dict[str, list[Function]] = {}
    for fn in found:
        groups.setdefault(fn.path.name, []).append(fn)
    return sorted(groups.values(), key=len, reverse=True)


def warm(api_url: str, token: str | None = None, *, parallel: int = PARALLEL,
         timeout: float = TIMEOUT) -> list[tuple[str, str, int, float]]:
    """One request to every function, `parallel` builds at a time; raises WarmupFailed on the first that fails."""
    with httpx.Client(base_url=api_url, timeout=timeout) as client, ThreadPoolExecutor(parallel) as pool:
        batches = pool.map(lambda group: [_answer(client, fn, token) for fn in group],
                           _by_build_folder(functions()))
        return sorted((result for batch in batches for result in batch), key=lambda r: r[0])


def report(results: list[tuple[str, str, int, float]]) -> Iterator[str]:
    for route, method, status, seconds in results:
        yield f"  {method:<6} {route:<28} {status}  {seconds:5.1f} s"
