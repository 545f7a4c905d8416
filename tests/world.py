"""A fake world for the write path, at the network boundary: PostgREST, PayDunya, Upstash, JWKS.

`FakeSupabase` is an in-memory model of the tables, RLS and the RPCs of supabase/migrations;
`FakePayDunya` answers PayDunya's checkout API; Upstash is tests.fakes.FakeUpstash (the real
stand-in's engine over a real Valkey). Used by tests/lib/domain/test_payments.py, tests/lib/domain/test_visits.py and tests/api/.

A race is not run on this model: `on_standins` and `race_while_held` (at the end) run it on the real
stand-ins, where the database functions of supabase/migrations fence it themselves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import psycopg
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from lib import auth, db, keys
from lib.cache import locks
from lib.domain import payments, settle
from lib.edge import upstash
from tests.fakes import FakeUpstash

SUPABASE = "https://project.supabase.test"
UPSTASH = "https://upstash.test"
PAYDUNYA = "https://paydunya.test/sandbox-api/v1"
PUBLIC = "https://dousell.test"
ANON_KEY, SERVICE_KEY = "anon-key", "service-key"
MASTER_KEY = "pd-master-key"
IPN_HASH = hashlib.sha512(MASTER_KEY.encode()).hexdigest()

AWA = "11111111-1111-4111-8111-111111111111"
IBRAHIMA = "22222222-2222-4222-8222-222222222222"
MOUSSA = "33333333-3333-4333-8333-333333333333"
FATOU = "44444444-4444-4444-8444-444444444444"
NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


# == fakes (shared with tests/lib/domain/test_visits.py and tests/api) ================================


def env(monkeypatch) -> None:
    """Every variable the write path reads, pointed at the fakes; the breaker reset (the clients are the
    test's own: tests/conftest.py's own_clients)."""
    for name, value in {
        "SUPABASE_URL": SUPABASE, "SUPABASE_ANON_KEY": ANON_KEY, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
        "UPSTASH_REDIS_REST_URL": UPSTASH, "UPSTASH_REDIS_REST_TOKEN": "t",
        "PAYDUNYA_MASTER_KEY": MASTER_KEY, "PAYDUNYA_PRIVATE_KEY": "pd-private", "PAYDUNYA_TOKEN": "pd-token",
        "PAYDUNYA_BASE_URL": PAYDUNYA, "PUBLIC_BASE_URL": PUBLIC,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("CACHE_NAMESPACE", "PAYDUNYA_MODE", "SUPABASE_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    reset_breaker()
    monkeypatch.setattr(locks, "sleep", lambda seconds: None)  # the lock's retry pause


def reset_breaker() -> None:
    """The edge's breaker closed: it is the process's, not a client's (lib/edge/upstash)."""
    upstash.breaker.reset()


class WallClock:
    """`payments.now`: an aware UTC datetime the tests move."""

    def __init__(self, now: datetime = NOW):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def user(uid: str) -> auth.User:
    """A signed-in user for lib tests; FakeSupabase reads `user:<id>` bearers as that user."""
    return auth.User(id=uid, email=None, role="authenticated", token=f"user:{uid}")


# Real ES256 tokens for the API tests: a local key, its JWKS served through respx.
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())
JWK = {**ECAlgorithm.to_jwk(SIGNING_KEY.public_key(), as_dict=True), "kid": "write-path-1", "alg": "ES256",
       "use": "sig"}
JWKS_URL = f"{SUPABASE}/auth/v1/.well-known/jwks.json"


def serve_jwks(router: respx.Router) -> None:
    """Serve JWK at the project's JWKS URL (add it before FakeSupabase, which takes the whole host); the
    test's JWKS cache starts cold (tests/conftest.py's own_clients)."""
    router.get(JWKS_URL).mock(return_value=httpx.Response(200, json={"keys": [JWK]}))


