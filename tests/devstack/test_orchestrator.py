"""What `make dev` hands `vercel dev`: a config derived from vercel.json, and a PATH on which uv
finds this virtualenv's Python whatever the calling shell prefers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import __main__ as orchestrator

REPO = Path(__file__).resolve().parents[2]


def test_the_dev_config_is_vercel_json_without_what_vercel_dev_refuses():
    deployed = json.loads((REPO / "vercel.json").read_text())
    dev = orchestrator.dev_config_for(orchestrator.Ports())
    assert dev["functions"].keys() == deployed["functions"].keys()
    for pattern, settings in dev["functions"].items():
        # vercel/vercel#17620: `vercel dev` refuses memory/maxDuration; the rest is the deployed config.
        expected = {k: v for k, v in deployed["functions"][pattern].items() if k not in ("memory", "maxDuration")}
        assert settings == expected
    assert "crons" not in dev  # vercel dev does not run crons
    assert {k: v for k, v in dev.items() if k not in ("functions", "crons", "env")} == \
        {k: v for k, v in deployed.items() if k not in ("functions", "crons")}


def test_the_functions_get_every_variable_pointed_at_the_stand_ins():
    ports = orchestrator.Ports(api=1, supabase=2, upstash=3, paydunya=4, redis=5, postgres=6)
    env = orchestrator.dev_config_for(ports)["env"]
    assert env["SUPABASE_URL"] == "http://127.0.0.1:2"
    assert env["UPSTASH_REDIS_REST_URL"] == "http://127.0.0.1:3"
    assert env["PAYDUNYA_BASE_URL"].startswith("http://127.0.0.1:4/")
    assert env["PUBLIC_BASE_URL"] == "http://127.0.0.1:1"
    example = (REPO / ".env.example").read_text()
    assert all(name in example for name in env)  # every variable the stack sets is documented


def test_the_base_interpreter_comes_right_after_the_virtualenv_on_path():
    env = orchestrator.vercel_env({"PATH": "/somewhere/shims:/usr/bin"})
    path = env["PATH"].split(os.pathsep)
    assert path[0] == str(Path(sys.executable).parent)
    assert path[1] == str(Path(orchestrator.base_python()).parent)
    assert path[2:] == ["/somewhere/shims", "/usr/bin"]
    assert "UV_PYTHON" not in env  # it would send the builder's `uv pip install` to the base interpreter
    assert os.path.realpath(orchestrator.base_python()) == orchestrator.base_python()
    base = subprocess.run([orchestrator.base_python(), "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                          capture_output=True, text=True, check=True)
    assert base.stdout.strip() == "False"  # a real interpreter, not a virtualenv's


@pytest.mark.parametrize("preference", [
    {"PYENV_VERSION": "3.11.7"},  # a pyenv shell pinned to another Python
    {"ASDF_PYTHON_VERSION": "3.11.7"},
    {"PATH_FIRST": "/usr/bin"},  # a system python3 first on PATH
])
def test_uv_venv_as_vercels_builder_runs_it_finds_python_3_12_whatever_the_shell_prefers(tmp_path, preference):
    # What @vercel/python runs in dev: `uv venv <path> --allow-existing --seed`, no --python, from a
    # folder holding the project's .python-version. Downloads off, so a miss fails instead of fetching.
    work = tmp_path / "work"
    work.mkdir()
    (work / ".python-version").write_text((REPO / ".python-version").read_text())
    shell = {**os.environ, **{k: v for k, v in preference.items() if k != "PATH_FIRST"}}
    if "PATH_FIRST" in preference:
        shell["PATH"] = f"{preference['PATH_FIRST']}{os.pathsep}{shell['PATH']}"
    env = {**orchestrator.vercel_env(shell), "UV_PYTHON_DOWNLOADS": "never", "UV_CACHE_DIR": str(tmp_path / "uv")}
    env.pop("VIRTUAL_ENV", None)
    uv = Path(sys.executable).parent / "uv"
    made = subprocess.run([str(uv), "venv", str(tmp_path / "venv"), "--allow-existing", "--seed"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    config = (tmp_path / "venv" / "pyvenv.cfg").read_text()
    assert "version_info = 3.12" in config
    assert f"home = {Path(orchestrator.base_python()).parent}" in config
