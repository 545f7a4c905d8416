"""Drills on the Dakar host (`python -m drills.dakar`): Valkey stopped under load, SIGTERM under load.

Starts `python -m devstack dakar` on free ports (the host with two workers over Valkey by TCP, the
Supabase and PayDunya stand-ins), runs both drills with kept-alive clients, prints one table.

1. **Valkey stopped under load**: 8 clients read the public pages in a loop; Valkey is stopped
   (`devstack redis-stop`) for 5 s, then started again. Must be 0: 5xx and requests without an
   answer. Reported: answers by X-Cache while it was down (BYPASS: from the database) and the
   seconds from its return until every page is a HIT again (target ≤ 45 s).
2. **SIGTERM under load**: a second host on the same stack, 16 clients on it; SIGTERM after 2 s.
   Must be 0: 5xx, and requests the host had read but did not answer. Reported: connections
   refused once it stopped accepting (expected: nothing new is accepted), and requests on a
   kept-alive connection the host closed before reading them.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from bench.dakar import Host
from devstack import child
from devstack.__main__ import REPO

PAGES = ["/api/properties", "/api/properties?city=Dakar", "/api/properties/123", "/api/search?city=Dakar",
         "/api/visits/slots?property_id=789"]
HIT_AGAIN_WITHIN = 45.0


def progress(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    caches: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # no HTTP answer, by exception
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, response: httpx.Response | None, failure: str | None = None) -> None:
        with self.lock:
            if response is None:
                self.failures[failure or "?"] += 1
            else:
                self.statuses[response.status_code] += 1
                self.caches[response.headers.get("x-cache", "-")] += 1

    @property
    def five_xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def load(base: str, clients: int, stop: threading.Event, tally: Callable[[], Tally]) -> list[threading.Thread]:
    """`clients` threads, each a kept-alive client reading PAGES in turn until `stop`; each answer
    goes to the Tally `tally()` returns at that moment (the phase the drill is in)."""

    def run(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            i = offset
            while not stop.is_set():
                path = PAGES[i % len(PAGES)]
                i += 1
                try:
                    tally().add(client.get(path))
                except httpx.HTTPError as exc:
                    tally().add(None, type(exc).__name__)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def valkey_stopped(stack: child.ChildStack) -> list[str]:
    base = stack.url("dakar")
    phases = {"before": Tally(), "stopping and down": Tally(), "back": Tally()}
    current = ["before"]
    stop = threading.Event()
    threads = load(base, 8, stop, lambda: phases[current[0]])
    time.sleep(3)
    progress("drill 1: stopping Valkey for 5 s under load …")
    current[0] = "stopping and down"
    subprocess.run([sys.executable, "-m", "devstack", "redis-stop"], cwd=REPO, env=stack.env, check=True,
                   capture_output=True, timeout=60)
    time.sleep(5)
    subprocess.run([sys.executable, "-m", "devstack", "redis-start"], cwd=REPO, env=stack.env, check=True,
                   capture_output=True, timeout=60)
    current[0] = "back"
    returned = time.monotonic()
    hit: dict[str, float] = {}
    with httpx.Client(base_url=base, timeout=30) as probe:
        while len(hit) < len(PAGES) and time.monotonic() - returned < HIT_AGAIN_WITHIN + 15:
            for path in PAGES:
                if path not in hit and probe.get(path).headers.get("x-cache") == "HIT":
                    hit[path] = time.monotonic() - returned
            time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    every = max(hit.values()) if len(hit) == len(PAGES) else float("inf")
    rows = []
    for name, t in phases.items():
        rows.append(f"| 1. Valkey stopped: {name} | {sum(t.statuses.values())} | {dict(t.statuses)} | "
                    f"{dict(t.caches)} | {t.five_xx} | {sum(t.failures.values())} {dict(t.failures) or ''} |")
    verdict = "PASS" if every <= HIT_AGAIN_WITHIN else "FAIL"
    rows.append(f"| 1. every page a HIT again after Valkey's return | {verdict}: {every:.1f} s "
                f"(target ≤ {HIT_AGAIN_WITHIN:g} s) | | | | |")
    return rows


def sigterm(stack: child.ChildStack) -> list[str]:
    host = Host(stack)
    tally = Tally()
    stop = threading.Event()
    threads = load(f"http://127.0.0.1:{host.port}", 16, stop, lambda: tally)
    time.sleep(2)
    progress("drill 2: SIGTERM to the host under load …")
    host.proc.send_signal(signal.SIGTERM)
    code = host.proc.wait(60)
    time.sleep(0.5)  # the clients meet the closed socket
    stop.set()
    for thread in threads:
        thread.join()
    host.log.close()
    refused = tally.failures.get("ConnectError", 0)
    unread = sum(n for name, n in tally.failures.items() if name != "ConnectError")
    return [f"| 2. SIGTERM under load (exit {code}) | {sum(tally.statuses.values())} | {dict(tally.statuses)} | "
            f"{dict(tally.caches)} | {tally.five_xx} | {refused} refused after the stop; "
            f"{unread} closed before being read {dict(tally.failures) or ''} |"]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m drills.dakar", description=__doc__.split("\n")[0]).parse_args(argv)
    progress("starting the Dakar stack (python -m devstack dakar, free ports) …")
    stack = child.start(api=False, dakar=True, purpose="drills-dakar", timeout=120)
    try:
        rows = ["| drill | answers | by status | by X-Cache | 5xx (must be 0) | no answer |",
                "| --- | --- | --- | --- | --- | --- |"]
        rows += valkey_stopped(stack)
        rows += sigterm(stack)
    finally:
        stack.stop()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