def bearer(uid: str, *, anonymous: bool = False) -> dict[str, str]:
    """An `Authorization` header with a genuine Supabase-shaped access token for `uid` (an anonymous
    sign-in's, without an address, with `anonymous=True`)."""
    now = int(datetime.now(UTC).timestamp())
    claims = {"iss": f"{SUPABASE}/auth/v1", "sub": uid, "aud": "authenticated", "role": "authenticated",
              "exp": now + 3600, "iat": now, "email": "" if anonymous else f"{uid[:4]}@example.sn",
              "is_anonymous": anonymous}
    token = jwt.encode(claims, SIGNING_KEY, algorithm="ES256", headers={"kid": "write-path-1"})
    return {"Authorization": f"Bearer {token}"}


def rpc_error(code: str) -> httpx.Response:
    """What PostgREST answers for `raise exception '<code>' using errcode = 'P0001'`."""
    return httpx.Response(400, json={"code": "P0001", "message": code, "details": None, "hint": None})


def denied() -> httpx.Response:
    return httpx.Response(403, json={"code": "42501", "message": "permission denied", "details": None, "hint": None})


def _sub_of(bearer: str) -> str | None:
    if bearer.startswith("user:"):
        return bearer[5:]
    parts = bearer.split(".")
    if len(parts) == 3:  # a real JWT minted by the API tests: its `sub`, unverified (lib verified it)
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        return json.loads(base64.urlsafe_b64decode(payload)).get("sub")
    return None


