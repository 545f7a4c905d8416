"""The local stack end to end, through `vercel dev`: health, sign-in, one signed-in endpoint."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lib import auth
from tests.integration.conftest import ROOT


def test_health_is_up_through_vercel_dev(stack):
    response = stack.api.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "redis": "up", "database": "up", "environment": "local",
                               "paydunya_mode": "test"}


def test_a_demo_user_signs_in_and_lib_auth_accepts_the_token(stack, monkeypatch):
    token = stack.token("moussa.diop@example.sn")
    monkeypatch.setenv("SUPABASE_URL", stack.supabase_url)
    user = auth.authenticate(f"Bearer {token}")
    assert user.email == "moussa.diop@example.sn"
    assert user.id == "33333333-3333-4333-8333-333333333333"


def test_the_signed_in_user_reads_their_own_profile(stack):
    response = stack.api.get("/api/profile", headers=stack.auth("moussa.diop@example.sn"))
    assert response.status_code == 200, response.text
    assert response.json()["profile"]["email"] == "moussa.diop@example.sn"
    assert stack.api.get("/api/profile").json()["error"]["code"] == "authentication_required"


def test_a_second_stack_in_the_same_folder_says_one_already_runs(stack):
    result = subprocess.run([sys.executable, "-m", "devstack", "up"], cwd=ROOT, env=stack.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "already runs" in result.stderr and "make stop" in result.stderr


@pytest.mark.parametrize("path", ["/lib/config.py", "/lib/web/http.py", "/requirements.txt", "/supabase/seed.sql",
                                  "/.env.example", "/devstack/__main__.py", "/api/health.py"])
def test_no_source_file_is_served(stack, path):
    response = stack.api.get(path)
    # `/api/health.py` runs the function (Vercel routes it to /api/health): JSON, never the source.
    assert response.status_code == 404 or response.headers["content-type"].startswith("application/json"), path
    for source_marker in ("import ", "def ", "SUPABASE_", "insert into"):
        assert source_marker not in response.text, path
