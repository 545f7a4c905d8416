"""Upstash's script rules that a stock Valkey does not have: the ``allow-key-locking`` flag and its key rule.

Upstash runs a Lua script under its global lock (nothing else runs meanwhile) unless the
script's shebang carries ``allow-key-locking``; then it locks only the keys passed in ``KEYS``,
and refuses a call on any other key, or a database-wide write (FLUSHDB, FLUSHALL)
(https://upstash.com/docs/redis/features/key-locking, upstash/docs
``redis/features/key-locking.mdx``). Valkey 9.1 refuses that flag ("Unexpected flag in script
shebang: allow-key-locking"), so ``prepare`` removes it, keeps the flags Valkey knows
(``no-writes``...), and, for a key-locked script, puts in front of the body a check that makes
``redis.call`` and ``redis.pcall`` refuse what Upstash refuses. Where each command keeps its keys
comes from the server's own command table: the (first, last, step) positions of the commands the
script names literally are written into the check (``COMMAND INFO``, asked once per command by the
engine); any other call, or a command whose keys move (``movablekeys``), asks the server
(``COMMAND GETKEYS``). So a hit costs the check a few table lookups, not a server call per call.

The check is added at the start of the body's first line, so error line numbers do not move.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

KEY_LOCKING = "allow-key-locking"
NO_WRITES = "no-writes"

# Upstash's own words (key-locking.mdx); Valkey appends " script: ..." to errors raised from Lua,
# which the stand-in removes again for this one.
DYNAMIC_KEY = "ERR Dynamic keys are not allowed in Lua scripts when 'allow-key-locking' flag is set. Key was: "
# Not verbatim: Upstash's docs say such a call is refused, not in which words.
DATABASE_WIDE = "ERR Database-wide commands are not allowed in Lua scripts when 'allow-key-locking' flag is set: "

_LITERAL_CALL = re.compile(r"redis\.p?call\(\s*['\"]([A-Za-z_]+)['\"]")

# Lua, one line: `__u_specs` (written per script) maps a command to its key positions, counted
# from the command name at 0, `last` negative from the end; a key outside KEYS is refused.
_CHECK = (
    "local __u_call, __u_pcall, __u_keys = redis.call, redis.pcall, {} "
    "for _, k in ipairs(KEYS) do __u_keys[k] = true end "
    "local function __u_refused(...) "
    "local name = string.upper(tostring((...))) "
    "if name == 'FLUSHDB' or name == 'FLUSHALL' then return \"" + DATABASE_WIDE + "\" .. string.lower(name) end "
    "local spec, keys = __u_specs[name], {} "
    "if spec then "
    "if spec[1] > 0 and spec[3] > 0 then "  # no key at all (TIME, PING): nothing to check
    "local n = select('#', ...) "
    "local last = spec[2] < 0 and n + spec[2] + 1 or spec[2] + 1 "
    "for i = spec[1] + 1, math.min(last, n), spec[3] do keys[#keys + 1] = tostring((select(i, ...))) end "
    "end "
    "else "
    "local found = __u_pcall('COMMAND', 'GETKEYS', ...) "
    "if type(found) == 'table' and not found.err then keys = found end "
    "end "
    "for _, key in ipairs(keys) do if not __u_keys[key] then return \"" + DYNAMIC_KEY + "\" .. key end end "
    "return nil end "
    "local redis = setmetatable({"
    "call = function(...) local refused = __u_refused(...) if refused then error({err = refused}) end "
    "return __u_call(...) end, "
    "pcall = function(...) local refused = __u_refused(...) if refused then return {err = refused} end "
    "return __u_pcall(...) end"
    "}, {__index = redis}) "
)


@dataclass(frozen=True)
class Prepared:
    """A script as Upstash received it, and what Valkey runs in its place."""

    text: str  # for Valkey: Upstash-only flag removed, the key check added when key-locked
    sha: str  # Valkey's SHA of `text` (Upstash's is the SHA of the script as the client sent it)
    key_locked: bool
    read_only: bool


def sha1(text: bytes | str) -> str:
    return hashlib.sha1(text if isinstance(text, bytes) else text.encode("utf-8")).hexdigest()


def literal_commands(script: bytes) -> set[str]:
    """The commands `script` calls by a literal name (`redis.call('GET', ...)` → `GET`)."""
    return {name.upper() for name in _LITERAL_CALL.findall(script.decode("utf-8", "replace"))}


def prepare(script: bytes, specs: Mapping[str, tuple[int, int, int]] | None = None) -> Prepared:
    """What Valkey must run for `script` (the bytes of an EVAL or SCRIPT LOAD). `specs`: the key
    positions (first, last, step) of commands with fixed key positions, from the server's table."""
    text = script.decode("utf-8", "surrogateescape")
    first, newline, body = text.partition("\n")
    if not first.startswith("#!"):
        return Prepared(text, sha1(script), key_locked=False, read_only=False)
    words = first[2:].split()
    flags: list[str] = []
    kept = words[:1]  # the engine, "lua"
    for word in words[1:]:
        if word.startswith("flags="):
            flags = [f for f in word[len("flags="):].split(",") if f]
        else:
            kept.append(word)  # whatever else: Valkey's to accept or refuse
    key_locked = KEY_LOCKING in flags
    rest = [f for f in flags if f != KEY_LOCKING]
    shebang = "#!" + " ".join(kept + ([f"flags={','.join(rest)}"] if rest else []))
    if key_locked:
        known = {name: specs[name] for name in sorted(literal_commands(script)) if specs and name in specs}
        table = ", ".join(f"{name} = {{{first}, {last}, {step}}}" for name, (first, last, step) in known.items())
        body = f"local __u_specs = {{{table}}} " + _CHECK + body
    prepared = shebang + newline + body
    return Prepared(prepared, sha1(prepared.encode("utf-8", "surrogateescape")), key_locked, NO_WRITES in rest)