class FakeSupabase:
    """PostgREST over an in-memory model of supabase/migrations: tables, RLS and the write RPCs."""

    def __init__(self, router: respx.Router, clock: Callable[[], datetime]):
        self.lock = threading.RLock()
        self.clock = clock
        self.properties = {
            123: {"id": 123, "owner_id": AWA, "status": "published", "title": "Appartement à la Médina", "city": "Dakar"},
            789: {"id": 789, "owner_id": AWA, "status": "published", "title": "Villa aux Almadies", "city": "Dakar"},
            202: {"id": 202, "owner_id": IBRAHIMA, "status": "published", "title": "Maison à Thiès", "city": "Thiès"},
            117: {"id": 117, "owner_id": AWA, "status": "draft", "title": "Brouillon", "city": "Dakar"},
        }
        self.leases = {
            123: {"id": 123, "property_id": 123, "tenant_id": MOUSSA, "status": "active", "monthly_rent": 50_000,
                  "starts_on": "2026-09-01", "ends_on": None},
            124: {"id": 124, "property_id": 202, "tenant_id": MOUSSA, "status": "ended", "monthly_rent": 120_000,
                  "starts_on": "2025-09-01", "ends_on": "2026-08-31"},
        }
        self.profiles = {AWA, IBRAHIMA, MOUSSA, FATOU}
        self.payments: dict[int, dict[str, Any]] = {}
        self.checked: dict[int, datetime] = {}  # private.payment_checks
        self.notifications: list[dict[str, Any]] = []
        self.visits: list[dict[str, Any]] = []
        day = (clock() + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        self.slots = [{"id": i + 1, "property_id": 789, "starts_at": day + timedelta(hours=h),
                       "ends_at": day + timedelta(hours=h + 1)} for i, h in enumerate((10, 14, 16))]
        self.slots.append({"id": 9, "property_id": 789, "starts_at": day - timedelta(days=2, hours=-10),
                           "ends_at": day - timedelta(days=2, hours=-11)})  # yesterday: past
        self.calls: list[tuple[str, str, str]] = []  # (method, path after /rest/v1, role)
        self.broken: dict[str, httpx.Response | Exception] = {}  # path → failure to answer
        self.before: dict[str, Callable[[], None]] = {}  # path → run before answering (races)
        self._ids = 1000
        self.route = router.route(host="project.supabase.test").mock(side_effect=self.handle)
        for period in ("2026-09", "2026-10"):
            self.add_payment(123, period, status="completed", token=f"seed-123-{period}",
                             created_at=datetime(int(period[:4]), int(period[5:]), 3, 10, tzinfo=UTC))

    # -- helpers for tests -------------------------------------------------------------------

    def add_payment(self, lease_id: int, period: str, *, status: str = "pending", token: str | None = None,
                    url: str | None = None, created_at: datetime | None = None, amount: int | None = None) -> dict:
        with self.lock:
            self._ids += 1
            at = (created_at or self.clock()).isoformat()
            row = {"id": self._ids, "lease_id": lease_id, "period": period,
                   "amount": amount or self.leases[lease_id]["monthly_rent"], "currency": "XOF", "status": status,
                   "review_reason": None,
                   "provider": "paydunya", "provider_token": token, "checkout_url": url,
                   "paid_at": at if status == "completed" else None, "created_at": at, "updated_at": at}
            self.payments[row["id"]] = row
            return row

    def rows(self, lease_id: int = 123, period: str | None = None, status: str | None = None) -> list[dict]:
        return [p for p in self.payments.values() if p["lease_id"] == lease_id
                and (period is None or p["period"] == period) and (status is None or p["status"] == status)]

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.calls if m == method and p == path)

    # -- the wire ------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/rest/v1")
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer == SERVICE_KEY:
            role, uid = "service_role", None
        elif bearer == ANON_KEY:
            role, uid = "anon", None
        else:
            role, uid = "authenticated", _sub_of(bearer)
        self.calls.append((request.method, path, role))
        hook = self.before.pop(path, None)
        if hook:
            hook()
        failure = self.broken.get(path)
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return failure
        with self.lock:
            if path.startswith("/rpc/"):
                return self._rpc(path[5:], json.loads(request.content or b"{}"), role, uid)
            table = path.strip("/")
            rows = [r for r in self._visible(table, role, uid) if self._matches(r, request.url.params)]
            if request.method == "GET":
                return httpx.Response(200, json=self._shape(rows, request.url.params))
            if request.method == "PATCH":
                if role != "service_role":
                    return denied()
                changes = json.loads(request.content)
                now = self.clock().isoformat()
                for row in rows:
                    row.update(changes, updated_at=now)
                return httpx.Response(200, json=[dict(r) for r in rows])
        return httpx.Response(405, json={"code": "PGRST000", "message": "unsupported by the fake"})

    def _visible(self, table: str, role: str, uid: str | None) -> list[dict]:
        everything = {"leases": list(self.leases.values()), "properties": list(self.properties.values()),
                      "published_properties": [p for p in self.properties.values() if p["status"] == "published"],
                      "rental_payments": list(self.payments.values())}[table]
        if role == "service_role" or table == "published_properties":  # the view: anyone, published only
            return everything
        if table == "properties":
            return [p for p in everything if p["status"] == "published" or (uid and p["owner_id"] == uid)]
        if role == "anon" or uid is None:
            return []
        if table == "leases":
            return [lease for lease in everything if self._party(lease, uid)]
        return [p for p in everything if self._party(self.leases[p["lease_id"]], uid)]

    def _party(self, lease: dict, uid: str) -> bool:
        return lease["tenant_id"] == uid or self.properties[lease["property_id"]]["owner_id"] == uid

    @staticmethod
    def _matches(row: dict, params: httpx.QueryParams) -> bool:
        for name, value in params.multi_items():
            if name in ("select", "order", "limit", "offset"):
                continue
            op, _, operand = value.partition(".")
            if op == "eq" and str(row.get(name)) != operand:
                return False
            if op == "is" and operand == "null" and row.get(name) is not None:
                return False
        return True

    @staticmethod
    def _shape(rows: list[dict], params: httpx.QueryParams) -> list[dict]:
        for term in reversed(",".join(params.get_list("order")).split(",")):
            if term:
                column, _, direction = term.partition(".")
                rows = sorted(rows, key=lambda r: (r.get(column) is None, r.get(column)),
                              reverse=direction.startswith("desc"))
        if "limit" in params:
            rows = rows[: int(params["limit"])]
        select = params.get("select", "*")
        columns = None if select == "*" else select.split(",")
        return [{c: r.get(c) for c in columns} if columns else dict(r) for r in rows]

    # -- the RPCs (supabase/migrations/20261126000003_rpc.sql) -------------------------------

    def _rpc(self, name: str, args: dict, role: str, uid: str | None) -> httpx.Response:
        if name == "available_slots":
            return httpx.Response(200, json=self.available_slots(args["p_property_id"]))
        if name == "user_visits":
            return httpx.Response(200, json=self.user_visits(uid)) if uid else denied()
        if role != "service_role":
            return denied()
        try:
            return httpx.Response(200, json=getattr(self, name)(**args))
        except RpcError as exc:
            return rpc_error(exc.code)

    def reserve_payment(self, p_lease_id: int, p_tenant_id: str, p_period: str) -> dict:
        if not re.match(r"^[0-9]{4}-(0[1-9]|1[0-2])$", p_period or ""):
            raise RpcError("invalid_period")
        lease = self.leases.get(p_lease_id)
        if lease is None:
            raise RpcError("lease_not_found")
        if lease["tenant_id"] != p_tenant_id:
            raise RpcError("not_lease_tenant")
        if lease["status"] != "active":
            raise RpcError("lease_not_active")
        if self.rows(p_lease_id, p_period, "completed") or self.rows(p_lease_id, p_period, "needs_review"):
            raise RpcError("already_paid")
        owner = self.properties[lease["property_id"]]["owner_id"]
        pending = self.rows(p_lease_id, p_period, "pending")
        if pending:
            return {"payment": dict(pending[0]), "created": False, "owner_id": owner}
        return {"payment": dict(self.add_payment(p_lease_id, p_period)), "created": True, "owner_id": owner}

    def confirm_payment(self, p_token: str, p_status: str, p_amount: int | None) -> dict:
        if p_status not in ("pending", "completed", "failed", "cancelled"):
            raise RpcError("invalid_status")
        payment = self._by_token(p_token)
        lease = self.leases[payment["lease_id"]]
        owner = self.properties[lease["property_id"]]["owner_id"]
        changed, reason = False, None
        data = {"payment_id": payment["id"], "lease_id": lease["id"], "period": payment["period"]}
        if (p_status == "completed" and payment["status"] not in ("completed", "needs_review")
                and p_amount != payment["amount"]):
            reason = "amount_mismatch"
        elif p_status == "completed" and payment["status"] in ("failed", "cancelled", "expired"):
            reason = f"paid_after_{payment['status']}"
        elif payment["status"] == "pending" and p_status != "pending":
            if p_status == "completed" and self.rows(payment["lease_id"], payment["period"], "completed"):
                reason = "month_already_paid"
            else:
                payment["status"] = p_status
                payment["paid_at"] = self.clock().isoformat() if p_status == "completed" else None
                payment["updated_at"] = self.clock().isoformat()
                changed = True
                if p_status == "completed":
                    self.notifications += [{"user_id": lease["tenant_id"], "kind": "payment_completed", "data": data},
                                           {"user_id": owner, "kind": "rent_received", "data": data}]
        if reason:
            payment.update(status="needs_review", review_reason=reason, paid_at=self.clock().isoformat(),
                           updated_at=self.clock().isoformat())
            changed = True
            self.notifications += [{"user_id": who, "kind": "payment_needs_review", "data": data}
                                   for who in (lease["tenant_id"], owner)]
        return {"payment": dict(payment), "changed": changed, "review": reason is not None,
                "tenant_id": lease["tenant_id"], "owner_id": owner, "lease_id": lease["id"]}

    def _by_token(self, token: str) -> dict:
        found = [p for p in self.payments.values() if p["provider_token"] == token]
        if not found:
            raise RpcError("payment_not_found")
        return found[0]

    def expire_payment(self, p_token: str, p_expire_date: str | None = None) -> dict:
        payment = self._by_token(p_token)
        lease = self.leases[payment["lease_id"]]
        created = datetime.fromisoformat(payment["created_at"])
        deadline = datetime.fromisoformat(p_expire_date) if p_expire_date else created + timedelta(days=7)
        changed = payment["status"] == "pending" and self.clock() >= min(deadline, created + timedelta(days=30))
        if changed:
            payment.update(status="expired", updated_at=self.clock().isoformat())
        return {"payment": dict(payment), "changed": changed, "review": False, "tenant_id": lease["tenant_id"],
                "owner_id": self.properties[lease["property_id"]]["owner_id"], "lease_id": lease["id"]}

    def payments_to_reconcile(self, p_limit: int, p_min_age: str = "600 seconds") -> dict:
        seconds = int(p_min_age.split()[0])
        now = self.clock()
        never = now - timedelta(days=365)

        def is_due(p: dict) -> bool:
            checked = self.checked.get(p["id"], never)
            if p["status"] == "pending":
                return datetime.fromisoformat(p["created_at"]) < now - timedelta(seconds=seconds) \
                    and checked < now - timedelta(minutes=1)
            return p["status"] in ("failed", "cancelled") \
                and datetime.fromisoformat(p["updated_at"]) > now - timedelta(days=7) \
                and checked < now - timedelta(minutes=30)

        due = [p for p in self.payments.values() if p["provider_token"] and is_due(p)]
        due.sort(key=lambda p: (p["status"] != "pending",
                                self.checked.get(p["id"]) or datetime.fromisoformat(p["created_at"]), p["id"]))
        batch = due[:p_limit]
        for p in batch:
            self.checked[p["id"]] = now
        return {"batch": [{k: p[k] for k in ("id", "lease_id", "provider_token", "created_at", "status")}
                          for p in batch], "due": len(due)}

    def available_slots(self, pid: int) -> list[dict]:
        prop = self.properties.get(pid)
        if not prop or prop["status"] != "published":
            return []
        taken = {v["slot_id"] for v in self.visits if v["status"] == "booked"}
        return [{"starts_at": s["starts_at"].isoformat(), "ends_at": s["ends_at"].isoformat()}
                for s in sorted(self.slots, key=lambda s: s["starts_at"])
                if s["property_id"] == pid and s["id"] not in taken and s["starts_at"] > self.clock()]

    def book_visit(self, p_property_id: int, p_starts_at: str, p_visitor_id: str) -> dict:
        prop = self.properties.get(p_property_id)
        if not prop or prop["status"] != "published":
            raise RpcError("property_not_found")
        at = datetime.fromisoformat(p_starts_at)
        slot = next((s for s in self.slots if s["property_id"] == p_property_id and s["starts_at"] == at), None)
        if slot is None or slot["starts_at"] <= self.clock():
            raise RpcError("slot_not_found")
        if p_visitor_id not in self.profiles:
            raise RpcError("visitor_not_found")
        if any(v["slot_id"] == slot["id"] and v["status"] == "booked" for v in self.visits):
            raise RpcError("slot_taken")
        ahead = [v for v in self.visits if v["visitor_id"] == p_visitor_id and v["status"] == "booked"
                 and v["starts_at"] > self.clock().isoformat()]
        if len([v for v in ahead if v["property_id"] == p_property_id]) >= 3 or len(ahead) >= 10:
            raise RpcError("too_many_bookings")
        self._ids += 1
        visit = {"id": self._ids, "slot_id": slot["id"], "property_id": p_property_id, "visitor_id": p_visitor_id,
                 "starts_at": slot["starts_at"].isoformat(), "ends_at": slot["ends_at"].isoformat(),
                 "status": "booked", "created_at": self.clock().isoformat()}
        self.visits.append(visit)
        return {"visit": dict(visit)}


    def user_visits(self, uid: str) -> list[dict]:
        mine = [v for v in self.visits if v["visitor_id"] == uid or self.properties[v["property_id"]]["owner_id"] == uid]
        now = self.clock().isoformat()
        upcoming = sorted((v for v in mine if v["status"] == "booked" and v["starts_at"] > now), key=lambda v: v["starts_at"])
        others = sorted((v for v in mine if v not in upcoming), key=lambda v: v["starts_at"], reverse=True)
        return [{**v, "property_title": self.properties[v["property_id"]]["title"],
                 "role": "visitor" if v["visitor_id"] == uid else "owner"} for v in upcoming + others]

    def cancel_visit(self, p_visit_id: int, p_user_id: str) -> dict:
        visit = next((v for v in self.visits if v["id"] == p_visit_id), None)
        if visit is None:
            raise RpcError("visit_not_found")
        owner = self.properties[visit["property_id"]]["owner_id"]
        if p_user_id not in (visit["visitor_id"], owner):
            raise RpcError("visit_not_found")
        changed, notified = False, None
        if visit["status"] == "booked":
            if visit["starts_at"] <= self.clock().isoformat():
                raise RpcError("visit_started")
            visit["status"] = "cancelled"
            changed = True
            notified = owner if p_user_id == visit["visitor_id"] else visit["visitor_id"]
            notified = None if notified == p_user_id else notified
            if notified:
                self.notifications.append({"user_id": notified, "kind": "visit_cancelled", "data": {"visit_id": p_visit_id}})
        return {"visit": dict(visit), "changed": changed, "owner_id": owner, "visitor_id": visit["visitor_id"],
                "notified": notified}


