"""The route table Vercel derives from the api/ tree, for the Dakar host.

    api/health.py              → /api/health
    api/properties/index.py    → /api/properties
    api/properties/[id].py     → /api/properties/<one segment>
    api/visits/slots.py        → /api/visits/slots     (a fixed name wins over `[id]` beside it)

Each file is imported once, as Vercel imports one per function (its folder names are not
importable: `[id]`), and its `handler` class served.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Route:
    pattern: str  # `/api/properties/[id]`, as Vercel names the function
    file: str  # `api/properties/[id].py`
    handler: type

    @property
    def dynamic(self) -> bool:
        return "[" in self.pattern


def pattern_of(relative: str) -> str:
    """The URL pattern of an api/ file (`api/properties/index.py` → `/api/properties`)."""
    parts = list(Path(relative).with_suffix("").parts)
    if parts[-1] == "index":
        parts.pop()
    return "/" + "/".join(parts)


def _load(relative: str) -> type:
    name = "dousell_api_" + re.sub(r"\W", "_", relative.removesuffix(".py"))
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {relative}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    handler = getattr(module, "handler", None)
    if not isinstance(handler, type):
        raise ImportError(f"{relative} defines no `handler` class")
    return handler


def api_files(root: Path = ROOT) -> list[str]:
    """Every function file under api/, as Vercel builds one per file (names starting `_` or `.` are not functions)."""
    return sorted(str(p.relative_to(root)) for p in (root / "api").rglob("*.py")
                  if not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts))


class Routes:
    """Path → Route: fixed segments first, then `[name]` segments (one segment each)."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._exact = {r.pattern: r for r in routes if not r.dynamic}
        # Vercel also serves a function by its file's own name: `/api/properties/index`
        self._exact |= {"/" + r.file.removesuffix(".py"): r for r in routes if not r.dynamic}
        self._dynamic = [(re.compile("^" + re.sub(r"\\\[\w+\\\]", "[^/]+", re.escape(r.pattern)) + "$"), r)
                         for r in routes if r.dynamic]

    @classmethod
    def load(cls, root: Path = ROOT) -> Routes:
        return cls([Route(pattern_of(f), f, _load(f)) for f in api_files(root)])

    def match(self, path: str) -> Route | None:
        """The route serving `path` (no query), or None. One trailing slash is ignored, as Vercel does."""
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        route = self._exact.get(path)
        if route is not None:
            return route
        for regex, candidate in self._dynamic:
            if regex.match(path):
                return candidate
        return None
