"""host/cron: the systemd timer's call, as Vercel Cron makes it: GET with the bearer secret from the environment."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

from host import cron
from tests.support import serve


class Reconcile(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []
    status = 200

    def do_GET(self) -> None:
        Reconcile.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(Reconcile.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_the_call_carries_the_secret_and_a_2xx_is_success(monkeypatch, capsys):
    monkeypatch.setenv("CRON_SECRET", "s3cret")
    Reconcile.seen, Reconcile.status = [], 200
    with serve(Reconcile) as base:
        assert cron.main([f"{base}/api/cron/reconcile"]) == 0
        Reconcile.status = 503
        assert cron.main([f"{base}/api/cron/reconcile"]) == 1
    assert Reconcile.seen == [("/api/cron/reconcile", "Bearer s3cret")] * 2
    assert "s3cret" not in capsys.readouterr().out, "the secret is never printed"


def test_without_the_secret_or_an_answer_the_run_fails(monkeypatch):
    monkeypatch.delenv("CRON_SECRET", raising=False)
    assert cron.main(["http://127.0.0.1:9/api/cron/reconcile"]) == 1
    monkeypatch.setenv("CRON_SECRET", "s3cret")
    assert cron.main(["http://127.0.0.1:9/api/cron/reconcile"]) == 1
    assert cron.main(["not-a-url"]) == 2