class RpcError(Exception):
    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


class FakePayDunya:
    """PayDunya's create and confirm (devstack/paydunya.py's shapes); `failure` breaks create."""

    def __init__(self, router: respx.Router, root: str = PAYDUNYA):
        self.invoices: dict[str, dict[str, Any]] = {}
        self.failure: httpx.Response | Exception | None = None
        self.confirm_failure: httpx.Response | Exception | None = None
        self.during_create: Callable[[], None] | None = None
        self.confirm_calls = 0
        self._n = 0
        router.post(f"{root}/checkout-invoice/create").mock(side_effect=self.create)
        router.get(url__regex=rf"^{re.escape(root)}/checkout-invoice/confirm/").mock(side_effect=self.confirm)

    def create(self, request: httpx.Request) -> httpx.Response:
        if self.during_create:
            self.during_create()
        if isinstance(self.failure, Exception):
            raise self.failure
        if self.failure is not None:
            return self.failure
        body = json.loads(request.content)
        self._n += 1
        token = f"test_tok{self._n}"
        self.invoices[token] = {"token": token, "status": "pending", "total_amount": body["invoice"]["total_amount"],
                                "description": body["invoice"]["description"], "custom_data": body["custom_data"],
                                "actions": body["actions"], "store": body["store"]}
        return httpx.Response(200, json={"response_code": "00", "response_text": f"https://pay.test/checkout/{token}",
                                         "description": "Checkout Invoice Created", "token": token})

    def confirm(self, request: httpx.Request) -> httpx.Response:
        self.confirm_calls += 1
        if isinstance(self.confirm_failure, Exception):
            raise self.confirm_failure
        if self.confirm_failure is not None:
            return self.confirm_failure
        token = request.url.path.rsplit("/", 1)[-1]
        inv = self.invoices.get(token)
        if inv is None:
            return httpx.Response(200, json={"response_code": "1002", "response_text": "Invoice not found"})
        return httpx.Response(200, json={
            "response_code": "00", "response_text": "Transaction Found", "hash": IPN_HASH,
            "invoice": {"token": token, "total_amount": inv["total_amount"], "description": inv["description"],
                        **{k: inv[k] for k in ("total_amount_without_fees", "pal_is_on", "expire_date") if k in inv}},
            "custom_data": inv["custom_data"], "status": inv["status"], "mode": "test"})

    def ipn(self, token: str, *, hash: str = IPN_HASH, amount: Any = None, status: str | None = None) -> bytes:
        """The form PayDunya posts to callback_url (field names as devstack/paydunya.py sends them)."""
        inv = self.invoices[token]
        fields = [("data[response_code]", "00"), ("data[hash]", hash), ("data[invoice][token]", token),
                  ("data[invoice][total_amount]", str(inv["total_amount"] if amount is None else amount)),
                  ("data[invoice][description]", inv["description"])]
        fields += [(f"data[custom_data][{k}]", str(v)) for k, v in inv["custom_data"].items()]
        fields += [("data[status]", status or inv["status"]), ("data[mode]", "test")]
        return urlencode(fields).encode()


