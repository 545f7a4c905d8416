"""Read replicas for the Upstash stand-in, as every paid Upstash database has them: real Valkey replication, late.

Upstash replicates every paid database; writes go to the leader and reach the replicas
asynchronously (https://upstash.com/docs/redis/features/replication, features/consistency). Here
each replica is a real ``valkey-server`` (devstack/redis_server.py) started with ``--replicaof``,
pointed not at the leader but at a ``LagProxy`` in front of it: the proxy hands the replica the
leader's replication stream ``lag_ms`` after it arrived, so the replica applies every change that
much late — Valkey's own replication (full sync, then the command stream, offsets), delayed. What
the replica sends back (``REPLCONF ACK``) goes through at once. The lag can be changed while the
stack runs (``proxy.lag_ms``), so a drill runs at 20 ms, then at 500 ms, on the same replicas.

When the leader goes away (``make redis-stop``), the proxy closes the replica's connection at once:
the replica sees its link down (``ROLE`` says ``connect``) and the stand-in stops reading from it
(devstack/upstash.py: a replica without its link is out of the rotation; with the leader down too,
the answer is Upstash's outage, not a stale replica's value). When the leader is back on its port,
the replica reconnects through the proxy and resyncs by itself (Valkey retries every second).

    replicas = ReplicaSet(leader, count=1, lag_ms=20, state_dir=tmp).start()
    replicas.urls        # for the stand-in: ["redis://127.0.0.1:<port>/0", ...]
    replicas.lag_ms = 500
    replicas.stop()
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Self

from devstack.redis_server import RedisServer, free_port

log = logging.getLogger("devstack.replicas")

REPLICAS_VARIABLE = "DEVSTACK_UPSTASH_REPLICAS"
LAG_VARIABLE = "DEVSTACK_UPSTASH_REPLICA_LAG_MS"
DEFAULT_REPLICAS = 1
DEFAULT_LAG_MS = 20.0

__all__ = ["LagProxy", "ReplicaSet", "replicas_from_env", "lag_from_env"]


def replicas_from_env() -> int:
    """``DEVSTACK_UPSTASH_REPLICAS`` (default 1; 0 = a single node)."""
    return max(0, int(os.environ.get(REPLICAS_VARIABLE, DEFAULT_REPLICAS)))


def lag_from_env() -> float:
    """``DEVSTACK_UPSTASH_REPLICA_LAG_MS`` (default 20)."""
    return max(0.0, float(os.environ.get(LAG_VARIABLE, DEFAULT_LAG_MS)))


class LagProxy:
    """A TCP proxy to ``upstream`` that delivers what upstream sends ``lag_ms`` after it arrived."""

    def __init__(self, upstream: tuple[str, int], lag_ms: float, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.lag_ms = float(lag_ms)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(8)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> Self:
        threading.Thread(target=self._accept, name=f"lag-proxy:{self.port}", daemon=True).start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                _close(sock)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=1.0)
                upstream.settimeout(None)
            except OSError:  # the leader is down: the replica retries by itself
                _close(downstream)
                continue
            for sock in (downstream, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._track(sock)
            queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
            ready = threading.Condition()
            threading.Thread(target=self._forward, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=self._receive, args=(upstream, queue, ready), daemon=True).start()
            threading.Thread(target=self._deliver, args=(downstream, upstream, queue, ready), daemon=True).start()

    @staticmethod
    def _forward(source: socket.socket, target: socket.socket) -> None:
        """The replica's side (REPLCONF ACK, PSYNC): at once. Its end closes both."""
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        _close(target)
        _close(source)

    def _receive(self, source: socket.socket, queue: collections.deque[tuple[float, bytes | None]],
                 ready: threading.Condition) -> None:
        """The leader's stream, each chunk stamped with when it is due. When the leader hangs up, the
        replica's link goes down at once (what was still in flight died with the leader)."""
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                chunk = b""
            with ready:
                if not chunk:
                    queue.clear()
                queue.append((time.monotonic() + self.lag_ms / 1000 if chunk else 0.0, chunk or None))
                ready.notify()
            if not chunk:
                return

    @staticmethod
    def _deliver(target: socket.socket, source: socket.socket,
                 queue: collections.deque[tuple[float, bytes | None]], ready: threading.Condition) -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, chunk = queue.popleft()
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if chunk is None:  # delivered all the leader sent: now the replica sees the link go down
                break
            try:
                target.sendall(chunk)
            except OSError:
                break
        _close(target)
        _close(source)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class ReplicaSet:
    """``count`` Valkey replicas of ``leader``, each behind its own LagProxy."""

    def __init__(self, leader: RedisServer, count: int, lag_ms: float, state_dir: str | os.PathLike[str]) -> None:
        self.leader = leader
        self.count = count
        self._lag_ms = float(lag_ms)
        self.state_dir = Path(state_dir)
        self.proxies: list[LagProxy] = []
        self.servers: list[RedisServer] = []

    @property
    def lag_ms(self) -> float:
        return self._lag_ms

    @lag_ms.setter
    def lag_ms(self, value: float) -> None:
        self._lag_ms = float(value)
        for proxy in self.proxies:
            proxy.lag_ms = self._lag_ms

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self, timeout: float = 20.0) -> Self:
        for i in range(1, self.count + 1):
            proxy = LagProxy((self.leader.host, self.leader.port), self._lag_ms).start()
            server = RedisServer(free_port(), self.state_dir / f"replica-{i}", host=self.leader.host,
                                 binary=self.leader.binary,
                                 extra_args=["--replicaof", proxy.address[0], str(proxy.port)])
            self.proxies.append(proxy)
            self.servers.append(server)
            server.start()
        deadline = time.monotonic() + timeout
        for server in self.servers:
            while not synced(server):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica on port {server.port} did not sync with the leader in {timeout}s")
                time.sleep(0.02)
        if self.servers:
            log.info("upstash: %d read replica(s), %s ms late", self.count, self._lag_ms)
        return self

    def stop(self) -> None:
        for server in self.servers:
            try:
                server.stop(timeout=5.0)
            except (OSError, RuntimeError) as exc:
                log.warning("replica on port %s: %s", server.port, exc)
        for proxy in self.proxies:
            proxy.close()
        self.servers.clear()
        self.proxies.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def synced(server: RedisServer) -> bool:
    """True once ``server`` is a replica whose link to its leader is up (``ROLE``: connected)."""
    import redis

    try:
        with redis.Redis(host=server.host, port=server.port, socket_timeout=0.5) as client:
            role = client.execute_command("ROLE")
    except (redis.RedisError, OSError):
        return False
    return isinstance(role, list) and len(role) >= 4 and role[3] in (b"connected", "connected")