@dataclass
class World:
    redis: FakeUpstash
    db: FakeSupabase
    paydunya: FakePayDunya
    clock: WallClock
    router: respx.Router

    def lock_key(self, lease_id: int = 123) -> str:
        return keys.payment_lock(lease_id)

    def tag_version(self, tag: str) -> bytes | None:
        return self.redis.redis.get(keys.tag_key(tag))


@pytest.fixture
def world(monkeypatch):
    env(monkeypatch)
    clock = WallClock()
    monkeypatch.setattr(payments, "now", clock)
    monkeypatch.setattr(settle, "now", clock)
    with respx.mock(assert_all_called=False) as router:
        yield World(FakeUpstash(router, UPSTASH), FakeSupabase(router, clock), FakePayDunya(router), clock, router)
    reset_breaker()


# == races on the real database (tests/standins.py) =============================================


@pytest.fixture
def on_standins(monkeypatch, configured) -> Iterator[FakePayDunya]:
    """The write path on the real stand-ins (tests/standins.py: Supabase over PostgreSQL, Upstash over
    Valkey) with PayDunya faked at the network boundary; yields the fake PayDunya.

    A request waiting on a row lock waits (a 60 s query timeout, not 5 s): the races below hold one.
    Redis's answers get 5 s, not 0.5 s: fifty requests in one process share the stand-in with its
    GIL, and on a busy machine a few of them took longer than 0.5 s. The breaker then opened, the
    lock was skipped, and the race measured the breaker instead of the lock. The edge's own bounds
    are tested in tests/lib/edge.
    """
    monkeypatch.setattr(upstash, "CACHE_TIMEOUT", 5.0)  # read when the test's Upstash client is built
    for name, value in {"PAYDUNYA_MASTER_KEY": MASTER_KEY, "PAYDUNYA_PRIVATE_KEY": "pd-private",
                        "PAYDUNYA_TOKEN": "pd-token", "PAYDUNYA_BASE_URL": PAYDUNYA, "PUBLIC_BASE_URL": PUBLIC,
                        "RATE_LIMIT_WRITES_PER_MINUTE": "1000"}.items():
        monkeypatch.setenv(name, value)
    for name in ("PAYDUNYA_MODE", "SUPABASE_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    postgrest = db.PostgREST(timeout=60.0)
    with db.using(postgrest), respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        yield FakePayDunya(router)
    postgrest.close()


def race_while_held(admin: psycopg.Connection, lock_row: str, click: Callable[[int], Any], n: int = 50,
                    deadline: float = 20.0) -> tuple[list[Any], int]:
    """`click(0)` ... `click(n - 1)` at once while `admin` holds `lock_row` (a `select ... for update`
    of the row the database function locks first); the row is released once n - 1 have answered, or
    after `deadline` seconds. Returns the answers in order, and how many had come while it was held.

    With the Redis lock, one request holds it and waits on the row; the others are told "busy"
    without reaching the database, so n - 1 answer while the row is held. Without it, every request
    reaches the function and waits on the row: none answers before the release.
    """
    barrier = threading.Barrier(n)

    def go(i: int) -> Any:
        barrier.wait(10)
        return click(i)

    with ThreadPoolExecutor(n) as pool:
        with admin.transaction():
            admin.execute(lock_row)
            futures = [pool.submit(go, i) for i in range(n)]
            end = time.monotonic() + deadline
            while sum(f.done() for f in futures) < n - 1 and time.monotonic() < end:
                time.sleep(0.05)
            answered_while_held = sum(f.done() for f in futures)
        return [f.result() for f in futures], answered_while_held
